//! The Portway wire protocol, without I/O: no sockets, no clock. See `docs/protocol.md`.
//!
//! Inputs are byte buffers, outputs are frames or encoded bytes; the runtime (`mux.rs`, `hub.rs`,
//! `edge.rs`) drives it.

pub mod control;
pub mod credential;
pub mod datagram;
pub mod frame;
pub mod handshake;
pub mod proxy_header;
pub mod stun;

pub use control::{Control, ControlRules, Role};
pub use credential::{Credential, SecretVerifier};
pub use frame::{
    data_header, encode_data_header, encode_frame, try_encode_frame, CloseReason, EdgeConfig,
    Frame, FrameDecoder, GoAwayReason, ProtocolError, StreamOpen, UdpCloseReason,
};
pub use handshake::{
    decode_hello, decode_reply, encode_hello, encode_reply, Hello, HelloAccepted, HelloReply,
    RejectCode, UdpSettings,
};
pub use proxy_header::{proxy_v1_header, proxy_v2_header, ProxyTransport};

/// Version carried in every `Hello`. A hub rejects versions it does not speak with `RejectCode::VersionUnsupported`.
pub const PROTOCOL_VERSION: u16 = 1;
/// ALPN id for the TLS and QUIC transports.
pub const ALPN: &[u8] = b"portway/1";
