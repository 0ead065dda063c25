//! PROXY protocol headers (v1 text, v2 binary), as specified by HAProxy's proxy-protocol.txt.
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyTransport {
    Stream,
    Datagram,
}

/// The 12-byte signature that starts every v2 header.
pub const PROXY_V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Version 2, command PROXY.
const V2_VERSION_PROXY: u8 = 0x21;
const V2_AF_INET: u8 = 0x10;
const V2_AF_INET6: u8 = 0x20;
const V2_STREAM: u8 = 0x01;
const V2_DGRAM: u8 = 0x02;

/// `PROXY TCP4 src dst sport dport\r\n` (TCP6 for IPv6; mixed families are mapped to IPv6).
pub fn proxy_v1_header(client: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let line = match same_family(client.ip(), dst.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst_ip)) => {
            format!("PROXY TCP4 {src} {dst_ip} {} {}\r\n", client.port(), dst.port())
        }
        (src, dst_ip) => format!(
            "PROXY TCP6 {} {} {} {}\r\n",
            as_v6(src),
            as_v6(dst_ip),
            client.port(),
            dst.port()
        ),
    };
    line.into_bytes()
}

/// v2 binary header, command PROXY, family from the addresses, transport STREAM or DGRAM.
pub fn proxy_v2_header(client: SocketAddr, dst: SocketAddr, transport: ProxyTransport) -> Vec<u8> {
    let transport_bits = match transport {
        ProxyTransport::Stream => V2_STREAM,
        ProxyTransport::Datagram => V2_DGRAM,
    };
    let mut addresses = Vec::with_capacity(36);
    let family = match same_family(client.ip(), dst.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst_ip)) => {
            addresses.extend_from_slice(&src.octets());
            addresses.extend_from_slice(&dst_ip.octets());
            V2_AF_INET
        }
        (src, dst_ip) => {
            addresses.extend_from_slice(&as_v6(src).octets());
            addresses.extend_from_slice(&as_v6(dst_ip).octets());
            V2_AF_INET6
        }
    };
    addresses.extend_from_slice(&client.port().to_be_bytes());
    addresses.extend_from_slice(&dst.port().to_be_bytes());

    let mut header = Vec::with_capacity(16 + addresses.len());
    header.extend_from_slice(&PROXY_V2_SIGNATURE);
    header.push(V2_VERSION_PROXY);
    header.push(family | transport_bits);
    // At most 36 bytes of addresses.
    header.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    header.extend_from_slice(&addresses);
    header
}

/// Brings both addresses to one family: IPv4 when both are IPv4 (or IPv4-mapped IPv6, as a dual-stack
/// socket reports them), otherwise IPv6 with any IPv4 address mapped.
fn same_family(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    match (unmap(a), unmap(b)) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (IpAddr::V4(a), IpAddr::V4(b)),
        _ => (IpAddr::V6(as_v6(a)), IpAddr::V6(as_v6(b))),
    }
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}
