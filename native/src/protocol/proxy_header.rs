//! PROXY protocol headers (v1 text, v2 binary), as specified by HAProxy's proxy-protocol.txt.
use std::net::SocketAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyTransport {
    Stream,
    Datagram,
}

/// `PROXY TCP4 src dst sport dport\r\n` (TCP6 for IPv6; mixed families are mapped to IPv6).
pub fn proxy_v1_header(client: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let _ = (client, dst);
    todo!()
}

/// v2 binary header, command PROXY, family from the addresses, transport STREAM or DGRAM.
pub fn proxy_v2_header(client: SocketAddr, dst: SocketAddr, transport: ProxyTransport) -> Vec<u8> {
    let _ = (client, dst, transport);
    todo!()
}
