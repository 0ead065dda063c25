//! Handshake messages: `Hello` (edge → hub) and `HelloReply` (hub → edge). Secret checks: `credential.rs`.
//!
//! Every message is an envelope — magic `PWAY`, version u16, kind u8, body length u32 — followed by a
//! body whose known fields come first and whose tail is a list of TLV extensions that a reader skips if it
//! does not know them. Layout in `docs/protocol.md`.
use super::frame::{malformed, take_u16, take_u32, take_u8, EdgeConfig, ProtocolError};
use super::PROTOCOL_VERSION;
use bytes::{Buf, BufMut, BytesMut};

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

/// Capability bits carried in `Hello::capabilities` (edge) and `UdpSettings::capabilities` (hub). A
/// reader ignores bits it does not know.
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
    /// The hub's UDP settings (extension `EXT_UDP`); `None` from a hub that does not relay UDP.
    pub udp: Option<UdpSettings>,
}

/// Extension type of `UdpSettings` in an `Accepted` reply.
pub const EXT_UDP: u16 = 1;
const EXT_UDP_LEN: usize = 12;

/// What the hub tells the edge about UDP relaying (Accepted extension `EXT_UDP`, 12 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSettings {
    /// `capability` bits the hub supports (bit 0: UDP frames, bit 1: QUIC datagrams).
    pub capabilities: u32,
    /// Most concurrent UDP sessions the edge may open; the edge refuses new clients beyond it.
    pub max_sessions: u32,
    /// A UDP session with no datagram in either direction for this long expires.
    pub idle_timeout_ms: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    /// Unknown edge or wrong secret: deliberately the same code, message and timing.
    AuthFailed,
    VersionUnsupported,
    Malformed,
    /// Multi-hub: the edge authenticated but this hub will not serve it (another hub owns it, or
    /// ownership cannot be decided now). The edge tries its next hub at once.
    NotOwner,
}

impl RejectCode {
    pub fn code(self) -> u8 {
        match self {
            Self::AuthFailed => 1,
            Self::VersionUnsupported => 2,
            Self::Malformed => 3,
            Self::NotOwner => 4,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        [
            Self::AuthFailed,
            Self::VersionUnsupported,
            Self::Malformed,
            Self::NotOwner,
        ]
        .into_iter()
        .find(|c| c.code() == code)
    }

    /// camelCase name, as in `edge.authFailed` / `tunnel.rejected` events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthFailed => "authFailed",
            Self::VersionUnsupported => "versionUnsupported",
            Self::Malformed => "malformedHello",
            Self::NotOwner => "notOwner",
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
        return Err(malformed(
            "Hello",
            format!("expected a Hello, got kind {kind}"),
        ));
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
            if let Some(udp) = &accepted.udp {
                body.put_u16(EXT_UDP);
                body.put_u16(EXT_UDP_LEN as u16);
                body.put_u32(udp.capabilities);
                body.put_u32(udp.max_sessions);
                body.put_u32(udp.idle_timeout_ms);
            }
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
            let mut udp = None;
            while body.has_remaining() {
                let (ext_type, mut value) = take_extension(&mut body, "HelloReply")?;
                if ext_type != EXT_UDP {
                    continue;
                }
                if value.len() != EXT_UDP_LEN {
                    return Err(malformed(
                        "HelloReply",
                        format!(
                            "UDP extension must have {EXT_UDP_LEN} bytes, got {}",
                            value.len()
                        ),
                    ));
                }
                udp = Some(UdpSettings {
                    capabilities: value.get_u32(),
                    max_sessions: value.get_u32(),
                    idle_timeout_ms: value.get_u32(),
                });
            }
            HelloReply::Accepted(HelloAccepted {
                hub_id,
                session_id,
                config,
                ping_interval_ms,
                idle_timeout_ms,
                udp,
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
        take_extension(body, what)?;
    }
    Ok(())
}

/// Takes one TLV extension: (type, value).
fn take_extension<'a>(
    body: &mut &'a [u8],
    what: &'static str,
) -> Result<(u16, &'a [u8]), ProtocolError> {
    let ext_type = take_u16(body, what, "extension type")?;
    let len = take_u16(body, what, "extension length")? as usize;
    if body.remaining() < len {
        return Err(malformed(what, "extension truncated"));
    }
    let (value, rest) = body.split_at(len);
    *body = rest;
    Ok((ext_type, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn hello() -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            edge_id: "edge-1".into(),
            secret: "s3cret".into(),
            capabilities: capability::UDP_FRAMES,
        }
    }

    fn accepted() -> HelloReply {
        HelloReply::Accepted(HelloAccepted {
            hub_id: "hub-1".into(),
            session_id: "0f1e2d3c".into(),
            config: EdgeConfig {
                listen_ports: vec![80, 443],
                listen_ports_udp: vec![],
                stun_interval_secs: 300,
            },
            ping_interval_ms: 5000,
            idle_timeout_ms: 15000,
            udp: Some(UdpSettings {
                capabilities: capability::UDP_FRAMES | capability::QUIC_DATAGRAMS,
                max_sessions: 1024,
                idle_timeout_ms: 60_000,
            }),
        })
    }

    fn encoded_hello(h: &Hello) -> BytesMut {
        let mut out = BytesMut::new();
        encode_hello(h, &mut out);
        out
    }

    /// Builds an envelope around an arbitrary body, for malformed-input cases.
    fn envelope(version: u16, kind: u8, body: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        put_envelope(&mut out, version, kind, body);
        out
    }

    fn text(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(s);
        v
    }

    #[test]
    fn hello_round_trips_and_starts_with_magic_then_version() {
        let mut buf = encoded_hello(&hello());
        assert_eq!(&buf[..4], b"PWAY");
        assert_eq!(&buf[4..7], &[0, 1, kind::HELLO]);
        assert_eq!(decode_hello(&mut buf), Ok(Some(hello())));
        assert!(buf.is_empty());
    }

    #[test]
    fn replies_round_trip() {
        let rejected = HelloReply::Rejected {
            code: RejectCode::AuthFailed,
            message: "authentication failed".into(),
        };
        let not_owner = HelloReply::Rejected {
            code: RejectCode::NotOwner,
            message: "edge e1 is owned by hub-2".into(),
        };
        for code in [
            RejectCode::AuthFailed,
            RejectCode::VersionUnsupported,
            RejectCode::Malformed,
            RejectCode::NotOwner,
        ] {
            assert_eq!(RejectCode::from_code(code.code()), Some(code));
        }
        assert_eq!(RejectCode::NotOwner.code(), 4);
        assert_eq!(RejectCode::from_code(5), None);
        for reply in [accepted(), rejected, not_owner] {
            let mut buf = BytesMut::new();
            encode_reply(&reply, &mut buf);
            buf.extend_from_slice(b"\x02next frame");
            assert_eq!(decode_reply(&mut buf), Ok(Some(reply)));
            assert_eq!(&buf[..], b"\x02next frame", "frames after the reply stay");
        }
    }

    #[test]
    fn udp_extension_is_optional_and_checked() {
        // Without the extension (a hub that does not relay UDP).
        let HelloReply::Accepted(mut plain) = accepted() else {
            panic!("accepted");
        };
        plain.udp = None;
        let mut buf = BytesMut::new();
        encode_reply(&HelloReply::Accepted(plain.clone()), &mut buf);
        assert_eq!(
            decode_reply(&mut buf),
            Ok(Some(HelloReply::Accepted(plain)))
        );

        // An unknown extension before it is skipped; the UDP one is still read.
        let mut buf = BytesMut::new();
        encode_reply(&accepted(), &mut buf);
        let body_start = HANDSHAKE_HEADER_LEN;
        let mut body = buf[body_start..].to_vec();
        let udp_ext = body.split_off(body.len() - 16);
        body.extend_from_slice(&[0x7f, 0x00, 0x00, 0x02, 0xaa, 0xbb]);
        body.extend_from_slice(&udp_ext);
        let mut reencoded = envelope(PROTOCOL_VERSION, kind::ACCEPTED, &body);
        assert_eq!(decode_reply(&mut reencoded), Ok(Some(accepted())));

        // A UDP extension of the wrong size is malformed.
        let mut bad = buf[body_start..buf.len() - 16].to_vec();
        bad.extend_from_slice(&[0x00, 0x01, 0x00, 0x04, 0, 0, 0, 1]);
        let err = decode_reply(&mut envelope(PROTOCOL_VERSION, kind::ACCEPTED, &bad))
            .expect_err("short UDP extension");
        assert!(err.to_string().contains("UDP extension"), "{err}");
    }

    #[test]
    fn byte_at_a_time_decodes_the_same_message() {
        let whole = encoded_hello(&hello());
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            buf.put_u8(*byte);
            let result = decode_hello(&mut buf);
            if i + 1 < whole.len() {
                assert_eq!(result, Ok(None));
            } else {
                assert_eq!(result, Ok(Some(hello())));
            }
        }
    }

    #[test]
    fn bad_magic_is_seen_at_the_first_wrong_byte() {
        assert_eq!(
            decode_hello(&mut BytesMut::from(&b"G"[..])),
            Err(ProtocolError::BadMagic)
        );
        assert_eq!(decode_hello(&mut BytesMut::from(&b"PW"[..])), Ok(None));
        let http = b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n";
        assert_eq!(
            decode_hello(&mut BytesMut::from(&http[..])),
            Err(ProtocolError::BadMagic)
        );
        // A TLS ClientHello sent to the plaintext handshake (e.g. double TLS) is also refused.
        let tls = [0x16u8, 0x03, 0x01, 0x02, 0x00];
        assert_eq!(
            decode_hello(&mut BytesMut::from(&tls[..])),
            Err(ProtocolError::BadMagic)
        );
        assert_eq!(
            decode_reply(&mut BytesMut::from(&b"PWAX"[..])),
            Err(ProtocolError::BadMagic)
        );
    }

    #[test]
    fn oversize_body_is_rejected_from_the_header_alone() {
        let mut header = BytesMut::from(&b"PWAY"[..]);
        header.put_u16(1);
        header.put_u8(kind::HELLO);
        header.put_u32(u32::MAX);
        let err = decode_hello(&mut header).expect_err("4 GiB body");
        assert!(
            matches!(err, ProtocolError::Malformed { frame: "Hello", .. }),
            "{err}"
        );
    }

    #[test]
    fn oversize_or_empty_fields_are_rejected() {
        let long_id = vec![b'e'; MAX_EDGE_ID_LEN + 1];
        let mut body = 0u32.to_be_bytes().to_vec();
        body.extend(text(&long_id));
        body.extend(text(b"s"));
        let err = decode_hello(&mut envelope(1, kind::HELLO, &body)).expect_err("long id");
        assert!(
            matches!(&err, ProtocolError::Malformed { detail, .. } if detail.contains("edge id")),
            "{err}"
        );

        let long_secret = vec![b's'; MAX_SECRET_LEN + 1];
        let mut body = 0u32.to_be_bytes().to_vec();
        body.extend(text(b"e1"));
        body.extend(text(&long_secret));
        let err = decode_hello(&mut envelope(1, kind::HELLO, &body)).expect_err("long secret");
        assert!(
            matches!(&err, ProtocolError::Malformed { detail, .. } if detail.contains("secret")),
            "{err}"
        );

        let mut body = 0u32.to_be_bytes().to_vec();
        body.extend(text(b""));
        body.extend(text(b"s"));
        let err = decode_hello(&mut envelope(1, kind::HELLO, &body)).expect_err("empty id");
        assert!(
            matches!(&err, ProtocolError::Malformed { detail, .. } if detail.contains("empty")),
            "{err}"
        );

        let mut body = 0u32.to_be_bytes().to_vec();
        body.extend(text(&[0xc3, 0x28]));
        body.extend(text(b"s"));
        let err = decode_hello(&mut envelope(1, kind::HELLO, &body)).expect_err("bad utf8");
        assert!(
            matches!(&err, ProtocolError::Malformed { detail, .. } if detail.contains("UTF-8")),
            "{err}"
        );

        let too_long = Hello {
            secret: "x".repeat(MAX_SECRET_LEN + 1),
            ..hello()
        };
        assert!(too_long.validate().is_err());
        assert_eq!(hello().validate(), Ok(()));
    }

    #[test]
    fn truncated_body_and_wrong_kind_are_malformed() {
        let whole = encoded_hello(&hello());
        // Declare one byte less than the fields need: the secret runs past the body.
        let mut short = whole.clone();
        let body_len = (whole.len() - HANDSHAKE_HEADER_LEN - 1) as u32;
        short[7..11].copy_from_slice(&body_len.to_be_bytes());
        short.truncate(whole.len() - 1);
        let err = decode_hello(&mut short).expect_err("truncated");
        assert!(
            matches!(err, ProtocolError::Malformed { frame: "Hello", .. }),
            "{err}"
        );

        let mut reply = BytesMut::new();
        encode_reply(&accepted(), &mut reply);
        let err = decode_hello(&mut reply).expect_err("reply is not a hello");
        assert!(
            matches!(err, ProtocolError::Malformed { frame: "Hello", .. }),
            "{err}"
        );
        let err = decode_reply(&mut encoded_hello(&hello())).expect_err("hello is not a reply");
        assert!(
            matches!(
                err,
                ProtocolError::Malformed {
                    frame: "HelloReply",
                    ..
                }
            ),
            "{err}"
        );

        let mut body = vec![9u8];
        body.extend(text(b"?"));
        let err = decode_reply(&mut envelope(1, kind::REJECTED, &body)).expect_err("code 9");
        assert!(
            matches!(&err, ProtocolError::Malformed { detail, .. } if detail.contains("reject code")),
            "{err}"
        );
    }

    #[test]
    fn future_versions_and_unknown_extensions_still_decode() {
        let mut body = capability::QUIC_DATAGRAMS.to_be_bytes().to_vec();
        body.extend(text(b"edge-9"));
        body.extend(text(b"pw"));
        // Two extensions a later version might add (e.g. a list of alternative hubs).
        body.extend([0x00, 0x07, 0x00, 0x03, b'a', b'b', b'c']);
        body.extend([0x12, 0x34, 0x00, 0x00]);
        let decoded = decode_hello(&mut envelope(7, kind::HELLO, &body));
        assert_eq!(
            decoded,
            Ok(Some(Hello {
                version: 7,
                edge_id: "edge-9".into(),
                secret: "pw".into(),
                capabilities: capability::QUIC_DATAGRAMS,
            }))
        );
        // A half extension is malformed, not silently ignored.
        body.extend([0x00, 0x01, 0x00, 0x05, b'x']);
        let err = decode_hello(&mut envelope(7, kind::HELLO, &body)).expect_err("bad tlv");
        assert!(
            matches!(&err, ProtocolError::Malformed { detail, .. } if detail.contains("extension")),
            "{err}"
        );
    }

    #[test]
    fn hello_debug_masks_the_secret() {
        let shown = format!("{:?}", hello());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("edge-1"));
    }

    #[test]
    fn random_bytes_never_panic_or_overconsume() {
        let mut rng = StdRng::seed_from_u64(0x4845_4c4f);
        let valid = encoded_hello(&hello());
        for i in 0..10_000 {
            let mut input: Vec<u8> = if i % 2 == 0 {
                let len = rng.gen_range(0..64);
                (0..len).map(|_| rng.gen()).collect()
            } else {
                // Mutate a valid message so the body parser sees near-miss input.
                let mut v = valid.to_vec();
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(HANDSHAKE_MAGIC.len()..v.len());
                    v[at] = rng.gen();
                }
                v
            };
            if rng.gen_bool(0.2) {
                input.truncate(rng.gen_range(0..=input.len()));
            }
            for decode in [
                |b: &mut BytesMut| decode_hello(b).map(|m| m.is_some()),
                |b: &mut BytesMut| decode_reply(b).map(|m| m.is_some()),
            ] {
                let mut buf = BytesMut::from(&input[..]);
                match decode(&mut buf) {
                    Ok(true) => assert!(buf.len() < input.len()),
                    Ok(false) | Err(_) => assert_eq!(buf.len(), input.len()),
                }
            }
        }
    }
}
