//! Multi-hub high availability: secret verifiers, deferred admission (`hubAdmitEdge`), `hubDropEdge`,
//! and edge failover between hubs (rotation, no backoff on the first pass, gap hold).
mod common;

use common::*;
use portway_native::protocol::GoAwayReason;
use portway_native::runtime::runtime;
use serde_json::{json, Value};
use std::sync::Arc;

/// `v1:<salt>:<hmac>` for salt 00..0f and secret `s3cret` (the shared test vector).
const VECTOR_VERIFIER: &str =
    "v1:000102030405060708090a0b0c0d0e0f:db9d9b81ba204c066b3a124ca7e56a999b63d1885072ff2f115b7a4b8a5daed9";

fn verifier_entry(id: &str, verifier: &str, ports: &[u16], target: Option<u16>) -> Value {
    let mut entry = edge_entry(id, "unused", ports, target);
    let map = entry.as_object_mut().expect("entry is an object");
    map.remove("secret");
    map.insert("secretVerifier".into(), json!(verifier));
    entry
}

fn deferred(timeout_ms: u64) -> Value {
    json!({ "admission": "deferred", "admissionTimeoutMs": timeout_ms })
}

#[test]
fn verifier_authenticates_like_a_secret() {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (target, _lines) = echo_target().await;
        let port = free_port().await;
        let hub = start_hub(
            id.clone(),
            0,
            vec![verifier_entry("e1", VECTOR_VERIFIER, &[port], Some(target))],
            json!({}),
        )
        .await;
        let good = hub.edge("e1", "s3cret", json!({}));
        good.events.wait_type("ports.assigned").await;
        assert_echoes(port, 4096).await;

        let wrong = hub.edge("e1", "s3cret!", json!({}));
        let unknown = hub.edge("e2", "s3cret", json!({}));
        let a = wrong.events.wait_type("tunnel.rejected").await;
        let b = unknown.events.wait_type("tunnel.rejected").await;
        assert_eq!(a["reason"], "authFailed");
        assert_eq!((&a["reason"], &a["message"]), (&b["reason"], &b["message"]));
        // The good edge stays connected (a failed attempt with its id does not supersede it).
        assert_eq!(good.status_json()["connected"], true);

        // Switching from the verifier to a (different) clear secret drops the session.
        hub.update_edges(vec![edge_entry("e1", "other", &[port], Some(target))]);
        let gone = good.events.wait_type("tunnel.disconnected").await;
        assert_eq!(gone["reason"], "revoked");
        for edge in [good, wrong, unknown] {
            edge.edge.stop().await;
        }
        hub.hub.stop().await;
    });
}

fn deferred_admission_admit_and_refuse(transport: &str) {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (setup, port, _) = echo_setup(&id).await;
        let (hub, edge) = setup
            .hub(deferred(5_000))
            .transport(transport)
            .launch()
            .await;

        // First attempt: refused with notOwner.
        let admitting = hub.events.wait_type("edge.admitting").await;
        assert_eq!(admitting["edgeId"], "e1");
        let first = admitting["sessionId"].as_str().unwrap().to_string();
        assert!(hub
            .hub
            .admit_edge(&first, false, "notOwner", "owned by hub-2"));
        assert!(!hub.hub.admit_edge(&first, true, "", ""), "decided once");
        let refused = hub.events.wait_type("edge.refused").await;
        assert_eq!(refused["sessionId"], first.as_str());
        assert_eq!(refused["reason"], "notOwner");
        assert_eq!(refused["message"], "owned by hub-2");
        assert_eq!(refused["remoteAddr"], admitting["remoteAddr"]);
        let rejected = edge.events.wait_type("tunnel.rejected").await;
        assert_eq!(rejected["reason"], "notOwner");
        assert_eq!(rejected["message"], "owned by hub-2");
        assert!(hub.events.of_type("edge.connected").is_empty());

        // The edge retries; this time it is admitted.
        let again = hub
            .events
            .wait("edge.admitting", |e| e["sessionId"] != first.as_str())
            .await;
        let second = again["sessionId"].as_str().unwrap().to_string();
        assert!(hub.hub.admit_edge(&second, true, "", ""));
        let connected = hub.events.wait_type("edge.connected").await;
        assert_eq!(connected["sessionId"], second.as_str());
        let tunnel = edge.events.wait_type("tunnel.connected").await;
        assert_eq!(tunnel["sessionId"], second.as_str());
        edge.events.wait_type("ports.assigned").await;
        assert_echoes(port, 10_000).await;
        assert!(!hub.hub.admit_edge("no-such-session", true, "", ""));
        stop_pair(&hub, &edge).await;
    });
}

#[test]
fn deferred_admission_times_out_with_not_owner() {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (hub, edge) = Setup::new(&id).hub(deferred(300)).launch().await;
        let admitting = hub.events.wait_type("edge.admitting").await;
        let refused = hub.events.wait_type("edge.refused").await;
        assert_eq!(refused["sessionId"], admitting["sessionId"]);
        assert_eq!(refused["reason"], "admissionTimeout");
        let waited = refused["atMs"].as_u64().unwrap() - admitting["atMs"].as_u64().unwrap();
        assert!(waited >= 250, "refused after {waited} ms");
        let rejected = edge.events.wait_type("tunnel.rejected").await;
        assert_eq!(rejected["reason"], "notOwner");
        // Too late: the session no longer waits.
        let late = admitting["sessionId"].as_str().unwrap();
        assert!(!hub.hub.admit_edge(late, true, "", ""));
        // Wrong secrets never reach admission.
        let wrong = hub.edge("e1", "bad", json!({}));
        wrong.events.wait_type("tunnel.rejected").await;
        let admitted_ids: Vec<Value> = hub.events.of_type("edge.admitting");
        assert!(admitted_ids.iter().all(|e| e["edgeId"] == "e1"));
        edge.edge.stop().await;
        wrong.edge.stop().await;
        hub.hub.stop().await;
        assert!(hub.events.of_type("edge.connected").is_empty());
    });
}

fn drop_edge_closes_the_session_with_the_reason(transport: &str) {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (setup, port, _) = echo_setup(&id).await;
        let (hub, edge) = setup.transport(transport).start().await;
        // A stream held open across the drop.
        let mut held = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut held, b"x")
            .await
            .unwrap();
        hub.events.wait_type("stream.opened").await;
        assert!(!hub.hub.drop_edge("nobody", GoAwayReason::LeaseLost, "x"));
        assert!(hub
            .hub
            .drop_edge("e1", GoAwayReason::LeaseLost, "lease renewal failed"));
        let gone = hub.events.wait_type("edge.disconnected").await;
        assert_eq!(gone["reason"], "leaseLost");
        assert_eq!(gone["message"], "lease renewal failed");
        let closed = hub.events.wait_type("stream.closed").await;
        assert_eq!(closed["reason"], "tunnelLost");
        let seen = edge.events.wait_type("tunnel.disconnected").await;
        assert_eq!(seen["reason"], "leaseLost");
        // The only hub: the edge comes back to it.
        edge.events.wait_nth("tunnel.connected", 1, |_| true).await;
        assert!(hub
            .hub
            .drop_edge("e1", GoAwayReason::NotOwner, "owned elsewhere"));
        let gone = hub.events.wait_nth("edge.disconnected", 1, |_| true).await;
        assert_eq!(gone["reason"], "notOwner");
        stop_pair(&hub, &edge).await;
    });
}

every_transport!(
    deferred_admission_admit_and_refuse,
    drop_edge_closes_the_session_with_the_reason
);

// ---- failover -------------------------------------------------------------------------------------

fn hub_addr(port: u16) -> Value {
    json!({ "host": "127.0.0.1", "port": port })
}

/// An edge whose hubs are `ports`, in order.
fn start_multi_edge(ports: &[u16], id: &Identity, extra: Value) -> TestEdge {
    let mut config = json!({ "hubs": ports.iter().map(|p| hub_addr(*p)).collect::<Vec<_>>() });
    merge(&mut config, extra);
    start_edge(ports[0], "e1", "s", Some(&id.fingerprint), config)
}

/// Hubs `hub-a` and `hub-b` (config keys `extra_a` / `extra_b`) that both serve edge `e1`, whose
/// TCP `port` goes to an echo target.
struct TwoHubs {
    id: Arc<Identity>,
    port: u16,
    a: TestHub,
    b: TestHub,
}

async fn two_hubs(extra_a: Value, extra_b: Value) -> TwoHubs {
    let id = Arc::new(identity());
    let (setup, port, _) = echo_setup(&id).await;
    let hub_a = setup.clone().hub(json!({ "hubId": "hub-a" })).hub(extra_a);
    let hub_b = setup.hub(json!({ "hubId": "hub-b" })).hub(extra_b);
    let (a, b) = (hub_a.start_hub().await, hub_b.start_hub().await);
    TwoHubs { id, port, a, b }
}

impl TwoHubs {
    /// Edge `e1` whose hubs are A, then B.
    fn edge(&self, extra: Value) -> TestEdge {
        start_multi_edge(&[self.a.port, self.b.port], &self.id, extra)
    }

    /// Stops `edge`, then both hubs.
    async fn stop(&self, edge: &TestEdge) {
        edge.edge.stop().await;
        self.a.hub.stop().await;
        self.b.hub.stop().await;
    }
}

fn fails_over_at_once_when_the_hub_stops(transport: &str) {
    runtime().block_on(async {
        let hubs = two_hubs(json!({}), json!({})).await;
        let TwoHubs { port, a, b, .. } = &hubs;
        let edge = hubs.edge(transport_extra(transport));
        let first = edge.events.wait_type("tunnel.connected").await;
        assert_eq!(first["hubId"], "hub-a");
        assert_eq!(first["failover"], false);
        edge.events.wait_type("ports.assigned").await;
        assert_echoes(*port, 20_000).await;

        let stopped_at = tokio::time::Instant::now();
        a.hub.stop().await;
        let gone = edge.events.wait_type("tunnel.disconnected").await;
        assert_eq!(gone["reason"], "hubShutdown");
        assert_eq!(gone["retryInMs"], 0, "the other hub is tried at once");
        let second = edge.events.wait_nth("tunnel.connected", 1, |_| true).await;
        assert_eq!(second["hubId"], "hub-b");
        assert_eq!(second["failover"], true);
        assert_echoes(*port, 20_000).await;
        let took = stopped_at.elapsed();
        assert!(took < std::time::Duration::from_secs(3), "took {took:?}");
        let status = edge.status_json();
        assert_eq!(status["hubId"], "hub-b");
        edge.edge.stop().await;
        b.hub.stop().await;
    });
}

/// A TCP relay in front of a hub that can go silent (a dead host: no FIN, no RST, nothing).
struct Blackhole {
    port: u16,
    frozen: tokio::sync::watch::Sender<bool>,
}

async fn blackhole_proxy(upstream: u16) -> Blackhole {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let frozen = tokio::sync::watch::channel(false).0;
    let watch = frozen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let mut stop = watch.subscribe();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let relay = async {
                    tokio::join!(
                        tokio::io::copy(&mut cr, &mut sw),
                        tokio::io::copy(&mut sr, &mut cw)
                    )
                };
                tokio::select! {
                    _ = relay => {}
                    _ = async { let _ = stop.wait_for(|f| *f).await; } => {
                        // Keep both sockets open and silent until the test ends.
                        std::future::pending::<()>().await;
                    }
                }
            });
        }
    });
    Blackhole { port, frozen }
}

#[test]
fn a_silent_hub_is_detected_and_the_edge_moves_within_3_s() {
    runtime().block_on(async {
        // Hub A asks for slow liveness; with two hubs the edge keeps its own faster one.
        let slow = json!({ "pingIntervalMs": 5000, "idleTimeoutMs": 15000 });
        let hubs = two_hubs(slow, json!({})).await;
        let proxy = blackhole_proxy(hubs.a.port).await;
        let liveness = json!({ "pingIntervalMs": 500, "idleTimeoutMs": 2000 });
        let edge = start_multi_edge(&[proxy.port, hubs.b.port], &hubs.id, liveness);
        let first = edge.events.wait_type("tunnel.connected").await;
        assert_eq!(first["hubId"], "hub-a");
        edge.events.wait_type("ports.assigned").await;

        let died_at = tokio::time::Instant::now();
        proxy.frozen.send_replace(true);
        let gone = edge.events.wait_type("tunnel.disconnected").await;
        assert_eq!(gone["reason"], "timeout");
        let second = edge.events.wait_nth("tunnel.connected", 1, |_| true).await;
        assert_eq!(second["hubId"], "hub-b");
        assert_eq!(second["failover"], true);
        assert_echoes(hubs.port, 5_000).await;
        let took = died_at.elapsed();
        assert!(took < std::time::Duration::from_secs(3), "took {took:?}");
        hubs.stop(&edge).await;
    });
}

#[test]
fn not_owner_sends_the_edge_to_the_next_hub_at_once() {
    runtime().block_on(async {
        let hubs = two_hubs(deferred(5_000), json!({})).await;
        let edge = hubs.edge(json!({}));
        let admitting = hubs.a.events.wait_type("edge.admitting").await;
        let session = admitting["sessionId"].as_str().unwrap();
        assert!(hubs
            .a
            .hub
            .admit_edge(session, false, "notOwner", "hub-b owns e1"));
        let rejected = edge.events.wait_type("tunnel.rejected").await;
        assert_eq!(rejected["reason"], "notOwner");
        assert_eq!(rejected["retryInMs"], 0);
        let connected = edge.events.wait_type("tunnel.connected").await;
        assert_eq!(connected["hubId"], "hub-b");
        // The first session of the edge: not a failover.
        assert_eq!(connected["failover"], false);
        edge.events.wait_type("ports.assigned").await;
        assert_echoes(hubs.port, 1_000).await;
        hubs.stop(&edge).await;
    });
}

#[test]
fn drop_edge_moves_the_edge_to_the_other_hub() {
    runtime().block_on(async {
        let hubs = two_hubs(json!({}), json!({})).await;
        let edge = hubs.edge(json!({}));
        edge.events.wait_type("ports.assigned").await;
        assert!(hubs
            .a
            .hub
            .drop_edge("e1", GoAwayReason::LeaseLost, "lease lost"));
        let gone = edge.events.wait_type("tunnel.disconnected").await;
        assert_eq!(gone["reason"], "leaseLost");
        assert_eq!(gone["retryInMs"], 0);
        let moved = edge.events.wait_nth("tunnel.connected", 1, |_| true).await;
        assert_eq!(moved["hubId"], "hub-b");
        assert_eq!(moved["failover"], true);
        hubs.b.events.wait_type("edge.connected").await;
        assert_echoes(hubs.port, 1_000).await;
        hubs.stop(&edge).await;
    });
}

#[test]
fn a_client_in_the_gap_is_relayed_once_a_tunnel_returns() {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (setup, port, _) = echo_setup(&id).await;
        let later_port = free_port().await;
        let hub_a = setup
            .clone()
            .hub(json!({ "hubId": "hub-a" }))
            .start_hub()
            .await;
        let edge = start_multi_edge(&[hub_a.port, later_port], &id, json!({}));
        edge.events.wait_type("ports.assigned").await;
        hub_a.hub.stop().await;
        edge.events.wait_type("tunnel.disconnected").await;
        // Nothing is up now; this client is held (not refused) ...
        let client = tokio::spawn(round_trip(port, b"held through the gap"));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!client.is_finished());
        // ... until a hub comes up.
        let hub_b = setup
            .hub(json!({ "hubId": "hub-b" }))
            .hub_port(later_port)
            .start_hub()
            .await;
        let echoed = tokio::time::timeout(WAIT, client).await.unwrap().unwrap();
        assert_eq!(echoed.unwrap(), b"held through the gap");
        let status = edge.status_json();
        assert_eq!(status["gapRefused"], 0);
        edge.edge.stop().await;
        hub_b.hub.stop().await;
    });
}

#[test]
fn a_client_in_a_long_gap_is_reset_and_counted() {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let (setup, port, _) = echo_setup(&id).await;
        let (hub, edge) = setup.edge(json!({ "gapHoldMs": 300 })).start().await;
        hub.hub.stop().await;
        edge.events.wait_type("tunnel.disconnected").await;
        let started = tokio::time::Instant::now();
        let mut results = Vec::new();
        for _ in 0..3 {
            results.push(tokio::spawn(round_trip(port, b"nobody home")));
        }
        for result in results {
            let outcome = tokio::time::timeout(WAIT, result).await.unwrap().unwrap();
            let err = outcome.expect_err("reset, not an echo");
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
        }
        assert!(started.elapsed() >= std::time::Duration::from_millis(250));
        let refused = edge.events.wait_type("stream.refused").await;
        assert_eq!(refused["reason"], "noTunnel");
        assert_eq!(refused["edgePort"], port);
        assert_eq!(refused["count"], 1);
        wait_until(|| edge.status_json()["gapRefused"] == 3).await;
        // Rate-limited: one event for the burst.
        assert_eq!(edge.events.of_type("stream.refused").len(), 1);
        edge.edge.stop().await;
    });
}

every_transport!(fails_over_at_once_when_the_hub_stops);
