//! End-to-end UDP: clients → edge UDP port → tunnel → hub → UDP target. Every scenario runs over
//! every transport (`every_transport!`).
mod common;

use common::*;
use portway_native::runtime::runtime;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// Hub (config keys `hub_extra`) + edge over `transport` whose UDP port (returned) goes to a UDP echo
/// target expecting PROXY v2; once `ports.assigned`.
async fn echo_pair(transport: &str, hub_extra: serde_json::Value) -> (TestHub, TestEdge, u16) {
    let id = Arc::new(identity());
    let (target, _seen) = udp_echo_target(true).await;
    let port = free_udp_port().await;
    let (hub, edge) = udp_pair(&id, port, target, transport, hub_extra).await;
    (hub, edge, port)
}

fn udp_echo_with_proxy_v2(transport: &str) {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (target, mut seen) = udp_echo_target(true).await;
        let port = free_udp_port().await;
        let (hub, edge) = udp_pair(&id, port, target, transport, json!({})).await;

        let a = client().await;
        let b = client().await;
        assert_eq!(
            udp_ask_retry(&a, port, b"hello from a").await,
            b"hello from a"
        );
        assert_eq!(
            udp_ask_retry(&b, port, b"hello from b").await,
            b"hello from b"
        );
        for i in 0..20u32 {
            let msg = format!("a-{i}");
            assert_eq!(
                udp_ask_retry(&a, port, msg.as_bytes()).await,
                msg.as_bytes()
            );
        }
        let mut sessions = HashMap::new();
        for _ in 0..2 {
            let peer = tokio::time::timeout(WAIT, seen.recv())
                .await
                .unwrap()
                .unwrap();
            let header = peer
                .header
                .clone()
                .unwrap_or_else(|| panic!("first datagram is not a PROXY v2 header: {peer:?}"));
            assert_eq!(header.family_transport, 0x12, "AF_INET + DGRAM");
            assert_eq!(header.dst.port(), port);
            sessions.insert(header.src, peer);
        }
        let a_addr = a.local_addr().unwrap();
        let b_addr = b.local_addr().unwrap();
        assert_eq!(sessions[&a_addr].first_payload, b"hello from a");
        assert_eq!(sessions[&b_addr].first_payload, b"hello from b");
        assert_ne!(
            sessions[&a_addr].upstream, sessions[&b_addr].upstream,
            "one upstream socket per session"
        );

        let opened = hub
            .events
            .wait("udp.opened", |e| e["clientAddr"] == a_addr.to_string())
            .await;
        assert_eq!(opened["edgeId"], "e1");
        assert_eq!(opened["edgePort"], port);
        assert_eq!(opened["target"], format!("127.0.0.1:{target}"));
        assert!(opened["udpSessionId"].as_u64().unwrap() > 0);
        let edge_opened = edge
            .events
            .wait("udp.opened", |e| e["clientAddr"] == a_addr.to_string())
            .await;
        assert_eq!(edge_opened["udpSessionId"], opened["udpSessionId"]);
        assert!(edge_opened.get("target").is_none());
        let connected = edge.events.wait_type("tunnel.connected").await;
        assert_eq!(connected["transport"], transport);

        let status = hub.status_json();
        assert_eq!(status["edges"][0]["udpSessions"], 2);
        assert_eq!(status["edges"][0]["transport"], transport);
        let edge_status = edge.status_json();
        assert_eq!(edge_status["udpSessions"], 2);
        assert_eq!(edge_status["transport"], transport);

        edge.edge.stop().await;
        // Stopping ends the sessions on both sides with counts.
        let closed = hub
            .events
            .wait("udp.closed", |e| e["clientAddr"] == a_addr.to_string())
            .await;
        assert_eq!(closed["packetsIn"], 21);
        assert_eq!(closed["packetsOut"], 21);
        assert_eq!(closed["bytesIn"], 12 + 10 * 3 + 10 * 4);
        let closed = edge
            .events
            .wait("udp.closed", |e| e["clientAddr"] == a_addr.to_string())
            .await;
        assert_eq!(closed["packetsIn"], 21);
        hub.hub.stop().await;
    });
}

fn udp_none_mode_sends_payload_only(transport: &str) {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (target, mut seen) = udp_echo_target(false).await;
        let port = free_udp_port().await;
        let hub_extra = json!({ "proxyProtocolUdp": "none" });
        let (hub, edge) = udp_pair(&id, port, target, transport, hub_extra).await;
        let c = client().await;
        assert_eq!(
            udp_ask_retry(&c, port, b"\x12\x34 query").await,
            b"\x12\x34 query"
        );
        let peer = seen.recv().await.unwrap();
        assert_eq!(
            peer.first_payload, b"\x12\x34 query",
            "no header before the payload"
        );
        let big = random_bytes(60_000);
        if transport == "tcpTls" {
            // Frames carry any UDP payload whole.
            assert_eq!(udp_ask_retry(&c, port, &big).await, big);
        } else {
            // A QUIC datagram must fit one packet: too large is dropped, counted and reported,
            // never truncated.
            assert_eq!(udp_ask(&c, port, &big).await, None);
            let oversized = edge.events.wait_type("udp.oversized").await;
            assert_eq!(oversized["size"], 60_000);
            let max = oversized["maxSize"].as_u64().expect("maxSize");
            assert!((1000..60_000).contains(&max), "{max}");
            let status = edge.status_json();
            assert_eq!(status["udpOversized"], 1);
            // What fits still flows.
            let fits = random_bytes(max as usize);
            assert_eq!(udp_ask_retry(&c, port, &fits).await, fits);
        }
        stop_pair(&hub, &edge).await;
    });
}

fn many_concurrent_sessions_with_sequence_numbers(transport: &str) {
    const SESSIONS: usize = 200;
    const PACKETS: u32 = 25;
    runtime().block_on(async {
            let (hub, edge, port) = echo_pair(transport, json!({ "udpIdleTimeoutMs": 1500 })).await;

            let mut tasks = Vec::new();
            for s in 0..SESSIONS {
                tasks.push(tokio::spawn(async move {
                    let sock = client().await;
                    // Open the session (retrying until the upstream is set up), then stream.
                    let hello = format!("{s}:hello");
                    udp_ask_retry(&sock, port, hello.as_bytes()).await;
                    let mut got = vec![false; PACKETS as usize];
                    let mut buf = vec![0u8; 2048];
                    // Records one echo; returns its sequence number.
                    let mut record = |n: usize, buf: &[u8]| {
                        let text = String::from_utf8_lossy(&buf[..n]).to_string();
                        let mut parts = text.split(':');
                        assert_eq!(parts.next(), Some(s.to_string().as_str()), "cross-talk");
                        let seq = parts.next().and_then(|p| p.parse::<usize>().ok())?;
                        if let Some(slot) = got.get_mut(seq) {
                            *slot = true;
                        }
                        Some(seq)
                    };
                    for seq in 0..PACKETS {
                        let msg = format!("{s}:{seq}:{}", "x".repeat(100));
                        sock.send_to(msg.as_bytes(), ("127.0.0.1", port)).await.unwrap();
                        // Pace: wait (briefly) for the echo of each packet.
                        while let Ok(Ok(n)) =
                            tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut buf)).await
                        {
                            if record(n, &buf) == Some(seq as usize) {
                                break;
                            }
                        }
                    }
                    // Late echoes (a busy machine) are delivered, not lost: collect them too.
                    while let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await
                    {
                        record(n, &buf);
                    }
                    got.iter().filter(|g| **g).count()
                }));
            }
            let mut delivered = 0usize;
            for t in tasks {
                delivered += t.await.unwrap();
            }
            let sent = SESSIONS * PACKETS as usize;
            let loss = 1.0 - delivered as f64 / sent as f64;
            let edge_status = edge.status_json();
            let hub_edge = &hub.status_json()["edges"][0];
            eprintln!(
                "{transport}: {SESSIONS} sessions, {delivered}/{sent} echoed, loss {:.3}%; dropped edge {} hub {}",
                loss * 100.0,
                edge_status["udpDropped"],
                hub_edge["udpDropped"]
            );
            // Frames over TLS are reliable: loss can only be drops, which are counted. QUIC datagrams
            // are unreliable by design: a loaded machine (other tests flood in parallel) may lose a
            // few packets of the tunnel itself.
            let limit = if transport == "tcpTls" { 0.01 } else { 0.03 };
            assert!(loss < limit, "loss {loss}");
            // Every session expires after the idle timeout, on both sides, with its counts. (A client
            // starved of CPU for longer than the timeout may have had its session expire and reopen.)
            wait_until(|| {
                hub.status_json()["edges"][0]["udpSessions"] == 0
                    && edge.status_json()["udpSessions"] == 0
            })
            .await;
            let ended = |events: &Events| {
                events.of_type("udp.expired").len() + events.of_type("udp.closed").len()
                    == events.of_type("udp.opened").len()
            };
            wait_until(|| ended(&hub.events) && ended(&edge.events)).await;
            let opened = hub.events.of_type("udp.opened");
            let clients: std::collections::HashSet<_> =
                opened.iter().map(|e| e["clientAddr"].to_string()).collect();
            assert_eq!(clients.len(), SESSIONS);
            let expired = hub.events.of_type("udp.expired");
            assert_eq!(expired.len(), opened.len());
            assert!(expired.iter().all(|e| e["reason"] == "idle"));
            assert_eq!(edge.events.of_type("udp.expired").len(), opened.len());
            let packets: u64 = expired.iter().map(|e| e["packetsIn"].as_u64().unwrap()).sum();
            assert!(packets >= (SESSIONS * (PACKETS as usize + 1)) as u64, "{packets}");
            stop_pair(&hub, &edge).await;
        });
}

fn idle_sessions_expire_and_new_ones_open(transport: &str) {
    runtime().block_on(async {
        let (hub, edge, port) = echo_pair(transport, json!({ "udpIdleTimeoutMs": 300 })).await;
        let c = client().await;
        udp_ask_retry(&c, port, b"one").await;
        udp_ask_retry(&c, port, b"two").await;
        let expired = hub.events.wait_type("udp.expired").await;
        assert_eq!(expired["reason"], "idle");
        assert_eq!(expired["packetsIn"], 2);
        assert_eq!(expired["packetsOut"], 2);
        assert_eq!(expired["bytesIn"], 6);
        assert!(expired["durationMs"].as_u64().unwrap() >= 300);
        let edge_expired = edge.events.wait_type("udp.expired").await;
        assert_eq!(edge_expired["udpSessionId"], expired["udpSessionId"]);
        assert!(hub.events.of_type("udp.closed").is_empty());
        // The same client again is a new session.
        udp_ask_retry(&c, port, b"three").await;
        let reopened = hub.events.wait_nth("udp.opened", 1, |_| true).await;
        assert_ne!(reopened["udpSessionId"], expired["udpSessionId"]);
        stop_pair(&hub, &edge).await;
    });
}

fn session_cap_refuses_new_clients_and_keeps_old_ones(transport: &str) {
    runtime().block_on(async {
        let (hub, edge, port) = echo_pair(transport, json!({ "maxUdpSessionsPerEdge": 3 })).await;
        let mut clients = Vec::new();
        for i in 0..3 {
            let c = client().await;
            udp_ask_retry(&c, port, format!("c{i}").as_bytes()).await;
            clients.push(c);
        }
        let mut extras = Vec::new();
        for _ in 0..5 {
            let extra = client().await;
            extra
                .send_to(b"let me in", ("127.0.0.1", port))
                .await
                .unwrap();
            extras.push(extra);
        }
        let refused = edge.events.wait_type("udp.refused").await;
        assert_eq!(refused["reason"], "sessionCap");
        assert_eq!(refused["edgePort"], port);
        assert_eq!(refused["count"], 1);
        wait_until(|| {
            let status = edge.status_json();
            status["udpRefused"] == 5
        })
        .await;
        // Rate-limited: five refusals within a second make one event.
        assert_eq!(edge.events.of_type("udp.refused").len(), 1);
        assert_eq!(udp_ask(&extras[0], port, b"again").await, None);
        let status = edge.status_json();
        assert_eq!(status["udpSessions"], 3);
        assert_eq!(hub.status_json()["edges"][0]["udpSessions"], 3);
        for (i, c) in clients.iter().enumerate() {
            let msg = format!("still c{i}");
            assert_eq!(udp_ask_retry(c, port, msg.as_bytes()).await, msg.as_bytes());
        }
        stop_pair(&hub, &edge).await;
    });
}

fn hot_reload_adds_and_removes_udp_ports(transport: &str) {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (target, _seen) = udp_echo_target(true).await;
        let port_a = free_udp_port().await;
        let port_b = free_udp_port().await;
        let (hub, edge) = udp_pair(&id, port_a, target, transport, json!({})).await;
        let c = client().await;
        udp_ask_retry(&c, port_a, b"a1").await;

        // Add B: A's session is undisturbed, B works.
        let edges = vec![edge_entry_udp(
            "e1",
            "s",
            &[],
            &[port_a, port_b],
            Some(target),
        )];
        hub.update_edges(edges);
        let updated = edge.events.wait_type("ports.updated").await;
        assert_eq!(
            updated["listenPortsUdp"],
            json!([port_a.min(port_b), port_a.max(port_b)])
        );
        let d = client().await;
        assert_eq!(udp_ask_retry(&d, port_b, b"b1").await, b"b1");
        assert_eq!(udp_ask_retry(&c, port_a, b"a2").await, b"a2");
        hub.events.wait_nth("udp.opened", 1, |_| true).await;

        // Remove A: its session ends with portClosed, B keeps working.
        let edges = vec![edge_entry_udp("e1", "s", &[], &[port_b], Some(target))];
        hub.update_edges(edges);
        let closed = edge.events.wait_type("udp.closed").await;
        assert_eq!(closed["reason"], "portClosed");
        assert_eq!(closed["edgePort"], port_a);
        let closed = hub.events.wait_type("udp.closed").await;
        assert_eq!(closed["reason"], "portClosed");
        assert_eq!(udp_ask_retry(&d, port_b, b"b2").await, b"b2");
        assert_eq!(udp_ask(&c, port_a, b"a3").await, None);
        stop_pair(&hub, &edge).await;
    });
}

fn udp_and_tcp_share_the_tunnel_without_blocking_each_other(transport: &str) {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (udp_target, _seen) = udp_echo_target(false).await;
        let (tcp_target, _lines) = echo_target().await;
        let udp_port = free_udp_port().await;
        let tcp_port = free_port().await;
        let (hub, edge) = Setup::new(&id)
            .tcp(&[tcp_port])
            .udp(&[udp_port])
            .targets(json!({
                tcp_port.to_string(): format!("127.0.0.1:{tcp_target}"),
                udp_port.to_string(): format!("127.0.0.1:{udp_target}"),
            }))
            .hub(json!({ "proxyProtocolUdp": "none" }))
            .transport(transport)
            .start()
            .await;
        // A UDP flood (no pacing, nobody reads the replies) while a bulk TCP echo runs.
        let flood = tokio::spawn(async move {
            let sock = client().await;
            let payload = vec![7u8; 1200];
            let until = tokio::time::Instant::now() + Duration::from_millis(800);
            let mut sent = 0u64;
            while tokio::time::Instant::now() < until {
                for _ in 0..64 {
                    let _ = sock.send_to(&payload, ("127.0.0.1", udp_port)).await;
                    sent += 1;
                }
                tokio::task::yield_now().await;
            }
            sent
        });
        let data = random_bytes(4_000_000);
        let reply = tokio::time::timeout(Duration::from_secs(20), round_trip(tcp_port, &data))
            .await
            .expect("TCP stalled behind UDP")
            .unwrap();
        assert!(reply == data);
        let sent = flood.await.unwrap();
        let status = edge.status_json();
        eprintln!("{transport}: flood sent {sent}, edge status {status}");
        stop_pair(&hub, &edge).await;
    });
}

every_transport!(
    udp_echo_with_proxy_v2,
    udp_none_mode_sends_payload_only,
    many_concurrent_sessions_with_sequence_numbers,
    idle_sessions_expire_and_new_ones_open,
    session_cap_refuses_new_clients_and_keeps_old_ones,
    hot_reload_adds_and_removes_udp_ports,
    udp_and_tcp_share_the_tunnel_without_blocking_each_other
);
