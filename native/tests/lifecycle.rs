//! Tunnel lifecycle: auth, pinning, hot reload, revoke, supersede, stop, reconnect, liveness and
//! misbehaving peers. Scenarios with a real edge run over every transport (`every_transport!`);
//! the hand-driven ones speak the TLS framing.
mod common;

use bytes::BytesMut;
use common::*;
use portway_native::protocol::encode_frame;
use portway_native::protocol::handshake::{capability, decode_reply};
use portway_native::protocol::{Frame, FrameDecoder, GoAwayReason, HelloReply};
use portway_native::runtime::runtime;
use portway_native::transport::tls::client_config;
use serde_json::json;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type FakeEdge = tokio_rustls::client::TlsStream<TcpStream>;

/// A hand-driven edge: TLS + Hello, returns the stream right after the reply.
async fn fake_edge(hub_port: u16, fp: &str, edge_id: &str, secret: &str) -> (FakeEdge, HelloReply) {
    fake_edge_with(hub_port, fp, edge_id, secret, 0).await
}

async fn fake_edge_with(
    hub_port: u16,
    fp: &str,
    edge_id: &str,
    secret: &str,
    capabilities: u32,
) -> (FakeEdge, HelloReply) {
    let connector = tokio_rustls::TlsConnector::from(client_config(Some(fp), None).unwrap());
    let tcp = TcpStream::connect(("127.0.0.1", hub_port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(&hello_bytes(edge_id, secret, capabilities))
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    loop {
        if let Some(reply) = decode_reply(&mut buf).unwrap() {
            return (tls, reply);
        }
        assert!(
            tls.read_buf(&mut buf).await.unwrap() > 0,
            "hub closed during handshake"
        );
    }
}

/// Reads frames until a GoAway arrives (or the connection ends).
async fn read_goaway(tls: &mut FakeEdge) -> Option<(GoAwayReason, String)> {
    let mut decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    loop {
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            if let Frame::GoAway { reason, message } = frame {
                return Some((reason, message));
            }
        }
        match tls.read_buf(&mut buf).await {
            Ok(n) if n > 0 => {}
            _ => return None,
        }
    }
}

#[test]
fn wrong_secret_and_unknown_edge_are_rejected_alike() {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let hub = start_hub(
            id.clone(),
            0,
            vec![edge_entry("e1", "right", &[], None)],
            json!({}),
        )
        .await;
        let wrong = hub.edge("e1", "wrong", json!({}));
        let unknown = hub.edge("nobody", "right", json!({}));
        let a = wrong.events.wait_type("tunnel.rejected").await;
        let b = unknown.events.wait_type("tunnel.rejected").await;
        assert_eq!(a["reason"], "authFailed");
        assert_eq!(a["message"], b["message"]);
        assert!(a["retryInMs"].as_u64().unwrap() > 0);
        hub.events
            .wait("edge.authFailed", |e| e["claimedEdgeId"] == "e1")
            .await;
        let failed = hub
            .events
            .wait("edge.authFailed", |e| e["claimedEdgeId"] == "nobody")
            .await;
        assert_eq!(failed["reason"], "authFailed");
        // Keeps retrying with backoff.
        wrong.events.wait_nth("tunnel.rejected", 2, |_| true).await;
        let status = wrong.status_json();
        assert_eq!(status["connected"], false);
        assert!(status["lastError"]
            .as_str()
            .unwrap()
            .starts_with("authFailed"));
        wrong.edge.stop().await;
        unknown.edge.stop().await;
        hub.hub.stop().await;
    });
}

fn fingerprint_mismatch_and_unpinned(transport: &str) {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let hub = Setup::new(&id).start_hub().await;
        let other = identity();
        let pinned_wrong = start_edge(
            hub.port,
            "e1",
            "s",
            Some(&other.fingerprint),
            transport_extra(transport),
        );
        let rejected = pinned_wrong.events.wait_type("tunnel.rejected").await;
        assert_eq!(rejected["reason"], "fingerprintMismatch");
        assert!(rejected["message"]
            .as_str()
            .unwrap()
            .contains(&id.fingerprint));
        pinned_wrong.edge.stop().await;

        let unpinned = start_edge(hub.port, "e1", "s", None, transport_extra(transport));
        let connected = unpinned.events.wait_type("tunnel.connected").await;
        assert_eq!(connected["pinned"], false);
        let warn = unpinned.events.wait_type("tunnel.unpinned").await;
        assert_eq!(warn["hubFingerprint"], id.fingerprint.as_str());
        unpinned.edge.stop().await;
        hub.hub.stop().await;
    });
}

fn hot_reload_adds_and_removes_ports_without_dropping_live_streams(transport: &str) {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (target, _lines) = echo_target().await;
        let port_a = free_port().await;
        let port_b = free_port().await;
        let (hub, edge) = tcp_pair(&id, port_a, target, transport).await;

        // A live stream on port A.
        let mut live = TcpStream::connect(("127.0.0.1", port_a)).await.unwrap();
        live.write_all(b"before").await.unwrap();
        let mut buf = [0u8; 6];
        live.read_exact(&mut buf).await.unwrap();

        // Move the edge from A to B.
        hub.update_edges(vec![edge_entry("e1", "s", &[port_b], Some(target))]);
        let pushed = hub.events.wait_type("edge.configPushed").await;
        assert_eq!(pushed["listenPorts"], json!([port_b]));
        let updated = edge.events.wait_type("ports.updated").await;
        assert_eq!(updated["added"], json!([port_b]));
        assert_eq!(updated["removed"], json!([port_a]));

        assert_eq!(round_trip(port_b, b"new port").await.unwrap(), b"new port");
        assert!(
            TcpStream::connect(("127.0.0.1", port_a)).await.is_err(),
            "port A still listening"
        );
        // The stream opened on A keeps working.
        live.write_all(b"after!").await.unwrap();
        live.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"after!");
        stop_pair(&hub, &edge).await;
    });
}

fn revoked_edge_is_dropped_then_rejected(transport: &str) {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (hub, edge) = Setup::new(&id).transport(transport).launch().await;
        edge.events.wait_type("tunnel.connected").await;
        hub.update_edges(Vec::new());
        let gone = hub.events.wait_type("edge.disconnected").await;
        assert_eq!(gone["reason"], "revoked");
        let down = edge.events.wait_type("tunnel.disconnected").await;
        assert_eq!(down["reason"], "revoked");
        edge.events
            .wait("tunnel.rejected", |e| e["reason"] == "authFailed")
            .await;
        stop_pair(&hub, &edge).await;
    });
}

#[test]
fn new_session_supersedes_the_old_one() {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let hub = Setup::new(&id).start_hub().await;
        let (mut first, reply) = fake_edge(hub.port, &id.fingerprint, "e1", "s").await;
        assert!(matches!(reply, HelloReply::Accepted(_)));
        let (_second, reply) = fake_edge(hub.port, &id.fingerprint, "e1", "s").await;
        assert!(matches!(reply, HelloReply::Accepted(_)));
        let goaway = read_goaway(&mut first).await.expect("GoAway");
        assert_eq!(goaway.0, GoAwayReason::Superseded);
        let gone = hub.events.wait_type("edge.disconnected").await;
        assert_eq!(gone["reason"], "superseded");
        assert_eq!(hub.hub.status().edges.len(), 1);
        hub.hub.stop().await;
    });
}

fn hub_stop_ends_streams_and_edge_reconnects_to_a_new_hub(transport: &str) {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (setup, edge_port, _) = echo_setup(&id).await;
        let setup = setup.transport(transport);
        let (hub, edge) = setup.clone().start().await;
        let hub_port = hub.port;
        let mut live = TcpStream::connect(("127.0.0.1", edge_port)).await.unwrap();
        live.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        live.read_exact(&mut one).await.unwrap();

        hub.hub.stop().await;
        let closed = hub.events.wait_type("stream.closed").await;
        assert_eq!(closed["reason"], "hubShutdown", "{closed}");
        let gone = hub.events.wait_type("edge.disconnected").await;
        assert_eq!(gone["reason"], "hubShutdown");
        assert_eq!(hub.events.all().last().unwrap()["type"], "hub.stopped");
        let down = edge.events.wait_type("tunnel.disconnected").await;
        assert_eq!(down["reason"], "hubShutdown");
        let closed = edge.events.wait_type("stream.closed").await;
        assert_eq!(closed["reason"], "hubShutdown");
        // The client sees the stream cut (EOF or reset), and the listener stays bound but refuses.
        let read = tokio::time::timeout(WAIT, live.read(&mut one))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)));
        let mut refused = TcpStream::connect(("127.0.0.1", edge_port)).await.unwrap();
        let read = tokio::time::timeout(WAIT, refused.read(&mut one))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)));

        let hub2 = setup.hub_port(hub_port).start_hub().await;
        edge.events.wait_nth("tunnel.connected", 1, |_| true).await;
        assert_eq!(round_trip(edge_port, b"again").await.unwrap(), b"again");
        edge.edge.stop().await;
        edge.edge.stop().await;
        hub2.hub.stop().await;
    });
}

#[test]
fn handshake_timeout_and_cleartext_garbage() {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let hub = start_hub(id.clone(), 0, vec![], json!({ "handshakeTimeoutMs": 200 })).await;
        let _silent = TcpStream::connect(("127.0.0.1", hub.port)).await.unwrap();
        let mut garbage = TcpStream::connect(("127.0.0.1", hub.port)).await.unwrap();
        garbage
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        hub.events
            .wait("edge.authFailed", |e| e["reason"] == "tlsError")
            .await;
        let timeout = hub
            .events
            .wait("edge.authFailed", |e| e["reason"] == "handshakeTimeout")
            .await;
        assert!(timeout["claimedEdgeId"].is_null());
        // The hub still accepts real edges.
        let (_tls, reply) = fake_edge(hub.port, &id.fingerprint, "nobody", "x").await;
        assert!(matches!(reply, HelloReply::Rejected { .. }));
        hub.hub.stop().await;
    });
}

#[test]
fn malformed_frame_is_a_protocol_error() {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let hub = Setup::new(&id).start_hub().await;
        let (mut tls, _) = fake_edge(hub.port, &id.fingerprint, "e1", "s").await;
        tls.write_all(&[0xee, 0, 0, 0, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        let goaway = read_goaway(&mut tls).await.expect("GoAway");
        assert_eq!(goaway.0, GoAwayReason::ProtocolError);
        hub.events.wait_type("tunnel.protocolError").await;
        let gone = hub.events.wait_type("edge.disconnected").await;
        assert_eq!(gone["reason"], "protocolError");
        hub.hub.stop().await;
    });
}

#[test]
fn udp_frames_need_the_capability_and_an_open_session() {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let hub = Setup::new(&id).start_hub().await;
        let datagram = |session_id| {
            let mut out = BytesMut::new();
            encode_frame(
                &Frame::UdpDatagram {
                    session_id,
                    data: bytes::Bytes::from_static(b"x"),
                },
                &mut out,
            );
            out
        };
        // Without the UDP capability a UDP frame is a reserved type.
        let (mut tls, reply) = fake_edge(hub.port, &id.fingerprint, "e1", "s").await;
        let HelloReply::Accepted(accepted) = reply else {
            panic!("accepted");
        };
        let udp = accepted.udp.expect("the hub announces UDP");
        assert_eq!(udp.max_sessions, 1024);
        assert_eq!(udp.idle_timeout_ms, 60_000);
        tls.write_all(&datagram(1)).await.unwrap();
        let (reason, message) = read_goaway(&mut tls).await.expect("GoAway");
        assert_eq!(reason, GoAwayReason::ProtocolError);
        assert!(message.contains("reserved for UDP"), "{message}");

        // With it, a datagram for a session that was never opened is an error too.
        let (mut tls, _) =
            fake_edge_with(hub.port, &id.fingerprint, "e1", "s", capability::UDP_FRAMES).await;
        tls.write_all(&datagram(7)).await.unwrap();
        let (reason, message) = read_goaway(&mut tls).await.expect("GoAway");
        assert_eq!(reason, GoAwayReason::ProtocolError);
        assert!(message.contains("never opened"), "{message}");
        hub.hub.stop().await;
    });
}

#[test]
fn silent_peer_times_out() {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let extra = json!({ "pingIntervalMs": 50, "idleTimeoutMs": 300 });
        let hub = Setup::new(&id).hub(extra).start_hub().await;
        // Completes the handshake, then never sends anything (and never reads).
        let (mut tls, _) = fake_edge(hub.port, &id.fingerprint, "e1", "s").await;
        let gone = hub.events.wait_type("edge.disconnected").await;
        assert_eq!(gone["reason"], "timeout");
        let goaway = read_goaway(&mut tls).await.expect("GoAway");
        assert_eq!(goaway.0, GoAwayReason::Timeout);
        hub.hub.stop().await;
    });
}

#[test]
fn busy_edge_port_is_reported_and_others_work() {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (target, _lines) = echo_target().await;
        let busy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let busy_port = busy.local_addr().unwrap().port();
        let good_port = free_port().await;
        let (hub, edge) = Setup::new(&id)
            .tcp(&[busy_port, good_port])
            .target(target)
            .launch()
            .await;
        let error = edge.events.wait_type("listener.error").await;
        assert_eq!(error["port"], busy_port);
        assert_eq!(error["code"], "EADDRINUSE");
        assert_eq!(error["protocol"], "tcp");
        assert_eq!(round_trip(good_port, b"ok").await.unwrap(), b"ok");
        let status = edge.status_json();
        assert_eq!(status["listenerErrors"][0]["port"], busy_port);
        stop_pair(&hub, &edge).await;
    });
}

#[test]
fn busy_tunnel_port_is_a_coded_error() {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let busy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = busy.local_addr().unwrap().port();
        let config = json!({ "bindHost": "127.0.0.1", "tunnelPort": port, "certPem": id.cert_pem, "keyPem": id.key_pem });
        let settings = portway_native::config::parse_hub_config(&config.to_string()).unwrap();
        let err = portway_native::hub::Hub::start(settings, Events::default().sink()).await.err().unwrap();
        assert!(err.to_string().starts_with("EADDRINUSE: "), "{err}");
    });
}

every_transport!(
    fingerprint_mismatch_and_unpinned,
    hot_reload_adds_and_removes_ports_without_dropping_live_streams,
    revoked_edge_is_dropped_then_rejected,
    hub_stop_ends_streams_and_edge_reconnects_to_a_new_hub
);
