//! Relays one TCP socket over one tunnel stream, both directions, in a single task. The only place
//! that does: a tunnel stream is either a stream of the frame multiplexer (TLS transport, `mux.rs`)
//! or a QUIC bidirectional stream (`transport/quic.rs`), behind `StreamTx` / `StreamRx`.
//!
//! socket EOF → FIN; FIN received → write what is pending, then shut down the socket's write side;
//! both directions done → close. While idle the task holds no buffers: it waits for readiness and
//! only then allocates a chunk sized to the data and the peer's credit. Sending into the tunnel never
//! blocks the other direction: the send is one branch of the task's `select!`, so a peer that stops
//! reading one direction cannot stall the other (QUIC flow control would otherwise wedge both).
use crate::mux::{Inbound, MuxHandle, MuxStream};
use crate::protocol::frame::{INITIAL_STREAM_WINDOW, MAX_DATA_CHUNK};
use crate::protocol::{CloseReason, Frame};
use crate::transport::quic::{code_of, reason_from_code, ActiveStream, QuicHandle};
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Credit is returned to the peer in steps of this size (or when a write drains the queue and
/// the peer is low on credit), to keep `Window` frames few.
const GRANT_STEP: u32 = INITIAL_STREAM_WINDOW / 8;
/// Reads that fill less than this fraction of their buffer are copied into an exact-size buffer.
const SHRINK_BELOW: usize = 4;
/// How many queued chunks one vectored write covers.
const MAX_IOVECS: usize = 32;
/// Streams without credit frames (QUIC) stop reading from the tunnel while this much waits for the
/// socket; the transport's flow control then holds the peer back.
const PENDING_LIMIT: usize = INITIAL_STREAM_WINDOW as usize;

/// Which end of the stream the local socket is (decides the close reasons and byte directions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketSide {
    /// Edge: the socket is the public client.
    Client,
    /// Hub: the socket is the target.
    Target,
}

/// Live byte counters shared with status reporting (client→target in, target→client out).
#[derive(Debug, Default)]
pub struct ByteCounters {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct RelayOutcome {
    /// client → target
    pub bytes_in: u64,
    /// target → client
    pub bytes_out: u64,
    pub reason: CloseReason,
    pub message: String,
    pub duration: Duration,
}

/// One tunnel stream: an id for events and its two halves.
#[derive(Debug)]
pub struct TunnelStream {
    pub id: u32,
    pub tx: StreamTx,
    pub rx: StreamRx,
}

impl TunnelStream {
    pub fn from_mux(stream: MuxStream) -> Self {
        Self {
            id: stream.id,
            tx: StreamTx::Mux {
                mux: stream.mux.clone(),
                id: stream.id,
                credit: u64::from(INITIAL_STREAM_WINDOW),
            },
            rx: StreamRx::Mux(stream),
        }
    }

    /// Ends the stream at once with `reason` (e.g. the hub could not reach the target).
    pub async fn abort(mut self, reason: CloseReason) {
        self.tx.close(&mut self.rx, reason).await;
    }
}

/// The sending half of a tunnel stream.
#[derive(Debug)]
pub enum StreamTx {
    /// Frames on the multiplexed TLS connection; `credit` is what the peer still accepts.
    Mux {
        mux: MuxHandle,
        id: u32,
        credit: u64,
    },
    /// A QUIC stream; quinn's flow control decides how much may be in flight.
    Quic { send: quinn::SendStream, id: u32 },
}

/// The receiving half of a tunnel stream.
#[derive(Debug)]
pub enum StreamRx {
    /// Holds the stream's registration in the mux (dropping it forgets the stream).
    Mux(MuxStream),
    Quic {
        recv: quinn::RecvStream,
        tunnel: QuicHandle,
        _active: ActiveStream,
    },
}

/// Something to hand to the tunnel; taken out of the slot once the tunnel has it.
#[derive(Debug)]
enum Outgoing {
    Data(Bytes),
    Fin,
}

/// What the receiving half reports.
enum RxEvent {
    Data(Bytes),
    Fin,
    Credit(u32),
    /// The peer closed (orderly) or aborted the stream.
    PeerClose(CloseReason),
    /// The whole tunnel ended.
    Gone(CloseReason, String),
}

enum TxError {
    /// The tunnel is closed; the receiving half reports why.
    Gone,
    /// The stream or tunnel ended for this reason (QUIC reports it directly).
    Ended(CloseReason, String),
}

fn quic_write_error(err: quinn::WriteError) -> TxError {
    match err {
        quinn::WriteError::Stopped(code) => {
            TxError::Ended(reason_from_code(code), "closed by the peer".into())
        }
        // The receiving half knows why the connection went.
        quinn::WriteError::ConnectionLost(_) => TxError::Gone,
        other => TxError::Ended(CloseReason::TunnelLost, other.to_string()),
    }
}

impl StreamTx {
    /// How many bytes may be read from the socket for the next send.
    fn budget(&self) -> usize {
        match self {
            Self::Mux { credit, .. } => (*credit).min(MAX_DATA_CHUNK as u64) as usize,
            Self::Quic { .. } => MAX_DATA_CHUNK,
        }
    }

    fn spend(&mut self, n: usize) {
        if let Self::Mux { credit, .. } = self {
            *credit = credit.saturating_sub(n as u64);
        }
    }

    fn add_credit(&mut self, n: u32) {
        if let Self::Mux { credit, .. } = self {
            *credit = credit.saturating_add(u64::from(n));
        }
    }

    fn id(&self) -> u32 {
        match self {
            Self::Mux { id, .. } | Self::Quic { id, .. } => *id,
        }
    }

    /// Hands (part of) `out` to the tunnel; what was taken is removed from the slot. Cancel-safe:
    /// if the future is dropped before it resolves, nothing was sent.
    async fn send(&mut self, out: &mut Option<Outgoing>) -> Result<(), TxError> {
        match self {
            Self::Mux { mux, id, .. } => {
                let permit = mux.reserve_data().await.map_err(|_| TxError::Gone)?;
                if let Some(frame) = mux_frame(*id, out.take()) {
                    permit.send(frame);
                }
                Ok(())
            }
            Self::Quic { send, .. } => match out {
                Some(Outgoing::Data(bytes)) => {
                    // Cancel-safe: nothing is written unless this resolves; what was written is
                    // split off `bytes`.
                    send.write_chunks(std::slice::from_mut(bytes))
                        .await
                        .map_err(quic_write_error)?;
                    if bytes.is_empty() {
                        *out = None;
                    }
                    Ok(())
                }
                Some(Outgoing::Fin) => {
                    let _ = send.finish();
                    *out = None;
                    Ok(())
                }
                None => Ok(()),
            },
        }
    }

    /// Like `send`, but only if that needs no waiting; otherwise leaves `out` as it is.
    fn try_send(&mut self, out: &mut Option<Outgoing>) {
        match self {
            Self::Mux { mux, id, .. } => {
                if let Ok(permit) = mux.try_reserve_data() {
                    if let Some(frame) = mux_frame(*id, out.take()) {
                        permit.send(frame);
                    }
                }
            }
            // FIN needs no waiting; data goes through `send` (quinn decides when it fits).
            Self::Quic { send, .. } => {
                if matches!(out, Some(Outgoing::Fin)) {
                    let _ = send.finish();
                    *out = None;
                }
            }
        }
    }

    /// Tells the peer that `written` more bytes reached the local socket.
    fn grant(&self, written: u32) {
        match self {
            Self::Mux { mux, id, .. } => mux.grant(*id, written),
            // QUIC returns flow-control credit as the relay reads (bounded by `PENDING_LIMIT`).
            Self::Quic { .. } => {}
        }
    }

    /// Ends the stream on the peer's side with `reason`: an abort, or for a clean reason the
    /// notice that this side is done with both directions.
    async fn close(&mut self, rx: &mut StreamRx, reason: CloseReason) {
        match self {
            Self::Mux { mux, id, .. } => {
                let _ = mux
                    .send(Frame::Close {
                        stream_id: *id,
                        reason,
                    })
                    .await;
            }
            Self::Quic { send, .. } => {
                // Both directions finished cleanly: the FINs said it all.
                if matches!(
                    reason,
                    CloseReason::ClientClosed | CloseReason::TargetClosed
                ) {
                    return;
                }
                let _ = send.reset(code_of(reason));
                if let StreamRx::Quic { recv, .. } = rx {
                    let _ = recv.stop(code_of(reason));
                }
            }
        }
    }
}

fn mux_frame(stream_id: u32, out: Option<Outgoing>) -> Option<Frame> {
    match out? {
        Outgoing::Data(data) => Some(Frame::Data { stream_id, data }),
        Outgoing::Fin => Some(Frame::Fin { stream_id }),
    }
}

impl StreamRx {
    /// Whether to read from the tunnel now. Mux streams are bounded by the credit they granted (and
    /// carry credit and close messages on the same channel), so they are always read.
    /// QUIC streams are read only while little waits for the socket (and not after FIN).
    fn wants_recv(&self, remote_fin: bool, pending: usize) -> bool {
        match self {
            Self::Mux(_) => true,
            Self::Quic { .. } => !remote_fin && pending < PENDING_LIMIT,
        }
    }

    async fn recv(&mut self) -> RxEvent {
        match self {
            Self::Mux(stream) => match stream.inbound.recv().await {
                Some(Inbound::Data(data)) => RxEvent::Data(data),
                Some(Inbound::Fin) => RxEvent::Fin,
                Some(Inbound::Credit(n)) => RxEvent::Credit(n),
                Some(Inbound::Close(reason)) => RxEvent::PeerClose(reason),
                Some(Inbound::TunnelGone(reason)) => RxEvent::Gone(reason, "tunnel closed".into()),
                None => RxEvent::Gone(CloseReason::TunnelLost, "tunnel closed".into()),
            },
            Self::Quic { recv, tunnel, .. } => match recv.read_chunk(MAX_DATA_CHUNK, true).await {
                Ok(Some(chunk)) => RxEvent::Data(chunk.bytes),
                Ok(None) => RxEvent::Fin,
                Err(quinn::ReadError::Reset(code)) => RxEvent::PeerClose(reason_from_code(code)),
                Err(quinn::ReadError::ConnectionLost(e)) => {
                    RxEvent::Gone(tunnel.gone_reason(&e), e.to_string())
                }
                Err(e) => RxEvent::Gone(CloseReason::TunnelLost, e.to_string()),
            },
        }
    }

    /// Resolves when the whole tunnel is gone, for transports that do not report it through
    /// `recv` while `recv` is not polled.
    fn gone(&self) -> Pin<Box<dyn Future<Output = (CloseReason, String)> + Send>> {
        match self {
            Self::Mux(_) => Box::pin(std::future::pending()),
            Self::Quic { tunnel, .. } => {
                let tunnel = tunnel.clone();
                Box::pin(async move { tunnel.closed().await })
            }
        }
    }
}

struct Relay<'a> {
    sock: TcpStream,
    tx: StreamTx,
    rx: StreamRx,
    side: SocketSide,
    counters: &'a ByteCounters,
    outgoing: Option<Outgoing>,
    read_open: bool,
    remote_fin: bool,
    write_shut: bool,
    peer_closed: bool,
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
    ungranted: u32,
    from_socket: u64,
    to_socket: u64,
    first_closer: Option<Closer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closer {
    Socket,
    Tunnel,
}

enum Step {
    Continue,
    Done(CloseReason, String),
}

/// Relays until both directions are done or the stream is aborted. Never panics on peer input.
pub async fn relay(
    sock: TcpStream,
    stream: TunnelStream,
    side: SocketSide,
    counters: &ByteCounters,
) -> RelayOutcome {
    let started = Instant::now();
    let mut relay = Relay {
        sock,
        tx: stream.tx,
        rx: stream.rx,
        side,
        counters,
        outgoing: None,
        read_open: true,
        remote_fin: false,
        write_shut: false,
        peer_closed: false,
        pending: VecDeque::new(),
        pending_bytes: 0,
        ungranted: 0,
        from_socket: 0,
        to_socket: 0,
        first_closer: None,
    };
    let (reason, message) = relay.run().await;
    let (bytes_in, bytes_out) = match side {
        SocketSide::Client => (relay.from_socket, relay.to_socket),
        SocketSide::Target => (relay.to_socket, relay.from_socket),
    };
    RelayOutcome {
        bytes_in,
        bytes_out,
        reason,
        message,
        duration: started.elapsed(),
    }
}

impl Relay<'_> {
    async fn run(&mut self) -> (CloseReason, String) {
        let mut gone = self.rx.gone();
        let (reason, message) = loop {
            if !self.read_open && self.write_shut && self.outgoing.is_none() {
                let reason = self.clean_reason();
                if !self.peer_closed {
                    self.tx.close(&mut self.rx, reason).await;
                }
                return (reason, String::new());
            }
            let can_read = self.read_open && self.outgoing.is_none() && self.tx.budget() > 0;
            let can_recv = self.rx.wants_recv(self.remote_fin, self.pending_bytes);
            let step = tokio::select! {
                ready = self.sock.readable(), if can_read => match ready {
                    Ok(()) => self.read_socket().await,
                    Err(e) => self.abort(CloseReason::Reset, e.to_string()).await,
                },
                sent = self.tx.send(&mut self.outgoing), if self.outgoing.is_some() => match sent {
                    Ok(()) => Step::Continue,
                    Err(TxError::Gone) => self.wait_gone().await,
                    Err(TxError::Ended(reason, message)) => Step::Done(reason, message),
                },
                ready = self.sock.writable(), if !self.pending.is_empty() => match ready {
                    Ok(()) => self.write_socket().await,
                    Err(e) => self.abort(CloseReason::Reset, e.to_string()).await,
                },
                event = self.rx.recv(), if can_recv => self.on_inbound(event).await,
                (reason, message) = &mut gone => Step::Done(reason, message),
            };
            if let Step::Done(reason, message) = step {
                break (reason, message);
            }
        };
        if reason != CloseReason::ClientClosed && reason != CloseReason::TargetClosed {
            // An aborted stream ends with a reset, so the socket's peer can tell it was cut short.
            let _ = socket2::SockRef::from(&self.sock).set_linger(Some(Duration::ZERO));
            // QUIC: make sure both directions of the stream end too (a no-op if already done).
            if let StreamTx::Quic { send, .. } = &mut self.tx {
                let _ = send.reset(code_of(reason));
            }
            if let StreamRx::Quic { recv, .. } = &mut self.rx {
                let _ = recv.stop(code_of(reason));
            }
        }
        (reason, message)
    }

    fn clean_reason(&self) -> CloseReason {
        let socket_first = self.first_closer != Some(Closer::Tunnel);
        match (self.side, socket_first) {
            (SocketSide::Client, true) | (SocketSide::Target, false) => CloseReason::ClientClosed,
            (SocketSide::Client, false) | (SocketSide::Target, true) => CloseReason::TargetClosed,
        }
    }

    async fn read_socket(&mut self) -> Step {
        let want = self.tx.budget();
        let mut buf = BytesMut::with_capacity(want);
        match self.sock.try_read_buf(&mut buf) {
            Ok(0) => {
                self.read_open = false;
                self.first_closer.get_or_insert(Closer::Socket);
                self.outgoing = Some(Outgoing::Fin);
            }
            Ok(n) => {
                self.tx.spend(n);
                self.from_socket += n as u64;
                let counter = match self.side {
                    SocketSide::Client => &self.counters.bytes_in,
                    SocketSide::Target => &self.counters.bytes_out,
                };
                counter.fetch_add(n as u64, Ordering::Relaxed);
                let data = if n * SHRINK_BELOW < want {
                    Bytes::copy_from_slice(&buf)
                } else {
                    buf.freeze()
                };
                self.outgoing = Some(Outgoing::Data(data));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Continue,
            Err(e) => return self.abort(CloseReason::Reset, e.to_string()).await,
        }
        // Usually the tunnel takes it right away; skip a round through `select!`.
        self.tx.try_send(&mut self.outgoing);
        Step::Continue
    }

    /// Writes as much of the pending queue as the socket takes without blocking.
    async fn write_socket(&mut self) -> Step {
        while !self.pending.is_empty() {
            let slices: Vec<IoSlice<'_>> = self
                .pending
                .iter()
                .take(MAX_IOVECS)
                .map(|b| IoSlice::new(b))
                .collect();
            match self.sock.try_write_vectored(&slices) {
                Ok(0) => {
                    let err = io::Error::from(io::ErrorKind::WriteZero);
                    return self.abort(CloseReason::Reset, err.to_string()).await;
                }
                Ok(n) => self.consume_pending(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return self.abort(CloseReason::Reset, e.to_string()).await,
            }
        }
        if self.pending.is_empty() {
            // Return credit once the queue is drained, so the peer never waits on a partial step.
            if self.ungranted > 0 {
                self.tx.grant(self.ungranted);
                self.ungranted = 0;
            }
            if self.remote_fin && !self.write_shut {
                return self.shutdown_write().await;
            }
        }
        Step::Continue
    }

    fn consume_pending(&mut self, mut written: usize) {
        self.to_socket += written as u64;
        self.pending_bytes = self.pending_bytes.saturating_sub(written);
        let counter = match self.side {
            SocketSide::Client => &self.counters.bytes_out,
            SocketSide::Target => &self.counters.bytes_in,
        };
        counter.fetch_add(written as u64, Ordering::Relaxed);
        self.ungranted = self.ungranted.saturating_add(written as u32);
        while written > 0 {
            let Some(front) = self.pending.front_mut() else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                self.pending.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
        if self.ungranted >= GRANT_STEP {
            self.tx.grant(self.ungranted);
            self.ungranted = 0;
        }
    }

    async fn shutdown_write(&mut self) -> Step {
        self.write_shut = true;
        match self.sock.shutdown().await {
            Ok(()) => Step::Continue,
            // The socket's peer is already gone; nothing more can be written, reading may still work.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Step::Continue,
            Err(e) => self.abort(CloseReason::Reset, e.to_string()).await,
        }
    }

    async fn on_inbound(&mut self, event: RxEvent) -> Step {
        match event {
            RxEvent::Data(data) => {
                if self.remote_fin || self.peer_closed {
                    let message = format!("DATA after FIN on stream {}", self.stream_id());
                    return self.abort(CloseReason::ProtocolError, message).await;
                }
                if data.is_empty() {
                    return Step::Continue;
                }
                self.pending_bytes += data.len();
                self.pending.push_back(data);
                // Most of the time the socket is writable right away; skip the readiness round trip.
                self.write_socket().await
            }
            RxEvent::Fin => {
                if self.remote_fin {
                    return Step::Continue;
                }
                self.remote_fin = true;
                self.first_closer.get_or_insert(Closer::Tunnel);
                if self.pending.is_empty() {
                    self.shutdown_write().await
                } else {
                    Step::Continue
                }
            }
            RxEvent::Credit(credit) => {
                self.tx.add_credit(credit);
                Step::Continue
            }
            RxEvent::PeerClose(reason) => {
                self.peer_closed = true;
                let orderly = matches!(
                    reason,
                    CloseReason::ClientClosed | CloseReason::TargetClosed
                );
                if orderly && self.remote_fin && !self.read_open {
                    // Orderly: the peer finished both directions; deliver what is still queued.
                    Step::Continue
                } else {
                    Step::Done(reason, "closed by the peer".into())
                }
            }
            RxEvent::Gone(reason, message) => Step::Done(reason, message),
        }
    }

    fn stream_id(&self) -> u32 {
        self.tx.id()
    }

    /// The tunnel refused a send: it is closing; the receiving half says why.
    async fn wait_gone(&mut self) -> Step {
        if let StreamRx::Quic { .. } = &self.rx {
            let (reason, message) = self.rx.gone().await;
            return Step::Done(reason, message);
        }
        loop {
            match self.rx.recv().await {
                RxEvent::Gone(reason, message) => return Step::Done(reason, message),
                RxEvent::PeerClose(reason) => {
                    return Step::Done(reason, "closed by the peer".into())
                }
                _ => continue,
            }
        }
    }

    /// The local socket failed, or the peer misbehaved on this stream: tell the peer and end.
    async fn abort(&mut self, reason: CloseReason, message: String) -> Step {
        self.tx.close(&mut self.rx, reason).await;
        Step::Done(reason, message)
    }
}
