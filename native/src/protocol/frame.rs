//! Frame codec. Layout and limits are specified in `docs/protocol.md`.
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;

/// Fixed header: type (u8), stream id (u32 BE), payload length (u32 BE).
pub const FRAME_HEADER_LEN: usize = 9;
/// Hard limit for any frame payload; larger lengths are a protocol error before any allocation.
pub const MAX_FRAME_PAYLOAD: usize = 256 * 1024;
/// Largest DATA payload a sender produces (the relay reads in chunks of at most this).
pub const MAX_DATA_CHUNK: usize = 64 * 1024;
/// Credit each side grants per stream at open; replenished with `Window` frames.
pub const INITIAL_STREAM_WINDOW: u32 = 512 * 1024;

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

/// Why a peer is closing the whole tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoAwayReason {
    HubShutdown,
    Revoked,
    Superseded,
    ProtocolError,
    Timeout,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Open { stream_id: u32, open: StreamOpen },
    Data { stream_id: u32, data: Bytes },
    /// Sender will send no more data on this stream (TCP FIN); the other direction stays open.
    Fin { stream_id: u32 },
    /// Stream is over in both directions.
    Close { stream_id: u32, reason: CloseReason },
    /// Grants `credit` more bytes of DATA to the peer on this stream.
    Window { stream_id: u32, credit: u32 },
    Ping { nonce: u64 },
    Pong { nonce: u64 },
    Config(EdgeConfig),
    GoAway { reason: GoAwayReason, message: String },
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
    BadStreamId { frame: &'static str, expected: &'static str, got: u32 },
}

/// Appends the encoding of `frame` to `out`.
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) {
    let _ = (frame, out);
    todo!()
}

/// Incremental decoder: feed it the read buffer, it consumes whole frames.
#[derive(Debug)]
pub struct FrameDecoder {
    max_payload: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME_PAYLOAD)
    }
}

impl FrameDecoder {
    pub fn new(max_payload: usize) -> Self {
        Self { max_payload }
    }
    /// Removes one complete frame from the front of `buf`, or returns `Ok(None)` if more bytes are needed.
    /// Never allocates more than the declared (and checked) payload length.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        let _ = (buf, self.max_payload);
        todo!()
    }
}
