//! UDP datagrams carried as QUIC datagrams (RFC 9221): a 4-byte session id, then the UDP payload.
//! See docs/protocol.md §9.
use super::frame::{malformed, ProtocolError};
use bytes::{BufMut, Bytes, BytesMut};

/// Bytes in front of every UDP payload inside a QUIC datagram.
pub const QUIC_DATAGRAM_PREFIX: usize = 4;

/// Builds the QUIC datagram for one UDP payload of session `session_id` (non-zero).
pub fn encode_quic_datagram(session_id: u32, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(QUIC_DATAGRAM_PREFIX + payload.len());
    out.put_u32(session_id);
    out.extend_from_slice(payload);
    out.freeze()
}

/// Splits a received QUIC datagram into (session id, UDP payload) without copying the payload.
pub fn decode_quic_datagram(mut datagram: Bytes) -> Result<(u32, Bytes), ProtocolError> {
    if datagram.len() < QUIC_DATAGRAM_PREFIX {
        return Err(malformed(
            "QuicDatagram",
            format!(
                "{} bytes, shorter than the {QUIC_DATAGRAM_PREFIX}-byte session id",
                datagram.len()
            ),
        ));
    }
    let prefix = datagram.split_to(QUIC_DATAGRAM_PREFIX);
    let session_id = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if session_id == 0 {
        return Err(malformed("QuicDatagram", "session id 0"));
    }
    Ok((session_id, datagram))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_payload_and_id() {
        for (id, payload) in [(1u32, &b""[..]), (7, b"dns"), (u32::MAX, &[0xff; 1200][..])] {
            let datagram = encode_quic_datagram(id, payload);
            assert_eq!(datagram.len(), QUIC_DATAGRAM_PREFIX + payload.len());
            assert_eq!(
                decode_quic_datagram(datagram),
                Ok((id, Bytes::copy_from_slice(payload)))
            );
        }
        assert_eq!(
            &encode_quic_datagram(0x0102_0304, b"x")[..],
            b"\x01\x02\x03\x04x"
        );
    }

    #[test]
    fn short_or_zero_id_is_malformed() {
        for bad in [
            &b""[..],
            b"\x00",
            b"\x00\x00\x01",
            b"\x00\x00\x00\x00payload",
        ] {
            let err = decode_quic_datagram(Bytes::copy_from_slice(bad)).expect_err("malformed");
            assert!(
                matches!(
                    err,
                    ProtocolError::Malformed {
                        frame: "QuicDatagram",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }
}
