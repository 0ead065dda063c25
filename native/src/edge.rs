//! The edge role: keeps one tunnel to a hub up and serves the public listeners over it.
//!
//! Choices:
//! - Connecting rotates through the configured hubs: after a session with hub i ends (or hub i
//!   refuses), the next attempt goes to hub i+1 (wrapping) at once. Only when a full round (every
//!   hub once) fails does it wait a jittered exponential backoff (reconnectInitialMs doubling up
//!   to reconnectMaxMs, uniform in [d/2, d]). A session shorter than `FRESH_ROUND` does not start
//!   a new round (a hub that accepts and drops at once cannot make the edge spin); one that lasted
//!   at least `STABLE_SESSION` resets the backoff. With a single hub every retry waits the backoff.
//! - An auth rejection or a pinned-fingerprint mismatch is reported as `tunnel.rejected` and retried
//!   with the same rules (the hub's edge list or certificate may be fixed meanwhile); `notOwner`
//!   (another hub owns this edge) likewise sends the edge to its next hub.
//! - With more than one hub, liveness uses the shorter of the edge's and the hub's ping interval and
//!   idle timeout, so a dead hub is detected within the edge's own `idleTimeoutMs`.
//! - Listeners stay bound while the tunnel is down, so a reconnect (or a failover to another hub)
//!   does not lose the ports. A connection arriving while no tunnel is up is held, unread, for up to
//!   `gapHoldMs` waiting for a tunnel; then it is relayed, or reset (RST) and counted (`gapRefused`,
//!   rate-limited `stream.refused`). It never hangs.
//! - On `Config` the port set is diffed: new ports are bound, removed ports stop accepting, and
//!   streams already running on a removed port are left to finish. A port that fails to bind is
//!   reported (`listener.error`) and retried at the next assignment; other ports keep working.
use crate::config::{sorted_unique, EdgeSettings, HubAddress, TransportMode};
use crate::error::AddonError;
use crate::events::{Event, EventSink};
use crate::mux::{self, MuxOptions, Role};
use crate::protocol::handshake::{capability, decode_reply, encode_hello, MAX_HANDSHAKE_MESSAGE};
use crate::protocol::{
    EdgeConfig, Hello, HelloAccepted, HelloReply, RejectCode, StreamOpen, ALPN, PROTOCOL_VERSION,
};
use crate::relay::{relay, ByteCounters, SocketSide};
use crate::runtime::{until_set, TaskGroup};
use crate::status::{close_reason_name, goaway_reason_name, EdgeStatus, ListenerErrorStatus};
use crate::stun::StunClient;
use crate::transport::buffered::ReadBuffered;
use crate::transport::quic::{self, QuicOptions};
use crate::transport::tls;
use crate::tunnel::{Tunnel, TunnelEnd, TunnelEvent};
use crate::udp::{EdgeUdp, Limiter};
use bytes::BytesMut;
use rand::Rng;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A session that lasted this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// A session that lasted this long makes the next attempts a fresh round (no backoff until every
/// hub was tried once more).
const FRESH_ROUND: Duration = Duration::from_secs(1);
/// Most client connections held at once while no tunnel is up; more are reset at once.
const MAX_HELD: u64 = 4096;

/// A running edge. Cheap to clone.
#[derive(Clone)]
pub struct Edge {
    inner: Arc<EdgeInner>,
}

struct EdgeInner {
    settings: EdgeSettings,
    connector: TlsConnector,
    quic_config: quinn::ClientConfig,
    events: EventSink,
    tasks: TaskGroup,
    state: Mutex<EdgeState>,
    udp: Arc<EdgeUdp>,
    counters: ByteCounters,
    active_streams: AtomicU64,
    stopping: watch::Sender<bool>,
    stop_started: AtomicBool,
    stopped: watch::Sender<bool>,
    /// The hub's `stunIntervalSecs` (0 until a hub said, or when it turns STUN off).
    stun_interval: watch::Sender<u32>,
    /// Bumped each time a tunnel comes up (wakes held client connections).
    tunnel_up: watch::Sender<u64>,
    /// Client connections held now, waiting for a tunnel.
    held: AtomicU64,
    /// Client connections reset because no tunnel came up within `gapHoldMs`.
    gap_refused: AtomicU64,
    gap_limiter: Limiter,
}

#[derive(Default)]
struct EdgeState {
    public_addr: Option<SocketAddr>,
    tunnel: Option<TunnelRef>,
    hub: Option<String>,
    hub_id: Option<String>,
    hub_fingerprint: Option<String>,
    listen_ports: Vec<u16>,
    listen_ports_udp: Vec<u16>,
    listeners: HashMap<u16, JoinHandle<()>>,
    listener_errors: Vec<ListenerErrorStatus>,
    last_error: Option<String>,
    unpinned_reported: bool,
}

#[derive(Clone)]
struct TunnelRef {
    tunnel: Tunnel,
    session_id: String,
}

/// Why one connection attempt failed.
enum AttemptError {
    /// `tunnel.rejected`
    Rejected(&'static str, String),
    /// `tunnel.disconnected`
    Failed(&'static str, String),
}

struct Connected {
    link: Link,
    accepted: HelloAccepted,
    fingerprint: String,
}

/// An authenticated connection, right after the handshake.
enum Link {
    Tls {
        tls: Box<TlsStream<ReadBuffered<TcpStream>>>,
        leftover: BytesMut,
    },
    Quic {
        conn: quinn::Connection,
        endpoint: quinn::Endpoint,
        control: (quinn::SendStream, quinn::RecvStream),
        leftover: BytesMut,
    },
}

impl Edge {
    /// Starts connecting in the background.
    pub fn start(settings: EdgeSettings, events: EventSink) -> Result<Edge, AddonError> {
        let client_config = tls::client_config(
            settings.fingerprint.as_deref(),
            settings.raw.ca_pem.as_deref(),
        )?;
        let quic_config = quic::client_config(
            settings.fingerprint.as_deref(),
            settings.raw.ca_pem.as_deref(),
            settings.ping_interval,
            settings.idle_timeout,
        )?;
        for hub in &settings.raw.hubs {
            tls::server_name(settings.raw.server_name.as_deref().unwrap_or(&hub.host))?;
        }
        let tasks = TaskGroup::default();
        let udp = EdgeUdp::new(
            settings.raw.edge_id.clone(),
            settings.raw.bind_address.clone(),
            events.clone(),
            tasks.clone(),
        );
        let inner = Arc::new(EdgeInner {
            settings,
            connector: TlsConnector::from(client_config),
            quic_config,
            events,
            tasks,
            udp,
            state: Mutex::new(EdgeState::default()),
            counters: ByteCounters::default(),
            active_streams: AtomicU64::new(0),
            stopping: watch::channel(false).0,
            stop_started: AtomicBool::new(false),
            stopped: watch::channel(false).0,
            stun_interval: watch::channel(0).0,
            tunnel_up: watch::channel(0).0,
            held: AtomicU64::new(0),
            gap_refused: AtomicU64::new(0),
            gap_limiter: Limiter::default(),
        });
        inner.tasks.spawn(connect_loop(inner.clone()));
        if !inner.settings.raw.stun_servers.is_empty() {
            inner.tasks.spawn(stun_loop(inner.clone()));
        }
        Ok(Edge { inner })
    }

    pub fn status(&self) -> EdgeStatus {
        let inner = &self.inner;
        let state = inner.state();
        let mut listener_errors = state.listener_errors.clone();
        listener_errors.sort_by_key(|e| e.port);
        EdgeStatus {
            running: !*inner.stopping.borrow(),
            connected: state.tunnel.is_some(),
            hub: state.hub.clone(),
            hub_id: state.hub_id.clone(),
            session_id: state.tunnel.as_ref().map(|t| t.session_id.clone()),
            hub_fingerprint: state.hub_fingerprint.clone(),
            pinned: inner.settings.fingerprint.is_some(),
            transport: state.tunnel.as_ref().map(|t| t.tunnel.transport()),
            public_ip: state.public_addr.map(|a| a.ip().to_string()),
            public_port: state.public_addr.map(|a| a.port()),
            active_streams: inner.active_streams.load(Ordering::Relaxed),
            udp_sessions: inner.udp.counters.sessions.load(Ordering::Relaxed),
            udp_dropped: inner.udp.counters.dropped.load(Ordering::Relaxed)
                + state
                    .tunnel
                    .as_ref()
                    .map_or(0, |t| t.tunnel.udp_receive_drops()),
            udp_oversized: inner.udp.counters.oversized.load(Ordering::Relaxed),
            udp_refused: inner.udp.counters.refused.load(Ordering::Relaxed),
            listen_ports: state.listen_ports.clone(),
            listen_ports_udp: state.listen_ports_udp.clone(),
            listener_errors,
            last_error: state.last_error.clone(),
            gap_refused: inner.gap_refused.load(Ordering::Relaxed),
        }
    }

    /// Closes the tunnel and the listeners, waits for every task. Idempotent.
    pub async fn stop(&self) {
        let inner = &self.inner;
        let mut stopped = inner.stopped.subscribe();
        if inner.stop_started.swap(true, Ordering::AcqRel) {
            until_set(&mut stopped).await;
            return;
        }
        inner.stopping.send_replace(true);
        inner.tasks.wait_idle().await;
        inner.events.close().await;
        inner.stopped.send_replace(true);
    }
}

impl EdgeInner {
    fn state(&self) -> MutexGuard<'_, EdgeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn backoff(&self, failures: u32) -> Duration {
        let initial = self.settings.reconnect_initial.as_millis() as u64;
        let max = self.settings.reconnect_max.as_millis() as u64;
        let ceiling = initial.saturating_mul(1u64 << failures.min(30)).min(max);
        Duration::from_millis(rand::thread_rng().gen_range(ceiling / 2..=ceiling))
    }

    /// Sleeps, or returns false if the edge is stopping.
    async fn pause(&self, delay: Duration) -> bool {
        let mut stopping = self.stopping.subscribe();
        tokio::select! {
            _ = until_set(&mut stopping) => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }
}

async fn connect_loop(inner: Arc<EdgeInner>) {
    let hubs = inner.settings.raw.hubs.clone();
    let count = hubs.len();
    // Full rounds failed in a row: the backoff exponent.
    let mut failures: u32 = 0;
    let mut attempt: u64 = 0;
    let mut next = 0usize;
    // Attempts since the round started; when it reaches `count`, the edge backs off.
    let mut round = 0usize;
    let mut last_hub: Option<usize> = None;
    while !inner.is_stopping() {
        let index = next;
        let hub = &hubs[index];
        let hub_name = hub.to_string();
        next = (index + 1) % count;
        round += 1;
        attempt += 1;
        inner.events.emit(Event::TunnelConnecting {
            hub: hub_name.clone(),
            attempt,
        });
        let mut stopping = inner.stopping.subscribe();
        let result = tokio::select! {
            _ = until_set(&mut stopping) => break,
            result = connect_once(&inner, &hub.host, hub.port) => result,
        };
        let (event, delay) = match result {
            Ok(connected) => {
                let failover = last_hub.is_some_and(|h| h != index);
                last_hub = Some(index);
                let started = Instant::now();
                let end = run_tunnel(&inner, &hub_name, connected, failover).await;
                let lasted = started.elapsed();
                if lasted >= STABLE_SESSION {
                    failures = 0;
                }
                let Some((reason, message)) = end else {
                    break;
                };
                if lasted >= FRESH_ROUND && count > 1 {
                    round = 0;
                }
                let delay = next_delay(&inner, &mut round, &mut failures, count);
                inner.state().last_error = Some(format!("{reason}: {message}"));
                let event = Event::TunnelDisconnected {
                    hub: hub_name,
                    reason,
                    message,
                    retry_in_ms: Some(delay.as_millis() as u64),
                };
                (event, delay)
            }
            Err(error) => {
                let delay = next_delay(&inner, &mut round, &mut failures, count);
                let retry_in_ms = Some(delay.as_millis() as u64);
                let event = match error {
                    AttemptError::Rejected(reason, message) => {
                        inner.state().last_error = Some(format!("{reason}: {message}"));
                        Event::TunnelRejected {
                            hub: hub_name,
                            reason,
                            message,
                            retry_in_ms,
                        }
                    }
                    AttemptError::Failed(reason, message) => {
                        inner.state().last_error = Some(format!("{reason}: {message}"));
                        Event::TunnelDisconnected {
                            hub: hub_name,
                            reason,
                            message,
                            retry_in_ms,
                        }
                    }
                };
                (event, delay)
            }
        };
        inner.events.emit(event);
        if !delay.is_zero() && !inner.pause(delay).await {
            break;
        }
    }
    close_listeners(&inner);
}

/// Zero while the round still has hubs to try; the backoff (and a new round) once it is complete.
fn next_delay(inner: &EdgeInner, round: &mut usize, failures: &mut u32, count: usize) -> Duration {
    if *round < count {
        return Duration::ZERO;
    }
    *round = 0;
    let delay = inner.backoff(*failures);
    *failures = failures.saturating_add(1);
    delay
}

fn close_listeners(inner: &EdgeInner) {
    let listeners: Vec<JoinHandle<()>> = inner.state().listeners.drain().map(|(_, h)| h).collect();
    for listener in listeners {
        listener.abort();
    }
    inner.udp.stop();
}

/// One connection attempt to one hub, over the configured transport(s).
async fn connect_once(inner: &EdgeInner, host: &str, port: u16) -> Result<Connected, AttemptError> {
    match inner.settings.raw.transport_mode {
        TransportMode::TcpTls => connect_tls(inner, host, port).await,
        TransportMode::Quic => {
            let timeout = inner.settings.idle_timeout;
            match tokio::time::timeout(timeout, connect_quic(inner, host, port)).await {
                Ok(result) => result,
                Err(_) => Err(AttemptError::Failed(
                    "timeout",
                    format!("QUIC not connected after {} ms", timeout.as_millis()),
                )),
            }
        }
        TransportMode::QuicWithFallback => {
            let timeout = inner.settings.quic_fallback_timeout;
            let (reason, message) =
                match tokio::time::timeout(timeout, connect_quic(inner, host, port)).await {
                    Ok(Ok(connected)) => return Ok(connected),
                    // The hub answered over QUIC: falling back would get the same answer.
                    Ok(Err(rejected @ AttemptError::Rejected(..))) => return Err(rejected),
                    Ok(Err(AttemptError::Failed(reason, message))) => (reason, message),
                    Err(_) => (
                        "timeout",
                        format!("QUIC not connected after {} ms", timeout.as_millis()),
                    ),
                };
            inner.events.emit(Event::TunnelFallback {
                hub: HubAddress {
                    host: host.to_string(),
                    port,
                }
                .to_string(),
                from: "quic",
                to: "tcpTls",
                reason,
                message,
            });
            connect_tls(inner, host, port).await
        }
    }
}

async fn connect_tls(inner: &EdgeInner, host: &str, port: u16) -> Result<Connected, AttemptError> {
    let timeout = inner.settings.idle_timeout;
    let tcp = tokio::time::timeout(
        timeout,
        TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)),
    )
    .await
    .map_err(|_| {
        AttemptError::Failed(
            "connectFailed",
            format!("connecting timed out after {} ms", timeout.as_millis()),
        )
    })?
    .map_err(|e| AttemptError::Failed("connectFailed", e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let name = inner.settings.raw.server_name.as_deref().unwrap_or(host);
    let server_name =
        tls::server_name(name).map_err(|e| AttemptError::Failed("tlsError", e.to_string()))?;
    let handshake = async {
        let mut tls = match inner
            .connector
            .connect(server_name, ReadBuffered::new(tcp))
            .await
        {
            Ok(tls) => tls,
            Err(e) => {
                return Err(match tls::fingerprint_mismatch(&e) {
                    Some(mismatch) => {
                        AttemptError::Rejected("fingerprintMismatch", mismatch.to_string())
                    }
                    None => AttemptError::Failed("tlsError", e.to_string()),
                })
            }
        };
        if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
            let message = "the hub did not agree on ALPN portway/1".to_string();
            return Err(AttemptError::Failed("tlsError", message));
        }
        let fingerprint = tls::peer_fingerprint(tls.get_ref().1).unwrap_or_default();
        let (accepted, leftover) = hello_exchange(inner, &mut tls).await?;
        Ok(Connected {
            link: Link::Tls {
                tls: Box::new(tls),
                leftover,
            },
            accepted,
            fingerprint,
        })
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| {
            AttemptError::Failed(
                "timeout",
                format!("handshake timed out after {} ms", timeout.as_millis()),
            )
        })?
}

async fn connect_quic(inner: &EdgeInner, host: &str, port: u16) -> Result<Connected, AttemptError> {
    let failed = |reason: &'static str| move |e: String| AttemptError::Failed(reason, e);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addr = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| failed("connectFailed")(format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| failed("connectFailed")(format!("{host} does not resolve")))?;
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let mut endpoint = quic::endpoint(local, None)
        .map_err(|e| failed("connectFailed")(format!("cannot bind a UDP socket: {e}")))?;
    endpoint.set_default_client_config(inner.quic_config.clone());
    let name = inner.settings.raw.server_name.as_deref().unwrap_or(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let connecting = endpoint
        .connect(addr, name)
        .map_err(|e| failed("connectFailed")(e.to_string()))?;
    let conn = match connecting.await {
        Ok(conn) => conn,
        Err(e) => {
            let text = e.to_string();
            return Err(match tls::fingerprint_mismatch_text(&text) {
                Some(mismatch) => {
                    AttemptError::Rejected("fingerprintMismatch", mismatch.to_string())
                }
                None => AttemptError::Failed("connectFailed", text),
            });
        }
    };
    if !quic::alpn_ok(&conn) {
        conn.close(quinn::VarInt::from_u32(0), b"ALPN portway/1 required");
        let message = "the hub did not agree on ALPN portway/1".to_string();
        return Err(AttemptError::Failed("tlsError", message));
    }
    let fingerprint = quic::peer_fingerprint(&conn).unwrap_or_default();
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| failed("ioError")(e.to_string()))?;
    let mut control = tokio::io::join(recv, send);
    let (accepted, leftover) = match hello_exchange(inner, &mut control).await {
        Ok(done) => done,
        Err(e) => {
            conn.close(quinn::VarInt::from_u32(0), b"");
            return Err(e);
        }
    };
    let (recv, send) = control.into_inner();
    Ok(Connected {
        link: Link::Quic {
            conn,
            endpoint,
            control: (send, recv),
            leftover,
        },
        accepted,
        fingerprint,
    })
}

/// Sends the Hello and reads the hub's reply. The same on TLS and on the QUIC control stream.
async fn hello_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &EdgeInner,
    io: &mut S,
) -> Result<(HelloAccepted, BytesMut), AttemptError> {
    let failed =
        |reason: &'static str| move |e: std::io::Error| AttemptError::Failed(reason, e.to_string());
    let hello = Hello {
        version: PROTOCOL_VERSION,
        edge_id: inner.settings.raw.edge_id.clone(),
        secret: inner.settings.raw.secret.clone(),
        capabilities: capability::UDP_FRAMES | capability::QUIC_DATAGRAMS,
    };
    let mut out = BytesMut::new();
    encode_hello(&hello, &mut out);
    io.write_all(&out).await.map_err(failed("ioError"))?;
    io.flush().await.map_err(failed("ioError"))?;
    let mut buf = BytesMut::with_capacity(1024);
    let reply = loop {
        match decode_reply(&mut buf) {
            Ok(Some(reply)) => break reply,
            Ok(None) if buf.len() > MAX_HANDSHAKE_MESSAGE => {
                return Err(AttemptError::Failed(
                    "protocolError",
                    "hub reply too large".into(),
                ))
            }
            Ok(None) => match io.read_buf(&mut buf).await {
                Ok(0) => {
                    return Err(AttemptError::Failed(
                        "hubClosed",
                        "hub closed during the handshake".into(),
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(AttemptError::Failed("ioError", e.to_string())),
            },
            Err(e) => return Err(AttemptError::Failed("protocolError", e.to_string())),
        }
    };
    match reply {
        HelloReply::Accepted(accepted) => Ok((accepted, buf)),
        HelloReply::Rejected { code, message } => {
            let reason = match code {
                RejectCode::AuthFailed => "authFailed",
                RejectCode::VersionUnsupported => "versionUnsupported",
                RejectCode::Malformed => "malformed",
                RejectCode::NotOwner => "notOwner",
            };
            Err(AttemptError::Rejected(reason, message))
        }
    }
}

/// Runs one accepted tunnel until it ends. Returns the disconnect reason, or `None` if stopping.
async fn run_tunnel(
    inner: &Arc<EdgeInner>,
    hub_name: &str,
    connected: Connected,
    failover: bool,
) -> Option<(&'static str, String)> {
    let Connected {
        link,
        accepted,
        fingerprint,
    } = connected;
    let pinned = inner.settings.fingerprint.is_some();
    // The hub's liveness settings win (docs/protocol.md §5); ours are the fallback. With several
    // hubs the shorter of the two is used, so a dead hub is noticed within our own idle timeout.
    let several_hubs = inner.settings.raw.hubs.len() > 1;
    let from_hub = |ms: u32, ours: Duration| match ms {
        0 => ours,
        ms if several_hubs => Duration::from_millis(u64::from(ms)).min(ours),
        ms => Duration::from_millis(u64::from(ms)),
    };
    let ping_interval = from_hub(accepted.ping_interval_ms, inner.settings.ping_interval);
    let idle_timeout =
        from_hub(accepted.idle_timeout_ms, inner.settings.idle_timeout).max(ping_interval * 2);
    // UDP only if the hub relays it (it says so in the handshake).
    let needed = match link {
        Link::Tls { .. } => capability::UDP_FRAMES,
        Link::Quic { .. } => capability::UDP_FRAMES | capability::QUIC_DATAGRAMS,
    };
    let udp_settings = accepted
        .udp
        .filter(|u| u.capabilities & needed == needed && u.max_sessions > 0);
    let (generation, udp_inbound) = inner.udp.inbound();
    let udp_inbound = udp_settings.map(|_| udp_inbound);
    let (tunnel, mut tunnel_events) = match link {
        Link::Tls { tls, leftover } => {
            let options = MuxOptions {
                role: Role::Edge,
                ping_interval,
                idle_timeout,
                udp: udp_inbound,
            };
            let (mux, events) = mux::spawn(*tls, leftover, options);
            (Tunnel::Mux(mux), events)
        }
        Link::Quic {
            conn,
            endpoint,
            control,
            leftover,
        } => {
            let options = QuicOptions {
                role: Role::Edge,
                ping_interval,
                idle_timeout,
                udp: udp_inbound,
            };
            let (quic, events) = quic::spawn(conn, Some(endpoint), control, leftover, options);
            (Tunnel::Quic(quic), events)
        }
    };
    if let Some(udp) = udp_settings {
        let idle = Duration::from_millis(u64::from(udp.idle_timeout_ms.max(1)));
        inner.udp.attach(
            generation,
            tunnel.clone(),
            accepted.session_id.clone(),
            idle,
            udp.max_sessions as usize,
        );
    }
    let report_unpinned = {
        let mut state = inner.state();
        state.tunnel = Some(TunnelRef {
            tunnel: tunnel.clone(),
            session_id: accepted.session_id.clone(),
        });
        state.hub = Some(hub_name.to_string());
        state.hub_id = Some(accepted.hub_id.clone());
        state.hub_fingerprint = Some(fingerprint.clone());
        state.last_error = None;
        let report = !pinned && inner.settings.raw.ca_pem.is_none() && !state.unpinned_reported;
        state.unpinned_reported |= report;
        report
    };
    inner.events.emit(Event::TunnelConnected {
        hub: hub_name.to_string(),
        hub_id: accepted.hub_id.clone(),
        session_id: accepted.session_id.clone(),
        hub_fingerprint: fingerprint.clone(),
        pinned,
        transport: tunnel.transport(),
        failover,
    });
    inner.tunnel_up.send_modify(|generation| *generation += 1);
    if report_unpinned {
        inner.events.emit(Event::TunnelUnpinned {
            hub: hub_name.to_string(),
            hub_fingerprint: fingerprint,
        });
    }
    let config = &accepted.config;
    inner.stun_interval.send_replace(config.stun_interval_secs);
    // Bind first, then report: whoever reacts to `ports.assigned` can connect straight away.
    apply_ports(inner, config).await;
    inner.events.emit(Event::PortsAssigned {
        listen_ports: sorted_unique(&config.listen_ports),
        listen_ports_udp: sorted_unique(&config.listen_ports_udp),
    });

    let mut stopping = inner.stopping.subscribe();
    let mut stop_requested = false;
    let end = loop {
        tokio::select! {
            _ = until_set(&mut stopping), if !stop_requested => {
                stop_requested = true;
                tunnel.shutdown(None);
            }
            event = tunnel_events.recv() => match event {
                Some(TunnelEvent::Config(config)) => {
                    inner.stun_interval.send_replace(config.stun_interval_secs);
                    let (added, removed) = apply_ports(inner, &config).await;
                    inner.events.emit(Event::PortsUpdated {
                        listen_ports: sorted_unique(&config.listen_ports),
                        listen_ports_udp: sorted_unique(&config.listen_ports_udp),
                        added,
                        removed,
                    });
                }
                Some(TunnelEvent::Opened(..)) => {}
                Some(TunnelEvent::Ended(end)) => break end,
                None => break TunnelEnd::Io("tunnel task ended".into()),
            }
        }
    };
    inner.state().tunnel = None;
    // Keep the transport's own receive drops once the tunnel is gone.
    inner
        .udp
        .counters
        .dropped
        .fetch_add(tunnel.udp_receive_drops(), Ordering::Relaxed);
    if stop_requested {
        inner.events.emit(Event::TunnelDisconnected {
            hub: hub_name.to_string(),
            reason: "stopped",
            message: "edge stopped".into(),
            retry_in_ms: None,
        });
        return None;
    }
    Some(match end {
        TunnelEnd::PeerClosed => ("hubClosed", "the hub closed the tunnel".to_string()),
        TunnelEnd::PeerGoAway(reason, message) => (goaway_reason_name(reason), message),
        TunnelEnd::Local(_, message) => ("stopped", message),
        TunnelEnd::Timeout => (
            "timeout",
            "no frames received within idleTimeoutMs".to_string(),
        ),
        TunnelEnd::Protocol(message) => ("protocolError", message),
        TunnelEnd::Io(message) => ("ioError", message),
    })
}

/// Makes the bound listeners match `config`. Returns (added, removed) relative to the previous set.
async fn apply_ports(inner: &Arc<EdgeInner>, config: &EdgeConfig) -> (Vec<u16>, Vec<u16>) {
    let wanted = sorted_unique(&config.listen_ports);
    let (previous, to_bind) = {
        let mut state = inner.state();
        let previous = std::mem::replace(&mut state.listen_ports, wanted.clone());
        state.listen_ports_udp = sorted_unique(&config.listen_ports_udp);
        let removed: Vec<u16> = state
            .listeners
            .keys()
            .copied()
            .filter(|p| !wanted.contains(p))
            .collect();
        for port in removed {
            if let Some(listener) = state.listeners.remove(&port) {
                listener.abort();
            }
        }
        let wanted_udp = sorted_unique(&config.listen_ports_udp);
        state.listener_errors.retain(|e| match e.protocol {
            "udp" => wanted_udp.contains(&e.port),
            _ => wanted.contains(&e.port),
        });
        let to_bind: Vec<u16> = wanted
            .iter()
            .copied()
            .filter(|p| !state.listeners.contains_key(p))
            .collect();
        (previous, to_bind)
    };
    for port in to_bind {
        let bind_address = inner
            .settings
            .raw
            .bind_address
            .trim_start_matches('[')
            .trim_end_matches(']');
        match TcpListener::bind((bind_address, port)).await {
            Ok(listener) => {
                let task = inner
                    .tasks
                    .spawn(accept_loop(inner.clone(), listener, port));
                let mut state = inner.state();
                state
                    .listener_errors
                    .retain(|e| e.port != port || e.protocol != "tcp");
                if let Some(stale) = state.listeners.insert(port, task) {
                    stale.abort();
                }
            }
            Err(e) => {
                let error = AddonError::from_bind(&e, &format!("{bind_address}:{port}"));
                let status = ListenerErrorStatus {
                    port,
                    protocol: "tcp",
                    code: error.code().to_string(),
                    message: error.detail().to_string(),
                };
                {
                    let mut state = inner.state();
                    state
                        .listener_errors
                        .retain(|e| e.port != port || e.protocol != "tcp");
                    state.listener_errors.push(status.clone());
                }
                inner.events.emit(Event::ListenerError {
                    port,
                    protocol: "tcp",
                    code: status.code,
                    message: status.message,
                });
            }
        }
    }
    apply_udp_ports(inner, &sorted_unique(&config.listen_ports_udp)).await;
    let added = wanted
        .iter()
        .copied()
        .filter(|p| !previous.contains(p))
        .collect();
    let removed = previous
        .iter()
        .copied()
        .filter(|p| !wanted.contains(p))
        .collect();
    (added, removed)
}

/// Binds and closes UDP listeners; failures are reported like TCP ones (`protocol: "udp"`).
async fn apply_udp_ports(inner: &Arc<EdgeInner>, wanted: &[u16]) {
    let failures = inner.udp.apply_ports(wanted).await;
    let bound = inner.udp.bound_ports();
    {
        let mut state = inner.state();
        state
            .listener_errors
            .retain(|e| e.protocol != "udp" || !bound.contains(&e.port));
    }
    for failure in failures {
        let status = ListenerErrorStatus {
            port: failure.port,
            protocol: "udp",
            code: failure.error.code().to_string(),
            message: failure.error.detail().to_string(),
        };
        {
            let mut state = inner.state();
            state
                .listener_errors
                .retain(|e| e.port != failure.port || e.protocol != "udp");
            state.listener_errors.push(status.clone());
        }
        inner.events.emit(Event::ListenerError {
            port: failure.port,
            protocol: "udp",
            code: status.code,
            message: status.message,
        });
    }
}

async fn accept_loop(inner: Arc<EdgeInner>, listener: TcpListener, port: u16) {
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                let tunnel = inner.state().tunnel.clone();
                match tunnel {
                    Some(tunnel) => {
                        inner
                            .tasks
                            .spawn(serve_client(inner.clone(), tunnel, sock, peer, port));
                    }
                    // No tunnel: hold the client (unread) until one comes up, or reset it.
                    None => {
                        if inner.held.fetch_add(1, Ordering::AcqRel) < MAX_HELD {
                            inner
                                .tasks
                                .spawn(hold_client(inner.clone(), sock, peer, port));
                        } else {
                            inner.held.fetch_sub(1, Ordering::AcqRel);
                            refuse_client(&inner, sock, peer, port);
                        }
                    }
                }
            }
            // Usually EMFILE: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits up to `gapHoldMs` for a tunnel, then serves the client over it; otherwise resets it.
async fn hold_client(inner: Arc<EdgeInner>, sock: TcpStream, peer: SocketAddr, port: u16) {
    let mut up = inner.tunnel_up.subscribe();
    let mut stopping = inner.stopping.subscribe();
    let deadline = tokio::time::sleep(inner.settings.gap_hold);
    tokio::pin!(deadline);
    let tunnel = loop {
        // Subscribed before looking, so a tunnel coming up in between is not missed.
        if let Some(tunnel) = inner.state().tunnel.clone() {
            break Some(tunnel);
        }
        tokio::select! {
            _ = &mut deadline => break None,
            _ = until_set(&mut stopping) => break None,
            changed = up.changed() => if changed.is_err() { break None },
        }
    };
    inner.held.fetch_sub(1, Ordering::AcqRel);
    match tunnel {
        Some(tunnel) => serve_client(inner, tunnel, sock, peer, port).await,
        None => refuse_client(&inner, sock, peer, port),
    }
}

/// Resets (RST, not FIN) a client no tunnel can carry, so it fails at once instead of reading EOF.
fn refuse_client(inner: &EdgeInner, sock: TcpStream, peer: SocketAddr, port: u16) {
    let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
    drop(sock);
    inner.gap_refused.fetch_add(1, Ordering::Relaxed);
    if let Some(count) = inner.gap_limiter.hit() {
        inner.events.emit(Event::StreamRefused {
            edge_port: port,
            client_addr: peer.to_string(),
            reason: "noTunnel",
            count,
        });
    }
}

async fn serve_client(
    inner: Arc<EdgeInner>,
    tunnel: TunnelRef,
    sock: TcpStream,
    peer: SocketAddr,
    port: u16,
) {
    let _ = sock.set_nodelay(true);
    let Ok(edge_local) = sock.local_addr() else {
        return;
    };
    let open = StreamOpen {
        edge_port: port,
        client: peer,
        edge_local,
    };
    let Ok(stream) = tunnel.tunnel.open(open).await else {
        return;
    };
    let stream_id = stream.id;
    let edge_id = inner.settings.raw.edge_id.clone();
    inner.events.emit(Event::StreamOpened {
        edge_id: edge_id.clone(),
        session_id: tunnel.session_id.clone(),
        stream_id,
        edge_port: port,
        client_addr: peer.to_string(),
        target: None,
    });
    inner.active_streams.fetch_add(1, Ordering::Relaxed);
    let outcome = relay(sock, stream, SocketSide::Client, &inner.counters).await;
    inner.active_streams.fetch_sub(1, Ordering::Relaxed);
    inner.events.emit(Event::StreamClosed {
        edge_id,
        session_id: tunnel.session_id,
        stream_id,
        edge_port: port,
        client_addr: peer.to_string(),
        target: None,
        bytes_in: outcome.bytes_in,
        bytes_out: outcome.bytes_out,
        duration_ms: outcome.duration.as_millis() as u64,
        reason: close_reason_name(outcome.reason),
        message: outcome.message,
    });
}

/// How soon a failed STUN round is retried (or the interval, if shorter).
const STUN_RETRY: Duration = Duration::from_secs(30);

/// Asks the STUN servers (in order, first answer wins) for the public address every
/// `stunIntervalSecs` (from the hub); reports `publicIp.discovered` when it changes.
async fn stun_loop(inner: Arc<EdgeInner>) {
    let mut interval = inner.stun_interval.subscribe();
    let mut stopping = inner.stopping.subscribe();
    let mut client = StunClient::default();
    loop {
        let secs = *interval.borrow_and_update();
        if secs == 0 {
            tokio::select! {
                _ = until_set(&mut stopping) => return,
                changed = interval.changed() => if changed.is_err() { return },
            }
            continue;
        }
        let round = async {
            for server in &inner.settings.raw.stun_servers {
                if let Ok(addr) = client.query(server).await {
                    return Some((addr, server.clone()));
                }
            }
            None
        };
        let found = tokio::select! {
            _ = until_set(&mut stopping) => return,
            found = round => found,
        };
        let every = Duration::from_secs(u64::from(secs));
        let wait = match found {
            Some((addr, server)) => {
                let changed = {
                    let mut state = inner.state();
                    let changed = state.public_addr != Some(addr);
                    state.public_addr = Some(addr);
                    changed
                };
                if changed {
                    inner.events.emit(Event::PublicIpDiscovered {
                        ip: addr.ip().to_string(),
                        port: addr.port(),
                        server,
                    });
                }
                every
            }
            None => every.min(STUN_RETRY),
        };
        tokio::select! {
            _ = until_set(&mut stopping) => return,
            // A new interval from the hub: ask again now.
            changed = interval.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
