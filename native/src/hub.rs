//! The hub role: accepts tunnels, authenticates edges, keeps one session per edge and forwards each
//! stream to its target behind a PROXY header.
//!
//! Accepting and handshaking are separate steps: every connection's TLS (or QUIC) handshake and
//! Hello exchange runs in its own task under `handshakeTimeoutMs`, so a slow or garbage client never
//! blocks the accept loop. Unknown edge and wrong secret get the same reply. TLS listens on TCP and
//! QUIC on UDP at the same port number; after the Hello both give a `Tunnel` and the session code is
//! shared.
use crate::config::{Admission, EdgeEntry, HubSettings, ProxyProtocol};
use crate::error::AddonError;
use crate::events::{Event, EventSink};
use crate::mux::{self, MuxOptions, Role};
use crate::protocol::handshake::{capability, decode_hello, encode_reply, MAX_HANDSHAKE_MESSAGE};
use crate::protocol::{
    proxy_v1_header, proxy_v2_header, CloseReason, EdgeConfig, GoAwayReason, Hello, HelloAccepted,
    HelloReply, ProxyTransport, RejectCode, SecretVerifier, StreamOpen, UdpSettings, ALPN,
    PROTOCOL_VERSION,
};
use crate::relay::{relay, ByteCounters, SocketSide, TunnelStream};
use crate::runtime::{epoch_ms, until_set, TaskGroup};
use crate::status::{close_reason_name, goaway_reason_name, HubEdgeStatus, HubStatus};
use crate::transport::buffered::ReadBuffered;
use crate::transport::quic::{self, QuicOptions};
use crate::transport::tls;
use crate::tunnel::{Tunnel, TunnelEnd, TunnelEvent, UdpInbound};
use crate::udp::{HubUdp, HubUdpSettings, UdpCounters};
use bytes::BytesMut;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsAcceptor;

/// How often binding TCP and UDP on the same (random) port is tried before giving up.
const SAME_PORT_ATTEMPTS: usize = 16;
/// How long a stopping hub lets its QUIC endpoint send connection closes.
const QUIC_DRAIN: Duration = Duration::from_secs(1);

/// A running hub. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    settings: HubSettings,
    port: u16,
    fingerprint: String,
    acceptor: TlsAcceptor,
    /// Taken (and dropped, releasing the UDP port) when the hub stops.
    quic: Mutex<Option<quinn::Endpoint>>,
    verifier: SecretVerifier,
    edges: RwLock<Arc<HashMap<String, EdgeEntry>>>,
    sessions: Mutex<HashMap<String, Session>>,
    /// Deferred admission: session id → where `hubAdmitEdge` sends its decision.
    admissions: Mutex<HashMap<String, oneshot::Sender<Decision>>>,
    events: EventSink,
    tasks: TaskGroup,
    stopping: watch::Sender<bool>,
    stop_started: AtomicBool,
    stopped: watch::Sender<bool>,
}

struct Session {
    session_id: String,
    tunnel: Tunnel,
    remote_addr: String,
    connected_at: u64,
    counters: Arc<ByteCounters>,
    udp: Arc<UdpCounters>,
    config: EdgeConfig,
}

/// Who a stream belongs to, for events.
#[derive(Clone)]
struct SessionRef {
    edge_id: String,
    session_id: String,
    counters: Arc<ByteCounters>,
}

struct HandshakeFailure {
    reason: &'static str,
    claimed_edge_id: Option<String>,
}

/// What `hubAdmitEdge` decided for one pending session.
struct Decision {
    admit: bool,
    reason: String,
    message: String,
}

/// Removes a pending admission when its wait ends, however it ends.
struct PendingAdmission<'a> {
    inner: &'a HubInner,
    session_id: &'a str,
}

impl Drop for PendingAdmission<'_> {
    fn drop(&mut self) {
        lock(&self.inner.admissions).remove(self.session_id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn edge_map(edges: &[EdgeEntry]) -> Arc<HashMap<String, EdgeEntry>> {
    Arc::new(edges.iter().map(|e| (e.id.clone(), e.clone())).collect())
}

async fn resolve_bind(host: &str, port: u16) -> Result<SocketAddr, AddonError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((bare, port))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| AddonError::InvalidConfig(format!("bindHost {host:?} does not resolve")))
}

impl Hub {
    /// Binds the tunnel port and starts accepting. Resolves once listening.
    pub async fn start(settings: HubSettings, events: EventSink) -> Result<Hub, AddonError> {
        let server_config = tls::server_config(&settings.raw.cert_pem, &settings.raw.key_pem)?;
        let fingerprint = tls::cert_fingerprint(&settings.raw.cert_pem)?;
        let quic_config = match settings.raw.quic {
            true => Some(quic::server_config(
                &settings.raw.cert_pem,
                &settings.raw.key_pem,
                settings.ping_interval,
                settings.idle_timeout,
            )?),
            false => None,
        };
        let addr = resolve_bind(&settings.raw.bind_host, settings.raw.tunnel_port).await?;
        let (listener, endpoint) = bind_tunnel_port(addr, quic_config).await?;
        let port = listener
            .local_addr()
            .map_err(|e| AddonError::Io(e.to_string()))?
            .port();
        let inner = Arc::new(HubInner {
            edges: RwLock::new(edge_map(&settings.raw.edges)),
            settings,
            port,
            fingerprint,
            acceptor: TlsAcceptor::from(server_config),
            quic: Mutex::new(endpoint.clone()),
            verifier: SecretVerifier::new(),
            sessions: Mutex::new(HashMap::new()),
            admissions: Mutex::new(HashMap::new()),
            events,
            tasks: TaskGroup::default(),
            stopping: watch::channel(false).0,
            stop_started: AtomicBool::new(false),
            stopped: watch::channel(false).0,
        });
        inner.events.emit(Event::HubListening { port });
        inner.tasks.spawn(accept_loop(inner.clone(), listener));
        if let Some(endpoint) = endpoint {
            inner.tasks.spawn(quic_accept_loop(inner.clone(), endpoint));
        }
        Ok(Hub { inner })
    }

    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// Replaces the allowed-edge list: pushes changed ports, drops removed edges and changed secrets.
    pub fn update_edges(&self, edges: Vec<EdgeEntry>) -> Result<(), AddonError> {
        if *self.inner.stopping.borrow() {
            return Err(AddonError::Closed("the hub is stopped".into()));
        }
        let new_map = edge_map(&edges);
        let old_map = {
            let mut current = self.inner.edges.write().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *current, new_map.clone())
        };
        let mut sessions = lock(&self.inner.sessions);
        for (edge_id, session) in sessions.iter_mut() {
            let revoked = match (new_map.get(edge_id), old_map.get(edge_id)) {
                (None, _) => Some("edge removed from the allowed list"),
                (Some(new), Some(old)) if new.credential_changed(old) => {
                    Some("edge secret changed")
                }
                _ => None,
            };
            if let Some(message) = revoked {
                session
                    .tunnel
                    .shutdown(Some((GoAwayReason::Revoked, message.to_string())));
                continue;
            }
            let Some(entry) = new_map.get(edge_id) else {
                continue;
            };
            let config = entry.wire_config();
            if config != session.config && session.tunnel.push_config(config.clone()).is_ok() {
                self.inner.events.emit(Event::EdgeConfigPushed {
                    edge_id: edge_id.clone(),
                    session_id: session.session_id.clone(),
                    listen_ports: config.listen_ports.clone(),
                    listen_ports_udp: config.listen_ports_udp.clone(),
                });
                session.config = config;
            }
        }
        Ok(())
    }

    /// Deferred admission: the decision for a session announced by `edge.admitting`. Returns
    /// whether the session was still waiting (false for an unknown, decided or expired one).
    pub fn admit_edge(&self, session_id: &str, admit: bool, reason: &str, message: &str) -> bool {
        let Some(waiting) = lock(&self.inner.admissions).remove(session_id) else {
            return false;
        };
        waiting
            .send(Decision {
                admit,
                reason: reason.to_string(),
                message: message.to_string(),
            })
            .is_ok()
    }

    /// Closes the edge's live session now with a GoAway carrying `reason` (its streams and UDP
    /// sessions close with `tunnelLost`). Returns whether a session was found.
    pub fn drop_edge(&self, edge_id: &str, reason: GoAwayReason, message: &str) -> bool {
        let sessions = lock(&self.inner.sessions);
        let Some(session) = sessions.get(edge_id) else {
            return false;
        };
        session.tunnel.shutdown(Some((reason, message.to_string())));
        true
    }

    pub fn status(&self) -> HubStatus {
        let sessions = lock(&self.inner.sessions);
        let mut edges: Vec<HubEdgeStatus> = sessions
            .iter()
            .map(|(edge_id, s)| HubEdgeStatus {
                edge_id: edge_id.clone(),
                session_id: s.session_id.clone(),
                remote_addr: s.remote_addr.clone(),
                connected_at: s.connected_at,
                transport: s.tunnel.transport(),
                active_streams: s.tunnel.active_streams(),
                bytes_in: s.counters.bytes_in.load(Ordering::Relaxed),
                bytes_out: s.counters.bytes_out.load(Ordering::Relaxed),
                udp_sessions: s.udp.sessions.load(Ordering::Relaxed),
                udp_dropped: s.udp.dropped.load(Ordering::Relaxed) + s.tunnel.udp_receive_drops(),
                udp_oversized: s.udp.oversized.load(Ordering::Relaxed),
                udp_refused: s.udp.refused.load(Ordering::Relaxed),
            })
            .collect();
        edges.sort_by(|a, b| a.edge_id.cmp(&b.edge_id));
        HubStatus {
            running: !*self.inner.stopping.borrow(),
            tunnel_port: self.inner.port,
            quic: self.inner.settings.raw.quic,
            hub_id: self.inner.settings.raw.hub_id.clone(),
            fingerprint: self.inner.fingerprint.clone(),
            edges,
        }
    }

    /// Stops accepting, sends GoAway(hubShutdown) to every edge, waits for every task, then emits
    /// `hub.stopped`. Idempotent: later calls wait for the first one to finish.
    pub async fn stop(&self) {
        let inner = &self.inner;
        let mut stopped = inner.stopped.subscribe();
        if inner.stop_started.swap(true, Ordering::AcqRel) {
            until_set(&mut stopped).await;
            return;
        }
        inner.stopping.send_replace(true);
        for session in lock(&inner.sessions).values() {
            session.tunnel.shutdown(Some((
                GoAwayReason::HubShutdown,
                "hub is shutting down".into(),
            )));
        }
        inner.tasks.wait_idle().await;
        let endpoint = lock(&inner.quic).take();
        if let Some(endpoint) = endpoint {
            endpoint.close(quinn::VarInt::from_u32(0), b"hub stopped");
            let _ = tokio::time::timeout(QUIC_DRAIN, endpoint.wait_idle()).await;
            let addr = endpoint.local_addr().ok();
            drop(endpoint);
            if let Some(addr) = addr {
                released(addr).await;
            }
        }
        inner.events.emit(Event::HubStopped {});
        inner.events.close().await;
        inner.stopped.send_replace(true);
    }
}

/// Binds TLS on TCP and, if configured, QUIC on UDP at the same port number. With port 0 the
/// system picks a TCP port; if its UDP twin is taken, another pick is tried.
async fn bind_tunnel_port(
    addr: SocketAddr,
    quic_config: Option<quic::ServerSetup>,
) -> Result<(TcpListener, Option<quinn::Endpoint>), AddonError> {
    let attempts = if addr.port() == 0 {
        SAME_PORT_ATTEMPTS
    } else {
        1
    };
    let mut last_error = None;
    for _ in 0..attempts {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| AddonError::from_bind(&e, &addr.to_string()))?;
        let Some(config) = quic_config.clone() else {
            return Ok((listener, None));
        };
        let port = listener
            .local_addr()
            .map_err(|e| AddonError::Io(e.to_string()))?
            .port();
        let udp_addr = SocketAddr::new(addr.ip(), port);
        match quic::endpoint(udp_addr, Some(config)) {
            Ok(endpoint) => return Ok((listener, Some(endpoint))),
            Err(e) => {
                last_error = Some(AddonError::from_bind(
                    &e,
                    &format!("{udp_addr} (udp, QUIC)"),
                ))
            }
        }
    }
    Err(last_error.unwrap_or_else(|| AddonError::Io("cannot bind the tunnel port".into())))
}

/// Waits (briefly) until quinn's endpoint driver has let go of the UDP socket, so the port can be
/// bound again as soon as `stop` resolves.
async fn released(addr: SocketAddr) {
    for _ in 0..100 {
        match std::net::UdpSocket::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            _ => return,
        }
    }
}

async fn quic_accept_loop(inner: Arc<HubInner>, endpoint: quinn::Endpoint) {
    let mut stopping = inner.stopping.subscribe();
    loop {
        tokio::select! {
            _ = until_set(&mut stopping) => return,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    inner.tasks.spawn(handle_quic_connection(inner.clone(), incoming));
                }
                None => return,
            },
        }
    }
}

/// Runs one transport's handshake under the hub's handshake timeout. A failed or timed-out handshake is
/// reported as `edge.authFailed`; `None` then, and also when the hub starts stopping meanwhile.
async fn handshake_or_report<T>(
    inner: &HubInner,
    stopping: &mut watch::Receiver<bool>,
    peer: SocketAddr,
    handshake: impl std::future::Future<Output = Result<T, HandshakeFailure>>,
) -> Option<T> {
    let timed = tokio::time::timeout(inner.settings.handshake_timeout, handshake);
    let result = tokio::select! {
        _ = until_set(stopping) => return None,
        result = timed => result,
    };
    let failure = match result {
        Ok(Ok(handshaken)) => return Some(handshaken),
        Ok(Err(failure)) => failure,
        Err(_) => HandshakeFailure {
            reason: "handshakeTimeout",
            claimed_edge_id: None,
        },
    };
    inner.events.emit(Event::EdgeAuthFailed {
        remote_addr: peer.to_string(),
        claimed_edge_id: failure.claimed_edge_id,
        reason: failure.reason,
    });
    None
}

async fn handle_quic_connection(inner: Arc<HubInner>, incoming: quinn::Incoming) {
    let peer = incoming.remote_address();
    let mut stopping = inner.stopping.subscribe();
    let handshake = quic_handshake(&inner, incoming);
    let Some((conn, mut control, hello, accepted, leftover)) =
        handshake_or_report(&inner, &mut stopping, peer, handshake).await
    else {
        return;
    };
    let admitted = tokio::select! {
        _ = until_set(&mut stopping) => return,
        admitted = admit_and_reply(&inner, &mut control, &hello, &accepted, peer) => admitted,
    };
    if !admitted {
        // The reply (if any) went out and the stream is finished; let it arrive, then close.
        let (_, send) = control.into_inner();
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
        conn.close(quinn::VarInt::from_u32(0), b"refused");
        return;
    }
    let (recv, send) = control.into_inner();
    let control = (send, recv);
    let udp = new_hub_udp(&inner, &hello, &accepted, true);
    let options = QuicOptions {
        role: Role::Hub,
        ping_interval: inner.settings.ping_interval,
        idle_timeout: inner.settings.idle_timeout,
        udp: udp.clone().map(|u| u as Arc<dyn UdpInbound>),
    };
    let (handle, events) = quic::spawn(conn, None, control, leftover, options);
    let tunnel = Tunnel::Quic(handle);
    run_session(inner, tunnel, events, udp, peer, hello.edge_id, accepted).await
}

type QuicControl = tokio::io::Join<quinn::RecvStream, quinn::SendStream>;
type QuicHandshaken = (
    quinn::Connection,
    QuicControl,
    Hello,
    HelloAccepted,
    BytesMut,
);

async fn quic_handshake(
    inner: &HubInner,
    incoming: quinn::Incoming,
) -> Result<QuicHandshaken, HandshakeFailure> {
    let fail = |reason| HandshakeFailure {
        reason,
        claimed_edge_id: None,
    };
    let conn = incoming.await.map_err(|_| fail("tlsError"))?;
    if !quic::alpn_ok(&conn) {
        conn.close(quinn::VarInt::from_u32(0), b"ALPN portway/1 required");
        return Err(fail("tlsError"));
    }
    let (send, recv) = conn.accept_bi().await.map_err(|_| fail("malformedHello"))?;
    let mut control = tokio::io::join(recv, send);
    match hello_exchange(inner, &mut control).await {
        Ok((hello, accepted, leftover)) => Ok((conn, control, hello, accepted, leftover)),
        Err(failure) => {
            // The reply (if any) went out and the stream is finished; let it arrive, then close.
            let (_, send) = control.into_inner();
            let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
            conn.close(quinn::VarInt::from_u32(0), b"rejected");
            Err(failure)
        }
    }
}

async fn accept_loop(inner: Arc<HubInner>, listener: TcpListener) {
    let mut stopping = inner.stopping.subscribe();
    loop {
        tokio::select! {
            _ = until_set(&mut stopping) => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    inner.tasks.spawn(handle_connection(inner.clone(), tcp, peer));
                }
                // Usually EMFILE: back off instead of spinning.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            },
        }
    }
}

async fn handle_connection(inner: Arc<HubInner>, tcp: TcpStream, peer: SocketAddr) {
    let mut stopping = inner.stopping.subscribe();
    let handshake = handshake(&inner, tcp);
    let Some((mut tls, hello, accepted, leftover)) =
        handshake_or_report(&inner, &mut stopping, peer, handshake).await
    else {
        return;
    };
    let admitted = tokio::select! {
        _ = until_set(&mut stopping) => return,
        admitted = admit_and_reply(&inner, &mut tls, &hello, &accepted, peer) => admitted,
    };
    if !admitted {
        return;
    }
    let udp = new_hub_udp(&inner, &hello, &accepted, false);
    let options = MuxOptions {
        role: Role::Hub,
        ping_interval: inner.settings.ping_interval,
        idle_timeout: inner.settings.idle_timeout,
        udp: udp.clone().map(|u| u as Arc<dyn UdpInbound>),
    };
    let (mux, events) = mux::spawn(tls, leftover, options);
    let tunnel = Tunnel::Mux(mux);
    run_session(inner, tunnel, events, udp, peer, hello.edge_id, accepted).await
}

type TlsStream = tokio_rustls::server::TlsStream<ReadBuffered<TcpStream>>;
type Handshaken = (TlsStream, Hello, HelloAccepted, BytesMut);

async fn handshake(inner: &HubInner, tcp: TcpStream) -> Result<Handshaken, HandshakeFailure> {
    let mut tls = inner
        .acceptor
        .accept(ReadBuffered::new(tcp))
        .await
        .map_err(|_| HandshakeFailure {
            reason: "tlsError",
            claimed_edge_id: None,
        })?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
        let _ = tls.shutdown().await;
        return Err(HandshakeFailure {
            reason: "tlsError",
            claimed_edge_id: None,
        });
    }
    let (hello, accepted, leftover) = hello_exchange(inner, &mut tls).await?;
    Ok((tls, hello, accepted, leftover))
}

/// Reads the Hello and authenticates; answers rejections. The `Accepted` reply is sent by
/// `admit_and_reply` (after deferred admission, which is not bounded by the handshake timeout).
/// The same on TLS and on the QUIC control stream.
async fn hello_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &HubInner,
    tls: &mut S,
) -> Result<(Hello, HelloAccepted, BytesMut), HandshakeFailure> {
    let fail = |reason, claimed_edge_id| HandshakeFailure {
        reason,
        claimed_edge_id,
    };
    let mut buf = BytesMut::with_capacity(1024);
    let hello = loop {
        match decode_hello(&mut buf) {
            Ok(Some(hello)) => break hello,
            Ok(None) if buf.len() > MAX_HANDSHAKE_MESSAGE => {
                reject(tls, RejectCode::Malformed, "hello too large").await;
                return Err(fail("malformedHello", None));
            }
            Ok(None) => match tls.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return Err(fail("malformedHello", None)),
            },
            Err(e) => {
                reject(tls, RejectCode::Malformed, &e.to_string()).await;
                return Err(fail("malformedHello", None));
            }
        }
    };
    let claimed = Some(hello.edge_id.clone());
    if hello.version != PROTOCOL_VERSION {
        let message = format!(
            "protocol version {} is not supported (hub speaks {PROTOCOL_VERSION})",
            hello.version
        );
        reject(tls, RejectCode::VersionUnsupported, &message).await;
        return Err(fail("versionUnsupported", claimed));
    }
    let entry = inner
        .edges
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&hello.edge_id)
        .cloned();
    if !inner.verifier.verify(
        entry.as_ref().and_then(|e| e.credential.as_ref()),
        &hello.secret,
    ) {
        reject(tls, RejectCode::AuthFailed, "authentication failed").await;
        return Err(fail("authFailed", claimed));
    }
    let Some(entry) = entry else {
        return Err(fail("authFailed", claimed));
    };
    Ok((hello, accepted_reply(inner, &entry), buf))
}

/// Admission (`deferred`: `edge.admitting`, then `hubAdmitEdge` or the timeout), then the reply.
/// Returns whether the edge was admitted and told so. After `edge.admitting` exactly one of
/// `edge.connected` (by the caller) or `edge.refused` follows, unless the hub stops meanwhile.
async fn admit_and_reply<S: AsyncWrite + Unpin>(
    inner: &HubInner,
    io: &mut S,
    hello: &Hello,
    accepted: &HelloAccepted,
    peer: SocketAddr,
) -> bool {
    let deferred = inner.settings.raw.admission == Admission::Deferred;
    let refused = |reason: String, message: String| Event::EdgeRefused {
        edge_id: hello.edge_id.clone(),
        session_id: accepted.session_id.clone(),
        remote_addr: peer.to_string(),
        reason,
        message,
    };
    if deferred {
        if let Err((reason, message)) = admission(inner, hello, accepted, peer).await {
            reject(io, RejectCode::NotOwner, &message).await;
            inner.events.emit(refused(reason, message));
            return false;
        }
    }
    let mut out = BytesMut::new();
    encode_reply(&HelloReply::Accepted(accepted.clone()), &mut out);
    if io.write_all(&out).await.is_err() || io.flush().await.is_err() {
        let message = "the edge went away before the reply".to_string();
        inner.events.emit(match deferred {
            true => refused("ioError".into(), message),
            false => Event::EdgeAuthFailed {
                remote_addr: peer.to_string(),
                claimed_edge_id: Some(hello.edge_id.clone()),
                reason: "tlsError",
            },
        });
        return false;
    }
    true
}

/// Waits for `hubAdmitEdge` on this session; `Err((reason, message))` if refused or timed out.
async fn admission(
    inner: &HubInner,
    hello: &Hello,
    accepted: &HelloAccepted,
    peer: SocketAddr,
) -> Result<(), (String, String)> {
    let (tx, rx) = oneshot::channel();
    let session_id = accepted.session_id.as_str();
    lock(&inner.admissions).insert(session_id.to_string(), tx);
    let _pending = PendingAdmission { inner, session_id };
    inner.events.emit(Event::EdgeAdmitting {
        edge_id: hello.edge_id.clone(),
        session_id: session_id.to_string(),
        remote_addr: peer.to_string(),
    });
    let timeout = inner.settings.admission_timeout;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(decision)) if decision.admit => Ok(()),
        Ok(Ok(decision)) => Err((decision.reason, decision.message)),
        _ => Err((
            "admissionTimeout".to_string(),
            format!("no admission decision within {} ms", timeout.as_millis()),
        )),
    }
}

fn accepted_reply(inner: &HubInner, entry: &EdgeEntry) -> HelloAccepted {
    HelloAccepted {
        hub_id: inner.settings.raw.hub_id.clone(),
        session_id: hex::encode(rand::random::<[u8; 8]>()),
        config: entry.wire_config(),
        ping_interval_ms: inner.settings.ping_interval.as_millis() as u32,
        idle_timeout_ms: inner.settings.idle_timeout.as_millis() as u32,
        udp: Some(UdpSettings {
            capabilities: capability::UDP_FRAMES | capability::QUIC_DATAGRAMS,
            max_sessions: inner.settings.raw.max_udp_sessions_per_edge,
            idle_timeout_ms: inner.settings.udp_idle_timeout.as_millis() as u32,
        }),
    }
}

async fn reject<S: AsyncWrite + Unpin>(tls: &mut S, code: RejectCode, message: &str) {
    let mut out = BytesMut::new();
    encode_reply(
        &HelloReply::Rejected {
            code,
            message: message.to_string(),
        },
        &mut out,
    );
    let _ = tls.write_all(&out).await;
    let _ = tls.shutdown().await;
}

/// The UDP half of a session, if the edge can relay UDP.
fn new_hub_udp(
    inner: &Arc<HubInner>,
    hello: &Hello,
    accepted: &HelloAccepted,
    quic: bool,
) -> Option<Arc<HubUdp>> {
    // UDP frames always (UdpOpen/UdpClose); over QUIC also the datagrams.
    let needed = match quic {
        true => capability::UDP_FRAMES | capability::QUIC_DATAGRAMS,
        false => capability::UDP_FRAMES,
    };
    if hello.capabilities & needed != needed {
        return None;
    }
    let weak: Weak<HubInner> = Arc::downgrade(inner);
    let edge_id = hello.edge_id.clone();
    let target_for = Box::new(move |edge_port: u16| {
        let inner = weak.upgrade()?;
        let edges = inner.edges.read().unwrap_or_else(|p| p.into_inner());
        let entry = edges.get(&edge_id)?;
        entry
            .listen_ports_udp
            .contains(&edge_port)
            .then(|| entry.target_for(edge_port, &inner.settings.raw.target_host))
    });
    let settings = HubUdpSettings {
        edge_id: hello.edge_id.clone(),
        session_id: accepted.session_id.clone(),
        proxy: inner.settings.raw.proxy_protocol_udp,
        idle_timeout: inner.settings.udp_idle_timeout,
        connect_timeout: inner.settings.target_connect_timeout,
        max_sessions: inner.settings.raw.max_udp_sessions_per_edge as usize,
        early_datagrams: quic,
    };
    Some(HubUdp::new(
        settings,
        target_for,
        Arc::new(UdpCounters::default()),
        inner.events.clone(),
        inner.tasks.clone(),
    ))
}

async fn run_session(
    inner: Arc<HubInner>,
    tunnel: Tunnel,
    mut tunnel_events: tokio::sync::mpsc::UnboundedReceiver<TunnelEvent>,
    udp: Option<Arc<HubUdp>>,
    peer: SocketAddr,
    edge_id: String,
    accepted: HelloAccepted,
) {
    let udp_counters = match &udp {
        Some(udp) => {
            udp.attach(tunnel.clone());
            udp.counters()
        }
        None => Arc::new(UdpCounters::default()),
    };
    let session_id = accepted.session_id.clone();
    let counters = Arc::new(ByteCounters::default());
    {
        let mut sessions = lock(&inner.sessions);
        let previous = sessions.insert(
            edge_id.clone(),
            Session {
                session_id: session_id.clone(),
                tunnel: tunnel.clone(),
                remote_addr: peer.to_string(),
                connected_at: epoch_ms(),
                counters: counters.clone(),
                udp: udp_counters,
                config: accepted.config.clone(),
            },
        );
        if let Some(previous) = previous {
            previous.tunnel.shutdown(Some((
                GoAwayReason::Superseded,
                "a newer session for this edge connected".into(),
            )));
        }
    }
    inner.events.emit(Event::EdgeConnected {
        edge_id: edge_id.clone(),
        session_id: session_id.clone(),
        remote_addr: peer.to_string(),
    });
    if *inner.stopping.borrow() {
        tunnel.shutdown(Some((
            GoAwayReason::HubShutdown,
            "hub is shutting down".into(),
        )));
    }
    let session_ref = SessionRef {
        edge_id: edge_id.clone(),
        session_id: session_id.clone(),
        counters,
    };
    let end = loop {
        match tunnel_events.recv().await {
            Some(TunnelEvent::Opened(stream, open)) => {
                inner.tasks.spawn(forward_stream(
                    inner.clone(),
                    session_ref.clone(),
                    stream,
                    open,
                ));
            }
            Some(TunnelEvent::Config(_)) => {}
            Some(TunnelEvent::Ended(end)) => break end,
            None => break TunnelEnd::Io("tunnel task ended".into()),
        }
    };
    {
        let mut sessions = lock(&inner.sessions);
        if sessions
            .get(&edge_id)
            .is_some_and(|s| s.session_id == session_id)
        {
            sessions.remove(&edge_id);
        }
    }
    let (reason, message) = match end {
        TunnelEnd::PeerClosed => ("edgeClosed", "the edge closed the tunnel".to_string()),
        TunnelEnd::PeerGoAway(reason, message) => match reason {
            GoAwayReason::ProtocolError | GoAwayReason::Timeout => {
                (goaway_reason_name(reason), message)
            }
            _ => (
                "edgeClosed",
                format!("{}: {message}", goaway_reason_name(reason)),
            ),
        },
        TunnelEnd::Local(Some(reason), message) => (goaway_reason_name(reason), message),
        TunnelEnd::Local(None, message) => ("hubShutdown", message),
        TunnelEnd::Timeout => (
            "timeout",
            "no frames received within idleTimeoutMs".to_string(),
        ),
        TunnelEnd::Protocol(message) => {
            inner.events.emit(Event::TunnelProtocolError {
                remote_addr: peer.to_string(),
                edge_id: Some(edge_id.clone()),
                session_id: Some(session_id.clone()),
                message: message.clone(),
            });
            ("protocolError", message)
        }
        TunnelEnd::Io(message) => ("ioError", message),
    };
    inner.events.emit(Event::EdgeDisconnected {
        edge_id,
        session_id,
        reason,
        message,
    });
}

async fn forward_stream(
    inner: Arc<HubInner>,
    session: SessionRef,
    stream: TunnelStream,
    open: StreamOpen,
) {
    let entry = inner
        .edges
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&session.edge_id)
        .cloned();
    let target_host = &inner.settings.raw.target_host;
    let target = match &entry {
        Some(e) => e.target_for(open.edge_port, target_host),
        None if target_host.contains(':') => format!("[{target_host}]:{}", open.edge_port),
        None => format!("{target_host}:{}", open.edge_port),
    };
    let stream_id = stream.id;
    inner.events.emit(Event::StreamOpened {
        edge_id: session.edge_id.clone(),
        session_id: session.session_id.clone(),
        stream_id,
        edge_port: open.edge_port,
        client_addr: open.client.to_string(),
        target: Some(target.clone()),
    });
    let closed = |bytes_in, bytes_out, duration_ms, reason, message| Event::StreamClosed {
        edge_id: session.edge_id.clone(),
        session_id: session.session_id.clone(),
        stream_id,
        edge_port: open.edge_port,
        client_addr: open.client.to_string(),
        target: Some(target.clone()),
        bytes_in,
        bytes_out,
        duration_ms,
        reason,
        message,
    };
    let started = tokio::time::Instant::now();
    let allowed = entry
        .as_ref()
        .is_some_and(|e| e.listen_ports.contains(&open.edge_port));
    let connected = if allowed {
        let mut stopping = inner.stopping.subscribe();
        tokio::select! {
            connected = connect_target(&inner, &target, &open) => connected,
            _ = until_set(&mut stopping) => Err((CloseReason::HubShutdown, "hub is shutting down".into())),
        }
    } else {
        let message = format!("port {} is not assigned to this edge", open.edge_port);
        Err((CloseReason::TargetRefused, message))
    };
    let sock = match connected {
        Ok(sock) => sock,
        Err((reason, message)) => {
            stream.abort(reason).await;
            let ms = started.elapsed().as_millis() as u64;
            inner
                .events
                .emit(closed(0, 0, ms, close_reason_name(reason), message));
            return;
        }
    };
    let outcome = relay(sock, stream, SocketSide::Target, &session.counters).await;
    inner.events.emit(closed(
        outcome.bytes_in,
        outcome.bytes_out,
        outcome.duration.as_millis() as u64,
        close_reason_name(outcome.reason),
        outcome.message,
    ));
}

/// Connects to the target (under `targetConnectTimeoutMs`) and writes the PROXY header.
/// Fails with `targetRefused`, or `timeout` when the connect timed out.
async fn connect_target(
    inner: &HubInner,
    target: &str,
    open: &StreamOpen,
) -> Result<TcpStream, (CloseReason, String)> {
    let timeout = inner.settings.target_connect_timeout;
    let refused = |message: String| (CloseReason::TargetRefused, message);
    let mut sock = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(sock)) => sock,
        Ok(Err(e)) => return Err(refused(format!("cannot connect to {target}: {e}"))),
        Err(_) => {
            let ms = timeout.as_millis();
            let message = format!("connecting to {target} timed out after {ms} ms");
            return Err((CloseReason::Timeout, message));
        }
    };
    let _ = sock.set_nodelay(true);
    let header = match inner.settings.raw.proxy_protocol_tcp {
        ProxyProtocol::V1 => proxy_v1_header(open.client, open.edge_local),
        ProxyProtocol::V2 => proxy_v2_header(open.client, open.edge_local, ProxyTransport::Stream),
        ProxyProtocol::None => Vec::new(),
    };
    if !header.is_empty() {
        sock.write_all(&header)
            .await
            .map_err(|e| refused(format!("cannot write the PROXY header to {target}: {e}")))?;
    }
    Ok(sock)
}
