//! UDP relaying over a tunnel (docs/protocol.md §7).
//!
//! Edge: one socket per UDP listen port; datagrams from each client address (per port) form a
//! session with a tunnel-wide id, announced with `UdpOpen`. Hub: one connected upstream socket per
//! session, to `targets[port]` or `targetHost:port`; with PROXY v2 the first datagram upstream is the
//! header alone (DGRAM family, the client as source).
//!
//! Choices:
//! - UDP never waits: datagrams go to the tunnel with `Tunnel::udp_datagram` (drops when the queue
//!   is full) and to sockets with `try_send` (drops when the socket buffer is full). Every drop is
//!   counted (`udpDropped`), datagrams larger than the tunnel can carry are counted (`udpOversized`)
//!   and reported (`udp.oversized`), never truncated.
//! - Both sides run the idle timer (the edge learns the hub's timeout in the handshake); whichever
//!   fires first sends `UdpClose(idle)` and both report `udp.expired`.
//! - The session cap is enforced by the edge (refuse before anything crosses the tunnel) and again by
//!   the hub. Refusals are counted and reported at most once per second per edge (`udp.refused` with
//!   the count since the previous event).
//! - Listener sockets outlive tunnels (like TCP listeners); sessions do not: when a tunnel ends, its
//!   sessions end with `tunnelLost`.
use crate::config::ProxyProtocol;
use crate::error::AddonError;
use crate::events::{Event, EventSink, UdpSessionEnd};
use crate::protocol::frame::MAX_UDP_DATAGRAM;
use crate::protocol::{proxy_v2_header, ProxyTransport, StreamOpen, UdpCloseReason};
use crate::runtime::TaskGroup;
use crate::tunnel::{Tunnel, UdpInbound, UdpSend};
#[cfg(target_os = "linux")]
use crate::udp_mmsg as mmsg;
use bytes::Bytes;
#[cfg(not(target_os = "linux"))]
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Datagrams held for a hub session while its upstream socket is being set up (count and bytes).
const CONNECTING_QUEUE: usize = 64;
const CONNECTING_QUEUE_BYTES: usize = 128 * 1024;
/// QUIC only: datagrams that arrived before their session's `UdpOpen` (which travels on the control
/// stream), held this long at most, this many at most.
const EARLY_HOLD: Duration = Duration::from_secs(2);
const EARLY_MAX: usize = 256;
const EARLY_MAX_BYTES: usize = 256 * 1024;
/// Rate limit of `udp.refused` / `udp.oversized` events.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Large enough for any UDP datagram, so none is ever truncated on receive.
pub(crate) const RECV_BUF: usize = MAX_UDP_DATAGRAM + 1;
/// Datagrams handled per socket wake-up before giving other tasks a turn.
const RECV_BATCH: usize = 64;
/// Socket buffers (capped by the kernel at net.core.[rw]mem_max): an edge port's socket carries all
/// its clients; a hub upstream socket one session.
const LISTENER_SOCKET_BUFFER: usize = 4 * 1024 * 1024;
const UPSTREAM_SOCKET_BUFFER: usize = 1024 * 1024;
/// Hub: datagrams to targets held back while the tunnel's reader decodes one read, at most (count
/// and bytes); a full batch goes out at once, the rest when the reader calls `flush`.
const SEND_QUEUE: usize = 256;
const SEND_QUEUE_BYTES: usize = 1024 * 1024;

fn size_buffers(sock: &UdpSocket, bytes: usize) {
    let sock = socket2::SockRef::from(sock);
    let _ = sock.set_recv_buffer_size(bytes);
    let _ = sock.set_send_buffer_size(bytes);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(not(target_os = "linux"))]
thread_local! {
    static RECV: RefCell<Vec<u8>> = RefCell::new(vec![0u8; RECV_BUF]);
}

/// Receives one datagram into the worker's buffer and hands it to `f` (which must not await).
#[cfg(not(target_os = "linux"))]
fn try_recv_with<R>(recv: impl FnOnce(&mut [u8]) -> io::Result<R>) -> io::Result<R> {
    RECV.with(|buf| recv(&mut buf.borrow_mut()))
}

/// Receives the datagrams that are ready on `sock` without waiting, at most one batch (one
/// `recvmmsg` on Linux, one datagram elsewhere), and hands each to `f` (which must not await) in
/// arrival order with its source. Returns how many; `Err(WouldBlock)` (readiness cleared) when
/// none was ready.
fn try_recv_batch(sock: &UdpSocket, f: impl FnMut(SocketAddr, &[u8])) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        mmsg::SLOTS.with(|slots| mmsg::recv(sock, &mut slots.borrow_mut(), f))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let mut f = f;
        try_recv_with(|buf| {
            let (n, from) = sock.try_recv_from(buf)?;
            f(from, &buf[..n]);
            Ok(1)
        })
    }
}

/// Sends the first datagrams of `datagrams` on `sock` to `to` (its connected peer when `None`)
/// without waiting, at most one batch (one `sendmmsg` on Linux, one datagram elsewhere). Returns how
/// many were sent (at least one); `Err` is about the first unsent datagram (`WouldBlock`: the
/// socket buffer is full).
fn try_send_batch<'a>(
    sock: &UdpSocket,
    to: Option<SocketAddr>,
    datagrams: impl Iterator<Item = &'a [u8]>,
) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        let to = to.map(socket2::SockAddr::from);
        mmsg::send(sock, to.as_ref(), datagrams)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let mut datagrams = datagrams;
        match (datagrams.next(), to) {
            (Some(data), Some(to)) => sock.try_send_to(data, to).map(|_| 1),
            (Some(data), None) => sock.try_send(data).map(|_| 1),
            (None, _) => Ok(0),
        }
    }
}

/// What became of datagrams handed to `send_all`.
#[derive(Debug, Default, PartialEq)]
struct SendOutcome {
    /// Sent, and their payload bytes.
    sent: u64,
    sent_bytes: u64,
    /// Not sent: the socket buffer was full (the rest of the batch, like a datagram that finds a
    /// full queue anywhere else), or the kernel refused one (e.g. an earlier ICMP error such as
    /// port unreachable).
    dropped: u64,
    /// Sizes of those refused as too large for the path (`EMSGSIZE`).
    oversized: Vec<usize>,
}

/// Sends `datagrams` in order on `sock` to `to` (its connected peer when `None`) without waiting,
/// a batch per system call; every datagram is accounted for in the outcome.
fn send_all(sock: &UdpSocket, to: Option<SocketAddr>, datagrams: &[&[u8]]) -> SendOutcome {
    let mut out = SendOutcome::default();
    let mut next = 0;
    while next < datagrams.len() {
        match try_send_batch(sock, to, datagrams[next..].iter().copied()) {
            Ok(n) if n > 0 => {
                out.sent += n as u64;
                out.sent_bytes += datagrams[next..next + n]
                    .iter()
                    .map(|d| d.len() as u64)
                    .sum::<u64>();
                next += n;
            }
            Err(e) if is_msg_size(&e) => {
                out.oversized.push(datagrams[next].len());
                next += 1;
            }
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {
                out.dropped += 1;
                next += 1;
            }
        }
    }
    out.dropped += (datagrams.len() - next) as u64;
    out
}

/// Datagrams held until the tunnel reader's `flush` (bounded by `SEND_QUEUE[_BYTES]`: `push` says
/// when to send at once), in arrival order, each with the session (one destination) it goes to.
struct SendQueue<S> {
    inner: Mutex<Queued<S>>,
}

/// The datagrams of a `SendQueue` and their total size.
struct Queued<S>(Vec<(Arc<S>, Bytes)>, usize);

impl<S> Default for SendQueue<S> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Queued(Vec::new(), 0)),
        }
    }
}

impl<S> SendQueue<S> {
    /// Queues one datagram; true when the queue is full and should be sent now.
    fn push(&self, session: Arc<S>, data: Bytes) -> bool {
        let mut inner = lock(&self.inner);
        inner.1 += data.len();
        inner.0.push((session, data));
        inner.0.len() >= SEND_QUEUE || inner.1 >= SEND_QUEUE_BYTES
    }

    /// Takes everything queued and hands it to `send` per session, in arrival order within each.
    fn drain(&self, mut send: impl FnMut(&Arc<S>, &[&[u8]])) {
        let mut queue = {
            let mut inner = lock(&self.inner);
            inner.1 = 0;
            std::mem::take(&mut inner.0)
        };
        if queue.is_empty() {
            return;
        }
        // A stable sort: each session's datagrams keep their order.
        queue.sort_by_key(|(session, _)| Arc::as_ptr(session) as usize);
        let mut slices: Vec<&[u8]> = Vec::with_capacity(queue.len());
        for run in queue.chunk_by(|a, b| Arc::ptr_eq(&a.0, &b.0)) {
            slices.clear();
            slices.extend(run.iter().map(|(_, data)| &data[..]));
            send(&run[0].0, &slices);
        }
        drop(slices);
        queue.clear();
        // Keep the allocation for the next batch.
        let mut inner = lock(&self.inner);
        if inner.0.is_empty() {
            inner.0 = queue;
        }
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        lock(&self.inner).0.is_empty()
    }
}

/// Counters reported in status.
#[derive(Debug, Default)]
pub struct UdpCounters {
    /// Sessions open now.
    pub sessions: AtomicU64,
    /// Datagrams dropped: tunnel or socket queue full, no tunnel, session already closed.
    pub dropped: AtomicU64,
    /// Datagrams larger than the tunnel (or the target path) can carry.
    pub oversized: AtomicU64,
    /// New sessions refused (session cap, port not assigned).
    pub refused: AtomicU64,
}

impl UdpCounters {
    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// At most one report per `REPORT_EVERY`; counts what happened in between.
#[derive(Default)]
pub(crate) struct Limiter {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Limiter {
    /// Records one occurrence; returns the count to report if a report is due now.
    pub(crate) fn hit(&self) -> Option<u64> {
        let mut state = lock(&self.state);
        state.1 += 1;
        let now = Instant::now();
        if state.0.is_some_and(|last| now < last + REPORT_EVERY) {
            return None;
        }
        state.0 = Some(now);
        Some(std::mem::take(&mut state.1))
    }
}

/// Packet and byte counts of one session; in = client → target, out = target → client.
struct Stats {
    opened: Instant,
    /// Milliseconds after `opened` of the last datagram in either direction.
    last_active_ms: AtomicU64,
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Stats {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_active_ms: AtomicU64::new(0),
            packets_in: AtomicU64::new(0),
            packets_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_active_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn count_in(&self, len: usize) {
        self.packets_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
        self.touch();
    }

    fn count_out(&self, len: usize) {
        self.count_out_many(1, len as u64);
    }

    fn count_out_many(&self, packets: u64, bytes: u64) {
        if packets == 0 {
            return;
        }
        self.packets_out.fetch_add(packets, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        self.touch();
    }

    fn idle_deadline(&self, idle: Duration) -> Instant {
        self.opened + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed)) + idle
    }

    fn end_event(&self, common: SessionInfo, reason: UdpCloseReason) -> Event {
        let end = UdpSessionEnd {
            edge_id: common.edge_id,
            session_id: common.session_id,
            udp_session_id: common.udp_session_id,
            edge_port: common.edge_port,
            client_addr: common.client_addr,
            target: common.target,
            packets_in: self.packets_in.load(Ordering::Relaxed),
            packets_out: self.packets_out.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            duration_ms: self.opened.elapsed().as_millis() as u64,
            reason: reason.as_str(),
        };
        match reason {
            UdpCloseReason::Idle => Event::UdpExpired(end),
            _ => Event::UdpClosed(end),
        }
    }
}

/// Who a session is, for events.
struct SessionInfo {
    edge_id: String,
    session_id: String,
    udp_session_id: u32,
    edge_port: u16,
    client_addr: String,
    target: Option<String>,
}

/// How a session is asked to end: the first reason wins; `tell_peer` sends `UdpClose`.
#[derive(Default)]
struct CloseSignal {
    reason: Mutex<Option<(UdpCloseReason, bool)>>,
    notify: Notify,
}

impl CloseSignal {
    fn close(&self, reason: UdpCloseReason, tell_peer: bool) {
        let mut slot = lock(&self.reason);
        if slot.is_none() {
            *slot = Some((reason, tell_peer));
            self.notify.notify_one();
        }
    }

    async fn closed(&self) -> (UdpCloseReason, bool) {
        loop {
            if let Some(reason) = *lock(&self.reason) {
                return reason;
            }
            self.notify.notified().await;
        }
    }
}

/// Waits until the session has been idle for `idle`, or is closed; returns why it ends.
async fn idle_or_closed(
    stats: &Stats,
    close: &CloseSignal,
    idle: Duration,
) -> (UdpCloseReason, bool) {
    loop {
        let deadline = stats.idle_deadline(idle);
        tokio::select! {
            reason = close.closed() => return reason,
            _ = tokio::time::sleep_until(deadline) => {
                if Instant::now() >= stats.idle_deadline(idle) {
                    close.close(UdpCloseReason::Idle, true);
                }
            }
        }
    }
}

fn is_msg_size(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc_emsgsize())
}

/// EMSGSIZE (90 on Linux, 40 on macOS/BSD).
fn libc_emsgsize() -> i32 {
    if cfg!(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd"
    )) {
        40
    } else {
        90
    }
}

// ---- hub --------------------------------------------------------------------------------------

/// Per-tunnel settings of the hub's UDP half.
#[derive(Clone)]
pub struct HubUdpSettings {
    pub edge_id: String,
    pub session_id: String,
    pub proxy: ProxyProtocol,
    pub idle_timeout: Duration,
    /// Resolving the target and opening the upstream socket may take this long.
    pub connect_timeout: Duration,
    pub max_sessions: usize,
    /// QUIC: datagrams may arrive before their `UdpOpen`; hold them briefly instead of failing.
    pub early_datagrams: bool,
}

/// Where a session on `edge_port` goes, or `None` if the port is not assigned to the edge.
pub type TargetLookup = Box<dyn Fn(u16) -> Option<String> + Send + Sync>;

/// The hub's UDP sessions of one tunnel.
pub struct HubUdp {
    me: Weak<HubUdp>,
    settings: HubUdpSettings,
    target_for: TargetLookup,
    tunnel: OnceLock<Tunnel>,
    table: Mutex<HubTable>,
    counters: Arc<UdpCounters>,
    events: EventSink,
    tasks: TaskGroup,
    refused: Limiter,
    oversized: Limiter,
    /// Datagrams for targets, held until the reader's `flush`.
    outgoing: SendQueue<HubSession>,
}

#[derive(Default)]
struct HubTable {
    sessions: HashMap<u32, Arc<HubSession>>,
    last_id: u32,
    early: VecDeque<(Instant, u32, Bytes)>,
    ended: bool,
}

struct HubSession {
    id: u32,
    open: StreamOpen,
    target: String,
    stats: Stats,
    close: CloseSignal,
    upstream: Mutex<Upstream>,
}

enum Upstream {
    Connecting(Pending),
    Ready(Arc<UdpSocket>),
    Gone,
}

/// Datagrams waiting for a session's upstream socket, bounded in count and bytes.
#[derive(Default)]
struct Pending {
    queue: Vec<Bytes>,
    bytes: usize,
}

impl Pending {
    /// Queues `data`; false (dropped) when full.
    fn push(&mut self, data: Bytes) -> bool {
        if self.queue.len() >= CONNECTING_QUEUE || self.bytes + data.len() > CONNECTING_QUEUE_BYTES
        {
            return false;
        }
        self.bytes += data.len();
        self.queue.push(data);
        true
    }
}

impl HubUdp {
    pub fn new(
        settings: HubUdpSettings,
        target_for: TargetLookup,
        counters: Arc<UdpCounters>,
        events: EventSink,
        tasks: TaskGroup,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            settings,
            target_for,
            tunnel: OnceLock::new(),
            table: Mutex::new(HubTable::default()),
            counters,
            events,
            tasks,
            refused: Limiter::default(),
            oversized: Limiter::default(),
            outgoing: SendQueue::default(),
        })
    }

    pub fn counters(&self) -> Arc<UdpCounters> {
        self.counters.clone()
    }

    /// Connects the handler to its tunnel (once, right after the tunnel starts).
    pub fn attach(&self, tunnel: Tunnel) {
        let _ = self.tunnel.set(tunnel);
    }

    fn refuse(&self, session_id: u32, open: &StreamOpen, reason: UdpCloseReason) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(tunnel) = self.tunnel.get() {
            tunnel.udp_close(session_id, reason);
        }
        if let Some(count) = self.refused.hit() {
            self.events.emit(Event::UdpRefused {
                edge_id: self.settings.edge_id.clone(),
                edge_port: open.edge_port,
                client_addr: open.client.to_string(),
                reason: reason.as_str(),
                count,
            });
        }
    }

    fn info(&self, session: &HubSession) -> SessionInfo {
        SessionInfo {
            edge_id: self.settings.edge_id.clone(),
            session_id: self.settings.session_id.clone(),
            udp_session_id: session.id,
            edge_port: session.open.edge_port,
            client_addr: session.open.client.to_string(),
            target: Some(session.target.clone()),
        }
    }

    /// One datagram from the edge to the target of `session`: queued for the next `flush` once the
    /// upstream socket is ready.
    fn to_target(&self, session: &Arc<HubSession>, data: Bytes) {
        session.stats.count_in(data.len());
        {
            let mut upstream = lock(&session.upstream);
            match &mut *upstream {
                Upstream::Connecting(queue) => {
                    if !queue.push(data) {
                        self.counters.drop_one();
                    }
                    return;
                }
                Upstream::Gone => {
                    self.counters.drop_one();
                    return;
                }
                Upstream::Ready(_) => {}
            }
        }
        if self.outgoing.push(session.clone(), data) {
            self.send_queued();
        }
    }

    /// Sends what `to_target` queued: per session (socket) in arrival order, a batch per system call.
    fn send_queued(&self) {
        self.outgoing.drain(|session, datagrams| {
            let sock = match &*lock(&session.upstream) {
                Upstream::Ready(sock) => sock.clone(),
                _ => {
                    self.counters
                        .dropped
                        .fetch_add(datagrams.len() as u64, Ordering::Relaxed);
                    return;
                }
            };
            self.send_upstream(session, &sock, datagrams);
        });
    }

    /// Sends `datagrams` (in order) on `session`'s upstream socket without waiting. Every datagram
    /// that cannot go is counted: oversized, or dropped.
    fn send_upstream(&self, session: &HubSession, sock: &UdpSocket, datagrams: &[&[u8]]) {
        let out = send_all(sock, None, datagrams);
        self.counters
            .dropped
            .fetch_add(out.dropped, Ordering::Relaxed);
        for size in out.oversized {
            self.oversized(session, size, None);
        }
    }

    fn oversized(&self, session: &HubSession, size: usize, max: Option<usize>) {
        self.counters.oversized.fetch_add(1, Ordering::Relaxed);
        if let Some(count) = self.oversized.hit() {
            self.events.emit(Event::UdpOversized {
                edge_id: self.settings.edge_id.clone(),
                edge_port: session.open.edge_port,
                client_addr: session.open.client.to_string(),
                size,
                max_size: max,
                count,
            });
        }
    }
}

impl UdpInbound for HubUdp {
    fn open(&self, session_id: u32, open: StreamOpen) -> Result<(), String> {
        let Some(target) = (self.target_for)(open.edge_port) else {
            self.refuse(session_id, &open, UdpCloseReason::PortClosed);
            return Ok(());
        };
        let session = {
            let mut table = lock(&self.table);
            if table.ended {
                return Ok(());
            }
            table.last_id = table.last_id.max(session_id);
            if table.sessions.len() >= self.settings.max_sessions {
                drop(table);
                self.refuse(session_id, &open, UdpCloseReason::SessionCap);
                return Ok(());
            }
            let mut early = Vec::new();
            table.early.retain(|(_, id, data)| {
                if *id == session_id {
                    early.push(data.clone());
                    false
                } else {
                    true
                }
            });
            let session = Arc::new(HubSession {
                id: session_id,
                open,
                target,
                stats: Stats::new(),
                close: CloseSignal::default(),
                upstream: Mutex::new(Upstream::Connecting(Pending::default())),
            });
            for data in early {
                session.stats.count_in(data.len());
                if let Upstream::Connecting(queue) = &mut *lock(&session.upstream) {
                    if !queue.push(data) {
                        self.counters.drop_one();
                    }
                }
            }
            table.sessions.insert(session_id, session.clone());
            session
        };
        self.counters.sessions.fetch_add(1, Ordering::Relaxed);
        let info = self.info(&session);
        self.events.emit(Event::UdpOpened {
            edge_id: info.edge_id,
            session_id: info.session_id,
            udp_session_id: session_id,
            edge_port: info.edge_port,
            client_addr: info.client_addr,
            target: info.target,
        });
        if let Some(me) = self.me.upgrade() {
            self.tasks.spawn(run_hub_session(me, session));
        }
        Ok(())
    }

    fn datagram(&self, session_id: u32, data: Bytes) -> Result<(), String> {
        let session = {
            let mut table = lock(&self.table);
            match table.sessions.get(&session_id) {
                Some(session) => session.clone(),
                None if session_id <= table.last_id || table.ended => {
                    // Crossed a UdpClose on the wire, or refused.
                    self.counters.drop_one();
                    return Ok(());
                }
                None if self.settings.early_datagrams => {
                    let now = Instant::now();
                    while table
                        .early
                        .front()
                        .is_some_and(|(at, ..)| now.duration_since(*at) > EARLY_HOLD)
                    {
                        table.early.pop_front();
                        self.counters.drop_one();
                    }
                    let bytes: usize = table.early.iter().map(|(_, _, d)| d.len()).sum();
                    if table.early.len() >= EARLY_MAX || bytes + data.len() > EARLY_MAX_BYTES {
                        self.counters.drop_one();
                    } else {
                        table.early.push_back((now, session_id, data));
                    }
                    return Ok(());
                }
                None => {
                    return Err(format!(
                        "UDP_DATAGRAM for session {session_id}, which was never opened"
                    ))
                }
            }
        };
        self.to_target(&session, data);
        Ok(())
    }

    fn flush(&self) {
        self.send_queued();
    }

    fn close(&self, session_id: u32, reason: UdpCloseReason) -> Result<(), String> {
        let table = lock(&self.table);
        match table.sessions.get(&session_id) {
            Some(session) => session.close.close(reason, false),
            None if session_id <= table.last_id || table.ended => {}
            None => {
                return Err(format!(
                    "UDP_CLOSE for session {session_id}, which was never opened"
                ))
            }
        }
        Ok(())
    }

    fn tunnel_ended(&self, reason: UdpCloseReason) {
        // What the reader decoded before the end still goes out.
        self.send_queued();
        let mut table = lock(&self.table);
        table.ended = true;
        table.early.clear();
        for session in table.sessions.values() {
            session.close.close(reason, false);
        }
    }
}

/// Resolves the target and opens a connected socket to it.
async fn connect_upstream(target: &str) -> Result<UdpSocket, String> {
    let addr = tokio::net::lookup_host(target)
        .await
        .map_err(|e| format!("cannot resolve {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target} does not resolve"))?;
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("cannot bind a UDP socket for {target}: {e}"))?;
    size_buffers(&sock, UPSTREAM_SOCKET_BUFFER);
    sock.connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {target}: {e}"))?;
    Ok(sock)
}

async fn run_hub_session(udp: Arc<HubUdp>, session: Arc<HubSession>) {
    let idle = udp.settings.idle_timeout;
    let connected = tokio::select! {
        connected = connect_upstream(&session.target) => Some(connected),
        reason = session.close.closed() => { finish_hub_session(&udp, &session, reason); return; }
        _ = tokio::time::sleep(udp.settings.connect_timeout) => None,
    };
    let sock = match connected {
        Some(Ok(sock)) => Arc::new(sock),
        Some(Err(_)) | None => {
            session.close.close(UdpCloseReason::TargetError, true);
            let reason = session.close.closed().await;
            finish_hub_session(&udp, &session, reason);
            return;
        }
    };
    // A fresh socket is not known to be writable until the runtime has seen it so; `try_send`
    // would refuse until then.
    if udp.settings.proxy == ProxyProtocol::V2 {
        let header = proxy_v2_header(
            session.open.client,
            session.open.edge_local,
            ProxyTransport::Datagram,
        );
        let _ = sock.send(&header).await;
    } else {
        let _ = sock.writable().await;
    }
    {
        // Datagrams that waited for the socket go out before it is ready for the others (which
        // `to_target` queues only once it sees `Ready`), so the session's order holds.
        let mut upstream = lock(&session.upstream);
        if let Upstream::Connecting(pending) = &*upstream {
            let datagrams: Vec<&[u8]> = pending.queue.iter().map(|d| &d[..]).collect();
            udp.send_upstream(&session, &sock, &datagrams);
        }
        *upstream = Upstream::Ready(sock.clone());
    }
    let tunnel = udp.tunnel.get().cloned();
    let reason = loop {
        tokio::select! {
            reason = idle_or_closed(&session.stats, &session.close, idle) => break reason,
            ready = sock.readable() => {
                if ready.is_err() {
                    session.close.close(UdpCloseReason::TargetError, true);
                    continue;
                }
                // Drain what is ready (a batch at a time).
                let mut handled = 0;
                while handled < RECV_BATCH {
                    // The socket is connected: every datagram is from the target.
                    let received = try_recv_batch(&sock, |_, data| {
                        session.stats.count_out(data.len());
                        let sent = match &tunnel {
                            Some(tunnel) => tunnel.udp_datagram(session.id, data),
                            None => UdpSend::Closed,
                        };
                        match sent {
                            UdpSend::Sent => {}
                            UdpSend::Dropped | UdpSend::Closed => udp.counters.drop_one(),
                            UdpSend::Oversized { max } => {
                                udp.oversized(&session, data.len(), Some(max))
                            }
                        }
                    });
                    match received {
                        Ok(n) => handled += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // ICMP port unreachable from an earlier send: the target is not listening
                        // (yet); keep the session, like a client would.
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                        Err(_) => {
                            session.close.close(UdpCloseReason::TargetError, true);
                            break;
                        }
                    }
                }
            }
        }
    };
    *lock(&session.upstream) = Upstream::Gone;
    finish_hub_session(&udp, &session, reason);
}

fn finish_hub_session(
    udp: &HubUdp,
    session: &HubSession,
    (reason, tell_peer): (UdpCloseReason, bool),
) {
    {
        let mut table = lock(&udp.table);
        if table
            .sessions
            .get(&session.id)
            .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), session))
        {
            table.sessions.remove(&session.id);
        }
    }
    *lock(&session.upstream) = Upstream::Gone;
    udp.counters.sessions.fetch_sub(1, Ordering::Relaxed);
    if tell_peer {
        if let Some(tunnel) = udp.tunnel.get() {
            tunnel.udp_close(session.id, reason);
        }
    }
    udp.events
        .emit(session.stats.end_event(udp.info(session), reason));
}

// ---- edge -------------------------------------------------------------------------------------

/// The edge's UDP listeners and sessions. One per edge; tunnels come and go underneath.
pub struct EdgeUdp {
    edge_id: String,
    bind_address: String,
    events: EventSink,
    tasks: TaskGroup,
    pub counters: Arc<UdpCounters>,
    state: Mutex<EdgeUdpState>,
    refused: Limiter,
    oversized: Limiter,
}

#[derive(Default)]
struct EdgeUdpState {
    listeners: HashMap<u16, (Arc<UdpSocket>, JoinHandle<()>)>,
    link: Option<EdgeLink>,
    by_addr: HashMap<(u16, SocketAddr), Arc<EdgeSession>>,
    by_id: HashMap<u32, Arc<EdgeSession>>,
    /// Bumped for every tunnel, so a late `tunnel_ended` of an old tunnel changes nothing.
    generation: u64,
}

struct EdgeLink {
    tunnel: Tunnel,
    session_id: String,
    idle_timeout: Duration,
    max_sessions: usize,
    next_id: u32,
    generation: u64,
}

struct EdgeSession {
    id: u32,
    generation: u64,
    port: u16,
    client: SocketAddr,
    sock: Arc<UdpSocket>,
    tunnel: Tunnel,
    session_id: String,
    stats: Stats,
    close: CloseSignal,
}

/// A UDP listener that could not be bound.
pub struct BindFailure {
    pub port: u16,
    pub error: AddonError,
}

impl EdgeUdp {
    pub fn new(
        edge_id: String,
        bind_address: String,
        events: EventSink,
        tasks: TaskGroup,
    ) -> Arc<Self> {
        Arc::new(Self {
            edge_id,
            bind_address,
            events,
            tasks,
            counters: Arc::new(UdpCounters::default()),
            state: Mutex::new(EdgeUdpState::default()),
            refused: Limiter::default(),
            oversized: Limiter::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, EdgeUdpState> {
        lock(&self.state)
    }

    pub fn bound_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.state().listeners.keys().copied().collect();
        ports.sort_unstable();
        ports
    }

    /// Makes the bound UDP listeners match `wanted`: binds new ports, closes removed ones (their
    /// sessions end with `portClosed`). Returns the ports that failed to bind.
    pub async fn apply_ports(self: &Arc<Self>, wanted: &[u16]) -> Vec<BindFailure> {
        let (removed, to_bind) = {
            let mut state = self.state();
            let removed: Vec<u16> = state
                .listeners
                .keys()
                .copied()
                .filter(|p| !wanted.contains(p))
                .collect();
            for port in &removed {
                if let Some((_, task)) = state.listeners.remove(port) {
                    task.abort();
                }
            }
            let to_bind: Vec<u16> = wanted
                .iter()
                .copied()
                .filter(|p| !state.listeners.contains_key(p))
                .collect();
            (removed, to_bind)
        };
        for port in removed {
            self.close_port_sessions(port);
        }
        let host = self
            .bind_address
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let mut failures = Vec::new();
        for port in to_bind {
            match UdpSocket::bind((host.as_str(), port)).await {
                Ok(sock) => {
                    size_buffers(&sock, LISTENER_SOCKET_BUFFER);
                    let sock = Arc::new(sock);
                    let task = self
                        .tasks
                        .spawn(listen_loop(self.clone(), sock.clone(), port));
                    if let Some((_, stale)) = self.state().listeners.insert(port, (sock, task)) {
                        stale.abort();
                    }
                }
                Err(e) => failures.push(BindFailure {
                    port,
                    error: AddonError::from_bind(&e, &format!("{host}:{port} (udp)")),
                }),
            }
        }
        failures
    }

    fn close_port_sessions(&self, port: u16) {
        let state = self.state();
        for session in state.by_id.values().filter(|s| s.port == port) {
            session.close.close(UdpCloseReason::PortClosed, true);
        }
    }

    /// A new tunnel is starting: returns its generation and the handler for its inbound UDP. Sessions
    /// of earlier tunnels no longer take new datagrams from clients.
    pub fn inbound(self: &Arc<Self>) -> (u64, Arc<dyn UdpInbound>) {
        let mut state = self.state();
        state.generation += 1;
        state.link = None;
        let generation = state.generation;
        let inbound = Arc::new(EdgeInbound {
            udp: self.clone(),
            generation,
            outgoing: SendQueue::default(),
        });
        (generation, inbound)
    }

    /// The tunnel of `generation` is up and the hub relays UDP: new sessions go over it.
    pub fn attach(
        &self,
        generation: u64,
        tunnel: Tunnel,
        session_id: String,
        idle_timeout: Duration,
        max_sessions: usize,
    ) {
        let mut state = self.state();
        if state.generation != generation {
            return;
        }
        state.link = Some(EdgeLink {
            tunnel,
            session_id,
            idle_timeout,
            max_sessions,
            next_id: 1,
            generation,
        });
    }

    /// The edge is stopping: listeners close, sessions end with `shutdown`.
    pub fn stop(&self) {
        let mut state = self.state();
        state.link = None;
        for (_, (_, task)) in state.listeners.drain() {
            task.abort();
        }
        for session in state.by_id.values() {
            session.close.close(UdpCloseReason::Shutdown, false);
        }
    }

    /// A datagram from a client on `port`.
    fn from_client(
        self: &Arc<Self>,
        port: u16,
        sock: &Arc<UdpSocket>,
        client: SocketAddr,
        data: &[u8],
    ) {
        let session = {
            let mut state = self.state();
            match state.by_addr.get(&(port, client)) {
                Some(session) => session.clone(),
                None => match self.new_session(&mut state, port, sock, client) {
                    Some(session) => session,
                    None => return,
                },
            }
        };
        session.stats.count_in(data.len());
        match session.tunnel.udp_datagram(session.id, data) {
            UdpSend::Sent => {}
            UdpSend::Dropped | UdpSend::Closed => self.counters.drop_one(),
            UdpSend::Oversized { max } => self.oversized(&session, data.len(), Some(max)),
        }
    }

    fn new_session(
        self: &Arc<Self>,
        state: &mut EdgeUdpState,
        port: u16,
        sock: &Arc<UdpSocket>,
        client: SocketAddr,
    ) -> Option<Arc<EdgeSession>> {
        let sessions = state.by_id.len();
        let Some(link) = state.link.as_mut() else {
            // No tunnel: nowhere to send it.
            self.counters.drop_one();
            return None;
        };
        if sessions >= link.max_sessions || link.next_id == u32::MAX {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            if let Some(count) = self.refused.hit() {
                self.events.emit(Event::UdpRefused {
                    edge_id: self.edge_id.clone(),
                    edge_port: port,
                    client_addr: client.to_string(),
                    reason: UdpCloseReason::SessionCap.as_str(),
                    count,
                });
            }
            return None;
        }
        let id = link.next_id;
        let edge_local = sock
            .local_addr()
            .unwrap_or_else(|_| ([0, 0, 0, 0], port).into());
        let open = StreamOpen {
            edge_port: port,
            client,
            edge_local,
        };
        if link.tunnel.udp_open(id, open).is_err() {
            self.counters.drop_one();
            return None;
        }
        link.next_id += 1;
        let session = Arc::new(EdgeSession {
            id,
            generation: link.generation,
            port,
            client,
            sock: sock.clone(),
            tunnel: link.tunnel.clone(),
            session_id: link.session_id.clone(),
            stats: Stats::new(),
            close: CloseSignal::default(),
        });
        let idle = link.idle_timeout;
        state.by_addr.insert((port, client), session.clone());
        state.by_id.insert(id, session.clone());
        self.counters.sessions.fetch_add(1, Ordering::Relaxed);
        self.events.emit(Event::UdpOpened {
            edge_id: self.edge_id.clone(),
            session_id: session.session_id.clone(),
            udp_session_id: id,
            edge_port: port,
            client_addr: client.to_string(),
            target: None,
        });
        self.tasks
            .spawn(run_edge_session(self.clone(), session.clone(), idle));
        Some(session)
    }

    fn oversized(&self, session: &EdgeSession, size: usize, max: Option<usize>) {
        self.counters.oversized.fetch_add(1, Ordering::Relaxed);
        if let Some(count) = self.oversized.hit() {
            self.events.emit(Event::UdpOversized {
                edge_id: self.edge_id.clone(),
                edge_port: session.port,
                client_addr: session.client.to_string(),
                size,
                max_size: max,
                count,
            });
        }
    }

    fn info(&self, session: &EdgeSession) -> SessionInfo {
        SessionInfo {
            edge_id: self.edge_id.clone(),
            session_id: session.session_id.clone(),
            udp_session_id: session.id,
            edge_port: session.port,
            client_addr: session.client.to_string(),
            target: None,
        }
    }
}

async fn listen_loop(udp: Arc<EdgeUdp>, sock: Arc<UdpSocket>, port: u16) {
    // Replies use `try_send_to`, which needs the runtime to have seen the socket writable once.
    let _ = sock.writable().await;
    loop {
        if sock.readable().await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let mut handled = 0;
        while handled < RECV_BATCH {
            let received = try_recv_batch(&sock, |client, data| {
                udp.from_client(port, &sock, client, data);
            });
            match received {
                Ok(n) => handled += n,
                // Nothing more; or an error queued by ICMP for an earlier send (the socket itself
                // is fine): wait for readiness again.
                Err(_) => break,
            }
        }
    }
}

async fn run_edge_session(udp: Arc<EdgeUdp>, session: Arc<EdgeSession>, idle: Duration) {
    let (reason, tell_peer) = idle_or_closed(&session.stats, &session.close, idle).await;
    {
        let mut state = udp.state();
        if state
            .by_id
            .get(&session.id)
            .is_some_and(|s| Arc::ptr_eq(s, &session))
        {
            state.by_id.remove(&session.id);
        }
        if state
            .by_addr
            .get(&(session.port, session.client))
            .is_some_and(|s| Arc::ptr_eq(s, &session))
        {
            state.by_addr.remove(&(session.port, session.client));
        }
    }
    udp.counters.sessions.fetch_sub(1, Ordering::Relaxed);
    if tell_peer {
        session.tunnel.udp_close(session.id, reason);
    }
    udp.events
        .emit(session.stats.end_event(udp.info(&session), reason));
}

/// The inbound handler of one tunnel on the edge.
struct EdgeInbound {
    udp: Arc<EdgeUdp>,
    generation: u64,
    /// Replies for clients, held until the reader's `flush`.
    outgoing: SendQueue<EdgeSession>,
}

impl EdgeInbound {
    /// Looks up a session of this tunnel; `Err` for an id the edge never opened.
    fn session(&self, session_id: u32, what: &str) -> Result<Option<Arc<EdgeSession>>, String> {
        let state = self.udp.state();
        let current = state
            .link
            .as_ref()
            .filter(|l| l.generation == self.generation);
        let session = state
            .by_id
            .get(&session_id)
            .filter(|s| s.generation == self.generation);
        match (session, current) {
            (Some(session), Some(_)) => Ok(Some(session.clone())),
            (None, Some(link)) if session_id >= link.next_id => Err(format!(
                "{what} for UDP session {session_id}, which was never opened"
            )),
            _ => Ok(None),
        }
    }
}

impl EdgeInbound {
    /// Sends the queued replies: per client in arrival order, a batch per system call.
    fn send_queued(&self) {
        self.outgoing.drain(|session, datagrams| {
            let out = send_all(&session.sock, Some(session.client), datagrams);
            session.stats.count_out_many(out.sent, out.sent_bytes);
            self.udp
                .counters
                .dropped
                .fetch_add(out.dropped, Ordering::Relaxed);
            for size in out.oversized {
                self.udp.oversized(session, size, None);
            }
        });
    }
}

impl UdpInbound for EdgeInbound {
    fn open(&self, _session_id: u32, _open: StreamOpen) -> Result<(), String> {
        Err("the hub sent UDP_OPEN".into())
    }

    fn datagram(&self, session_id: u32, data: Bytes) -> Result<(), String> {
        let Some(session) = self.session(session_id, "UDP_DATAGRAM")? else {
            self.udp.counters.drop_one();
            return Ok(());
        };
        if self.outgoing.push(session, data) {
            self.send_queued();
        }
        Ok(())
    }

    fn flush(&self) {
        self.send_queued();
    }

    fn close(&self, session_id: u32, reason: UdpCloseReason) -> Result<(), String> {
        if let Some(session) = self.session(session_id, "UDP_CLOSE")? {
            session.close.close(reason, false);
        }
        Ok(())
    }

    fn tunnel_ended(&self, reason: UdpCloseReason) {
        // What the reader decoded before the end still goes out.
        self.send_queued();
        let mut state = self.udp.state();
        if state
            .link
            .as_ref()
            .is_some_and(|l| l.generation == self.generation)
        {
            state.link = None;
        }
        for session in state
            .by_id
            .values()
            .filter(|s| s.generation == self.generation)
        {
            session.close.close(reason, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_queue_hands_over_each_session_in_arrival_order_and_says_when_full() {
        let queue = SendQueue::<u8>::default();
        let (a, b) = (Arc::new(1u8), Arc::new(2u8));
        for (session, data) in [(&a, "a1"), (&b, "b1"), (&a, "a2"), (&b, "b2"), (&a, "a3")] {
            assert!(!queue.push(session.clone(), Bytes::from(data)));
        }
        let mut runs: Vec<(u8, Vec<String>)> = Vec::new();
        queue.drain(|session, datagrams| {
            let texts = datagrams
                .iter()
                .map(|d| String::from_utf8_lossy(d).into_owned());
            runs.push((**session, texts.collect()));
        });
        runs.sort();
        assert_eq!(
            runs,
            vec![
                (1, vec!["a1".into(), "a2".into(), "a3".into()]),
                (2, vec!["b1".into(), "b2".into()])
            ]
        );
        assert!(queue.is_empty());
        let full = (0..SEND_QUEUE).map(|_| queue.push(a.clone(), Bytes::from_static(b"x")));
        assert_eq!(full.filter(|f| *f).count(), 1, "full exactly at SEND_QUEUE");
        queue.drain(|_, _| {});
        assert!(queue.push(a.clone(), Bytes::from(vec![0; SEND_QUEUE_BYTES])));
    }

    #[test]
    fn limiter_reports_once_per_period_with_the_count() {
        let limiter = Limiter::default();
        assert_eq!(limiter.hit(), Some(1));
        assert_eq!(limiter.hit(), None);
        assert_eq!(limiter.hit(), None);
        // Pretend the period passed: the next report carries what was suppressed.
        lock(&limiter.state).0 = Some(Instant::now() - REPORT_EVERY);
        assert_eq!(limiter.hit(), Some(3));
    }

    #[test]
    fn pending_is_bounded_by_count_and_bytes() {
        let mut pending = Pending::default();
        for _ in 0..CONNECTING_QUEUE {
            assert!(pending.push(Bytes::from_static(b"x")));
        }
        assert!(!pending.push(Bytes::from_static(b"x")));
        let mut pending = Pending::default();
        assert!(pending.push(Bytes::from(vec![0; CONNECTING_QUEUE_BYTES - 10])));
        assert!(!pending.push(Bytes::from(vec![0; 11])));
        assert!(pending.push(Bytes::from(vec![0; 10])));
    }

    #[test]
    fn batch_receive_keeps_order_sources_and_full_sizes() {
        crate::runtime::runtime().block_on(async {
            for host in ["127.0.0.1:0", "[::1]:0"] {
                let Ok(sock) = UdpSocket::bind(host).await else {
                    continue; // no IPv6 loopback here
                };
                size_buffers(&sock, LISTENER_SOCKET_BUFFER);
                let to = sock.local_addr().expect("local addr");
                let a = std::net::UdpSocket::bind(host).expect("bind a");
                let b = std::net::UdpSocket::bind(host).expect("bind b");
                // 70 datagrams (more than one batch), one of the largest size, from two sources.
                let mut sent = Vec::new();
                for i in 0..70usize {
                    let from = if i % 3 == 0 { &b } else { &a };
                    // 65,507: the largest UDP payload over IPv4.
                    let len = if i == 5 { 65_507 } else { 1 + i };
                    let mut data = vec![0u8; len];
                    data[0] = i as u8;
                    if from.send_to(&data, to).is_ok() {
                        sent.push((from.local_addr().expect("addr"), len, i as u8));
                    }
                }
                assert!(sent.iter().any(|(_, len, _)| *len == 65_507), "{host}");
                let mut got = Vec::new();
                let receive = async {
                    while got.len() < sent.len() {
                        sock.readable().await.expect("readable");
                        let _ = try_recv_batch(&sock, |from, data| {
                            got.push((from, data.len(), data[0]));
                        });
                    }
                };
                tokio::time::timeout(Duration::from_secs(10), receive)
                    .await
                    .expect("all datagrams received");
                assert_eq!(got, sent, "{host}");
            }
        });
    }

    #[test]
    fn batch_send_delivers_every_session_in_order_and_counts() {
        crate::runtime::runtime().block_on(async {
            const SESSIONS: usize = 4;
            // Per session, more than one `sendmmsg` batch and, all sessions together, more than
            // one full send queue within one "read".
            const PER_SESSION: usize = 150;
            let mut targets = Vec::new();
            for _ in 0..SESSIONS {
                let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind target");
                size_buffers(&sock, LISTENER_SOCKET_BUFFER);
                targets.push(sock);
            }
            let ports: Vec<u16> = targets
                .iter()
                .map(|t| t.local_addr().expect("addr").port())
                .collect();
            let settings = HubUdpSettings {
                edge_id: "e".into(),
                session_id: "s".into(),
                proxy: ProxyProtocol::None,
                idle_timeout: Duration::from_secs(60),
                connect_timeout: Duration::from_secs(5),
                max_sessions: 16,
                early_datagrams: false,
            };
            let lookup: TargetLookup = Box::new(move |port| Some(format!("127.0.0.1:{port}")));
            let counters = Arc::new(UdpCounters::default());
            let events = EventSink::start(Arc::new(|_| {}));
            let hub = HubUdp::new(
                settings,
                lookup,
                counters.clone(),
                events,
                TaskGroup::default(),
            );
            let client: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
            for (i, port) in ports.iter().enumerate() {
                let open = StreamOpen {
                    edge_port: *port,
                    client,
                    edge_local: client,
                };
                hub.open(i as u32 + 1, open).expect("open");
            }
            // Every upstream socket ready, so every datagram takes the batch path.
            let ready = async {
                loop {
                    let all = lock(&hub.table)
                        .sessions
                        .values()
                        .all(|s| matches!(*lock(&s.upstream), Upstream::Ready(_)));
                    if all {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), ready)
                .await
                .expect("upstream sockets ready");
            // One read's worth: sessions interleaved; in the middle of session 2's datagrams one
            // too large for IPv4 (counted as oversized, the rest of its batch still goes).
            let oversized_at = 70;
            for n in 0..PER_SESSION {
                for id in 1..=SESSIONS as u32 {
                    let data = if id == 2 && n == oversized_at {
                        let mut big = vec![0u8; 65_508];
                        big[..4].copy_from_slice(&(n as u32).to_be_bytes());
                        big
                    } else {
                        let mut small = vec![id as u8; 16 + n % 32];
                        small[..4].copy_from_slice(&(n as u32).to_be_bytes());
                        small
                    };
                    hub.datagram(id, Bytes::from(data)).expect("datagram");
                }
            }
            hub.flush();
            for (i, target) in targets.iter().enumerate() {
                let id = i as u32 + 1;
                let expected: Vec<u32> = (0..PER_SESSION as u32)
                    .filter(|n| !(id == 2 && *n == oversized_at as u32))
                    .collect();
                let mut got = Vec::new();
                let mut buf = vec![0u8; RECV_BUF];
                let receive = async {
                    while got.len() < expected.len() {
                        let n = target.recv(&mut buf).await.expect("recv");
                        assert_eq!(n, 16 + got_index(&buf) % 32, "full size, session {id}");
                        assert!(buf[4..n].iter().all(|b| *b == id as u8), "session {id}");
                        got.push(got_index(&buf) as u32);
                    }
                };
                tokio::time::timeout(Duration::from_secs(10), receive)
                    .await
                    .expect("every datagram delivered");
                assert_eq!(got, expected, "session {id} in order");
            }
            assert_eq!(counters.dropped.load(Ordering::Relaxed), 0);
            assert_eq!(counters.oversized.load(Ordering::Relaxed), 1);
            for id in 1..=SESSIONS as u32 {
                let session = lock(&hub.table)
                    .sessions
                    .get(&id)
                    .cloned()
                    .expect("session");
                let packets = session.stats.packets_in.load(Ordering::Relaxed);
                assert_eq!(packets, PER_SESSION as u64, "session {id}");
            }
            assert!(hub.outgoing.is_empty());
            hub.tunnel_ended(UdpCloseReason::Shutdown);
        });

        fn got_index(buf: &[u8]) -> usize {
            u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
        }
    }

    #[test]
    fn close_signal_keeps_the_first_reason() {
        crate::runtime::runtime().block_on(async {
            let signal = CloseSignal::default();
            signal.close(UdpCloseReason::Idle, true);
            signal.close(UdpCloseReason::TunnelLost, false);
            assert_eq!(signal.closed().await, (UdpCloseReason::Idle, true));
        });
    }

    #[test]
    fn idle_deadline_follows_activity() {
        crate::runtime::runtime().block_on(async {
            let stats = Stats::new();
            let signal = CloseSignal::default();
            let idle = Duration::from_millis(60);
            let started = Instant::now();
            let toucher = async {
                for _ in 0..3 {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    stats.count_in(1);
                }
            };
            let (reason, _) = tokio::join!(idle_or_closed(&stats, &signal, idle), toucher).0;
            assert_eq!(reason, UdpCloseReason::Idle);
            // Three touches 30 ms apart push expiry past 90 + 60 ms.
            assert!(started.elapsed() >= Duration::from_millis(140));
            assert_eq!(stats.packets_in.load(Ordering::Relaxed), 3);
        });
    }
}
