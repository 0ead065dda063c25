//! Lifecycle events: numbered (`seq` from 1, +1 each), time-stamped (`atMs`) and delivered to JS in
//! batches of JSON (`{firstSeq, events:[...]}`), one delivery per batch.
use crate::runtime::{epoch_ms, runtime};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// A batch is delivered once this many events are queued...
pub const MAX_BATCH: usize = 256;
/// ...or this long after the first event of the batch was queued.
pub const BATCH_DELAY: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum Event {
    #[serde(rename = "hub.listening")]
    HubListening { port: u16 },
    #[serde(rename = "hub.stopped")]
    HubStopped {},
    #[serde(rename = "edge.connected")]
    EdgeConnected {
        edge_id: String,
        session_id: String,
        remote_addr: String,
    },
    /// `admission: "deferred"`: an edge authenticated and waits for `hubAdmitEdge`.
    #[serde(rename = "edge.admitting")]
    EdgeAdmitting {
        edge_id: String,
        session_id: String,
        remote_addr: String,
    },
    /// `admission: "deferred"`: the edge was refused (`hubAdmitEdge` false, or timeout) and told
    /// `notOwner`. `reason` is the one given to `hubAdmitEdge`, `admissionTimeout` or `ioError`.
    #[serde(rename = "edge.refused")]
    EdgeRefused {
        edge_id: String,
        session_id: String,
        remote_addr: String,
        reason: String,
        message: String,
    },
    #[serde(rename = "edge.authFailed")]
    EdgeAuthFailed {
        remote_addr: String,
        claimed_edge_id: Option<String>,
        reason: &'static str,
    },
    #[serde(rename = "edge.disconnected")]
    EdgeDisconnected {
        edge_id: String,
        session_id: String,
        reason: &'static str,
        message: String,
    },
    #[serde(rename = "edge.configPushed")]
    EdgeConfigPushed {
        edge_id: String,
        session_id: String,
        listen_ports: Vec<u16>,
        listen_ports_udp: Vec<u16>,
    },
    #[serde(rename = "stream.opened")]
    StreamOpened {
        edge_id: String,
        session_id: String,
        stream_id: u32,
        edge_port: u16,
        client_addr: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
    #[serde(rename = "stream.closed")]
    StreamClosed {
        edge_id: String,
        session_id: String,
        stream_id: u32,
        edge_port: u16,
        client_addr: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        bytes_in: u64,
        bytes_out: u64,
        duration_ms: u64,
        reason: &'static str,
        message: String,
    },
    #[serde(rename = "tunnel.protocolError")]
    TunnelProtocolError {
        remote_addr: String,
        edge_id: Option<String>,
        session_id: Option<String>,
        message: String,
    },
    #[serde(rename = "tunnel.connecting")]
    TunnelConnecting { hub: String, attempt: u64 },
    #[serde(rename = "tunnel.connected")]
    TunnelConnected {
        hub: String,
        hub_id: String,
        session_id: String,
        hub_fingerprint: String,
        pinned: bool,
        /// `"tcpTls"` or `"quic"`.
        transport: &'static str,
        /// The previous session was with a different hub.
        failover: bool,
    },
    /// Client connections reset because no tunnel came up within `gapHoldMs`; at most one event
    /// per second, `count` = refusals since the previous event (this one included).
    #[serde(rename = "stream.refused")]
    StreamRefused {
        edge_port: u16,
        client_addr: String,
        reason: &'static str,
        count: u64,
    },
    /// `quicWithFallback`: QUIC did not connect in time (or failed), TLS is used for this attempt.
    #[serde(rename = "tunnel.fallback")]
    TunnelFallback {
        hub: String,
        from: &'static str,
        to: &'static str,
        reason: &'static str,
        message: String,
    },
    /// STUN: the edge's public address (as a STUN server sees it) is new or changed.
    #[serde(rename = "publicIp.discovered")]
    PublicIpDiscovered {
        ip: String,
        port: u16,
        server: String,
    },
    #[serde(rename = "tunnel.unpinned")]
    TunnelUnpinned {
        hub: String,
        hub_fingerprint: String,
    },
    #[serde(rename = "tunnel.disconnected")]
    TunnelDisconnected {
        hub: String,
        reason: &'static str,
        message: String,
        retry_in_ms: Option<u64>,
    },
    #[serde(rename = "tunnel.rejected")]
    TunnelRejected {
        hub: String,
        reason: &'static str,
        message: String,
        retry_in_ms: Option<u64>,
    },
    #[serde(rename = "ports.assigned")]
    PortsAssigned {
        listen_ports: Vec<u16>,
        listen_ports_udp: Vec<u16>,
    },
    #[serde(rename = "ports.updated")]
    PortsUpdated {
        listen_ports: Vec<u16>,
        listen_ports_udp: Vec<u16>,
        added: Vec<u16>,
        removed: Vec<u16>,
    },
    #[serde(rename = "listener.error")]
    ListenerError {
        port: u16,
        protocol: &'static str,
        code: String,
        message: String,
    },
    /// Hub and edge: a UDP session started (`target` on the hub only).
    #[serde(rename = "udp.opened")]
    UdpOpened {
        edge_id: String,
        session_id: String,
        udp_session_id: u32,
        edge_port: u16,
        client_addr: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
    /// A UDP session ended after its idle timeout (reason `idle`).
    #[serde(rename = "udp.expired")]
    UdpExpired(UdpSessionEnd),
    /// A UDP session ended for another reason.
    #[serde(rename = "udp.closed")]
    UdpClosed(UdpSessionEnd),
    /// New UDP sessions were refused; at most one event per second per edge, `count` = refusals
    /// since the previous event (this one included).
    #[serde(rename = "udp.refused")]
    UdpRefused {
        edge_id: String,
        edge_port: u16,
        client_addr: String,
        reason: &'static str,
        count: u64,
    },
    /// Datagrams too large for the tunnel (or the target path) were dropped; rate-limited like
    /// `udp.refused`. `maxSize` is the limit when known.
    #[serde(rename = "udp.oversized")]
    UdpOversized {
        edge_id: String,
        edge_port: u16,
        client_addr: String,
        size: usize,
        max_size: Option<usize>,
        count: u64,
    },
}

/// Fields of `udp.expired` / `udp.closed`. in = client → target, out = target → client.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UdpSessionEnd {
    pub edge_id: String,
    pub session_id: String,
    pub udp_session_id: u32,
    pub edge_port: u16,
    pub client_addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: u64,
    pub reason: &'static str,
}

#[derive(Serialize)]
struct Numbered<'a> {
    seq: u64,
    #[serde(rename = "atMs")]
    at_ms: u64,
    #[serde(flatten)]
    event: &'a Event,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Batch<'a> {
    first_seq: u64,
    events: Vec<Numbered<'a>>,
}

/// Receives each batch as one JSON string.
pub type Deliver = Arc<dyn Fn(String) + Send + Sync>;

enum SinkMsg {
    Event(u64, Event),
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// Cloneable handle for emitting events from any task.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<SinkMsg>,
}

impl EventSink {
    /// Starts the batcher task on the global runtime. It ends when every sink clone is dropped,
    /// after delivering what is still queued.
    pub fn start(deliver: Deliver) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        runtime().spawn(run_batcher(rx, deliver));
        Self { tx }
    }

    pub fn emit(&self, event: Event) {
        let _ = self.tx.send(SinkMsg::Event(epoch_ms(), event));
    }

    /// Delivers what is queued, then stops the batcher and drops `deliver` (for JS: releases the
    /// callback and the channel that keeps Node's event loop alive). Later events are discarded.
    pub async fn close(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(SinkMsg::Close(done_tx)).is_ok() {
            let _ = done_rx.await;
        }
    }

    /// Resolves once every event emitted before this call has been handed to `deliver`.
    pub async fn flush(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(SinkMsg::Flush(done_tx)).is_ok() {
            let _ = done_rx.await;
        }
    }
}

struct Batcher {
    deliver: Deliver,
    /// Set by `close`: acknowledged once the batcher has let go of `deliver`.
    closed: Option<oneshot::Sender<()>>,
    next_seq: u64,
    pending: Vec<(u64, Event)>,
}

impl Batcher {
    fn deliver_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let first_seq = self.next_seq;
        let events = self
            .pending
            .iter()
            .enumerate()
            .map(|(i, (at_ms, event))| Numbered {
                seq: first_seq + i as u64,
                at_ms: *at_ms,
                event,
            })
            .collect();
        // Serializing these plain structs cannot fail; if it somehow did, seq stays contiguous.
        if let Ok(json) = serde_json::to_string(&Batch { first_seq, events }) {
            self.next_seq += self.pending.len() as u64;
            (self.deliver)(json);
        }
        self.pending.clear();
    }

    /// Returns false when the sink side is gone.
    fn handle(&mut self, msg: Option<SinkMsg>) -> bool {
        match msg {
            Some(SinkMsg::Event(at_ms, event)) => {
                self.pending.push((at_ms, event));
                if self.pending.len() >= MAX_BATCH {
                    self.deliver_pending();
                }
                true
            }
            Some(SinkMsg::Flush(done)) => {
                self.deliver_pending();
                let _ = done.send(());
                true
            }
            Some(SinkMsg::Close(done)) => {
                self.deliver_pending();
                self.closed = Some(done);
                false
            }
            None => false,
        }
    }
}

async fn run_batcher(mut rx: mpsc::UnboundedReceiver<SinkMsg>, deliver: Deliver) {
    let mut batcher = Batcher {
        deliver,
        closed: None,
        next_seq: 1,
        pending: Vec::new(),
    };
    loop {
        if !batcher.handle(rx.recv().await) {
            break;
        }
        if batcher.pending.is_empty() {
            continue;
        }
        let deadline = Instant::now() + BATCH_DELAY;
        let mut open = true;
        while open && !batcher.pending.is_empty() {
            tokio::select! {
                msg = rx.recv() => open = batcher.handle(msg),
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        batcher.deliver_pending();
        if !open {
            break;
        }
    }
    batcher.deliver_pending();
    rx.close();
    let Batcher {
        deliver, closed, ..
    } = batcher;
    drop(deliver);
    if let Some(done) = closed {
        let _ = done.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn batches_are_numbered_contiguously() {
        let batches = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink_batches = batches.clone();
        let sink = EventSink::start(Arc::new(move |json| {
            sink_batches.lock().unwrap().push(json);
        }));
        for port in 0..300u16 {
            sink.emit(Event::HubListening { port });
        }
        runtime().block_on(sink.flush());
        let batches = batches.lock().unwrap();
        let mut expected = 1u64;
        for batch in batches.iter() {
            let v: serde_json::Value = serde_json::from_str(batch).unwrap();
            assert_eq!(v["firstSeq"], expected);
            let events = v["events"].as_array().unwrap();
            assert!(events.len() <= MAX_BATCH);
            for e in events {
                assert_eq!(e["seq"], expected);
                assert_eq!(e["type"], "hub.listening");
                assert!(e["atMs"].as_u64().unwrap() > 0);
                expected += 1;
            }
        }
        assert_eq!(expected, 301);
    }

    #[test]
    fn fields_are_camel_case() {
        let e = Event::TunnelDisconnected {
            hub: "h:1".into(),
            reason: "timeout",
            message: String::new(),
            retry_in_ms: Some(5),
        };
        let json = serde_json::to_value(Numbered {
            seq: 1,
            at_ms: 2,
            event: &e,
        })
        .unwrap();
        assert_eq!(json["type"], "tunnel.disconnected");
        assert_eq!(json["retryInMs"], 5);
        assert_eq!(json["seq"], 1);
        assert_eq!(json["atMs"], 2);
    }

    #[test]
    fn udp_session_end_is_flat_and_typed() {
        let end = UdpSessionEnd {
            edge_id: "e1".into(),
            session_id: "s".into(),
            udp_session_id: 3,
            edge_port: 53,
            client_addr: "1.2.3.4:5".into(),
            target: None,
            packets_in: 1,
            packets_out: 2,
            bytes_in: 10,
            bytes_out: 20,
            duration_ms: 7,
            reason: "idle",
        };
        let json = serde_json::to_value(Numbered {
            seq: 1,
            at_ms: 2,
            event: &Event::UdpExpired(end),
        })
        .unwrap();
        assert_eq!(json["type"], "udp.expired");
        assert_eq!(json["udpSessionId"], 3);
        assert_eq!(json["packetsOut"], 2);
        assert!(json.get("target").is_none());
    }
}
