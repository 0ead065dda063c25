//! Transports between edge and hub. TLS over TCP carries one authenticated, ordered byte stream
//! that the multiplexer (`mux.rs`) splits into streams; QUIC (`quic.rs`) carries streams and
//! datagrams natively. Both present themselves to the roles as a `tunnel::Tunnel`.
use tokio::io::{AsyncRead, AsyncWrite};

pub mod buffered;
pub mod quic;
pub mod tls;

/// A connected, authenticated stream the mux can split and drive.
pub trait TunnelIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> TunnelIo for T {}
