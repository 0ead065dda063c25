//! STUN Binding (RFC 5389), the little the edge needs to learn its public address: encode a Binding
//! request, decode the response's (XOR-)MAPPED-ADDRESS. No I/O, no clock.
//!
//! Message: type u16 (first two bits 0), length u16 (of the attributes, a multiple of 4), magic
//! cookie 0x2112A442, 12-byte transaction id, then attributes: type u16, length u16, value padded to
//! a multiple of 4.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const STUN_HEADER_LEN: usize = 20;
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// Pre-RFC 5389 servers used this number for XOR-MAPPED-ADDRESS.
const ATTR_XOR_MAPPED_ADDRESS_OLD: u16 = 0x8020;
const FAMILY_V4: u8 = 0x01;
const FAMILY_V6: u8 = 0x02;

pub type TransactionId = [u8; 12];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Not a STUN message, or not the answer to our request: ignore it and keep waiting.
    #[error("not a STUN response to this request: {0}")]
    NotOurs(&'static str),
    #[error("malformed STUN response: {0}")]
    Malformed(String),
    #[error("STUN error response {code}: {reason}")]
    ErrorResponse { code: u16, reason: String },
    #[error("STUN response without a mapped address")]
    NoAddress,
}

/// A Binding request (no attributes).
pub fn encode_binding_request(transaction_id: &TransactionId) -> [u8; STUN_HEADER_LEN] {
    let mut out = [0u8; STUN_HEADER_LEN];
    out[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..20].copy_from_slice(transaction_id);
    out
}

/// A Binding success response carrying XOR-MAPPED-ADDRESS (what a STUN server sends; for tests and
/// tools).
pub fn encode_binding_response(transaction_id: &TransactionId, mapped: SocketAddr) -> Vec<u8> {
    let value = xor_address(transaction_id, mapped);
    let mut out = Vec::with_capacity(STUN_HEADER_LEN + 4 + value.len());
    out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out.extend_from_slice(&((4 + value.len()) as u16).to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(transaction_id);
    out.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(&value);
    out
}

fn xor_address(transaction_id: &TransactionId, addr: SocketAddr) -> Vec<u8> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut value = vec![0u8];
    match addr.ip() {
        IpAddr::V4(ip) => {
            value.push(FAMILY_V4);
            value.extend_from_slice(&port.to_be_bytes());
            value.extend(ip.octets().iter().zip(cookie).map(|(a, b)| a ^ b));
        }
        IpAddr::V6(ip) => {
            value.push(FAMILY_V6);
            value.extend_from_slice(&port.to_be_bytes());
            let key = cookie.iter().chain(transaction_id.iter());
            value.extend(ip.octets().iter().zip(key).map(|(a, b)| a ^ b));
        }
    }
    value
}

/// Reads the mapped address from a Binding response to `transaction_id`. Prefers
/// XOR-MAPPED-ADDRESS over MAPPED-ADDRESS; skips attributes it does not know.
pub fn decode_binding_response(
    msg: &[u8],
    transaction_id: &TransactionId,
) -> Result<SocketAddr, StunError> {
    if msg.len() < STUN_HEADER_LEN {
        return Err(StunError::NotOurs("shorter than a STUN header"));
    }
    if msg[0] & 0xc0 != 0 {
        return Err(StunError::NotOurs("first two bits are not zero"));
    }
    if msg[4..8] != MAGIC_COOKIE.to_be_bytes() {
        return Err(StunError::NotOurs("no magic cookie"));
    }
    if msg[8..20] != transaction_id[..] {
        return Err(StunError::NotOurs("another transaction"));
    }
    let msg_type = u16::from_be_bytes([msg[0], msg[1]]);
    let len = u16::from_be_bytes([msg[2], msg[3]]) as usize;
    if !len.is_multiple_of(4) || msg.len() != STUN_HEADER_LEN + len {
        return Err(StunError::Malformed(format!(
            "length {len} does not match the {} bytes after the header",
            msg.len() - STUN_HEADER_LEN
        )));
    }
    if msg_type != BINDING_SUCCESS && msg_type != BINDING_ERROR {
        return Err(StunError::NotOurs("not a Binding response"));
    }
    let mut attrs = &msg[STUN_HEADER_LEN..];
    let mut mapped = None;
    let mut xor_mapped = None;
    while !attrs.is_empty() {
        if attrs.len() < 4 {
            return Err(StunError::Malformed("truncated attribute header".into()));
        }
        let attr_type = u16::from_be_bytes([attrs[0], attrs[1]]);
        let attr_len = u16::from_be_bytes([attrs[2], attrs[3]]) as usize;
        let padded = attr_len.div_ceil(4) * 4;
        if attrs.len() < 4 + padded {
            return Err(StunError::Malformed(format!(
                "attribute 0x{attr_type:04x} of {attr_len} bytes is truncated"
            )));
        }
        let value = &attrs[4..4 + attr_len];
        match attr_type {
            ATTR_XOR_MAPPED_ADDRESS | ATTR_XOR_MAPPED_ADDRESS_OLD => {
                xor_mapped = Some(parse_address(value, Some(transaction_id))?)
            }
            ATTR_MAPPED_ADDRESS => mapped = Some(parse_address(value, None)?),
            ATTR_ERROR_CODE if msg_type == BINDING_ERROR => {
                if value.len() < 4 {
                    return Err(StunError::Malformed("short ERROR-CODE".into()));
                }
                let code = u16::from(value[2] & 0x07) * 100 + u16::from(value[3]);
                let reason = String::from_utf8_lossy(&value[4..]).into_owned();
                return Err(StunError::ErrorResponse { code, reason });
            }
            _ => {}
        }
        attrs = &attrs[4 + padded..];
    }
    if msg_type == BINDING_ERROR {
        return Err(StunError::ErrorResponse {
            code: 0,
            reason: "error response without ERROR-CODE".into(),
        });
    }
    xor_mapped.or(mapped).ok_or(StunError::NoAddress)
}

/// MAPPED-ADDRESS layout (0, family, port, address); XOR'd with the cookie (and transaction id for
/// IPv6) when `xor` is given.
fn parse_address(value: &[u8], xor: Option<&TransactionId>) -> Result<SocketAddr, StunError> {
    if value.len() < 4 {
        return Err(StunError::Malformed("short address attribute".into()));
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut port = u16::from_be_bytes([value[2], value[3]]);
    if xor.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    let addr = &value[4..];
    let ip = match (value[1], addr.len()) {
        (FAMILY_V4, 4) => {
            let mut octets = [0u8; 4];
            for (i, o) in octets.iter_mut().enumerate() {
                *o = addr[i] ^ if xor.is_some() { cookie[i] } else { 0 };
            }
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        (FAMILY_V6, 16) => {
            let mut key = [0u8; 16];
            if let Some(tid) = xor {
                key[..4].copy_from_slice(&cookie);
                key[4..].copy_from_slice(tid);
            }
            let mut octets = [0u8; 16];
            for (i, o) in octets.iter_mut().enumerate() {
                *o = addr[i] ^ key[i];
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        (family, len) => {
            return Err(StunError::Malformed(format!(
                "address family {family} with {len} address bytes"
            )))
        }
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// The sample IPv4 response of RFC 5769 §2.2 (SOFTWARE, XOR-MAPPED-ADDRESS 192.0.2.1:32853,
    /// MESSAGE-INTEGRITY, FINGERPRINT).
    const RFC5769_IPV4_RESPONSE: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];
    const RFC5769_TID: TransactionId = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    #[test]
    fn request_layout() {
        let tid = [7u8; 12];
        let req = encode_binding_request(&tid);
        assert_eq!(&req[..8], &[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]);
        assert_eq!(&req[8..], &tid);
    }

    #[test]
    fn decodes_the_rfc5769_ipv4_sample() {
        let addr = decode_binding_response(&RFC5769_IPV4_RESPONSE, &RFC5769_TID).unwrap();
        assert_eq!(addr, "192.0.2.1:32853".parse().unwrap());
    }

    #[test]
    fn round_trips_v4_and_v6() {
        let tid = [0x5a; 12];
        for addr in [
            "203.0.113.9:4000",
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let msg = encode_binding_response(&tid, addr);
            assert_eq!(decode_binding_response(&msg, &tid), Ok(addr));
        }
    }

    #[test]
    fn plain_mapped_address_is_used_when_alone() {
        let tid = [1u8; 12];
        let mut msg = vec![0x01, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
        msg.extend_from_slice(&tid);
        msg.extend_from_slice(&[0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x1f, 0x90, 10, 0, 0, 1]);
        assert_eq!(
            decode_binding_response(&msg, &tid),
            Ok("10.0.0.1:8080".parse().unwrap())
        );
    }

    #[test]
    fn foreign_and_malformed_messages_are_told_apart() {
        let tid = [3u8; 12];
        let good = encode_binding_response(&tid, "1.2.3.4:5".parse().unwrap());
        assert!(matches!(
            decode_binding_response(&good, &[4u8; 12]),
            Err(StunError::NotOurs(_))
        ));
        assert!(matches!(
            decode_binding_response(b"GET / HTTP/1.1\r\n\r\n....", &tid),
            Err(StunError::NotOurs(_))
        ));
        let mut short = good.clone();
        short.truncate(good.len() - 2);
        assert!(matches!(
            decode_binding_response(&short, &tid),
            Err(StunError::Malformed(_))
        ));
        // An attribute running past the end.
        let mut bad = good.clone();
        bad[STUN_HEADER_LEN + 3] = 40;
        assert!(matches!(
            decode_binding_response(&bad, &tid),
            Err(StunError::Malformed(_))
        ));
        // No address at all.
        let mut empty = good[..STUN_HEADER_LEN].to_vec();
        empty[3] = 0;
        assert_eq!(
            decode_binding_response(&empty, &tid),
            Err(StunError::NoAddress)
        );
        // An error response with its code.
        let mut err = vec![0x01, 0x11, 0x00, 0x10, 0x21, 0x12, 0xa4, 0x42];
        err.extend_from_slice(&tid);
        err.extend_from_slice(&[0x00, 0x09, 0x00, 0x0c, 0, 0, 4, 20]);
        err.extend_from_slice(b"Stale\0\0\0");
        assert!(matches!(
            decode_binding_response(&err, &tid),
            Err(StunError::ErrorResponse { code: 420, .. })
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(5389);
        let tid = [9u8; 12];
        for _ in 0..20_000 {
            let len = rng.gen_range(0..80);
            let mut msg: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if len >= STUN_HEADER_LEN {
                msg[0] = 0x01;
                msg[1] = 0x01;
                msg[2..4].copy_from_slice(&((len - STUN_HEADER_LEN) as u16).to_be_bytes());
                msg[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                msg[8..20].copy_from_slice(&tid);
            }
            let _ = decode_binding_response(&msg, &tid);
        }
    }
}
