//! Relays one TCP socket over one mux stream, both directions, in a single task.
//!
//! socket EOF → `Fin`; `Fin` received → write what is pending, then shut down the socket's write
//! side; both directions done → `Close`. While idle the task holds no buffers: it waits for
//! readiness and only then allocates a chunk sized to the data and the peer's credit.
use crate::mux::{Inbound, MuxStream};
use crate::protocol::frame::{INITIAL_STREAM_WINDOW, MAX_DATA_CHUNK};
use crate::protocol::{CloseReason, Frame};
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
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

struct Relay<'a> {
    sock: TcpStream,
    stream: MuxStream,
    side: SocketSide,
    counters: &'a ByteCounters,
    send_credit: u64,
    read_open: bool,
    remote_fin: bool,
    write_shut: bool,
    peer_closed: bool,
    pending: VecDeque<Bytes>,
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
    stream: MuxStream,
    side: SocketSide,
    counters: &ByteCounters,
) -> RelayOutcome {
    let started = Instant::now();
    let mut relay = Relay {
        sock,
        stream,
        side,
        counters,
        send_credit: u64::from(INITIAL_STREAM_WINDOW),
        read_open: true,
        remote_fin: false,
        write_shut: false,
        peer_closed: false,
        pending: VecDeque::new(),
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
        let (reason, message) = loop {
            if !self.read_open && self.write_shut {
                let reason = self.clean_reason();
                if !self.peer_closed {
                    let _ = self
                        .stream
                        .mux
                        .send(Frame::Close {
                            stream_id: self.stream.id,
                            reason,
                        })
                        .await;
                }
                return (reason, String::new());
            }
            let step = tokio::select! {
                ready = self.sock.readable(), if self.read_open && self.send_credit > 0 => match ready {
                    Ok(()) => self.read_socket().await,
                    Err(e) => self.abort_local(CloseReason::Reset, e).await,
                },
                ready = self.sock.writable(), if !self.pending.is_empty() => match ready {
                    Ok(()) => self.write_socket().await,
                    Err(e) => self.abort_local(CloseReason::Reset, e).await,
                },
                msg = self.stream.inbound.recv() => self.on_inbound(msg).await,
            };
            if let Step::Done(reason, message) = step {
                break (reason, message);
            }
        };
        if reason != CloseReason::ClientClosed && reason != CloseReason::TargetClosed {
            // An aborted stream ends with a reset, so the socket's peer can tell it was cut short.
            let _ = socket2::SockRef::from(&self.sock).set_linger(Some(Duration::ZERO));
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
        let want = self.send_credit.min(MAX_DATA_CHUNK as u64) as usize;
        let mut buf = BytesMut::with_capacity(want);
        match self.sock.try_read_buf(&mut buf) {
            Ok(0) => {
                self.read_open = false;
                self.first_closer.get_or_insert(Closer::Socket);
                self.send_frame(Frame::Fin {
                    stream_id: self.stream.id,
                })
                .await
            }
            Ok(n) => {
                self.send_credit -= n as u64;
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
                self.send_frame(Frame::Data {
                    stream_id: self.stream.id,
                    data,
                })
                .await
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Continue,
            Err(e) => self.abort_local(CloseReason::Reset, e).await,
        }
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
                    return self
                        .abort_local(
                            CloseReason::Reset,
                            io::Error::from(io::ErrorKind::WriteZero),
                        )
                        .await
                }
                Ok(n) => self.consume_pending(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return self.abort_local(CloseReason::Reset, e).await,
            }
        }
        if self.pending.is_empty() {
            // Return credit once the queue is drained, so the peer never waits on a partial step.
            if self.ungranted > 0 {
                self.stream.mux.grant(self.stream.id, self.ungranted);
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
            self.stream.mux.grant(self.stream.id, self.ungranted);
            self.ungranted = 0;
        }
    }

    async fn shutdown_write(&mut self) -> Step {
        self.write_shut = true;
        match self.sock.shutdown().await {
            Ok(()) => Step::Continue,
            // The socket's peer is already gone; nothing more can be written, reading may still work.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Step::Continue,
            Err(e) => self.abort_local(CloseReason::Reset, e).await,
        }
    }

    async fn on_inbound(&mut self, msg: Option<Inbound>) -> Step {
        match msg {
            Some(Inbound::Data(data)) => {
                if self.remote_fin || self.peer_closed {
                    let id = self.stream.id;
                    return self
                        .abort_remote(
                            CloseReason::ProtocolError,
                            format!("DATA after FIN on stream {id}"),
                        )
                        .await;
                }
                if data.is_empty() {
                    return Step::Continue;
                }
                self.pending.push_back(data);
                // Most of the time the socket is writable right away; skip the readiness round trip.
                self.write_socket().await
            }
            Some(Inbound::Fin) => {
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
            Some(Inbound::Credit(credit)) => {
                self.send_credit = self.send_credit.saturating_add(u64::from(credit));
                Step::Continue
            }
            Some(Inbound::Close(reason)) => {
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
            Some(Inbound::TunnelGone(reason)) => Step::Done(reason, "tunnel closed".into()),
            None => Step::Done(CloseReason::TunnelLost, "tunnel closed".into()),
        }
    }

    async fn send_frame(&mut self, frame: Frame) -> Step {
        if self.stream.mux.send(frame).await.is_ok() {
            return Step::Continue;
        }
        // The tunnel is gone; the supervisor tells every stream why.
        loop {
            match self.stream.inbound.recv().await {
                Some(Inbound::TunnelGone(reason)) => {
                    return Step::Done(reason, "tunnel closed".into())
                }
                Some(_) => continue,
                None => return Step::Done(CloseReason::TunnelLost, "tunnel closed".into()),
            }
        }
    }

    /// The local socket failed: tell the peer and end.
    async fn abort_local(&mut self, reason: CloseReason, err: io::Error) -> Step {
        let id = self.stream.id;
        let _ = self
            .stream
            .mux
            .send(Frame::Close {
                stream_id: id,
                reason,
            })
            .await;
        Step::Done(reason, err.to_string())
    }

    /// The peer misbehaved on this stream: close it on both sides.
    async fn abort_remote(&mut self, reason: CloseReason, message: String) -> Step {
        let id = self.stream.id;
        let _ = self
            .stream
            .mux
            .send(Frame::Close {
                stream_id: id,
                reason,
            })
            .await;
        Step::Done(reason, message)
    }
}
