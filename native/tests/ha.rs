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
        let good = start_edge(hub.port, "e1", "s3cret", Some(&id.fingerprint), json!({}));
        good.events.wait_type("ports.assigned").await;
        let data = random_bytes(4096);
        assert_eq!(round_trip(port, &data).await.unwrap(), data);

        let wrong = start_edge(hub.port, "e1", "s3cret!", Some(&id.fingerprint), json!({}));
        let unknown = start_edge(hub.port, "e2", "s3cret", Some(&id.fingerprint), json!({}));
        let a = wrong.events.wait_type("tunnel.rejected").await;
        let b = unknown.events.wait_type("tunnel.rejected").await;
        assert_eq!(a["reason"], "authFailed");
        assert_eq!((&a["reason"], &a["message"]), (&b["reason"], &b["message"]));
        // The good edge stays connected (a failed attempt with its id does not supersede it).
        assert_eq!(
            serde_json::to_value(good.edge.status()).unwrap()["connected"],
            true
        );

        // Switching from the verifier to a (different) clear secret drops the session.
        hub.hub
            .update_edges(
                portway_native::config::parse_edges(
                    &json!([edge_entry("e1", "other", &[port], Some(target))]).to_string(),
                )
                .unwrap(),
            )
            .unwrap();
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
        let (target, _lines) = echo_target().await;
        let port = free_port().await;
        let hub = start_hub(
            id.clone(),
            0,
            vec![edge_entry("e1", "s", &[port], Some(target))],
            deferred(5_000),
        )
        .await;
        let extra = transport_extra(transport);
        let edge = start_edge(hub.port, "e1", "s", Some(&id.fingerprint), extra);

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
        let data = random_bytes(10_000);
        assert_eq!(round_trip(port, &data).await.unwrap(), data);
        assert!(!hub.hub.admit_edge("no-such-session", true, "", ""));
        edge.edge.stop().await;
        hub.hub.stop().await;
    });
}

#[test]
fn deferred_admission_times_out_with_not_owner() {
    runtime().block_on(async {
        let id = Arc::new(identity());
        let hub = start_hub(
            id.clone(),
            0,
            vec![edge_entry("e1", "s", &[], None)],
            deferred(300),
        )
        .await;
        let edge = start_edge(hub.port, "e1", "s", Some(&id.fingerprint), json!({}));
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
        let wrong = start_edge(hub.port, "e1", "bad", Some(&id.fingerprint), json!({}));
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
        let (target, _lines) = echo_target().await;
        let port = free_port().await;
        let hub = start_hub(
            id.clone(),
            0,
            vec![edge_entry("e1", "s", &[port], Some(target))],
            json!({}),
        )
        .await;
        let edge = start_edge(
            hub.port,
            "e1",
            "s",
            Some(&id.fingerprint),
            transport_extra(transport),
        );
        edge.events.wait_type("ports.assigned").await;
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
        edge.edge.stop().await;
        hub.hub.stop().await;
    });
}

every_transport!(
    deferred_admission_admit_and_refuse,
    drop_edge_closes_the_session_with_the_reason
);
