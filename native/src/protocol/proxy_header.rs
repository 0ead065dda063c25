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
            format!(
                "PROXY TCP4 {src} {dst_ip} {} {}\r\n",
                client.port(),
                dst.port()
            )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn v1_tcp4() {
        let header = proxy_v1_header(addr("1.2.3.4:1111"), addr("5.6.7.8:2222"));
        assert_eq!(header, b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n");
    }

    #[test]
    fn v1_tcp6() {
        let header = proxy_v1_header(addr("[2001:db8::1]:40000"), addr("[2001:db8::2]:443"));
        assert_eq!(header, b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 443\r\n");
    }

    #[test]
    fn v1_mixed_families_map_the_ipv4_side() {
        let header = proxy_v1_header(addr("1.2.3.4:1111"), addr("[2001:db8::2]:443"));
        assert_eq!(
            header,
            b"PROXY TCP6 ::ffff:1.2.3.4 2001:db8::2 1111 443\r\n"
        );
    }

    #[test]
    fn v1_ipv4_mapped_pair_from_a_dual_stack_socket_is_tcp4() {
        let header = proxy_v1_header(addr("[::ffff:1.2.3.4]:1111"), addr("5.6.7.8:2222"));
        assert_eq!(header, b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n");
    }

    #[test]
    fn v1_longest_header_fits_the_spec_limit() {
        // proxy-protocol.txt: a v1 line is at most 107 bytes including CRLF.
        let ip = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let header = proxy_v1_header(
            addr(&format!("[{ip}]:65535")),
            addr(&format!("[{ip}]:65535")),
        );
        assert_eq!(header.len(), 104);
        assert!(header.len() <= 107);
    }

    #[test]
    fn v2_tcp4_matches_hand_written_bytes() {
        let header = proxy_v2_header(
            addr("1.2.3.4:1111"),
            addr("5.6.7.8:2222"),
            ProxyTransport::Stream,
        );
        let expected: &[u8] = &[
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54,
            0x0A, // signature
            0x21, // version 2, command PROXY
            0x11, // AF_INET, STREAM
            0x00, 0x0C, // 12 bytes of addresses
            1, 2, 3, 4, // source address
            5, 6, 7, 8, // destination address
            0x04, 0x57, // source port 1111
            0x08, 0xAE, // destination port 2222
        ];
        assert_eq!(header, expected);
    }

    #[test]
    fn v2_matches_a_header_written_by_haproxy() {
        // 172.19.0.1:42578 -> 172.19.0.3:80 as HAProxy itself wrote it (a published packet capture).
        let header = proxy_v2_header(
            addr("172.19.0.1:42578"),
            addr("172.19.0.3:80"),
            ProxyTransport::Stream,
        );
        let captured: [u8; 28] = [
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11,
            0x00, 0x0c, 0xac, 0x13, 0x00, 0x01, 0xac, 0x13, 0x00, 0x03, 0xa6, 0x52, 0x00, 0x50,
        ];
        assert_eq!(header, captured);
    }

    #[test]
    fn v2_udp4_uses_dgram() {
        let header = proxy_v2_header(
            addr("1.2.3.4:53"),
            addr("5.6.7.8:5353"),
            ProxyTransport::Datagram,
        );
        assert_eq!(header[13], 0x12);
        assert_eq!(header.len(), 16 + 12);
    }

    #[test]
    fn v2_tcp6_and_udp6_match_hand_written_bytes() {
        let src = addr("[2001:db8::1]:40000");
        let dst = addr("[::1]:443");
        let mut expected = PROXY_V2_SIGNATURE.to_vec();
        expected.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
        expected.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        expected.extend_from_slice(&[0x9C, 0x40, 0x01, 0xBB]);
        assert_eq!(proxy_v2_header(src, dst, ProxyTransport::Stream), expected);

        expected[13] = 0x22;
        assert_eq!(
            proxy_v2_header(src, dst, ProxyTransport::Datagram),
            expected
        );
    }

    #[test]
    fn v2_mixed_families_map_the_ipv4_side() {
        let header = proxy_v2_header(
            addr("1.2.3.4:1111"),
            addr("[::1]:443"),
            ProxyTransport::Stream,
        );
        assert_eq!(header[13], 0x21);
        assert_eq!(&header[14..16], &[0x00, 0x24]);
        assert_eq!(
            &header[16..32],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4]
        );
    }
}
