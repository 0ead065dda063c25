//! Helpers for the tunnel integration tests: a hub and edge on loopback with free ports, event
//! collectors that wait for events (no fixed sleeps), and small target servers.
#![allow(dead_code)]

use portway_native::config::{parse_edge_config, parse_hub_config};
use portway_native::edge::Edge;
use portway_native::events::EventSink;
use portway_native::hub::Hub;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub const WAIT: Duration = Duration::from_secs(10);

/// Collects delivered events and checks that `seq` is contiguous from 1.
#[derive(Clone, Default)]
pub struct Events {
    inner: Arc<EventsInner>,
}

#[derive(Default)]
struct EventsInner {
    list: Mutex<Vec<Value>>,
    batches: Mutex<usize>,
    changed: Notify,
}

impl Events {
    pub fn sink(&self) -> EventSink {
        let inner = self.inner.clone();
        EventSink::start(Arc::new(move |batch: String| {
            let batch: Value = serde_json::from_str(&batch).expect("batch is JSON");
            let mut list = inner.list.lock().unwrap();
            let expected = list.len() as u64 + 1;
            assert_eq!(batch["firstSeq"].as_u64(), Some(expected), "seq gap");
            for (i, event) in batch["events"]
                .as_array()
                .expect("events array")
                .iter()
                .enumerate()
            {
                assert_eq!(event["seq"].as_u64(), Some(expected + i as u64));
                list.push(event.clone());
            }
            *inner.batches.lock().unwrap() += 1;
            inner.changed.notify_waiters();
        }))
    }

    pub fn all(&self) -> Vec<Value> {
        self.inner.list.lock().unwrap().clone()
    }

    pub fn of_type(&self, ty: &str) -> Vec<Value> {
        self.all().into_iter().filter(|e| e["type"] == ty).collect()
    }

    pub fn batches(&self) -> usize {
        *self.inner.batches.lock().unwrap()
    }

    /// Waits for the `nth` (0-based) event of type `ty` that matches `pred`.
    pub async fn wait_nth(&self, ty: &str, nth: usize, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(e) = self.of_type(ty).into_iter().filter(|e| pred(e)).nth(nth) {
                return e;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "timed out waiting for {ty} (#{nth}); events so far: {:#?}",
                    self.all()
                );
            }
        }
    }

    pub async fn wait(&self, ty: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_nth(ty, 0, pred).await
    }

    pub async fn wait_type(&self, ty: &str) -> Value {
        self.wait(ty, |_| true).await
    }
}

pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub fingerprint: String,
}

pub fn identity() -> Identity {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    Identity {
        fingerprint: portway_native::transport::tls::fingerprint_der(generated.cert.der()),
        cert_pem: generated.cert.pem(),
        key_pem: generated.key_pair.serialize_pem(),
    }
}

pub async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn edge_entry(id: &str, secret: &str, ports: &[u16], target: Option<u16>) -> Value {
    let targets: serde_json::Map<String, Value> = match target {
        Some(t) => ports
            .iter()
            .map(|p| (p.to_string(), json!(format!("127.0.0.1:{t}"))))
            .collect(),
        None => Default::default(),
    };
    json!({ "id": id, "secret": secret, "listenPorts": ports, "listenPortsUdp": [], "targets": targets, "stunIntervalSecs": 300 })
}

pub struct TestHub {
    pub hub: Hub,
    pub events: Events,
    pub port: u16,
    pub id: Arc<Identity>,
}

pub async fn start_hub(id: Arc<Identity>, port: u16, edges: Vec<Value>, extra: Value) -> TestHub {
    let mut config = json!({
        "hubId": "hub-1", "bindHost": "127.0.0.1", "tunnelPort": port, "targetHost": "127.0.0.1",
        "proxyProtocolTcp": "v1", "proxyProtocolUdp": "v2", "certPem": id.cert_pem, "keyPem": id.key_pem,
        "pingIntervalMs": 200, "idleTimeoutMs": 2000, "handshakeTimeoutMs": 1000, "targetConnectTimeoutMs": 1000,
        "edges": edges,
    });
    merge(&mut config, extra);
    let events = Events::default();
    let settings = parse_hub_config(&config.to_string()).unwrap();
    let hub = Hub::start(settings, events.sink()).await.unwrap();
    let port = hub.port();
    TestHub {
        hub,
        events,
        port,
        id,
    }
}

pub struct TestEdge {
    pub edge: Edge,
    pub events: Events,
}

pub fn start_edge(
    hub_port: u16,
    edge_id: &str,
    secret: &str,
    fingerprint: Option<&str>,
    extra: Value,
) -> TestEdge {
    let mut config = json!({
        "hubs": [{ "host": "127.0.0.1", "port": hub_port }], "edgeId": edge_id, "secret": secret,
        "bindAddress": "127.0.0.1", "hubCertFingerprint": fingerprint, "caPem": null, "serverName": null,
        "pingIntervalMs": 200, "idleTimeoutMs": 2000, "reconnectInitialMs": 50, "reconnectMaxMs": 200,
    });
    merge(&mut config, extra);
    let events = Events::default();
    let settings = parse_edge_config(&config.to_string()).unwrap();
    let edge = Edge::start(settings, events.sink()).unwrap();
    TestEdge { edge, events }
}

fn merge(into: &mut Value, extra: Value) {
    if let (Some(into), Value::Object(extra)) = (into.as_object_mut(), extra) {
        into.extend(extra);
    }
}

/// Echo target: reads the PROXY v1 line (reported on the channel), then echoes until EOF, then closes.
pub async fn echo_target() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let line = read_proxy_line(&mut sock).await;
                let _ = tx.send(line);
                let (mut rd, mut wr) = sock.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    (port, rx)
}

pub async fn read_proxy_line(sock: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if sock.read_exact(&mut byte).await.is_err() {
            break;
        }
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).trim_end().to_string()
}

/// Sends `data`, half-closes, and reads everything back until EOF.
pub async fn round_trip(port: u16, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let sock = TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut rd, mut wr) = sock.into_split();
    let data = data.to_vec();
    let writer = tokio::spawn(async move {
        wr.write_all(&data).await?;
        wr.shutdown().await
    });
    let mut out = Vec::new();
    rd.read_to_end(&mut out).await?;
    writer.await.unwrap()?;
    Ok(out)
}

pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::Rng::fill(&mut rand::thread_rng(), &mut v[..]);
    v
}
