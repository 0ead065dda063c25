//! Transports carry one authenticated, ordered byte stream between edge and hub; the multiplexer
//! (`mux.rs`) runs over any of them. TLS over TCP today; QUIC will plug in here later.
use tokio::io::{AsyncRead, AsyncWrite};

pub mod buffered;
pub mod tls;

/// A connected, authenticated stream the mux can split and drive.
pub trait TunnelIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> TunnelIo for T {}
