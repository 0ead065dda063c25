//! Frame codec. Layout and limits are specified in `docs/protocol.md`.
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Fixed header: type (u8), stream id (u32 BE), payload length (u32 BE).
pub const FRAME_HEADER_LEN: usize = 9;
/// Hard limit for any frame payload; larger lengths are a protocol error before any allocation.
pub const MAX_FRAME_PAYLOAD: usize = 256 * 1024;
/// Largest DATA payload a sender produces (the relay reads in chunks of at most this).
pub const MAX_DATA_CHUNK: usize = 64 * 1024;
/// Credit each side grants per stream at open; replenished with `Window` frames.
pub const INITIAL_STREAM_WINDOW: u32 = 512 * 1024;
/// Most ports in each list of an `EdgeConfig`.
pub const MAX_CONFIG_PORTS: usize = 16 * 1024;
/// Longest `GoAway` message in bytes; the encoder truncates longer messages at a char boundary.
pub const MAX_GOAWAY_MESSAGE: usize = 1024;
/// Largest UDP payload a `UdpDatagram` frame carries (the largest IPv6 UDP payload without jumbograms).
pub const MAX_UDP_DATAGRAM: usize = 65_535;

/// Frame type numbers (the first header byte).
pub mod frame_type {
    pub const OPEN: u8 = 0x01;
    pub const DATA: u8 = 0x02;
    pub const FIN: u8 = 0x03;
    pub const CLOSE: u8 = 0x04;
    pub const WINDOW: u8 = 0x05;
    pub const PING: u8 = 0x10;
    pub const PONG: u8 = 0x11;
    pub const CONFIG: u8 = 0x12;
    pub const GOAWAY: u8 = 0x13;
    /// UDP relaying (docs/protocol.md §7). A decoder accepts these only once both sides agreed on
    /// UDP (`FrameDecoder::with_udp`); otherwise they are `ProtocolError::ReservedFrameType`.
    pub const UDP_OPEN: u8 = 0x20;
    pub const UDP_DATAGRAM: u8 = 0x21;
    pub const UDP_CLOSE: u8 = 0x22;
    /// The whole range 0x20..=0x2f belongs to UDP; 0x23..=0x2f stay reserved.
    pub const UDP_RESERVED: std::ops::RangeInclusive<u8> = 0x20..=0x2f;
}

const ADDR_FAMILY_V4: u8 = 4;
const ADDR_FAMILY_V6: u8 = 6;
/// edge_port + two IPv4 addresses (family, 4 bytes, port) / two IPv6 addresses (family, 16 bytes, port).
const OPEN_MIN_LEN: usize = 2 + 2 * (1 + 4 + 2);
const OPEN_MAX_LEN: usize = 2 + 2 * (1 + 16 + 2);
/// Two empty port lists (u16 count each) + stun interval (u32).
const CONFIG_MIN_LEN: usize = 2 + 2 + 4;

/// Why a stream ended. Carried in `Close`; also the `reason` of `stream.closed` events (camelCase).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    TargetClosed,
    TargetRefused,
    Timeout,
    TunnelLost,
    HubShutdown,
    Reset,
    ProtocolError,
}

impl CloseReason {
    pub const ALL: [CloseReason; 8] = [
        Self::ClientClosed,
        Self::TargetClosed,
        Self::TargetRefused,
        Self::Timeout,
        Self::TunnelLost,
        Self::HubShutdown,
        Self::Reset,
        Self::ProtocolError,
    ];

    /// Wire code (one byte in `Close`).
    pub fn code(self) -> u8 {
        match self {
            Self::ClientClosed => 1,
            Self::TargetClosed => 2,
            Self::TargetRefused => 3,
            Self::Timeout => 4,
            Self::TunnelLost => 5,
            Self::HubShutdown => 6,
            Self::Reset => 7,
            Self::ProtocolError => 8,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// camelCase name used in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "clientClosed",
            Self::TargetClosed => "targetClosed",
            Self::TargetRefused => "targetRefused",
            Self::Timeout => "timeout",
            Self::TunnelLost => "tunnelLost",
            Self::HubShutdown => "hubShutdown",
            Self::Reset => "reset",
            Self::ProtocolError => "protocolError",
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a peer is closing the whole tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoAwayReason {
    HubShutdown,
    Revoked,
    Superseded,
    ProtocolError,
    Timeout,
    /// The hub lost its ownership lease on the edge (multi-hub): connect to another hub.
    LeaseLost,
    /// Another hub owns the edge (multi-hub): connect to another hub.
    NotOwner,
}

impl GoAwayReason {
    pub const ALL: [GoAwayReason; 7] = [
        Self::HubShutdown,
        Self::Revoked,
        Self::Superseded,
        Self::ProtocolError,
        Self::Timeout,
        Self::LeaseLost,
        Self::NotOwner,
    ];

    /// Wire code (first byte of the `GoAway` payload).
    pub fn code(self) -> u8 {
        match self {
            Self::HubShutdown => 1,
            Self::Revoked => 2,
            Self::Superseded => 3,
            Self::ProtocolError => 4,
            Self::Timeout => 5,
            Self::LeaseLost => 6,
            Self::NotOwner => 7,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// camelCase name used in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HubShutdown => "hubShutdown",
            Self::Revoked => "revoked",
            Self::Superseded => "superseded",
            Self::ProtocolError => "protocolError",
            Self::Timeout => "timeout",
            Self::LeaseLost => "leaseLost",
            Self::NotOwner => "notOwner",
        }
    }
}

impl std::fmt::Display for GoAwayReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a UDP session ended. Carried in `UdpClose`; also the `reason` of `udp.expired` / `udp.closed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpCloseReason {
    /// No datagram in either direction for the idle timeout (`udp.expired`).
    Idle,
    /// Refused: the edge already has its maximum number of UDP sessions.
    SessionCap,
    /// The hub could not resolve, bind or reach the target.
    TargetError,
    /// The edge port was removed from the edge's assignment (hot reload).
    PortClosed,
    /// The side that sends it is stopping.
    Shutdown,
    /// Local only, never on the wire: the tunnel carrying the session ended.
    TunnelLost,
}

impl UdpCloseReason {
    /// Reasons that travel in `UdpClose` (all but `TunnelLost`).
    pub const WIRE: [UdpCloseReason; 5] = [
        Self::Idle,
        Self::SessionCap,
        Self::TargetError,
        Self::PortClosed,
        Self::Shutdown,
    ];

    /// Wire code (one byte in `UdpClose`); `TunnelLost` is never sent and encodes as `Shutdown`.
    pub fn code(self) -> u8 {
        match self {
            Self::Idle => 1,
            Self::SessionCap => 2,
            Self::TargetError => 3,
            Self::PortClosed => 4,
            Self::Shutdown | Self::TunnelLost => 5,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::WIRE.into_iter().find(|r| r.code() == code)
    }

    /// camelCase name used in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::SessionCap => "sessionCap",
            Self::TargetError => "targetError",
            Self::PortClosed => "portClosed",
            Self::Shutdown => "shutdown",
            Self::TunnelLost => "tunnelLost",
        }
    }
}

impl std::fmt::Display for UdpCloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// First frame of a stream, edge → hub: the information the hub needs to build a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOpen {
    pub edge_port: u16,
    pub client: SocketAddr,
    pub edge_local: SocketAddr,
}

/// Ports and settings the hub assigns to an edge (in `HelloAccepted` and `Frame::Config`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EdgeConfig {
    pub listen_ports: Vec<u16>,
    pub listen_ports_udp: Vec<u16>,
    pub stun_interval_secs: u32,
}

impl EdgeConfig {
    /// Checks the limits the codec enforces (at most `MAX_CONFIG_PORTS` per list). Validate
    /// configuration from outside (JS) with this before putting it on the wire.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        for (name, ports) in [
            ("listen_ports", &self.listen_ports),
            ("listen_ports_udp", &self.listen_ports_udp),
        ] {
            if ports.len() > MAX_CONFIG_PORTS {
                return Err(malformed(
                    "Config",
                    format!(
                        "{name} has {} entries, more than {MAX_CONFIG_PORTS}",
                        ports.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn encoded_len(&self) -> usize {
        CONFIG_MIN_LEN
            + 2 * self.listen_ports.len().min(MAX_CONFIG_PORTS)
            + 2 * self.listen_ports_udp.len().min(MAX_CONFIG_PORTS)
    }

    /// Appends the binary form; lists longer than `MAX_CONFIG_PORTS` are cut (see `validate`).
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        for ports in [&self.listen_ports, &self.listen_ports_udp] {
            let ports = &ports[..ports.len().min(MAX_CONFIG_PORTS)];
            out.put_u16(ports.len() as u16);
            for port in ports {
                out.put_u16(*port);
            }
        }
        out.put_u32(self.stun_interval_secs);
    }

    /// Reads the binary form from the front of `buf`, leaving anything after it in place.
    pub(crate) fn decode(buf: &mut &[u8], frame: &'static str) -> Result<Self, ProtocolError> {
        let listen_ports = decode_port_list(buf, frame, "listen_ports")?;
        let listen_ports_udp = decode_port_list(buf, frame, "listen_ports_udp")?;
        let stun_interval_secs = take_u32(buf, frame, "stun interval")?;
        Ok(Self {
            listen_ports,
            listen_ports_udp,
            stun_interval_secs,
        })
    }
}

fn decode_port_list(
    buf: &mut &[u8],
    frame: &'static str,
    name: &str,
) -> Result<Vec<u16>, ProtocolError> {
    let count = take_u16(buf, frame, name)? as usize;
    if count > MAX_CONFIG_PORTS {
        return Err(malformed(
            frame,
            format!("{name} count {count} exceeds {MAX_CONFIG_PORTS}"),
        ));
    }
    if buf.remaining() < count * 2 {
        return Err(malformed(frame, format!("{name} truncated")));
    }
    Ok((0..count).map(|_| buf.get_u16()).collect())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Open {
        stream_id: u32,
        open: StreamOpen,
    },
    Data {
        stream_id: u32,
        data: Bytes,
    },
    /// Sender will send no more data on this stream (TCP FIN); the other direction stays open.
    Fin {
        stream_id: u32,
    },
    /// Stream is over in both directions.
    Close {
        stream_id: u32,
        reason: CloseReason,
    },
    /// Grants `credit` more bytes of DATA to the peer on this stream.
    Window {
        stream_id: u32,
        credit: u32,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    Config(EdgeConfig),
    GoAway {
        reason: GoAwayReason,
        message: String,
    },
    /// Edge → hub: a new UDP session (datagrams from one client address to one edge port).
    UdpOpen {
        session_id: u32,
        open: StreamOpen,
    },
    /// One whole datagram of a UDP session, either direction.
    UdpDatagram {
        session_id: u32,
        data: Bytes,
    },
    /// Either side: the UDP session is over.
    UdpClose {
        session_id: u32,
        reason: UdpCloseReason,
    },
}

impl Frame {
    /// Wire type number.
    pub fn type_code(&self) -> u8 {
        match self {
            Self::Open { .. } => frame_type::OPEN,
            Self::Data { .. } => frame_type::DATA,
            Self::Fin { .. } => frame_type::FIN,
            Self::Close { .. } => frame_type::CLOSE,
            Self::Window { .. } => frame_type::WINDOW,
            Self::Ping { .. } => frame_type::PING,
            Self::Pong { .. } => frame_type::PONG,
            Self::Config(_) => frame_type::CONFIG,
            Self::GoAway { .. } => frame_type::GOAWAY,
            Self::UdpOpen { .. } => frame_type::UDP_OPEN,
            Self::UdpDatagram { .. } => frame_type::UDP_DATAGRAM,
            Self::UdpClose { .. } => frame_type::UDP_CLOSE,
        }
    }

    /// Name used in errors and logs.
    pub fn name(&self) -> &'static str {
        // Every variant's type code is a known type, so the fallback is never used.
        kind_of(self.type_code()).map_or("?", |k| k.name)
    }

    /// The stream a frame belongs to; 0 for connection-level frames.
    pub fn stream_id(&self) -> u32 {
        match self {
            Self::Open { stream_id, .. }
            | Self::Data { stream_id, .. }
            | Self::Fin { stream_id }
            | Self::Close { stream_id, .. }
            | Self::Window { stream_id, .. } => *stream_id,
            Self::UdpOpen { session_id, .. }
            | Self::UdpDatagram { session_id, .. }
            | Self::UdpClose { session_id, .. } => *session_id,
            Self::Ping { .. } | Self::Pong { .. } | Self::Config(_) | Self::GoAway { .. } => 0,
        }
    }

    /// Checks what the decoder would reject that the types allow: stream id rules and limits.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let kind =
            kind_of(self.type_code()).ok_or(ProtocolError::UnknownFrameType(self.type_code()))?;
        kind.check_stream_id(self.stream_id())?;
        match self {
            Self::Data { data, .. } if data.len() > MAX_FRAME_PAYLOAD => {
                Err(ProtocolError::PayloadTooLarge {
                    len: data.len(),
                    max: MAX_FRAME_PAYLOAD,
                })
            }
            Self::UdpDatagram { data, .. } if data.len() > MAX_UDP_DATAGRAM => {
                Err(ProtocolError::PayloadTooLarge {
                    len: data.len(),
                    max: MAX_UDP_DATAGRAM,
                })
            }
            Self::Config(config) => config.validate(),
            Self::GoAway { message, .. } if message.len() > MAX_GOAWAY_MESSAGE => Err(malformed(
                "GoAway",
                format!(
                    "message of {} bytes exceeds {MAX_GOAWAY_MESSAGE}",
                    message.len()
                ),
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("malformed {frame} frame: {detail}")]
    Malformed { frame: &'static str, detail: String },
    #[error("frame type {frame} must use stream id {expected}, got {got}")]
    BadStreamId {
        frame: &'static str,
        expected: &'static str,
        got: u32,
    },
    /// A type number reserved for UDP relaying (0x20..=0x2f) that this connection did not agree on.
    #[error("frame type 0x{0:02x} is reserved for UDP relaying, which was not agreed on this connection")]
    ReservedFrameType(u8),
    /// The first bytes of a handshake message are not `PWAY` (not a Portway peer, e.g. an HTTP client).
    #[error("bad handshake magic (not a Portway peer)")]
    BadMagic,
}

pub(crate) fn malformed(frame: &'static str, detail: impl Into<String>) -> ProtocolError {
    ProtocolError::Malformed {
        frame,
        detail: detail.into(),
    }
}

/// Appends the encoding of `frame` to `out`.
///
/// Never fails: a `Config` list longer than `MAX_CONFIG_PORTS` is cut and a `GoAway` message longer than
/// `MAX_GOAWAY_MESSAGE` is truncated. Use `try_encode_frame` (or `Frame::validate`) to refuse those instead.
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::Data { stream_id, data } => {
            encode_data_header(*stream_id, data.len(), out);
            out.extend_from_slice(data);
        }
        Frame::Open { stream_id, open } => {
            let len = 2 + addr_len(&open.client) + addr_len(&open.edge_local);
            put_header(out, frame_type::OPEN, *stream_id, len);
            out.put_u16(open.edge_port);
            put_addr(out, &open.client);
            put_addr(out, &open.edge_local);
        }
        Frame::Fin { stream_id } => put_header(out, frame_type::FIN, *stream_id, 0),
        Frame::Close { stream_id, reason } => {
            put_header(out, frame_type::CLOSE, *stream_id, 1);
            out.put_u8(reason.code());
        }
        Frame::Window { stream_id, credit } => {
            put_header(out, frame_type::WINDOW, *stream_id, 4);
            out.put_u32(*credit);
        }
        Frame::Ping { nonce } => {
            put_header(out, frame_type::PING, 0, 8);
            out.put_u64(*nonce);
        }
        Frame::Pong { nonce } => {
            put_header(out, frame_type::PONG, 0, 8);
            out.put_u64(*nonce);
        }
        Frame::Config(config) => {
            put_header(out, frame_type::CONFIG, 0, config.encoded_len());
            config.encode(out);
        }
        Frame::GoAway { reason, message } => {
            let message = truncate_utf8(message, MAX_GOAWAY_MESSAGE);
            put_header(out, frame_type::GOAWAY, 0, 1 + message.len());
            out.put_u8(reason.code());
            out.extend_from_slice(message.as_bytes());
        }
        Frame::UdpOpen { session_id, open } => {
            let len = 2 + addr_len(&open.client) + addr_len(&open.edge_local);
            put_header(out, frame_type::UDP_OPEN, *session_id, len);
            out.put_u16(open.edge_port);
            put_addr(out, &open.client);
            put_addr(out, &open.edge_local);
        }
        Frame::UdpDatagram { session_id, data } => {
            put_header(out, frame_type::UDP_DATAGRAM, *session_id, data.len());
            out.extend_from_slice(data);
        }
        Frame::UdpClose { session_id, reason } => {
            put_header(out, frame_type::UDP_CLOSE, *session_id, 1);
            out.put_u8(reason.code());
        }
    }
}

/// Like `encode_frame`, but refuses frames that break a limit or a stream id rule (nothing is written then).
pub fn try_encode_frame(frame: &Frame, out: &mut BytesMut) -> Result<(), ProtocolError> {
    frame.validate()?;
    encode_frame(frame, out);
    Ok(())
}

/// Header of a `Data` frame carrying `len` payload bytes. Write it, then the payload `Bytes`, to send
/// data without copying it into a frame buffer.
pub fn data_header(stream_id: u32, len: usize) -> [u8; FRAME_HEADER_LEN] {
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[0] = frame_type::DATA;
    header[1..5].copy_from_slice(&stream_id.to_be_bytes());
    header[5..9].copy_from_slice(&payload_len_u32(len).to_be_bytes());
    header
}

/// Appends the header of a `Data` frame carrying `len` payload bytes; see `data_header`.
pub fn encode_data_header(stream_id: u32, len: usize, out: &mut BytesMut) {
    out.extend_from_slice(&data_header(stream_id, len));
}

fn payload_len_u32(len: usize) -> u32 {
    // Payloads are bounded far below 4 GiB by MAX_FRAME_PAYLOAD; saturate rather than wrap so an
    // oversize frame is rejected by the peer instead of being misframed.
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn put_header(out: &mut BytesMut, frame_type: u8, stream_id: u32, len: usize) {
    out.reserve(FRAME_HEADER_LEN + len);
    out.put_u8(frame_type);
    out.put_u32(stream_id);
    out.put_u32(payload_len_u32(len));
}

fn addr_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 1 + 4 + 2,
        SocketAddr::V6(_) => 1 + 16 + 2,
    }
}

fn put_addr(out: &mut BytesMut, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.put_u8(ADDR_FAMILY_V4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.put_u8(ADDR_FAMILY_V6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.put_u16(addr.port());
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Which stream ids a frame type may use.
#[derive(Clone, Copy)]
enum StreamScope {
    Stream,
    Connection,
}

/// Static rules for one frame type: name, stream scope and allowed payload lengths.
#[derive(Clone, Copy)]
struct FrameKind {
    name: &'static str,
    scope: StreamScope,
    min_len: usize,
    max_len: usize,
}

impl FrameKind {
    fn check_stream_id(&self, stream_id: u32) -> Result<(), ProtocolError> {
        match self.scope {
            StreamScope::Stream if stream_id == 0 => Err(ProtocolError::BadStreamId {
                frame: self.name,
                expected: "non-zero",
                got: stream_id,
            }),
            StreamScope::Connection if stream_id != 0 => Err(ProtocolError::BadStreamId {
                frame: self.name,
                expected: "0",
                got: stream_id,
            }),
            _ => Ok(()),
        }
    }

    fn check_len(&self, len: usize) -> Result<(), ProtocolError> {
        if (self.min_len..=self.max_len).contains(&len) {
            return Ok(());
        }
        let detail = if self.min_len == self.max_len {
            format!("payload must be exactly {} bytes, got {len}", self.min_len)
        } else {
            format!(
                "payload must be {}..={} bytes, got {len}",
                self.min_len, self.max_len
            )
        };
        Err(malformed(self.name, detail))
    }
}

fn kind_of(frame_type: u8) -> Option<FrameKind> {
    use StreamScope::{Connection, Stream};
    let kind = |name, scope, min_len, max_len| FrameKind {
        name,
        scope,
        min_len,
        max_len,
    };
    Some(match frame_type {
        frame_type::OPEN => kind("Open", Stream, OPEN_MIN_LEN, OPEN_MAX_LEN),
        frame_type::DATA => kind("Data", Stream, 0, usize::MAX),
        frame_type::FIN => kind("Fin", Stream, 0, 0),
        frame_type::CLOSE => kind("Close", Stream, 1, 1),
        frame_type::WINDOW => kind("Window", Stream, 4, 4),
        frame_type::PING => kind("Ping", Connection, 8, 8),
        frame_type::PONG => kind("Pong", Connection, 8, 8),
        frame_type::CONFIG => kind("Config", Connection, CONFIG_MIN_LEN, usize::MAX),
        frame_type::GOAWAY => kind("GoAway", Connection, 1, 1 + MAX_GOAWAY_MESSAGE),
        frame_type::UDP_OPEN => kind("UdpOpen", Stream, OPEN_MIN_LEN, OPEN_MAX_LEN),
        frame_type::UDP_DATAGRAM => kind("UdpDatagram", Stream, 0, MAX_UDP_DATAGRAM),
        frame_type::UDP_CLOSE => kind("UdpClose", Stream, 1, 1),
        _ => return None,
    })
}

/// Incremental decoder: feed it the read buffer, it consumes whole frames.
///
/// After an error the connection must be closed: the buffer is left as it was, and decoding it again
/// returns the same error.
#[derive(Debug)]
pub struct FrameDecoder {
    max_payload: usize,
    /// Whether the UDP frames (0x20..=0x22) were agreed on; otherwise they are reserved types.
    udp: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME_PAYLOAD)
    }
}

impl FrameDecoder {
    pub fn new(max_payload: usize) -> Self {
        Self {
            max_payload,
            udp: false,
        }
    }

    /// Accepts the UDP frames (both sides advertised the UDP capability) or keeps rejecting them.
    pub fn with_udp(mut self, udp: bool) -> Self {
        self.udp = udp;
        self
    }
    /// Removes one complete frame from the front of `buf`, or returns `Ok(None)` if more bytes are needed.
    /// Never allocates more than the declared (and checked) payload length.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if buf.len() < FRAME_HEADER_LEN {
            // A type byte alone is enough to reject garbage early.
            if let Some(&t) = buf.first() {
                check_type(t, self.udp)?;
            }
            return Ok(None);
        }
        let frame_type = buf[0];
        let stream_id = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        let len = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;

        // Everything that the header alone decides is checked before waiting for the payload.
        let kind = check_type(frame_type, self.udp)?;
        if len > self.max_payload {
            return Err(ProtocolError::PayloadTooLarge {
                len,
                max: self.max_payload,
            });
        }
        kind.check_stream_id(stream_id)?;
        kind.check_len(len)?;

        let total = FRAME_HEADER_LEN + len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }

        // Parse from a view first, so a malformed payload leaves `buf` untouched.
        let payload = &buf[FRAME_HEADER_LEN..total];
        let frame = match frame_type {
            frame_type::DATA => {
                buf.advance(FRAME_HEADER_LEN);
                let data = buf.split_to(len).freeze();
                return Ok(Some(Frame::Data { stream_id, data }));
            }
            frame_type::UDP_DATAGRAM => {
                buf.advance(FRAME_HEADER_LEN);
                let data = buf.split_to(len).freeze();
                return Ok(Some(Frame::UdpDatagram {
                    session_id: stream_id,
                    data,
                }));
            }
            _ => parse_payload(frame_type, stream_id, payload)?,
        };
        buf.advance(total);
        Ok(Some(frame))
    }
}

fn check_type(frame_type: u8, udp: bool) -> Result<FrameKind, ProtocolError> {
    let udp_known = udp && (frame_type::UDP_OPEN..=frame_type::UDP_CLOSE).contains(&frame_type);
    if frame_type::UDP_RESERVED.contains(&frame_type) && !udp_known {
        return Err(ProtocolError::ReservedFrameType(frame_type));
    }
    kind_of(frame_type).ok_or(ProtocolError::UnknownFrameType(frame_type))
}

/// Parses the payload of a non-Data frame whose header already passed the checks in `FrameKind`.
fn parse_payload(frame_type: u8, stream_id: u32, payload: &[u8]) -> Result<Frame, ProtocolError> {
    let mut p = payload;
    let frame = match frame_type {
        frame_type::OPEN => {
            let edge_port = take_u16(&mut p, "Open", "edge port")?;
            let client = take_addr(&mut p, "Open", "client address")?;
            let edge_local = take_addr(&mut p, "Open", "edge local address")?;
            Frame::Open {
                stream_id,
                open: StreamOpen {
                    edge_port,
                    client,
                    edge_local,
                },
            }
        }
        frame_type::FIN => Frame::Fin { stream_id },
        frame_type::CLOSE => {
            let code = p.get_u8();
            let reason = CloseReason::from_code(code)
                .ok_or_else(|| malformed("Close", format!("unknown close reason {code}")))?;
            Frame::Close { stream_id, reason }
        }
        frame_type::WINDOW => Frame::Window {
            stream_id,
            credit: p.get_u32(),
        },
        frame_type::PING => Frame::Ping { nonce: p.get_u64() },
        frame_type::PONG => Frame::Pong { nonce: p.get_u64() },
        frame_type::CONFIG => Frame::Config(EdgeConfig::decode(&mut p, "Config")?),
        frame_type::UDP_OPEN => {
            let edge_port = take_u16(&mut p, "UdpOpen", "edge port")?;
            let client = take_addr(&mut p, "UdpOpen", "client address")?;
            let edge_local = take_addr(&mut p, "UdpOpen", "edge local address")?;
            Frame::UdpOpen {
                session_id: stream_id,
                open: StreamOpen {
                    edge_port,
                    client,
                    edge_local,
                },
            }
        }
        frame_type::UDP_CLOSE => {
            let code = p.get_u8();
            let reason = UdpCloseReason::from_code(code)
                .ok_or_else(|| malformed("UdpClose", format!("unknown UDP close reason {code}")))?;
            Frame::UdpClose {
                session_id: stream_id,
                reason,
            }
        }
        frame_type::GOAWAY => {
            let code = p.get_u8();
            let reason = GoAwayReason::from_code(code)
                .ok_or_else(|| malformed("GoAway", format!("unknown goaway reason {code}")))?;
            let message = std::str::from_utf8(p)
                .map_err(|_| malformed("GoAway", "message is not valid UTF-8"))?
                .to_owned();
            p = &[];
            Frame::GoAway { reason, message }
        }
        other => return Err(ProtocolError::UnknownFrameType(other)),
    };
    if p.has_remaining() {
        return Err(malformed(
            kind_of(frame_type).map_or("?", |k| k.name),
            format!("{} unexpected trailing bytes", p.remaining()),
        ));
    }
    Ok(frame)
}

/// Reads a fixed-size field with `get`, or says which field of which frame was cut short.
fn take_fixed<T>(
    buf: &mut &[u8],
    frame: &'static str,
    what: &str,
    size: usize,
    get: impl FnOnce(&mut &[u8]) -> T,
) -> Result<T, ProtocolError> {
    if buf.remaining() < size {
        return Err(malformed(frame, format!("{what} truncated")));
    }
    Ok(get(buf))
}

pub(crate) fn take_u8(
    buf: &mut &[u8],
    frame: &'static str,
    what: &str,
) -> Result<u8, ProtocolError> {
    take_fixed(buf, frame, what, 1, |b| b.get_u8())
}

pub(crate) fn take_u16(
    buf: &mut &[u8],
    frame: &'static str,
    what: &str,
) -> Result<u16, ProtocolError> {
    take_fixed(buf, frame, what, 2, |b| b.get_u16())
}

pub(crate) fn take_u32(
    buf: &mut &[u8],
    frame: &'static str,
    what: &str,
) -> Result<u32, ProtocolError> {
    take_fixed(buf, frame, what, 4, |b| b.get_u32())
}

fn take_addr(
    buf: &mut &[u8],
    frame: &'static str,
    what: &str,
) -> Result<SocketAddr, ProtocolError> {
    let family = take_u8(buf, frame, what)?;
    let ip = match family {
        ADDR_FAMILY_V4 => {
            let mut octets = [0u8; 4];
            if buf.remaining() < octets.len() {
                return Err(malformed(frame, format!("{what} truncated")));
            }
            buf.copy_to_slice(&mut octets);
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        ADDR_FAMILY_V6 => {
            let mut octets = [0u8; 16];
            if buf.remaining() < octets.len() {
                return Err(malformed(frame, format!("{what} truncated")));
            }
            buf.copy_to_slice(&mut octets);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        other => {
            return Err(malformed(
                frame,
                format!("{what} has unknown address family {other}"),
            ))
        }
    };
    let port = take_u16(buf, frame, what)?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Open {
                stream_id: 1,
                open: StreamOpen {
                    edge_port: 443,
                    client: addr("203.0.113.7:51234"),
                    edge_local: addr("198.51.100.1:443"),
                },
            },
            Frame::Open {
                stream_id: u32::MAX,
                open: StreamOpen {
                    edge_port: 80,
                    client: addr("[2001:db8::7]:40000"),
                    edge_local: addr("[2001:db8::1]:80"),
                },
            },
            Frame::Open {
                stream_id: 3,
                open: StreamOpen {
                    edge_port: 22,
                    client: addr("10.0.0.9:1"),
                    edge_local: addr("[::1]:22"),
                },
            },
            Frame::Data {
                stream_id: 1,
                data: Bytes::from_static(b"hello world"),
            },
            Frame::Data {
                stream_id: 2,
                data: Bytes::new(),
            },
            Frame::Data {
                stream_id: 7,
                data: Bytes::from(vec![0xab; MAX_DATA_CHUNK]),
            },
            Frame::Fin { stream_id: 1 },
            Frame::Window {
                stream_id: 1,
                credit: 65536,
            },
            Frame::Ping { nonce: 0 },
            Frame::Pong {
                nonce: u64::MAX - 5,
            },
            Frame::Config(EdgeConfig::default()),
            Frame::Config(EdgeConfig {
                listen_ports: vec![80, 443, 8080],
                listen_ports_udp: vec![53],
                stun_interval_secs: 300,
            }),
        ]
        .into_iter()
        .chain(CloseReason::ALL.map(|reason| Frame::Close {
            stream_id: 9,
            reason,
        }))
        .chain(GoAwayReason::ALL.map(|reason| Frame::GoAway {
            reason,
            message: format!("bye: {reason} ✓"),
        }))
        .chain([Frame::GoAway {
            reason: GoAwayReason::Revoked,
            message: String::new(),
        }])
        .collect()
    }

    fn encode(frame: &Frame) -> BytesMut {
        let mut out = BytesMut::new();
        encode_frame(frame, &mut out);
        out
    }

    fn decode_one(bytes: &[u8]) -> Result<Option<Frame>, ProtocolError> {
        FrameDecoder::default().decode(&mut BytesMut::from(bytes))
    }

    fn raw(frame_type: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![frame_type];
        v.extend_from_slice(&stream_id.to_be_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn every_frame_round_trips() {
        for frame in all_frames() {
            let mut buf = encode(&frame);
            let len = buf.len();
            assert_eq!(
                u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize,
                len - FRAME_HEADER_LEN
            );
            let decoded = FrameDecoder::default().decode(&mut buf);
            assert_eq!(decoded, Ok(Some(frame.clone())), "{frame:?}");
            assert!(buf.is_empty(), "{frame:?} left {} bytes", buf.len());
            assert_eq!(frame.validate(), Ok(()));
        }
    }

    #[test]
    fn header_layout_is_type_stream_length() {
        let bytes = encode(&Frame::Window {
            stream_id: 0x0102_0304,
            credit: 0x0a0b_0c0d,
        });
        assert_eq!(
            &bytes[..],
            &[0x05, 1, 2, 3, 4, 0, 0, 0, 4, 0x0a, 0x0b, 0x0c, 0x0d]
        );
        let open = encode(&Frame::Open {
            stream_id: 1,
            open: StreamOpen {
                edge_port: 443,
                client: addr("1.2.3.4:1111"),
                edge_local: addr("5.6.7.8:443"),
            },
        });
        let expected: Vec<u8> = [
            &[0x01, 0, 0, 0, 1, 0, 0, 0, 16][..],
            &[0x01, 0xbb],
            &[4, 1, 2, 3, 4, 0x04, 0x57],
            &[4, 5, 6, 7, 8, 0x01, 0xbb],
        ]
        .concat();
        assert_eq!(&open[..], &expected[..]);
    }

    #[test]
    fn data_header_matches_encoded_data_frame() {
        let payload = Bytes::from_static(b"zero-copy");
        let mut out = BytesMut::new();
        encode_data_header(42, payload.len(), &mut out);
        assert_eq!(&out[..], &data_header(42, payload.len())[..]);
        out.extend_from_slice(&payload);
        assert_eq!(
            out,
            encode(&Frame::Data {
                stream_id: 42,
                data: payload
            })
        );
    }

    #[test]
    fn decoded_data_shares_the_read_buffer() {
        let mut buf = encode(&Frame::Data {
            stream_id: 5,
            data: Bytes::from_static(b"abcdef"),
        });
        let payload_ptr = buf[FRAME_HEADER_LEN..].as_ptr();
        let Ok(Some(Frame::Data { data, .. })) = FrameDecoder::default().decode(&mut buf) else {
            panic!("expected Data");
        };
        assert_eq!(data.as_ptr(), payload_ptr);
    }

    #[test]
    fn byte_at_a_time_yields_the_same_frames() {
        let frames = all_frames();
        let mut wire = BytesMut::new();
        for frame in &frames {
            encode_frame(frame, &mut wire);
        }
        let mut decoder = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(frame) = decoder.decode(&mut buf).expect("valid stream") {
                decoded.push(frame);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(decoded, frames);
    }

    #[test]
    fn truncated_input_needs_more_bytes() {
        for frame in all_frames() {
            let bytes = encode(&frame);
            for cut in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..cut]);
                assert_eq!(FrameDecoder::default().decode(&mut buf), Ok(None));
                assert_eq!(buf.len(), cut, "nothing consumed from a partial frame");
            }
        }
    }

    #[test]
    fn oversized_length_is_rejected_from_the_header_alone() {
        let header = [frame_type::DATA, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff];
        let mut buf = BytesMut::from(&header[..]);
        let capacity_before = buf.capacity();
        assert_eq!(
            FrameDecoder::default().decode(&mut buf),
            Err(ProtocolError::PayloadTooLarge {
                len: u32::MAX as usize,
                max: MAX_FRAME_PAYLOAD
            })
        );
        assert_eq!(
            buf.capacity(),
            capacity_before,
            "no allocation for the body"
        );

        let just_over = raw(frame_type::DATA, 1, &[0; 17]);
        assert_eq!(
            FrameDecoder::new(16).decode(&mut BytesMut::from(&just_over[..])),
            Err(ProtocolError::PayloadTooLarge { len: 17, max: 16 })
        );
        let at_limit = raw(frame_type::DATA, 1, &[0; 16]);
        assert!(matches!(
            FrameDecoder::new(16).decode(&mut BytesMut::from(&at_limit[..])),
            Ok(Some(Frame::Data { .. }))
        ));
    }

    #[test]
    fn stream_frames_need_a_stream_and_connection_frames_need_zero() {
        for t in [
            frame_type::OPEN,
            frame_type::DATA,
            frame_type::FIN,
            frame_type::CLOSE,
            frame_type::WINDOW,
        ] {
            let err = decode_one(&raw(t, 0, &[])).expect_err("stream id 0");
            assert!(
                matches!(
                    err,
                    ProtocolError::BadStreamId {
                        got: 0,
                        expected: "non-zero",
                        ..
                    }
                ),
                "type {t}: {err}"
            );
        }
        for t in [
            frame_type::PING,
            frame_type::PONG,
            frame_type::CONFIG,
            frame_type::GOAWAY,
        ] {
            let err = decode_one(&raw(t, 3, &[])).expect_err("stream id 3");
            assert!(
                matches!(
                    err,
                    ProtocolError::BadStreamId {
                        got: 3,
                        expected: "0",
                        ..
                    }
                ),
                "type {t}: {err}"
            );
        }
        assert!(Frame::Fin { stream_id: 0 }.validate().is_err());
    }

    #[test]
    fn fixed_size_frames_must_have_exactly_their_size() {
        let cases: [(u8, u32, usize); 6] = [
            (frame_type::FIN, 1, 1),
            (frame_type::CLOSE, 1, 2),
            (frame_type::CLOSE, 1, 0),
            (frame_type::WINDOW, 1, 3),
            (frame_type::PING, 0, 9),
            (frame_type::PONG, 0, 7),
        ];
        for (t, sid, len) in cases {
            // Only the header: the size is rejected before the body arrives.
            let mut frame = raw(t, sid, &vec![0; len]);
            frame.truncate(FRAME_HEADER_LEN);
            let err = decode_one(&frame).expect_err("wrong size");
            assert!(
                matches!(&err, ProtocolError::Malformed { detail, .. } if detail.contains("exactly")),
                "type {t} len {len}: {err}"
            );
        }
        let err = decode_one(&raw(frame_type::OPEN, 1, &[0; 15])).expect_err("short open");
        assert!(matches!(
            err,
            ProtocolError::Malformed { frame: "Open", .. }
        ));
        let err = decode_one(&raw(frame_type::OPEN, 1, &[0; 41])).expect_err("long open");
        assert!(matches!(
            err,
            ProtocolError::Malformed { frame: "Open", .. }
        ));
    }

    #[test]
    fn unknown_and_reserved_types_are_rejected_at_the_first_byte() {
        assert_eq!(decode_one(&[0x00]), Err(ProtocolError::UnknownFrameType(0)));
        assert_eq!(
            decode_one(&raw(0x7f, 1, b"x")),
            Err(ProtocolError::UnknownFrameType(0x7f))
        );
        for t in [
            frame_type::UDP_OPEN,
            frame_type::UDP_DATAGRAM,
            frame_type::UDP_CLOSE,
            0x2f,
        ] {
            assert_eq!(decode_one(&[t]), Err(ProtocolError::ReservedFrameType(t)));
            let err = decode_one(&raw(t, 1, &[])).expect_err("reserved");
            assert!(err.to_string().contains("reserved for UDP"), "{err}");
        }
    }

    #[test]
    fn unknown_reason_codes_are_errors() {
        for code in [0u8, 9, 255] {
            let err = decode_one(&raw(frame_type::CLOSE, 1, &[code])).expect_err("close code");
            assert!(
                matches!(&err, ProtocolError::Malformed { frame: "Close", detail } if detail.contains("reason")),
                "{err}"
            );
        }
        for code in [0u8, 8, 255] {
            let err = decode_one(&raw(frame_type::GOAWAY, 0, &[code])).expect_err("goaway code");
            assert!(
                matches!(&err, ProtocolError::Malformed { frame: "GoAway", detail } if detail.contains("reason")),
                "{err}"
            );
        }
    }

    #[test]
    fn goaway_message_must_be_utf8_and_bounded() {
        let err = decode_one(&raw(frame_type::GOAWAY, 0, &[1, 0xff, 0xfe])).expect_err("utf8");
        assert!(
            matches!(&err, ProtocolError::Malformed { frame: "GoAway", detail } if detail.contains("UTF-8"))
        );
        let mut long = vec![1u8];
        long.extend(std::iter::repeat_n(b'a', MAX_GOAWAY_MESSAGE + 1));
        let err = decode_one(&raw(frame_type::GOAWAY, 0, &long)).expect_err("too long");
        assert!(matches!(
            err,
            ProtocolError::Malformed {
                frame: "GoAway",
                ..
            }
        ));

        // The encoder truncates at a char boundary instead of producing an undecodable frame.
        let frame = Frame::GoAway {
            reason: GoAwayReason::ProtocolError,
            message: "é".repeat(MAX_GOAWAY_MESSAGE),
        };
        assert!(frame.validate().is_err());
        assert!(try_encode_frame(&frame, &mut BytesMut::new()).is_err());
        let Ok(Some(Frame::GoAway { message, .. })) = decode_one(&encode(&frame)) else {
            panic!("truncated GoAway must decode");
        };
        assert_eq!(message, "é".repeat(MAX_GOAWAY_MESSAGE / 2));
    }

    #[test]
    fn open_with_bad_address_family_or_trailing_bytes_is_malformed() {
        let mut payload = vec![0, 80, 5, 1, 2, 3, 4, 0, 1];
        payload.extend_from_slice(&[4, 5, 6, 7, 8, 0, 80]);
        let err = decode_one(&raw(frame_type::OPEN, 1, &payload)).expect_err("family 5");
        assert!(
            matches!(&err, ProtocolError::Malformed { frame: "Open", detail } if detail.contains("address family 5")),
            "{err}"
        );
        // v4 + v4 with 6 bytes of junk: within the Open size range but not consumed.
        let mut payload = vec![0, 80, 4, 1, 2, 3, 4, 0, 1, 4, 5, 6, 7, 8, 0, 80];
        payload.extend_from_slice(&[0; 6]);
        let err = decode_one(&raw(frame_type::OPEN, 1, &payload)).expect_err("trailing");
        assert!(
            matches!(&err, ProtocolError::Malformed { frame: "Open", detail } if detail.contains("trailing")),
            "{err}"
        );
        // A v6 family byte with only v4-sized room.
        let payload = [0, 80, 6, 1, 2, 3, 4, 0, 1, 4, 5, 6, 7, 8, 0, 80];
        let err = decode_one(&raw(frame_type::OPEN, 1, &payload)).expect_err("short v6");
        assert!(
            matches!(&err, ProtocolError::Malformed { frame: "Open", detail } if detail.contains("truncated")),
            "{err}"
        );
    }

    #[test]
    fn config_counts_are_bounded_and_checked_against_the_payload() {
        let over = (MAX_CONFIG_PORTS as u16 + 1).to_be_bytes();
        let err = decode_one(&raw(
            frame_type::CONFIG,
            0,
            &[over[0], over[1], 0, 0, 0, 0, 0, 0],
        ))
        .expect_err("count limit");
        assert!(
            matches!(&err, ProtocolError::Malformed { frame: "Config", detail } if detail.contains("exceeds")),
            "{err}"
        );
        // Claims 3 ports, carries 1.
        let err = decode_one(&raw(frame_type::CONFIG, 0, &[0, 3, 0, 80, 0, 0, 0, 0]))
            .expect_err("truncated list");
        assert!(
            matches!(
                err,
                ProtocolError::Malformed {
                    frame: "Config",
                    ..
                }
            ),
            "{err}"
        );
        // Valid body followed by junk.
        let err = decode_one(&raw(frame_type::CONFIG, 0, &[0, 0, 0, 0, 0, 0, 0, 1, 9]))
            .expect_err("trailing");
        assert!(
            matches!(
                err,
                ProtocolError::Malformed {
                    frame: "Config",
                    ..
                }
            ),
            "{err}"
        );

        let too_many = EdgeConfig {
            listen_ports: vec![1; MAX_CONFIG_PORTS + 1],
            ..EdgeConfig::default()
        };
        assert!(too_many.validate().is_err());
        assert!(try_encode_frame(&Frame::Config(too_many), &mut BytesMut::new()).is_err());
    }

    #[test]
    fn a_malformed_frame_leaves_the_buffer_untouched() {
        let bytes = raw(frame_type::CLOSE, 1, &[99]);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut decoder = FrameDecoder::default();
        assert!(decoder.decode(&mut buf).is_err());
        assert_eq!(&buf[..], &bytes[..]);
        assert!(decoder.decode(&mut buf).is_err());
    }

    #[test]
    fn reason_names_are_camel_case_and_codes_round_trip() {
        let names: Vec<_> = CloseReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "clientClosed",
                "targetClosed",
                "targetRefused",
                "timeout",
                "tunnelLost",
                "hubShutdown",
                "reset",
                "protocolError"
            ]
        );
        let names: Vec<_> = GoAwayReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "hubShutdown",
                "revoked",
                "superseded",
                "protocolError",
                "timeout",
                "leaseLost",
                "notOwner"
            ]
        );
        for r in CloseReason::ALL {
            assert_eq!(CloseReason::from_code(r.code()), Some(r));
        }
        for r in GoAwayReason::ALL {
            assert_eq!(GoAwayReason::from_code(r.code()), Some(r));
        }
    }

    #[test]
    fn random_bytes_never_panic_or_overconsume() {
        let mut rng = StdRng::seed_from_u64(0x5057_4159);
        let known = [0x01u8, 0x02, 0x03, 0x04, 0x05, 0x10, 0x11, 0x12, 0x13, 0x20];
        let mut frames_seen = 0usize;
        for _ in 0..10_000 {
            let len = rng.gen_range(0..96);
            let mut input: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            // Bias half the inputs towards plausible headers so payload parsing is exercised too.
            if len >= FRAME_HEADER_LEN && rng.gen_bool(0.5) {
                input[0] = known[rng.gen_range(0..known.len())];
                if rng.gen_bool(0.5) {
                    input[1..5].copy_from_slice(&[0, 0, 0, 0]);
                }
                let body = rng.gen_range(0..=(len - FRAME_HEADER_LEN) as u32);
                input[5..9].copy_from_slice(&body.to_be_bytes());
            }
            let mut buf = BytesMut::from(&input[..]);
            let mut decoder = FrameDecoder::new(rng.gen_range(0..128));
            let mut consumed = 0usize;
            loop {
                let before = buf.len();
                match decoder.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        frames_seen += 1;
                        let used = before - buf.len();
                        assert!(used >= FRAME_HEADER_LEN);
                        consumed += used;
                        // What decodes must re-encode to the same bytes.
                        let start = consumed - used;
                        assert_eq!(&encode(&frame)[..], &input[start..consumed]);
                    }
                    Ok(None) | Err(_) => {
                        assert_eq!(buf.len(), before, "no bytes consumed without a frame");
                        break;
                    }
                }
                assert!(consumed <= input.len());
            }
            assert_eq!(consumed + buf.len(), input.len());
        }
        assert!(
            frames_seen > 100,
            "only {frames_seen} frames decoded; bias too weak"
        );
    }

    fn udp_frames() -> Vec<Frame> {
        vec![
            Frame::UdpOpen {
                session_id: 1,
                open: StreamOpen {
                    edge_port: 53,
                    client: addr("203.0.113.7:5353"),
                    edge_local: addr("0.0.0.0:53"),
                },
            },
            Frame::UdpOpen {
                session_id: u32::MAX,
                open: StreamOpen {
                    edge_port: 443,
                    client: addr("[2001:db8::7]:40000"),
                    edge_local: addr("[::]:443"),
                },
            },
            Frame::UdpDatagram {
                session_id: 1,
                data: Bytes::from_static(b"\x12\x34 dns query"),
            },
            Frame::UdpDatagram {
                session_id: 2,
                data: Bytes::new(),
            },
            Frame::UdpDatagram {
                session_id: 3,
                data: Bytes::from(vec![0x5a; MAX_UDP_DATAGRAM]),
            },
        ]
        .into_iter()
        .chain(UdpCloseReason::WIRE.map(|reason| Frame::UdpClose {
            session_id: 7,
            reason,
        }))
        .collect()
    }

    fn decode_udp(bytes: &[u8]) -> Result<Option<Frame>, ProtocolError> {
        FrameDecoder::default()
            .with_udp(true)
            .decode(&mut BytesMut::from(bytes))
    }

    #[test]
    fn udp_frames_round_trip_when_agreed() {
        let mut decoder = FrameDecoder::default().with_udp(true);
        for frame in udp_frames() {
            assert!(frame.validate().is_ok(), "{frame:?}");
            let mut buf = encode(&frame);
            assert_eq!(buf[0], frame.type_code());
            assert_eq!(decoder.decode(&mut buf), Ok(Some(frame.clone())));
            assert!(buf.is_empty());
        }
        // Mixed with stream frames, byte at a time.
        let frames: Vec<Frame> = all_frames().into_iter().chain(udp_frames()).collect();
        let mut wire = BytesMut::new();
        for frame in &frames {
            encode_frame(frame, &mut wire);
        }
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(frame) = decoder.decode(&mut buf).expect("valid stream") {
                decoded.push(frame);
            }
        }
        assert_eq!(decoded, frames);
    }

    #[test]
    fn udp_open_has_the_open_layout_with_its_own_type() {
        let open = StreamOpen {
            edge_port: 53,
            client: addr("1.2.3.4:1111"),
            edge_local: addr("5.6.7.8:53"),
        };
        let tcp = encode(&Frame::Open {
            stream_id: 9,
            open: open.clone(),
        });
        let udp = encode(&Frame::UdpOpen {
            session_id: 9,
            open,
        });
        assert_eq!(udp[0], 0x20);
        assert_eq!(&udp[1..], &tcp[1..]);
    }

    #[test]
    fn udp_frames_are_reserved_unless_agreed() {
        for frame in udp_frames() {
            let bytes = encode(&frame);
            assert_eq!(
                decode_one(&bytes),
                Err(ProtocolError::ReservedFrameType(frame.type_code()))
            );
        }
        // The rest of the range stays reserved even with UDP agreed.
        for t in 0x23..=0x2f {
            assert_eq!(
                decode_udp(&raw(t, 1, &[])),
                Err(ProtocolError::ReservedFrameType(t))
            );
        }
    }

    #[test]
    fn malformed_udp_frames_are_rejected() {
        // Session id 0.
        for t in [
            frame_type::UDP_OPEN,
            frame_type::UDP_DATAGRAM,
            frame_type::UDP_CLOSE,
        ] {
            let err = decode_udp(&raw(t, 0, &[])).expect_err("session 0");
            assert!(
                matches!(err, ProtocolError::BadStreamId { got: 0, .. }),
                "{err}"
            );
        }
        // A datagram over the UDP limit is refused from the header alone.
        let mut header = raw(frame_type::UDP_DATAGRAM, 1, &[]);
        header[5..9].copy_from_slice(&((MAX_UDP_DATAGRAM + 1) as u32).to_be_bytes());
        let err = decode_udp(&header).expect_err("too big");
        assert!(
            matches!(
                &err,
                ProtocolError::Malformed {
                    frame: "UdpDatagram",
                    ..
                }
            ),
            "{err}"
        );
        assert!(Frame::UdpDatagram {
            session_id: 1,
            data: Bytes::from(vec![0; MAX_UDP_DATAGRAM + 1])
        }
        .validate()
        .is_err());
        // Unknown close reasons, wrong close size.
        for code in [0u8, 6, 255] {
            let err = decode_udp(&raw(frame_type::UDP_CLOSE, 1, &[code])).expect_err("code");
            assert!(
                matches!(&err, ProtocolError::Malformed { frame: "UdpClose", detail } if detail.contains("reason")),
                "{err}"
            );
        }
        assert!(decode_udp(&raw(frame_type::UDP_CLOSE, 1, &[1, 1])).is_err());
        // Open with a bad family, truncated and too short.
        let payload = [0, 53, 5, 1, 2, 3, 4, 0, 1, 4, 5, 6, 7, 8, 0, 53];
        let err = decode_udp(&raw(frame_type::UDP_OPEN, 1, &payload)).expect_err("family");
        assert!(
            matches!(&err, ProtocolError::Malformed { frame: "UdpOpen", detail } if detail.contains("family 5")),
            "{err}"
        );
        assert!(decode_udp(&raw(frame_type::UDP_OPEN, 1, &[0; 15])).is_err());
        assert!(decode_udp(&raw(frame_type::UDP_OPEN, 1, &[0; 41])).is_err());
    }

    #[test]
    fn udp_close_reasons_round_trip_and_tunnel_lost_stays_local() {
        for r in UdpCloseReason::WIRE {
            assert_eq!(UdpCloseReason::from_code(r.code()), Some(r));
        }
        assert!(!UdpCloseReason::WIRE.contains(&UdpCloseReason::TunnelLost));
        assert_eq!(UdpCloseReason::Idle.as_str(), "idle");
        assert_eq!(UdpCloseReason::SessionCap.as_str(), "sessionCap");
    }

    #[test]
    fn random_bytes_never_panic_with_udp_agreed() {
        let mut rng = StdRng::seed_from_u64(0x5544_5021);
        for _ in 0..5_000 {
            let len = rng.gen_range(0..64);
            let mut input: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if len >= FRAME_HEADER_LEN {
                input[0] = rng.gen_range(0x20..=0x23);
                let body = rng.gen_range(0..=(len - FRAME_HEADER_LEN) as u32);
                input[5..9].copy_from_slice(&body.to_be_bytes());
            }
            let mut buf = BytesMut::from(&input[..]);
            let mut decoder = FrameDecoder::default().with_udp(true);
            while let Ok(Some(frame)) = decoder.decode(&mut buf) {
                let _ = encode(&frame);
            }
        }
    }
}
