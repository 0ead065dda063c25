//! The QUIC transport (quinn 0.11, rustls on the ring provider, ALPN `portway/1`, the same
//! certificate and pinning verifier as TLS). Layout on the connection (docs/protocol.md §9):
//!
//! - the edge opens one bidirectional **control stream** first: Hello / reply, then control frames
//!   (Ping, Pong, Config, GoAway, UdpOpen, UdpClose) in the frame codec of §3;
//! - every TCP stream is its own bidirectional QUIC stream opened by the edge, starting with an `Open`
//!   frame (the stream's id and addresses); the rest of the stream is raw bytes. QUIC flow control
//!   replaces the credit windows, FIN is the QUIC stream FIN, an abort is a stream reset (and
//!   STOP_SENDING) whose error code is the `Close` reason code;
//! - UDP payloads are QUIC datagrams (RFC 9221) behind a 4-byte session id.
//!
//! Tasks per tunnel, as in `mux.rs`: a control writer (control frames, pings), a control reader,
//! a datagram reader, on the hub an accept loop (each new stream's `Open` header is read in its own
//! task, so a slow stream never holds up others), and a supervisor that ends them all and says why.
use crate::error::AddonError;
use crate::mux::Role;
use crate::protocol::credential::hmac_sha256;
use crate::protocol::datagram::{decode_quic_datagram, encode_quic_datagram, QUIC_DATAGRAM_PREFIX};
use crate::protocol::frame::{encode_frame, MAX_FRAME_PAYLOAD};
use crate::protocol::{
    CloseReason, ControlRules, EdgeConfig, Frame, FrameDecoder, GoAwayReason, StreamOpen,
    UdpCloseReason,
};
use crate::relay::{StreamRx, StreamTx, TunnelStream};
use crate::transport::tls;
use crate::tunnel::{
    apply_control, udp_send_queue_bytes, Applied, TunnelClosed, TunnelEnd, TunnelEvent, UdpInbound,
    UdpSend,
};
use bytes::BytesMut;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, IdleTimeout, TransportConfig, VarInt};
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Streams the hub lets an edge have open at once (the edge opens all of them).
pub const MAX_CONCURRENT_STREAMS: u32 = 8192;
/// Per-stream receive window: like the TLS transport's credit window, a slow socket holds at most
/// about this much (plus the relay's own bounded queue).
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// Connection-wide receive window: bounds the memory one tunnel's streams can hold.
pub const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;
/// Datagrams buffered by quinn: received ones waiting for the reader (beyond it quinn drops the
/// oldest; counted, see `udp_receive_drops`), and outgoing ones waiting for the driver and the
/// congestion window (`udp_send_queue_bytes`, by role).
const DATAGRAM_RECV_BUFFER: usize = 4 * 1024 * 1024;
/// How long a new stream may take to deliver its `Open` header.
const OPEN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing tunnel may take to deliver its GoAway before it is cut.
const GOAWAY_GRACE: Duration = Duration::from_secs(2);
/// How long an edge waits for its endpoint to send the connection close before dropping it.
const DRAIN_WAIT: Duration = Duration::from_secs(1);
/// Application close code when no GoAway reason applies.
const CLOSE_PLAIN: u32 = 0;
/// Socket buffers of a QUIC endpoint (the kernel caps them at net.core.[rw]mem_max): bursts of
/// datagrams should queue, not be dropped by the kernel.
const ENDPOINT_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// The hub's QUIC side: its server config and the key its stateless resets are made with.
#[derive(Clone)]
pub struct ServerSetup {
    pub config: quinn::ServerConfig,
    reset_key: Arc<StatelessResetKey>,
}

/// The key of QUIC stateless resets (RFC 9000 §10.3). A hub derives it from its private key, so it
/// stays the same across restarts: when a hub dies without closing its connections and comes back on
/// the same port (same data dir), it answers an edge's next packet (a keep-alive) for a connection it
/// no longer has with a stateless reset the edge recognises, and the edge reconnects at once instead
/// of waiting out the idle timeout. quinn's default key is random per endpoint, and its default
/// connection ids carry a check under another random key, so a restarted hub would drop those
/// packets as foreign; `RandomCids` takes any 8-byte id as possibly its own.
struct StatelessResetKey([u8; 32]);

impl StatelessResetKey {
    fn derive(key_pem: &str) -> Self {
        Self(hmac_sha256(
            b"portway/1 QUIC stateless reset key",
            key_pem.as_bytes(),
        ))
    }
}

impl quinn::crypto::HmacKey for StatelessResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let tag = hmac_sha256(&self.0, data);
        let n = signature_out.len().min(tag.len());
        signature_out[..n].copy_from_slice(&tag[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        use subtle::ConstantTimeEq;
        let tag = hmac_sha256(&self.0, data);
        match bool::from(tag.as_slice().ct_eq(signature)) {
            true => Ok(()),
            false => Err(quinn::crypto::CryptoError),
        }
    }
}

/// The hub's connection ids: 8 random bytes. Any 8-byte id of an unknown connection may be one of a
/// previous life's, so it gets a stateless reset (rate-limited by quinn, and always smaller than the
/// packet that caused it).
struct RandomCids;

impl RandomCids {
    const LEN: usize = 8;
}

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        use rand::RngCore;
        let mut cid = [0u8; Self::LEN];
        rand::thread_rng().fill_bytes(&mut cid);
        quinn::ConnectionId::new(&cid)
    }

    fn cid_len(&self) -> usize {
        Self::LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// A QUIC endpoint on `addr` with large socket buffers: a server (hub) when `server` is given, a
/// client (edge) otherwise. Needs to run inside the tokio runtime.
pub fn endpoint(
    addr: std::net::SocketAddr,
    server: Option<ServerSetup>,
) -> std::io::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack where the system allows it, like `Endpoint::client`.
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(ENDPOINT_SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(ENDPOINT_SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime found"))?;
    let (config, server) = match server {
        Some(setup) => {
            let mut config = quinn::EndpointConfig::new(setup.reset_key);
            config.cid_generator(|| Box::new(RandomCids));
            (config, Some(setup.config))
        }
        None => (quinn::EndpointConfig::default(), None),
    };
    quinn::Endpoint::new(config, server, socket.into(), runtime)
}

/// Keep-alive and idle timeout: QUIC PINGs every `ping_interval` keep NAT bindings fresh and the
/// path known to be alive; with no packet at all for `idle_timeout` (negotiated: the smaller of both
/// sides) the connection is gone.
fn transport_config(
    ping_interval: Duration,
    idle_timeout: Duration,
    server: bool,
) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    let peer_streams = if server { MAX_CONCURRENT_STREAMS } else { 0 };
    t.max_concurrent_bidi_streams(VarInt::from_u32(peer_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    t.keep_alive_interval(Some(ping_interval));
    // Bounded by config validation (at most a day), far inside QUIC's limit.
    t.max_idle_timeout(IdleTimeout::try_from(idle_timeout).ok());
    t.datagram_receive_buffer_size(Some(DATAGRAM_RECV_BUFFER));
    t.datagram_send_buffer_size(udp_send_queue_bytes(if server {
        Role::Hub
    } else {
        Role::Edge
    }));
    Arc::new(t)
}

/// The hub's QUIC server config, with the stateless reset key derived from its private key.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    ping_interval: Duration,
    idle_timeout: Duration,
) -> Result<ServerSetup, AddonError> {
    let tls = tls::quic_server_config(cert_pem, key_pem)?;
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| AddonError::Tls(format!("QUIC server config: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config(ping_interval, idle_timeout, true));
    Ok(ServerSetup {
        config,
        reset_key: Arc::new(StatelessResetKey::derive(key_pem)),
    })
}

/// The edge's QUIC client config (same pin / CA verifier as TLS).
pub fn client_config(
    pin: Option<&str>,
    ca_pem: Option<&str>,
    ping_interval: Duration,
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig, AddonError> {
    let tls = tls::quic_client_config(pin, ca_pem)?;
    let crypto = QuicClientConfig::try_from(tls)
        .map_err(|e| AddonError::Tls(format!("QUIC client config: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config(ping_interval, idle_timeout, false));
    Ok(config)
}

/// Whether the connection agreed on ALPN `portway/1`.
pub fn alpn_ok(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
        .is_some_and(|p| p == crate::protocol::ALPN)
}

/// Fingerprint of the hub's certificate on an established connection (edge side).
pub fn peer_fingerprint(conn: &quinn::Connection) -> Option<String> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    certs.first().map(|c| tls::fingerprint_der(c.as_ref()))
}

/// The `Close` reason carried in a stream reset / STOP_SENDING code.
pub fn reason_from_code(code: VarInt) -> CloseReason {
    u8::try_from(code.into_inner())
        .ok()
        .and_then(CloseReason::from_code)
        .unwrap_or(CloseReason::Reset)
}

pub fn code_of(reason: CloseReason) -> VarInt {
    VarInt::from_u32(u32::from(reason.code()))
}

#[derive(Clone)]
pub struct QuicOptions {
    pub role: Role,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub udp: Option<Arc<dyn UdpInbound>>,
}

enum Ctrl {
    Frame(Frame),
    /// Write what is queued, then finish the control stream.
    Finish,
}

type ShutdownRequest = Option<(GoAwayReason, String)>;

struct Shared {
    role: Role,
    conn: quinn::Connection,
    /// The edge's own endpoint (one per connection); the hub's is shared and closed by the hub.
    endpoint: Option<quinn::Endpoint>,
    ctrl_tx: mpsc::UnboundedSender<Ctrl>,
    shutdown_tx: Mutex<Option<oneshot::Sender<ShutdownRequest>>>,
    next_stream_id: AtomicU32,
    active_streams: AtomicUsize,
    /// QUIC datagrams handed to the UDP handler.
    datagrams_read: AtomicU64,
    /// Why streams end once the connection is gone (set before it is closed locally).
    gone: OnceLock<CloseReason>,
}

/// A running QUIC tunnel. Cheap to clone.
#[derive(Clone)]
pub struct QuicHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for QuicHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicHandle")
            .field("role", &self.shared.role)
            .field("remote", &self.shared.conn.remote_address())
            .finish()
    }
}

/// Counts a stream as active while it lives.
#[derive(Debug)]
pub struct ActiveStream(QuicHandle);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.shared.active_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl QuicHandle {
    /// Opens a stream for a TCP client (edge side): a new QUIC stream starting with `Open`.
    pub async fn open(&self, open: StreamOpen) -> Result<TunnelStream, TunnelClosed> {
        if self.shared.gone.get().is_some() {
            return Err(TunnelClosed);
        }
        let (mut send, recv) = self.shared.conn.open_bi().await.map_err(|_| TunnelClosed)?;
        let id = self.shared.next_stream_id.fetch_add(1, Ordering::Relaxed);
        if id == 0 || id == u32::MAX {
            return Err(TunnelClosed);
        }
        let mut header = BytesMut::new();
        encode_frame(
            &Frame::Open {
                stream_id: id,
                open,
            },
            &mut header,
        );
        send.write_all(&header).await.map_err(|_| TunnelClosed)?;
        Ok(self.stream(id, send, recv))
    }

    fn stream(&self, id: u32, send: quinn::SendStream, recv: quinn::RecvStream) -> TunnelStream {
        self.shared.active_streams.fetch_add(1, Ordering::Relaxed);
        TunnelStream {
            id,
            tx: StreamTx::Quic { send, id },
            rx: StreamRx::Quic {
                recv,
                tunnel: self.clone(),
                _active: ActiveStream(self.clone()),
            },
        }
    }

    pub fn push_config(&self, config: EdgeConfig) -> Result<(), TunnelClosed> {
        self.ctrl(Frame::Config(config))
    }

    fn ctrl(&self, frame: Frame) -> Result<(), TunnelClosed> {
        self.shared
            .ctrl_tx
            .send(Ctrl::Frame(frame))
            .map_err(|_| TunnelClosed)
    }

    /// Ends the tunnel: GoAway (if any) on the control stream, then closes the connection.
    pub fn shutdown(&self, goaway: Option<(GoAwayReason, String)>) {
        let sender = self
            .shared
            .shutdown_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(sender) = sender else {
            return;
        };
        // Streams end for the reason we are closing, even if the peer closes the connection first
        // (it does as soon as it reads the GoAway).
        let reason = match &goaway {
            Some((GoAwayReason::HubShutdown, _)) => CloseReason::HubShutdown,
            _ => CloseReason::TunnelLost,
        };
        let _ = self.shared.gone.set(reason);
        let _ = sender.send(goaway);
    }

    pub fn active_streams(&self) -> usize {
        self.shared.active_streams.load(Ordering::Relaxed)
    }

    pub fn udp_open(&self, session_id: u32, open: StreamOpen) -> Result<(), TunnelClosed> {
        self.ctrl(Frame::UdpOpen { session_id, open })
    }

    pub fn udp_close(&self, session_id: u32, reason: UdpCloseReason) {
        let _ = self.ctrl(Frame::UdpClose { session_id, reason });
    }

    /// Sends one datagram as a QUIC datagram. Never waits: quinn's `send_datagram` would silently
    /// evict older queued datagrams to make room, so a datagram that does not fit the send buffer is
    /// dropped (and counted by the caller) instead. `send_datagram_wait` polled once does the size
    /// check, the room check and the send under one lock of the connection (three separate calls
    /// took it three times per datagram, each contending with the connection's driver).
    pub fn udp_datagram(&self, session_id: u32, data: &[u8]) -> UdpSend {
        let conn = &self.shared.conn;
        let send = conn.send_datagram_wait(encode_quic_datagram(session_id, data));
        let mut send = std::pin::pin!(send);
        match send.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => UdpSend::Sent,
            Poll::Ready(Err(quinn::SendDatagramError::TooLarge)) => UdpSend::Oversized {
                max: conn
                    .max_datagram_size()
                    .map_or(0, |max| max.saturating_sub(QUIC_DATAGRAM_PREFIX)),
            },
            Poll::Ready(Err(_)) => UdpSend::Closed,
            Poll::Pending => UdpSend::Dropped,
        }
    }

    /// Datagrams that arrived but that quinn dropped before the reader took them (its receive
    /// buffer was full): DATAGRAM frames received minus datagrams read. Includes the few still
    /// queued at this instant.
    pub fn udp_receive_drops(&self) -> u64 {
        let received = self.shared.conn.stats().frame_rx.datagram;
        received.saturating_sub(self.shared.datagrams_read.load(Ordering::Relaxed))
    }

    /// Why a stream ends when the connection is gone with `err`.
    pub fn gone_reason(&self, err: &ConnectionError) -> CloseReason {
        if let Some(reason) = self.shared.gone.get() {
            return *reason;
        }
        match err {
            ConnectionError::ApplicationClosed(close)
                if close.error_code
                    == VarInt::from_u32(u32::from(GoAwayReason::HubShutdown.code())) =>
            {
                CloseReason::HubShutdown
            }
            _ => CloseReason::TunnelLost,
        }
    }

    /// Resolves once the connection is gone, with the reason streams end with.
    pub async fn closed(&self) -> (CloseReason, String) {
        let err = self.shared.conn.closed().await;
        (self.gone_reason(&err), err.to_string())
    }
}

/// Starts driving an established, authenticated connection whose control stream is `control`.
/// `initial` holds control-stream bytes already read past the handshake.
pub fn spawn(
    conn: quinn::Connection,
    endpoint: Option<quinn::Endpoint>,
    control: (quinn::SendStream, quinn::RecvStream),
    initial: BytesMut,
    options: QuicOptions,
) -> (QuicHandle, mpsc::UnboundedReceiver<TunnelEvent>) {
    let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let handle = QuicHandle {
        shared: Arc::new(Shared {
            role: options.role,
            conn,
            endpoint,
            ctrl_tx,
            shutdown_tx: Mutex::new(Some(shutdown_tx)),
            next_stream_id: AtomicU32::new(1),
            active_streams: AtomicUsize::new(0),
            datagrams_read: AtomicU64::new(0),
            gone: OnceLock::new(),
        }),
    };
    tokio::spawn(supervise(
        handle.clone(),
        control,
        initial,
        options,
        ctrl_rx,
        shutdown_rx,
        events_tx,
    ));
    (handle, events_rx)
}

/// Maps how the connection ended to a tunnel end.
fn end_of(err: &ConnectionError) -> TunnelEnd {
    match err {
        ConnectionError::ApplicationClosed(close) => {
            let reason = u8::try_from(close.error_code.into_inner())
                .ok()
                .and_then(GoAwayReason::from_code);
            match reason {
                Some(reason) => TunnelEnd::PeerGoAway(
                    reason,
                    String::from_utf8_lossy(&close.reason).into_owned(),
                ),
                None => TunnelEnd::PeerClosed,
            }
        }
        ConnectionError::TimedOut => TunnelEnd::Timeout,
        ConnectionError::LocallyClosed => TunnelEnd::Local(None, String::new()),
        other => TunnelEnd::Io(other.to_string()),
    }
}

async fn supervise(
    handle: QuicHandle,
    (control_send, control_recv): (quinn::SendStream, quinn::RecvStream),
    initial: BytesMut,
    options: QuicOptions,
    ctrl_rx: mpsc::UnboundedReceiver<Ctrl>,
    shutdown_rx: oneshot::Receiver<ShutdownRequest>,
    events: mpsc::UnboundedSender<TunnelEvent>,
) {
    let conn = handle.shared.conn.clone();
    let (fail_tx, mut fail_rx) = mpsc::unbounded_channel::<TunnelEnd>();
    let reader = ControlReader {
        handle: handle.clone(),
        events: events.clone(),
        decoder: FrameDecoder::default().with_udp(options.udp.is_some()),
        rules: ControlRules::new(options.role),
        udp: options.udp.clone(),
    };
    let mut read_task = tokio::spawn(reader.run(control_recv, initial, options.idle_timeout));
    let mut write_task = tokio::spawn(control_writer(control_send, ctrl_rx, options.ping_interval));
    let datagram_task = tokio::spawn(read_datagrams(
        handle.clone(),
        options.udp.clone(),
        fail_tx.clone(),
    ));
    let accept_task = (options.role == Role::Hub).then(|| {
        tokio::spawn(accept_streams(
            handle.clone(),
            events.clone(),
            fail_tx.clone(),
        ))
    });
    drop(fail_tx);

    let (end, close_code) = tokio::select! {
        end = &mut read_task => {
            let end = end.unwrap_or_else(|e| TunnelEnd::Io(format!("control reader failed: {e}")));
            let goaway = match &end {
                TunnelEnd::Protocol(message) => Some((GoAwayReason::ProtocolError, message.clone())),
                TunnelEnd::Timeout => Some((GoAwayReason::Timeout, "no control frames received within the idle timeout".to_string())),
                _ => None,
            };
            let code = goaway.as_ref().map_or(CLOSE_PLAIN, |(r, _)| u32::from(r.code()));
            if let Some((reason, message)) = goaway {
                let _ = handle.shared.ctrl_tx.send(Ctrl::Frame(Frame::GoAway { reason, message }));
                let _ = handle.shared.ctrl_tx.send(Ctrl::Finish);
                let _ = tokio::time::timeout(GOAWAY_GRACE, &mut write_task).await;
            }
            (end, code)
        },
        Some(end) = fail_rx.recv() => {
            let code = match &end {
                TunnelEnd::Protocol(message) => {
                    let frame = Frame::GoAway { reason: GoAwayReason::ProtocolError, message: message.clone() };
                    let _ = handle.shared.ctrl_tx.send(Ctrl::Frame(frame));
                    let _ = handle.shared.ctrl_tx.send(Ctrl::Finish);
                    let _ = tokio::time::timeout(GOAWAY_GRACE, &mut write_task).await;
                    u32::from(GoAwayReason::ProtocolError.code())
                }
                _ => CLOSE_PLAIN,
            };
            (end, code)
        },
        written = &mut write_task => {
            let end = match written {
                Ok(Ok(())) => TunnelEnd::Local(None, String::new()),
                Ok(Err(e)) => match conn.close_reason() {
                    Some(err) => end_of(&err),
                    None => TunnelEnd::Io(e),
                },
                Err(e) => TunnelEnd::Io(format!("control writer failed: {e}")),
            };
            (end, CLOSE_PLAIN)
        },
        request = shutdown_rx => {
            let goaway = request.ok().flatten();
            if let Some((reason, message)) = &goaway {
                let frame = Frame::GoAway { reason: *reason, message: message.clone() };
                let _ = handle.shared.ctrl_tx.send(Ctrl::Frame(frame));
            }
            let _ = handle.shared.ctrl_tx.send(Ctrl::Finish);
            let _ = tokio::time::timeout(GOAWAY_GRACE, &mut write_task).await;
            match goaway {
                Some((reason, message)) => (TunnelEnd::Local(Some(reason), message), u32::from(reason.code())),
                None => (TunnelEnd::Local(None, String::new()), CLOSE_PLAIN),
            }
        },
        err = conn.closed() => (end_of(&err), CLOSE_PLAIN),
    };
    let stream_reason = match &end {
        TunnelEnd::PeerGoAway(GoAwayReason::HubShutdown, _)
        | TunnelEnd::Local(Some(GoAwayReason::HubShutdown), _) => CloseReason::HubShutdown,
        _ => CloseReason::TunnelLost,
    };
    let _ = handle.shared.gone.set(stream_reason);
    conn.close(VarInt::from_u32(close_code), b"");
    read_task.abort();
    write_task.abort();
    datagram_task.abort();
    if let Some(task) = accept_task {
        task.abort();
    }
    if let Some(udp) = &options.udp {
        udp.tunnel_ended(match stream_reason {
            CloseReason::HubShutdown => UdpCloseReason::Shutdown,
            _ => UdpCloseReason::TunnelLost,
        });
    }
    handle
        .shared
        .shutdown_tx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(endpoint) = &handle.shared.endpoint {
        // Let the endpoint send the close before it goes away.
        let _ = tokio::time::timeout(DRAIN_WAIT, endpoint.wait_idle()).await;
    }
    let _ = events.send(TunnelEvent::Ended(end));
}

async fn control_writer(
    mut send: quinn::SendStream,
    mut ctrl_rx: mpsc::UnboundedReceiver<Ctrl>,
    ping_interval: Duration,
) -> Result<(), String> {
    let mut buf = BytesMut::with_capacity(4096);
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut nonce: u64 = 0;
    let mut finishing = false;
    loop {
        tokio::select! {
            biased;
            ctrl = ctrl_rx.recv() => match ctrl {
                Some(Ctrl::Frame(frame)) => encode_frame(&frame, &mut buf),
                Some(Ctrl::Finish) | None => finishing = true,
            },
            _ = ping.tick() => {
                nonce = nonce.wrapping_add(1);
                encode_frame(&Frame::Ping { nonce }, &mut buf);
            }
        }
        while !finishing {
            match ctrl_rx.try_recv() {
                Ok(Ctrl::Frame(frame)) => encode_frame(&frame, &mut buf),
                Ok(Ctrl::Finish) => finishing = true,
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            send.write_all(&buf).await.map_err(|e| e.to_string())?;
            buf.clear();
        }
        if finishing {
            let _ = send.finish();
            // Resolves once the peer has everything (or stopped reading).
            let _ = send.stopped().await;
            return Ok(());
        }
    }
}

struct ControlReader {
    handle: QuicHandle,
    events: mpsc::UnboundedSender<TunnelEvent>,
    decoder: FrameDecoder,
    rules: ControlRules,
    udp: Option<Arc<dyn UdpInbound>>,
}

impl ControlReader {
    async fn run(
        mut self,
        mut recv: quinn::RecvStream,
        mut buf: BytesMut,
        idle_timeout: Duration,
    ) -> TunnelEnd {
        let mut last_heard = Instant::now();
        loop {
            loop {
                match self.decoder.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        if let Some(end) = self.dispatch(frame) {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return TunnelEnd::Protocol(e.to_string()),
                }
            }
            if buf.len() > MAX_FRAME_PAYLOAD * 2 {
                return TunnelEnd::Protocol("control stream frame too large".into());
            }
            tokio::select! {
                chunk = recv.read_chunk(64 * 1024, true) => match chunk {
                    Ok(Some(chunk)) => {
                        buf.extend_from_slice(&chunk.bytes);
                        last_heard = Instant::now();
                    }
                    Ok(None) if buf.is_empty() => return TunnelEnd::PeerClosed,
                    Ok(None) => return TunnelEnd::Protocol(format!("control stream ended inside a frame ({} bytes pending)", buf.len())),
                    Err(quinn::ReadError::ConnectionLost(err)) => return end_of(&err),
                    Err(quinn::ReadError::Reset(_)) => return TunnelEnd::PeerClosed,
                    Err(e) => return TunnelEnd::Io(e.to_string()),
                },
                _ = tokio::time::sleep_until(last_heard + idle_timeout) => return TunnelEnd::Timeout,
            }
        }
    }

    fn dispatch(&mut self, frame: Frame) -> Option<TunnelEnd> {
        let handle = &self.handle;
        let control = self.rules.accept(frame);
        match apply_control(control, &self.events, self.udp.as_deref(), |reply| {
            let _ = handle.ctrl(reply);
        }) {
            Applied::Done => None,
            Applied::End(end) => Some(end),
            // Streams are QUIC streams and datagrams QUIC datagrams: nothing else belongs here.
            Applied::NotControl(frame) => Some(TunnelEnd::Protocol(format!(
                "{} frame on the QUIC control stream",
                frame.name()
            ))),
        }
    }
}

/// Reads QUIC datagrams and hands them to the UDP handler. Reports a protocol error and returns;
/// returns quietly when the connection ends (the supervisor sees that itself).
async fn read_datagrams(
    handle: QuicHandle,
    udp: Option<Arc<dyn UdpInbound>>,
    fail: mpsc::UnboundedSender<TunnelEnd>,
) {
    let conn = handle.shared.conn.clone();
    loop {
        // Wait for one datagram, then take the ones already buffered with it without waiting;
        // the handler sends what it held back for batching at `flush`.
        let datagram = match ready_now(conn.read_datagram()) {
            Some(datagram) => datagram,
            None => {
                if let Some(udp) = &udp {
                    udp.flush();
                }
                conn.read_datagram().await
            }
        };
        let Ok(datagram) = datagram else {
            if let Some(udp) = &udp {
                udp.flush();
            }
            return;
        };
        handle.shared.datagrams_read.fetch_add(1, Ordering::Relaxed);
        let Some(udp) = &udp else {
            let _ = fail.send(TunnelEnd::Protocol(
                "QUIC datagram, but UDP was not agreed".into(),
            ));
            return;
        };
        let result = decode_quic_datagram(datagram)
            .map_err(|e| e.to_string())
            .and_then(|(id, data)| udp.datagram(id, data));
        if let Err(message) = result {
            let _ = fail.send(TunnelEnd::Protocol(message));
            return;
        }
    }
}

/// The output of `future` if it is ready without waiting (polled once).
fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// Hub: accepts the edge's streams; each one's `Open` header is read in its own task.
async fn accept_streams(
    handle: QuicHandle,
    events: mpsc::UnboundedSender<TunnelEvent>,
    fail: mpsc::UnboundedSender<TunnelEnd>,
) {
    while let Ok((send, recv)) = handle.shared.conn.accept_bi().await {
        let handle = handle.clone();
        let events = events.clone();
        let fail = fail.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(OPEN_HEADER_TIMEOUT, read_open_header(recv)).await {
                Ok(Ok((recv, stream_id, open))) => {
                    let stream = handle.stream(stream_id, send, recv);
                    let _ = events.send(TunnelEvent::Opened(stream, open));
                }
                // The edge gave up on the stream (its client reset at once) or the connection is
                // going: nothing to relay, and no fault of the tunnel.
                Ok(Err(OpenHeaderError::Abandoned)) => {
                    let mut send = send;
                    let _ = send.reset(code_of(CloseReason::Reset));
                }
                Ok(Err(OpenHeaderError::Protocol(message))) => {
                    let _ = fail.send(TunnelEnd::Protocol(message));
                }
                // A stream that never says what it is: drop it (reset), keep the tunnel.
                Err(_) => {
                    let mut send = send;
                    let _ = send.reset(code_of(CloseReason::Timeout));
                }
            }
        });
    }
}

/// Why a new stream yields no `Open` header.
#[derive(Debug)]
enum OpenHeaderError {
    /// The edge reset the stream (or the connection went) before its header was read. An edge
    /// does this when its client resets right after connecting: the edge has already sent the
    /// header, but a reset lets the receiver discard unread data, so the header may never be seen.
    /// Not a protocol error: only this stream ends.
    Abandoned,
    /// The stream does not start with a well-formed `Open`: the tunnel ends.
    Protocol(String),
}

impl OpenHeaderError {
    fn of(err: quinn::ReadExactError, context: &str) -> Self {
        match err {
            quinn::ReadExactError::ReadError(
                quinn::ReadError::Reset(_) | quinn::ReadError::ConnectionLost(_),
            ) => Self::Abandoned,
            other => Self::Protocol(format!("stream ended {context} its OPEN header: {other}")),
        }
    }
}

/// Reads exactly one `Open` frame from the start of a new stream (nothing past it).
async fn read_open_header(
    mut recv: quinn::RecvStream,
) -> Result<(quinn::RecvStream, u32, StreamOpen), OpenHeaderError> {
    use crate::protocol::frame::FRAME_HEADER_LEN;
    let mut header = [0u8; FRAME_HEADER_LEN];
    recv.read_exact(&mut header)
        .await
        .map_err(|e| OpenHeaderError::of(e, "before"))?;
    if header[0] != crate::protocol::frame::frame_type::OPEN {
        return Err(OpenHeaderError::Protocol(format!(
            "a QUIC stream must start with OPEN, got frame type 0x{:02x}",
            header[0]
        )));
    }
    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
    // Decide from the header alone (type, stream id, length) before reading the payload.
    let mut decoder = FrameDecoder::default();
    if let Err(e) = decoder.decode(&mut BytesMut::from(&header[..])) {
        return Err(OpenHeaderError::Protocol(e.to_string()));
    }
    let mut frame = BytesMut::from(&header[..]);
    frame.resize(FRAME_HEADER_LEN + len, 0);
    recv.read_exact(&mut frame[FRAME_HEADER_LEN..])
        .await
        .map_err(|e| OpenHeaderError::of(e, "inside"))?;
    match decoder.decode(&mut frame) {
        Ok(Some(Frame::Open { stream_id, open })) => Ok((recv, stream_id, open)),
        Ok(Some(other)) => Err(OpenHeaderError::Protocol(format!(
            "a QUIC stream must start with OPEN, got {}",
            other.name()
        ))),
        Ok(None) => Err(OpenHeaderError::Protocol("incomplete OPEN header".into())),
        Err(e) => Err(OpenHeaderError::Protocol(e.to_string())),
    }
}
