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

impl TestHub {
    /// The hub's status as JSON.
    pub fn status_json(&self) -> Value {
        serde_json::to_value(self.hub.status()).unwrap()
    }

    /// Starts an edge of this hub that pins the hub's certificate.
    pub fn edge(&self, edge_id: &str, secret: &str, extra: Value) -> TestEdge {
        start_edge(
            self.port,
            edge_id,
            secret,
            Some(&self.id.fingerprint),
            extra,
        )
    }

    /// Replaces the hub's edge entries (hot reload).
    pub fn update_edges(&self, entries: Vec<Value>) {
        let parsed =
            portway_native::config::parse_edges(&Value::from(entries).to_string()).unwrap();
        self.hub.update_edges(parsed).unwrap();
    }
}

impl TestEdge {
    /// The edge's status as JSON.
    pub fn status_json(&self) -> Value {
        serde_json::to_value(self.edge.status()).unwrap()
    }
}

/// Stops the edge, then the hub.
pub async fn stop_pair(hub: &TestHub, edge: &TestEdge) {
    edge.edge.stop().await;
    hub.hub.stop().await;
}

/// The usual scenario: one hub and one edge `e1` (secret `s`, pinned), with the edge's TCP and UDP
/// ports going to one target (or to per-port `targets`). `Setup::new(&id).tcp(&[p]).target(t)
/// .transport("quic").start()`.
#[derive(Clone)]
pub struct Setup {
    id: Arc<Identity>,
    hub_port: u16,
    tcp: Vec<u16>,
    udp: Vec<u16>,
    target: Option<u16>,
    targets: Option<Value>,
    entry_extra: Value,
    hub_extra: Value,
    edge_extra: Value,
}

impl Setup {
    pub fn new(id: &Arc<Identity>) -> Self {
        Setup {
            id: id.clone(),
            hub_port: 0,
            tcp: Vec::new(),
            udp: Vec::new(),
            target: None,
            targets: None,
            entry_extra: json!({}),
            hub_extra: json!({}),
            edge_extra: json!({}),
        }
    }

    /// The hub's tunnel port (default: any free one).
    pub fn hub_port(mut self, port: u16) -> Self {
        self.hub_port = port;
        self
    }

    /// The edge's TCP ports.
    pub fn tcp(mut self, ports: &[u16]) -> Self {
        self.tcp = ports.to_vec();
        self
    }

    /// The edge's UDP ports.
    pub fn udp(mut self, ports: &[u16]) -> Self {
        self.udp = ports.to_vec();
        self
    }

    /// The target of every port.
    pub fn target(mut self, port: u16) -> Self {
        self.target = Some(port);
        self
    }

    /// One target per port: `{ "<edge port>": "host:port", ... }`.
    pub fn targets(mut self, targets: Value) -> Self {
        self.targets = Some(targets);
        self
    }

    /// Keys of the edge entry to add or replace (e.g. `stunIntervalSecs`).
    pub fn entry_keys(mut self, extra: Value) -> Self {
        merge(&mut self.entry_extra, extra);
        self
    }

    /// Hub config keys to add or replace.
    pub fn hub(mut self, extra: Value) -> Self {
        merge(&mut self.hub_extra, extra);
        self
    }

    /// Edge config keys to add or replace.
    pub fn edge(mut self, extra: Value) -> Self {
        merge(&mut self.edge_extra, extra);
        self
    }

    /// The edge's transport (`"tcpTls"` | `"quic"` | `"quicWithFallback"`).
    pub fn transport(self, transport: &str) -> Self {
        self.edge(transport_extra(transport))
    }

    /// The edge entry this setup gives the hub.
    pub fn entry(&self) -> Value {
        let mut entry = edge_entry_udp("e1", "s", &self.tcp, &self.udp, self.target);
        if let Some(targets) = &self.targets {
            entry["targets"] = targets.clone();
        }
        merge(&mut entry, self.entry_extra.clone());
        entry
    }

    /// Starts the hub only (for hand-driven edges).
    pub async fn start_hub(&self) -> TestHub {
        start_hub(
            self.id.clone(),
            self.hub_port,
            vec![self.entry()],
            self.hub_extra.clone(),
        )
        .await
    }

    /// Starts the hub and the edge without waiting for the edge.
    pub async fn launch(self) -> (TestHub, TestEdge) {
        let hub = self.start_hub().await;
        let edge = hub.edge("e1", "s", self.edge_extra);
        (hub, edge)
    }

    /// Starts the hub and the edge; returns once the edge has reported `ports.assigned` (its
    /// listeners are bound).
    pub async fn start(self) -> (TestHub, TestEdge) {
        let (hub, edge) = self.launch().await;
        edge.events.wait_type("ports.assigned").await;
        (hub, edge)
    }
}

/// Hub + edge over `transport` whose TCP `port` goes to `target`; once `ports.assigned`.
pub async fn tcp_pair(
    id: &Arc<Identity>,
    port: u16,
    target: u16,
    transport: &str,
) -> (TestHub, TestEdge) {
    let setup = Setup::new(id).tcp(&[port]).target(target);
    setup.transport(transport).start().await
}

/// Hub (with config keys `hub_extra`) + edge over `transport` whose UDP `port` goes to `target`;
/// once `ports.assigned`.
pub async fn udp_pair(
    id: &Arc<Identity>,
    port: u16,
    target: u16,
    transport: &str,
    hub_extra: Value,
) -> (TestHub, TestEdge) {
    let setup = Setup::new(id).udp(&[port]).target(target).hub(hub_extra);
    setup.transport(transport).start().await
}

/// Adds (or replaces) the keys of `extra` in the object `into`.
pub fn merge(into: &mut Value, extra: Value) {
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

/// Sends `len` random bytes to `port`, half-closes, and asserts that exactly they come back.
pub async fn assert_echoes(port: u16, len: usize) {
    let data = random_bytes(len);
    assert_eq!(round_trip(port, &data).await.unwrap(), data);
}

/// The start of most TCP scenarios: an echo target and a free edge port. Returns a `Setup` whose
/// TCP port goes to the target, the edge port and the target's port.
pub async fn echo_setup(id: &Arc<Identity>) -> (Setup, u16, u16) {
    let (target, _lines) = echo_target().await;
    let port = free_port().await;
    (Setup::new(id).tcp(&[port]).target(target), port, target)
}

/// An edge entry with UDP ports; `target` (if any) is the target of every port, TCP and UDP.
pub fn edge_entry_udp(
    id: &str,
    secret: &str,
    tcp: &[u16],
    udp: &[u16],
    target: Option<u16>,
) -> Value {
    let mut entry = edge_entry(id, secret, tcp, target);
    entry["listenPortsUdp"] = json!(udp);
    if let Some(t) = target {
        for p in udp {
            entry["targets"][p.to_string()] = json!(format!("127.0.0.1:{t}"));
        }
    }
    entry
}

pub async fn free_udp_port() -> u16 {
    tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A parsed PROXY v2 header as a UDP target sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyV2 {
    /// Low nibble of byte 13: 1 = STREAM, 2 = DGRAM; high nibble: 1 = INET, 2 = INET6.
    pub family_transport: u8,
    pub src: std::net::SocketAddr,
    pub dst: std::net::SocketAddr,
}

pub fn parse_proxy_v2(d: &[u8]) -> Option<ProxyV2> {
    const SIG: [u8; 12] = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
    ];
    if d.len() < 16 || d[..12] != SIG || d[12] != 0x21 {
        return None;
    }
    let len = u16::from_be_bytes([d[14], d[15]]) as usize;
    if d.len() != 16 + len {
        return None;
    }
    let a = &d[16..];
    let (src, dst) = match d[13] >> 4 {
        1 if len >= 12 => {
            let ip = |o: usize| std::net::Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]);
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            (
                std::net::SocketAddr::from((ip(0), port(8))),
                std::net::SocketAddr::from((ip(4), port(10))),
            )
        }
        2 if len >= 36 => {
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[o..o + 16]);
                std::net::Ipv6Addr::from(b)
            };
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            (
                std::net::SocketAddr::from((ip(0), port(32))),
                std::net::SocketAddr::from((ip(16), port(34))),
            )
        }
        _ => return None,
    };
    Some(ProxyV2 {
        family_transport: d[13],
        src,
        dst,
    })
}

/// What a UDP echo target saw from one upstream address.
#[derive(Debug, Clone)]
pub struct UdpPeerSeen {
    pub upstream: std::net::SocketAddr,
    pub header: Option<ProxyV2>,
    pub first_payload: Vec<u8>,
}

/// UDP echo target. With `expect_proxy`, the first datagram from every new source must be a PROXY
/// v2 header (reported, not echoed); without, every datagram is echoed. Each new source is
/// reported once on the channel.
pub async fn udp_echo_target(
    expect_proxy: bool,
) -> (u16, tokio::sync::mpsc::UnboundedReceiver<UdpPeerSeen>) {
    let sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let port = sock.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut seen: std::collections::HashMap<std::net::SocketAddr, Option<ProxyV2>> =
            Default::default();
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let data = &buf[..n];
            match seen.get(&from) {
                None if expect_proxy => {
                    let header = parse_proxy_v2(data);
                    seen.insert(from, header.clone());
                    if header.is_none() {
                        let _ = tx.send(UdpPeerSeen {
                            upstream: from,
                            header: None,
                            first_payload: data.to_vec(),
                        });
                    }
                    continue;
                }
                None => {
                    seen.insert(from, None);
                    let _ = tx.send(UdpPeerSeen {
                        upstream: from,
                        header: None,
                        first_payload: data.to_vec(),
                    });
                }
                Some(Some(header)) => {
                    let header = header.clone();
                    // Report the session once its first payload arrives.
                    seen.insert(from, None);
                    let _ = tx.send(UdpPeerSeen {
                        upstream: from,
                        header: Some(header),
                        first_payload: data.to_vec(),
                    });
                }
                Some(None) => {}
            }
            let _ = sock.send_to(data, from).await;
        }
    });
    (port, rx)
}

/// Sends `data` from `sock` to the edge port and waits for one reply (bounded wait).
pub async fn udp_ask(sock: &tokio::net::UdpSocket, port: u16, data: &[u8]) -> Option<Vec<u8>> {
    sock.send_to(data, ("127.0.0.1", port)).await.ok()?;
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

/// `udp_ask` with retries (the first datagrams of a session may race the hub's upstream setup).
pub async fn udp_ask_retry(sock: &tokio::net::UdpSocket, port: u16, data: &[u8]) -> Vec<u8> {
    for _ in 0..5 {
        if let Some(reply) = udp_ask(sock, port, data).await {
            return reply;
        }
    }
    panic!("no UDP reply from edge port {port}");
}

/// Polls `cond` (every 10 ms) until it holds; panics after `WAIT`.
pub async fn wait_until(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Edge config selecting a transport (`"tcpTls"` | `"quic"` | `"quicWithFallback"`).
pub fn transport_extra(transport: &str) -> Value {
    json!({ "transportMode": transport })
}

/// Generates one test per transport for each scenario function `fn name(transport: &str)`:
/// `name::tcp_tls` and `name::quic`.
#[macro_export]
macro_rules! every_transport {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn tcp_tls() {
                    super::$name("tcpTls")
                }
                #[test]
                fn quic() {
                    super::$name("quic")
                }
            }
        )*
    };
}

/// A child process that is killed when the test ends, however it ends.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `program` runs (called with `arg`, e.g. `--version`).
pub fn installed(program: &str, arg: &str) -> bool {
    std::process::Command::new(program)
        .arg(arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// The bytes of a Hello from `edge_id` with `secret` and `capabilities`.
pub fn hello_bytes(edge_id: &str, secret: &str, capabilities: u32) -> bytes::BytesMut {
    use portway_native::protocol::{handshake::encode_hello, Hello, PROTOCOL_VERSION};
    let mut out = bytes::BytesMut::new();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        edge_id: edge_id.into(),
        secret: secret.into(),
        capabilities,
    };
    encode_hello(&hello, &mut out);
    out
}
