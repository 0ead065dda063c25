//! Handshake messages: `Hello` (edge → hub) and `HelloReply` (hub → edge), and secret verification.
//!
//! Every message is an envelope — magic `PWAY`, version u16, kind u8, body length u32 — followed by a
//! body whose known fields come first and whose tail is a list of TLV extensions that a reader skips if it
//! does not know them. Layout in `docs/protocol.md`.
use super::frame::{malformed, take_u16, take_u32, take_u8, EdgeConfig, ProtocolError};
use super::PROTOCOL_VERSION;
use bytes::{Buf, BufMut, BytesMut};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Limits on handshake fields (checked when decoding).
pub const MAX_EDGE_ID_LEN: usize = 128;
pub const MAX_SECRET_LEN: usize = 512;
pub const MAX_HANDSHAKE_MESSAGE: usize = 64 * 1024;
pub const MAX_HUB_ID_LEN: usize = 128;
pub const MAX_SESSION_ID_LEN: usize = 128;
pub const MAX_REJECT_MESSAGE: usize = 1024;

/// First four bytes of every handshake message.
pub const HANDSHAKE_MAGIC: &[u8; 4] = b"PWAY";
/// magic (4) + version (2) + kind (1) + body length (4).
pub const HANDSHAKE_HEADER_LEN: usize = 11;
/// Largest body a handshake message may declare.
pub const MAX_HANDSHAKE_BODY: usize = MAX_HANDSHAKE_MESSAGE - HANDSHAKE_HEADER_LEN;

/// Capability bits carried in `Hello::capabilities`. None is used by version 1; a hub ignores bits it
/// does not know.
pub mod capability {
    /// The edge can relay UDP with frames 0x20..=0x2f.
    pub const UDP_FRAMES: u32 = 1 << 0;
    /// The edge can relay UDP as QUIC datagrams.
    pub const QUIC_DATAGRAMS: u32 = 1 << 1;
}

/// Message kinds (the byte after the version).
mod kind {
    pub const HELLO: u8 = 1;
    pub const ACCEPTED: u8 = 2;
    pub const REJECTED: u8 = 3;
}

#[derive(Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub edge_id: String,
    pub secret: String,
    /// Capability bits (reserved: bit 0 = UDP frames, bit 1 = QUIC datagrams).
    pub capabilities: u32,
}

// `Debug` masks the secret.
impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("version", &self.version)
            .field("edge_id", &self.edge_id)
            .field("secret", &"***")
            .field("capabilities", &self.capabilities)
            .finish()
    }
}

impl Hello {
    /// Checks the limits `decode_hello` enforces, so an edge can refuse bad config before connecting.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_text("Hello", "edge id", &self.edge_id, 1, MAX_EDGE_ID_LEN)?;
        check_text("Hello", "secret", &self.secret, 1, MAX_SECRET_LEN)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloAccepted {
    pub hub_id: String,
    pub session_id: String,
    pub config: EdgeConfig,
    pub ping_interval_ms: u32,
    pub idle_timeout_ms: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    /// Unknown edge or wrong secret: deliberately the same code, message and timing.
    AuthFailed,
    VersionUnsupported,
    Malformed,
}

impl RejectCode {
    pub fn code(self) -> u8 {
        match self {
            Self::AuthFailed => 1,
            Self::VersionUnsupported => 2,
            Self::Malformed => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        [Self::AuthFailed, Self::VersionUnsupported, Self::Malformed]
            .into_iter()
            .find(|c| c.code() == code)
    }

    /// camelCase name, as in `edge.authFailed` / `tunnel.rejected` events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthFailed => "authFailed",
            Self::VersionUnsupported => "versionUnsupported",
            Self::Malformed => "malformedHello",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloReply {
    Accepted(HelloAccepted),
    Rejected { code: RejectCode, message: String },
}

/// Appends the encoded `Hello`. Fields over their limit are cut (see `Hello::validate`), so the hub
/// rejects the edge with a clear reply rather than the stream being misframed.
pub fn encode_hello(hello: &Hello, out: &mut BytesMut) {
    let mut body = BytesMut::new();
    body.put_u32(hello.capabilities);
    put_text(&mut body, &hello.edge_id, MAX_EDGE_ID_LEN);
    put_text(&mut body, &hello.secret, MAX_SECRET_LEN);
    put_envelope(out, hello.version, kind::HELLO, &body);
}

/// `Ok(None)` = need more bytes. Rejects bad magic, oversize and malformed fields.
///
/// Any version is decoded (all versions keep the version-1 body fields first), so the hub can answer an
/// unsupported version with `RejectCode::VersionUnsupported` and still log the claimed edge id.
pub fn decode_hello(buf: &mut BytesMut) -> Result<Option<Hello>, ProtocolError> {
    let Some((version, kind, body_len)) = peek_envelope(buf, "Hello")? else {
        return Ok(None);
    };
    if kind != kind::HELLO {
        return Err(malformed("Hello", format!("expected a Hello, got kind {kind}")));
    }
    let mut body = &buf[HANDSHAKE_HEADER_LEN..HANDSHAKE_HEADER_LEN + body_len];
    let capabilities = take_u32(&mut body, "Hello", "capabilities")?;
    let edge_id = take_text(&mut body, "Hello", "edge id", 1, MAX_EDGE_ID_LEN)?;
    let secret = take_text(&mut body, "Hello", "secret", 1, MAX_SECRET_LEN)?;
    skip_extensions(&mut body, "Hello")?;
    buf.advance(HANDSHAKE_HEADER_LEN + body_len);
    Ok(Some(Hello {
        version,
        edge_id,
        secret,
        capabilities,
    }))
}

/// Appends the encoded reply, stamped with `PROTOCOL_VERSION`. Over-long ids and messages are cut at a
/// char boundary; lists longer than the `EdgeConfig` limit are cut (see `EdgeConfig::validate`).
pub fn encode_reply(reply: &HelloReply, out: &mut BytesMut) {
    let mut body = BytesMut::new();
    let kind = match reply {
        HelloReply::Accepted(accepted) => {
            put_text(&mut body, &accepted.hub_id, MAX_HUB_ID_LEN);
            put_text(&mut body, &accepted.session_id, MAX_SESSION_ID_LEN);
            body.put_u32(accepted.ping_interval_ms);
            body.put_u32(accepted.idle_timeout_ms);
            accepted.config.encode(&mut body);
            kind::ACCEPTED
        }
        HelloReply::Rejected { code, message } => {
            body.put_u8(code.code());
            put_text(&mut body, message, MAX_REJECT_MESSAGE);
            kind::REJECTED
        }
    };
    put_envelope(out, PROTOCOL_VERSION, kind, &body);
}

/// `Ok(None)` = need more bytes. The reply's version is not checked: an `Accepted` always speaks the
/// version of the `Hello`, and a `Rejected` has the same layout in every version.
pub fn decode_reply(buf: &mut BytesMut) -> Result<Option<HelloReply>, ProtocolError> {
    let Some((_version, kind, body_len)) = peek_envelope(buf, "HelloReply")? else {
        return Ok(None);
    };
    let mut body = &buf[HANDSHAKE_HEADER_LEN..HANDSHAKE_HEADER_LEN + body_len];
    let reply = match kind {
        kind::ACCEPTED => {
            let hub_id = take_text(&mut body, "HelloReply", "hub id", 1, MAX_HUB_ID_LEN)?;
            let session_id =
                take_text(&mut body, "HelloReply", "session id", 1, MAX_SESSION_ID_LEN)?;
            let ping_interval_ms = take_u32(&mut body, "HelloReply", "ping interval")?;
            let idle_timeout_ms = take_u32(&mut body, "HelloReply", "idle timeout")?;
            let config = EdgeConfig::decode(&mut body, "HelloReply")?;
            HelloReply::Accepted(HelloAccepted {
                hub_id,
                session_id,
                config,
                ping_interval_ms,
                idle_timeout_ms,
            })
        }
        kind::REJECTED => {
            let code = take_u8(&mut body, "HelloReply", "reject code")?;
            let code = RejectCode::from_code(code)
                .ok_or_else(|| malformed("HelloReply", format!("unknown reject code {code}")))?;
            let message = take_text(&mut body, "HelloReply", "message", 0, MAX_REJECT_MESSAGE)?;
            HelloReply::Rejected { code, message }
        }
        other => {
            return Err(malformed(
                "HelloReply",
                format!("expected Accepted or Rejected, got kind {other}"),
            ))
        }
    };
    skip_extensions(&mut body, "HelloReply")?;
    buf.advance(HANDSHAKE_HEADER_LEN + body_len);
    Ok(Some(reply))
}

fn put_envelope(out: &mut BytesMut, version: u16, kind: u8, body: &[u8]) {
    out.reserve(HANDSHAKE_HEADER_LEN + body.len());
    out.extend_from_slice(HANDSHAKE_MAGIC);
    out.put_u16(version);
    out.put_u8(kind);
    // Bodies built by this module are bounded by the field limits, far below u32::MAX.
    out.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(body);
}

/// Returns (version, kind, body length) once the whole message is buffered. Bad magic is reported as soon
/// as the first differing byte arrives, and an oversize body as soon as the header is complete.
fn peek_envelope(
    buf: &[u8],
    what: &'static str,
) -> Result<Option<(u16, u8, usize)>, ProtocolError> {
    let magic_seen = buf.len().min(HANDSHAKE_MAGIC.len());
    if buf[..magic_seen] != HANDSHAKE_MAGIC[..magic_seen] {
        return Err(ProtocolError::BadMagic);
    }
    if buf.len() < HANDSHAKE_HEADER_LEN {
        return Ok(None);
    }
    let version = u16::from_be_bytes([buf[4], buf[5]]);
    let kind = buf[6];
    let body_len = u32::from_be_bytes([buf[7], buf[8], buf[9], buf[10]]) as usize;
    if body_len > MAX_HANDSHAKE_BODY {
        return Err(malformed(
            what,
            format!("body of {body_len} bytes exceeds {MAX_HANDSHAKE_BODY}"),
        ));
    }
    if buf.len() < HANDSHAKE_HEADER_LEN + body_len {
        return Ok(None);
    }
    Ok(Some((version, kind, body_len)))
}

/// Length-prefixed (u16) UTF-8, cut to `max` bytes at a char boundary.
fn put_text(out: &mut BytesMut, text: &str, max: usize) {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.extend_from_slice(&text.as_bytes()[..end]);
}

fn take_text(
    buf: &mut &[u8],
    what: &'static str,
    field: &str,
    min: usize,
    max: usize,
) -> Result<String, ProtocolError> {
    let len = take_u16(buf, what, field)? as usize;
    if len > max {
        return Err(malformed(
            what,
            format!("{field} of {len} bytes exceeds {max}"),
        ));
    }
    if buf.remaining() < len {
        return Err(malformed(what, format!("{field} truncated")));
    }
    let (bytes, rest) = buf.split_at(len);
    *buf = rest;
    let text = std::str::from_utf8(bytes)
        .map_err(|_| malformed(what, format!("{field} is not valid UTF-8")))?;
    check_text(what, field, text, min, max)?;
    Ok(text.to_owned())
}

fn check_text(
    what: &'static str,
    field: &str,
    text: &str,
    min: usize,
    max: usize,
) -> Result<(), ProtocolError> {
    if text.len() < min {
        return Err(malformed(what, format!("{field} is empty")));
    }
    if text.len() > max {
        return Err(malformed(
            what,
            format!("{field} of {} bytes exceeds {max}", text.len()),
        ));
    }
    Ok(())
}

/// Skips the TLV extensions (type u16, length u16, value) after the known fields. Version 1 defines none;
/// unknown ones are ignored, but they must be well formed and fill the body exactly.
fn skip_extensions(body: &mut &[u8], what: &'static str) -> Result<(), ProtocolError> {
    while body.has_remaining() {
        let _ext_type = take_u16(body, what, "extension type")?;
        let len = take_u16(body, what, "extension length")? as usize;
        if body.remaining() < len {
            return Err(malformed(what, "extension truncated"));
        }
        body.advance(len);
    }
    Ok(())
}

/// Verifies presented secrets in constant time. For an unknown edge, call `verify(None, presented)`:
/// it does the same work against a dummy value and returns false.
pub struct SecretVerifier {
    dummy: [u8; 32],
}

impl SecretVerifier {
    pub fn new() -> Self {
        let mut dummy = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut dummy);
        Self { dummy }
    }
    pub fn verify(&self, expected: Option<&str>, presented: &str) -> bool {
        // Hashing first makes the comparison length-independent; the dummy keeps an unknown edge on the
        // same path as a wrong secret.
        let expected_bytes = expected.map_or(&self.dummy[..], str::as_bytes);
        let expected_hash = Sha256::digest(expected_bytes);
        let presented_hash = Sha256::digest(presented.as_bytes());
        let matches: bool = expected_hash.as_slice().ct_eq(presented_hash.as_slice()).into();
        matches & expected.is_some()
    }
}

impl Default for SecretVerifier {
    fn default() -> Self {
        Self::new()
    }
}
