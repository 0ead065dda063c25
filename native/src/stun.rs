//! Public address discovery with STUN Binding requests (RFC 5389), over the codec in
//! `protocol/stun.rs`. One socket per address family is kept for the edge's lifetime, so the
//! reported port is that of a stable NAT mapping, not of a fresh socket each time.
use crate::protocol::stun::{decode_binding_response, encode_binding_request, StunError};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

/// Retransmission timeouts (RFC 5389 §7.2.1 starts at 500 ms and doubles); the request is given up
/// after the last one.
const RTOS: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_millis(1000),
    Duration::from_millis(2000),
];

/// Sockets for STUN queries, bound on first use.
#[derive(Default)]
pub struct StunClient {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
}

impl StunClient {
    async fn socket(&mut self, server: SocketAddr) -> Result<&UdpSocket, String> {
        let (slot, local): (&mut Option<UdpSocket>, SocketAddr) = if server.is_ipv4() {
            (&mut self.v4, ([0, 0, 0, 0], 0).into())
        } else {
            (&mut self.v6, ([0u16; 8], 0).into())
        };
        if slot.is_none() {
            let sock = UdpSocket::bind(local)
                .await
                .map_err(|e| format!("cannot bind a UDP socket for STUN: {e}"))?;
            *slot = Some(sock);
        }
        slot.as_ref().ok_or_else(|| "no STUN socket".to_string())
    }

    /// Asks `server` ("host:port") for our mapped address.
    pub async fn query(&mut self, server: &str) -> Result<SocketAddr, String> {
        let addr = tokio::net::lookup_host(server)
            .await
            .map_err(|e| format!("cannot resolve {server}: {e}"))?
            .next()
            .ok_or_else(|| format!("{server} does not resolve"))?;
        let sock = self.socket(addr).await?;
        let tid: [u8; 12] = rand::random();
        let request = encode_binding_request(&tid);
        let mut buf = vec![0u8; 1500];
        for rto in RTOS {
            sock.send_to(&request, addr)
                .await
                .map_err(|e| format!("cannot send to {server}: {e}"))?;
            let deadline = tokio::time::Instant::now() + rto;
            loop {
                let received = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await;
                let Ok(received) = received else {
                    break; // retransmit
                };
                let (n, from) = match received {
                    Ok(got) => got,
                    // ICMP port unreachable (nothing listens there), or similar: wait out this
                    // round, then send again.
                    Err(_) => {
                        tokio::time::sleep_until(deadline).await;
                        break;
                    }
                };
                if from != addr {
                    continue;
                }
                match decode_binding_response(&buf[..n], &tid) {
                    Ok(mapped) => return Ok(mapped),
                    Err(StunError::NotOurs(_)) => continue,
                    Err(e) => return Err(format!("{server}: {e}")),
                }
            }
        }
        Err(format!(
            "{server} did not answer within {} ms",
            RTOS.iter().map(Duration::as_millis).sum::<u128>()
        ))
    }
}
