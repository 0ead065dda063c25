//! QUIC specifics: fallback to TLS when the hub's QUIC side is off, QUIC preferred when it is on,
//! and pinning / auth rejections that are final (no fallback). The shared scenarios (echo, bulk,
//! half-close, flow control, hot reload, revoke, hub restart, UDP) run over QUIC in `tunnel.rs`,
//! `lifecycle.rs` and `udp.rs`.
mod common;

use common::*;
use portway_native::runtime::runtime;
use serde_json::json;
use std::sync::Arc;

#[test]
fn fallback_to_tls_when_the_hub_serves_no_quic() {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (setup, edge_port, _) = echo_setup(&id).await;
        let hub = setup.hub(json!({ "quic": false })).start_hub().await;
        let status = hub.status_json();
        assert_eq!(status["quic"], false);
        let edge = hub.edge(
            "e1",
            "s",
            json!({ "transportMode": "quicWithFallback", "quicFallbackTimeoutMs": 300 }),
        );
        let fallback = edge.events.wait_type("tunnel.fallback").await;
        assert_eq!(fallback["from"], "quic");
        assert_eq!(fallback["to"], "tcpTls");
        assert_eq!(fallback["hub"], format!("127.0.0.1:{}", hub.port));
        assert!(fallback["reason"].is_string());
        let connected = edge.events.wait_type("tunnel.connected").await;
        assert_eq!(connected["transport"], "tcpTls");
        edge.events.wait_type("ports.assigned").await;
        let status = edge.status_json();
        assert_eq!(status["transport"], "tcpTls");
        assert_eq!(round_trip(edge_port, b"via tls").await.unwrap(), b"via tls");
        stop_pair(&hub, &edge).await;
    });
}

#[test]
fn quic_with_fallback_prefers_quic() {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (hub, edge) = Setup::new(&id).transport("quicWithFallback").launch().await;
        let connected = edge.events.wait_type("tunnel.connected").await;
        assert_eq!(connected["transport"], "quic");
        assert!(edge.events.of_type("tunnel.fallback").is_empty());
        let status = hub.status_json();
        assert_eq!(status["quic"], true);
        assert_eq!(status["edges"][0]["transport"], "quic");
        stop_pair(&hub, &edge).await;
    });
}

#[test]
fn quic_pinning_and_auth_fail_like_tls_and_do_not_fall_back() {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let hub = Setup::new(&id).start_hub().await;
        let other = identity();
        let mismatch = start_edge(
            hub.port,
            "e1",
            "s",
            Some(&other.fingerprint),
            json!({ "transportMode": "quicWithFallback" }),
        );
        let rejected = mismatch.events.wait_type("tunnel.rejected").await;
        assert_eq!(rejected["reason"], "fingerprintMismatch", "{rejected}");
        assert!(rejected["message"]
            .as_str()
            .unwrap()
            .contains(&id.fingerprint));
        let wrong = hub.edge(
            "e1",
            "wrong",
            json!({ "transportMode": "quicWithFallback" }),
        );
        let rejected = wrong.events.wait_type("tunnel.rejected").await;
        assert_eq!(rejected["reason"], "authFailed");
        let failed = hub
            .events
            .wait("edge.authFailed", |e| e["reason"] == "authFailed")
            .await;
        assert_eq!(failed["claimedEdgeId"], "e1");
        assert!(
            mismatch.events.of_type("tunnel.fallback").is_empty(),
            "{:?}",
            mismatch.events.of_type("tunnel.fallback")
        );
        assert!(wrong.events.of_type("tunnel.fallback").is_empty());
        mismatch.edge.stop().await;
        wrong.edge.stop().await;
        hub.hub.stop().await;
    });
}

/// A hand-driven QUIC edge: handshake on the control stream, returns the connection.
async fn fake_quic_edge(
    hub_port: u16,
    fp: &str,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    use bytes::BytesMut;
    use portway_native::protocol::handshake::{capability, decode_reply};
    use portway_native::protocol::HelloReply;
    use std::time::Duration;
    let config = portway_native::transport::quic::client_config(
        Some(fp),
        None,
        Duration::from_millis(200),
        Duration::from_secs(2),
    )
    .unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let conn = endpoint
        .connect(([127, 0, 0, 1], hub_port).into(), "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = hello_bytes(
        "e1",
        "s",
        capability::UDP_FRAMES | capability::QUIC_DATAGRAMS,
    );
    send.write_all(&hello).await.unwrap();
    let mut buf = BytesMut::new();
    loop {
        if let Some(reply) = decode_reply(&mut buf).unwrap() {
            assert!(matches!(reply, HelloReply::Accepted(_)));
            break;
        }
        let chunk = recv.read_chunk(4096, true).await.unwrap().expect("reply");
        buf.extend_from_slice(&chunk.bytes);
    }
    (endpoint, conn, send, recv)
}

#[test]
fn malformed_quic_input_is_a_protocol_error() {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let hub = Setup::new(&id).start_hub().await;

        // A datagram too short to hold a session id.
        let (_endpoint, conn, _send, _recv) = fake_quic_edge(hub.port, &id.fingerprint).await;
        conn.send_datagram(bytes::Bytes::from_static(b"\x01"))
            .unwrap();
        let gone = hub.events.wait_nth("edge.disconnected", 0, |_| true).await;
        assert_eq!(gone["reason"], "protocolError", "{gone}");
        assert!(
            gone["message"].as_str().unwrap().contains("QuicDatagram"),
            "{gone}"
        );
        let closed = conn.closed().await;
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
            "{closed}"
        );

        // A stream that does not start with OPEN.
        let (_endpoint, conn, _send, _recv) = fake_quic_edge(hub.port, &id.fingerprint).await;
        let (mut send, _recv2) = conn.open_bi().await.unwrap();
        send.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let gone = hub.events.wait_nth("edge.disconnected", 1, |_| true).await;
        assert_eq!(gone["reason"], "protocolError", "{gone}");
        assert!(gone["message"].as_str().unwrap().contains("OPEN"), "{gone}");

        // A data frame on the control stream.
        let (_endpoint, conn, mut control, _recv) = fake_quic_edge(hub.port, &id.fingerprint).await;
        control
            .write_all(&[0x02, 0, 0, 0, 1, 0, 0, 0, 1, b'x'])
            .await
            .unwrap();
        let gone = hub.events.wait_nth("edge.disconnected", 2, |_| true).await;
        assert_eq!(gone["reason"], "protocolError", "{gone}");
        drop(conn);
        hub.hub.stop().await;
    });
}

/// A stream the edge resets before the hub has read its `Open` header (the edge does this when its
/// client resets right after connecting; a reset lets the hub discard the unread header) ends only
/// that stream: the hub resets its side back, the tunnel stays up and keeps carrying streams.
/// Regression: the hub treated it as a protocol error and closed the whole tunnel.
#[test]
fn a_stream_reset_before_its_open_header_ends_only_that_stream() {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (setup, _, _) = echo_setup(&id).await;
        let hub = setup.start_hub().await;
        let (_endpoint, conn, _control, _control_recv) =
            fake_quic_edge(hub.port, &id.fingerprint).await;
        hub.events.wait_type("edge.connected").await;

        // Part of an OPEN header, then a reset: the header can never be completed.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&[0x01, 0, 0]).await.unwrap();
        send.reset(quinn::VarInt::from_u32(7)).unwrap();
        let mut buf = [0u8; 16];
        let answer = tokio::time::timeout(WAIT, recv.read(&mut buf))
            .await
            .unwrap();
        assert!(
            matches!(answer, Err(quinn::ReadError::Reset(_))),
            "the hub should reset its side of the abandoned stream, got {answer:?}"
        );
        assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
        assert!(hub.events.of_type("edge.disconnected").is_empty());
        let status = hub.status_json();
        assert_eq!(status["edges"][0]["edgeId"], "e1", "{status}");
        drop(conn);
        hub.hub.stop().await;
    });
}

/// Runs one "hub dies without a word and comes back" round. The client talks to the hub through a UDP
/// relay; the hub's first life stops getting (and answering) packets when the relay switches to the
/// second life, a fresh endpoint with `second_identity`, so nothing is ever closed. Returns how the
/// client's connection ended within `within`, if it did.
async fn connection_after_silent_restart(
    first_identity: &Identity,
    second_identity: &Identity,
    within: std::time::Duration,
) -> Option<quinn::ConnectionError> {
    use portway_native::transport::quic;
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::net::UdpSocket;
    let setup = |id: &Identity| {
        quic::server_config(
            &id.cert_pem,
            &id.key_pem,
            Duration::from_millis(100),
            Duration::from_secs(10),
        )
        .unwrap()
    };
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let first = quic::endpoint(any, Some(setup(first_identity))).unwrap();
    let second = quic::endpoint(any, Some(setup(second_identity))).unwrap();

    // The relay: client side `front`, hub side `back`, sending to whichever life is current.
    let front = Arc::new(UdpSocket::bind(any).await.unwrap());
    let back = Arc::new(UdpSocket::bind(any).await.unwrap());
    let hub_now = Arc::new(Mutex::new(first.local_addr().unwrap()));
    let client_addr = Arc::new(Mutex::new(None::<SocketAddr>));
    let relay = {
        let (front, back) = (front.clone(), back.clone());
        let (hub_now, client_addr) = (hub_now.clone(), client_addr.clone());
        tokio::spawn(async move {
            let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut up) => {
                        *client_addr.lock().unwrap() = Some(from);
                        let to = *hub_now.lock().unwrap();
                        let _ = back.send_to(&up[..n], to).await;
                    }
                    Ok((n, _)) = back.recv_from(&mut down) => {
                        let to = *client_addr.lock().unwrap();
                        if let Some(to) = to {
                            let _ = front.send_to(&down[..n], to).await;
                        }
                    }
                }
            }
        })
    };

    let config = quic::client_config(
        Some(&first_identity.fingerprint),
        None,
        Duration::from_millis(100),
        Duration::from_secs(10),
    )
    .unwrap();
    let mut client = quinn::Endpoint::client(any).unwrap();
    client.set_default_client_config(config);
    let connecting = client
        .connect(front.local_addr().unwrap(), "localhost")
        .unwrap();
    let (conn, server_side) = tokio::join!(connecting, async {
        first.accept().await.unwrap().await.unwrap()
    });
    let conn = conn.unwrap();
    // The first life "dies": from now on its packets go nowhere and it hears nothing.
    *hub_now.lock().unwrap() = second.local_addr().unwrap();
    let ended = tokio::time::timeout(within, conn.closed()).await.ok();
    relay.abort();
    drop(server_side);
    for endpoint in [&first, &second, &client] {
        endpoint.close(quinn::VarInt::from_u32(0), b"");
    }
    ended
}

/// A hub that dies without closing its QUIC connections and is restarted on the same port (same data
/// dir, so the same private key) answers an edge's next keep-alive with a stateless reset the edge
/// recognises: the edge's connection ends at once (and it reconnects) instead of after the idle
/// timeout. Another key's resets are ignored, as RFC 9000 requires.
#[test]
fn a_restarted_hub_resets_the_connections_of_its_previous_life() {
    runtime().block_on(async {
        use std::time::Duration;
        let id = identity();
        let ended = connection_after_silent_restart(&id, &id, Duration::from_secs(3)).await;
        assert!(
            matches!(ended, Some(quinn::ConnectionError::Reset)),
            "expected a stateless reset, got {ended:?}"
        );
        let other = identity();
        let ended = connection_after_silent_restart(&id, &other, Duration::from_secs(1)).await;
        assert!(ended.is_none(), "a foreign reset was accepted: {ended:?}");
    });
}
