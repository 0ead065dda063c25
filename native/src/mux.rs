//! One multiplexed tunnel connection: frames ⇄ logical streams.
//!
//! Tasks per tunnel: a writer (drains a priority control queue before the bounded data queue and
//! coalesces frames into few large writes), a reader (decodes frames and dispatches them to
//! per-stream channels, never blocking on a stream), and a supervisor that ends both and tells every
//! stream why. Flow control: a sender spends per-stream credit for every DATA byte; the receiving
//! relay grants it back (`Window`) only after writing the bytes to its socket, so a slow socket
//! holds at most one window of memory and never stalls other streams. A peer that sends beyond its
//! credit, or anything malformed, ends the tunnel with a protocol error.
//!
//! UDP (when both sides agreed on it): `UdpOpen` and `UdpClose` travel with the control frames (never
//! dropped, ordered before the session's datagrams); `UdpDatagram`s have their own bounded queue that
//! the writer interleaves with stream data. A full UDP queue drops the datagram (the caller counts
//! it): UDP never waits for, or holds up, TCP streams. Inbound UDP frames go straight to the
//! `UdpInbound` handler from the reader, which never blocks on them.
use crate::protocol::frame::{encode_frame, INITIAL_STREAM_WINDOW, MAX_UDP_DATAGRAM};
use crate::protocol::{
    CloseReason, ControlRules, EdgeConfig, Frame, FrameDecoder, GoAwayReason, StreamOpen,
    UdpCloseReason,
};
use crate::relay::TunnelStream;
use crate::transport::TunnelIo;
use crate::tunnel::{
    apply_control, udp_send_queue_bytes, Applied, TunnelClosed, TunnelEnd, TunnelEvent, UdpInbound,
    UdpSend,
};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Frames that must stay in order with a stream's data (Open, Data, Fin, Close) share one bounded queue.
const DATA_QUEUE_FRAMES: usize = 64;
/// Datagrams waiting for the writer, at most (count here, bytes: `udp_send_queue_bytes`); beyond
/// that they are dropped. 8192 of 64 bytes ride out a writer stall of ~55 ms at 150k datagrams/s
/// (1024 overflowed within 7 ms on a loaded machine).
const UDP_QUEUE_FRAMES: usize = 8192;
/// The writer stops coalescing once this much is buffered.
const WRITE_COALESCE_BYTES: usize = 256 * 1024;
/// The reader keeps at least this much free space before each read.
const READ_RESERVE_BYTES: usize = 128 * 1024;
/// DATA payloads smaller than this are copied out of the read buffer, so that a slow stream holding
/// a small chunk does not pin a whole read buffer.
const COPY_BELOW_BYTES: usize = 16 * 1024;
/// How long a closing tunnel may take to deliver its GoAway before it is cut.
const GOAWAY_GRACE: Duration = Duration::from_secs(2);

/// What a stream's relay receives from the tunnel.
#[derive(Debug)]
pub enum Inbound {
    Data(Bytes),
    Fin,
    Credit(u32),
    /// The peer closed the stream (both directions).
    Close(CloseReason),
    /// The whole tunnel ended; the stream ends with this reason.
    TunnelGone(CloseReason),
}

/// Which side of the tunnel this is; only the edge opens streams (control frame rules: `protocol::control`).
pub use crate::protocol::Role;

#[derive(Clone)]
pub struct MuxOptions {
    pub role: Role,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// Where inbound UDP frames go; `None` if UDP was not agreed (UDP frames are then an error).
    pub udp: Option<Arc<dyn UdpInbound>>,
}

type MuxEnd = TunnelEnd;

/// The GoAway to send (if any) when shutting a tunnel down.
type ShutdownRequest = Option<(GoAwayReason, String)>;

enum Ctrl {
    Frame(Frame),
    /// Write what is queued, then close the write side.
    Finish,
}

struct StreamEntry {
    tx: mpsc::UnboundedSender<Inbound>,
    /// DATA bytes the peer may still send on this stream.
    recv_credit: u32,
}

#[derive(Default)]
struct StreamTable {
    entries: HashMap<u32, StreamEntry>,
    /// Edge: next id to open. Hub: highest id the peer opened.
    last_id: u32,
    closed: bool,
}

struct Shared {
    role: Role,
    data_tx: mpsc::Sender<Frame>,
    udp_tx: mpsc::Sender<Frame>,
    /// Payload bytes in `udp_tx`, at most `udp_queue_bytes`.
    udp_queued: AtomicUsize,
    udp_queue_bytes: usize,
    ctrl_tx: mpsc::UnboundedSender<Ctrl>,
    table: Mutex<StreamTable>,
    shutdown_tx: Mutex<Option<oneshot::Sender<ShutdownRequest>>>,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, StreamTable> {
        // A panic while holding this lock cannot leave the table inconsistent (single inserts/removes).
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Cloneable handle to a running tunnel.
#[derive(Clone)]
pub struct MuxHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MuxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxHandle")
            .field("role", &self.shared.role)
            .finish()
    }
}

/// One logical stream: its inbound messages and the tunnel to send on. Dropping it forgets the stream.
#[derive(Debug)]
pub struct MuxStream {
    pub id: u32,
    pub inbound: mpsc::UnboundedReceiver<Inbound>,
    pub mux: MuxHandle,
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        self.mux.shared.table().entries.remove(&self.id);
    }
}

impl MuxHandle {
    /// Opens a stream (edge side) and sends its `Open` frame.
    pub async fn open(&self, open: StreamOpen) -> Result<MuxStream, TunnelClosed> {
        let (tx, rx) = mpsc::unbounded_channel();
        // The OPEN frame is queued under the same lock that allocates its id: the hub requires ids to
        // increase, and a reserved slot does not fix a position in the queue (only `send` does).
        let permit = self
            .shared
            .data_tx
            .reserve()
            .await
            .map_err(|_| TunnelClosed)?;
        let id = {
            let mut table = self.shared.table();
            if table.closed || table.last_id == u32::MAX {
                return Err(TunnelClosed);
            }
            table.last_id += 1;
            let id = table.last_id;
            table.entries.insert(
                id,
                StreamEntry {
                    tx,
                    recv_credit: INITIAL_STREAM_WINDOW,
                },
            );
            permit.send(Frame::Open {
                stream_id: id,
                open,
            });
            id
        };
        let stream = MuxStream {
            id,
            inbound: rx,
            mux: self.clone(),
        };
        Ok(stream)
    }

    /// Queues a frame that must stay ordered with stream data (Open, Data, Fin, Close).
    pub async fn send(&self, frame: Frame) -> Result<(), TunnelClosed> {
        self.shared
            .data_tx
            .send(frame)
            .await
            .map_err(|_| TunnelClosed)
    }

    /// Waits for a slot in the stream-data queue. Cancel-safe.
    pub async fn reserve_data(&self) -> Result<mpsc::Permit<'_, Frame>, TunnelClosed> {
        self.shared
            .data_tx
            .reserve()
            .await
            .map_err(|_| TunnelClosed)
    }

    /// A slot in the stream-data queue if one is free right now.
    pub fn try_reserve_data(&self) -> Result<mpsc::Permit<'_, Frame>, TunnelClosed> {
        self.shared.data_tx.try_reserve().map_err(|_| TunnelClosed)
    }

    /// Sends `UdpOpen` (edge side), ahead of any datagram of the session.
    pub fn udp_open(&self, session_id: u32, open: StreamOpen) -> Result<(), TunnelClosed> {
        self.shared
            .ctrl_tx
            .send(Ctrl::Frame(Frame::UdpOpen { session_id, open }))
            .map_err(|_| TunnelClosed)
    }

    pub fn udp_close(&self, session_id: u32, reason: UdpCloseReason) {
        let _ = self
            .shared
            .ctrl_tx
            .send(Ctrl::Frame(Frame::UdpClose { session_id, reason }));
    }

    /// Queues one datagram without waiting: a full queue drops it.
    pub fn udp_datagram(&self, session_id: u32, data: &[u8]) -> UdpSend {
        if data.len() > MAX_UDP_DATAGRAM {
            return UdpSend::Oversized {
                max: MAX_UDP_DATAGRAM,
            };
        }
        let shared = &self.shared;
        if shared.udp_queued.load(Ordering::Relaxed) + data.len() > shared.udp_queue_bytes {
            return UdpSend::Dropped;
        }
        let permit = match shared.udp_tx.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Full(())) => return UdpSend::Dropped,
            Err(mpsc::error::TrySendError::Closed(())) => return UdpSend::Closed,
        };
        shared.udp_queued.fetch_add(data.len(), Ordering::Relaxed);
        permit.send(Frame::UdpDatagram {
            session_id,
            data: Bytes::copy_from_slice(data),
        });
        UdpSend::Sent
    }

    /// Gives the peer `credit` more bytes on `stream_id` (after they were written out).
    pub fn grant(&self, stream_id: u32, credit: u32) {
        {
            let mut table = self.shared.table();
            match table.entries.get_mut(&stream_id) {
                Some(entry) => entry.recv_credit = entry.recv_credit.saturating_add(credit),
                None => return,
            }
        }
        let _ = self
            .shared
            .ctrl_tx
            .send(Ctrl::Frame(Frame::Window { stream_id, credit }));
    }

    /// Pushes new settings to the edge (hub side).
    pub fn push_config(&self, config: EdgeConfig) -> Result<(), TunnelClosed> {
        self.shared
            .ctrl_tx
            .send(Ctrl::Frame(Frame::Config(config)))
            .map_err(|_| TunnelClosed)
    }

    /// Ends the tunnel: sends the GoAway (if any), closes the connection and aborts all streams.
    /// Only the first call has an effect; completion is reported as `MuxEvent::Ended`.
    pub fn shutdown(&self, goaway: Option<(GoAwayReason, String)>) {
        let sender = self
            .shared
            .shutdown_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(sender) = sender {
            let _ = sender.send(goaway);
        }
    }

    pub fn active_streams(&self) -> usize {
        self.shared.table().entries.len()
    }
}

/// Starts driving `io`. `initial` holds bytes already read past the handshake.
pub fn spawn<T: TunnelIo>(
    io: T,
    initial: BytesMut,
    options: MuxOptions,
) -> (MuxHandle, mpsc::UnboundedReceiver<TunnelEvent>) {
    let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE_FRAMES);
    let (udp_tx, udp_rx) = mpsc::channel(UDP_QUEUE_FRAMES);
    let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        role: options.role,
        data_tx,
        udp_tx,
        udp_queued: AtomicUsize::new(0),
        udp_queue_bytes: udp_send_queue_bytes(options.role),
        ctrl_tx,
        table: Mutex::new(StreamTable::default()),
        shutdown_tx: Mutex::new(Some(shutdown_tx)),
    });
    let handle = MuxHandle { shared };
    let (rd, wr) = tokio::io::split(io);
    tokio::spawn(supervise(
        handle.clone(),
        rd,
        wr,
        initial,
        options,
        Queues {
            data_rx,
            udp_rx,
            ctrl_rx,
        },
        shutdown_rx,
        events_tx,
    ));
    (handle, events_rx)
}

/// What the writer drains: control first, then stream data and datagrams in turn.
struct Queues {
    data_rx: mpsc::Receiver<Frame>,
    udp_rx: mpsc::Receiver<Frame>,
    ctrl_rx: mpsc::UnboundedReceiver<Ctrl>,
}

#[allow(clippy::too_many_arguments)]
async fn supervise<R, W>(
    handle: MuxHandle,
    rd: R,
    wr: W,
    initial: BytesMut,
    options: MuxOptions,
    queues: Queues,
    shutdown_rx: oneshot::Receiver<ShutdownRequest>,
    events: mpsc::UnboundedSender<TunnelEvent>,
) where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let reader = Reader {
        handle: handle.clone(),
        events: events.clone(),
        decoder: FrameDecoder::default().with_udp(options.udp.is_some()),
        rules: ControlRules::new(options.role),
        udp: options.udp.clone(),
    };
    let mut read_task = tokio::spawn(reader.run(rd, initial, options.idle_timeout));
    let mut write_task = tokio::spawn(write_loop(
        wr,
        queues,
        handle.clone(),
        options.ping_interval,
    ));

    let end = tokio::select! {
        end = &mut read_task => {
            let end = end.unwrap_or_else(|e| MuxEnd::Io(format!("reader failed: {e}")));
            // Tell the peer why, if the connection still takes writes.
            let goaway = match &end {
                MuxEnd::Protocol(message) => Some((GoAwayReason::ProtocolError, message.clone())),
                MuxEnd::Timeout => Some((GoAwayReason::Timeout, "no frames received within the idle timeout".to_string())),
                _ => None,
            };
            if let Some((reason, message)) = goaway {
                let _ = handle.shared.ctrl_tx.send(Ctrl::Frame(Frame::GoAway { reason, message }));
                let _ = handle.shared.ctrl_tx.send(Ctrl::Finish);
                let _ = tokio::time::timeout(GOAWAY_GRACE, &mut write_task).await;
            }
            end
        },
        written = &mut write_task => match written {
            Ok(Ok(())) => MuxEnd::Local(None, String::new()),
            Ok(Err(e)) => MuxEnd::Io(e.to_string()),
            Err(e) => MuxEnd::Io(format!("writer failed: {e}")),
        },
        request = shutdown_rx => {
            let goaway = request.ok().flatten();
            if let Some((reason, message)) = &goaway {
                let _ = handle.shared.ctrl_tx.send(Ctrl::Frame(Frame::GoAway { reason: *reason, message: message.clone() }));
            }
            let _ = handle.shared.ctrl_tx.send(Ctrl::Finish);
            let _ = tokio::time::timeout(GOAWAY_GRACE, &mut write_task).await;
            match goaway {
                Some((reason, message)) => MuxEnd::Local(Some(reason), message),
                None => MuxEnd::Local(None, String::new()),
            }
        }
    };
    read_task.abort();
    write_task.abort();

    let stream_reason = match &end {
        MuxEnd::PeerGoAway(GoAwayReason::HubShutdown, _)
        | MuxEnd::Local(Some(GoAwayReason::HubShutdown), _) => CloseReason::HubShutdown,
        _ => CloseReason::TunnelLost,
    };
    let entries = {
        let mut table = handle.shared.table();
        table.closed = true;
        std::mem::take(&mut table.entries)
    };
    for (_, entry) in entries {
        let _ = entry.tx.send(Inbound::TunnelGone(stream_reason));
    }
    if let Some(udp) = &options.udp {
        udp.tunnel_ended(match stream_reason {
            CloseReason::HubShutdown => UdpCloseReason::Shutdown,
            _ => UdpCloseReason::TunnelLost,
        });
    }
    // Makes later `shutdown` calls no-ops.
    handle
        .shared
        .shutdown_tx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let _ = events.send(TunnelEvent::Ended(end));
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    queues: Queues,
    handle: MuxHandle,
    ping_interval: Duration,
) -> std::io::Result<()> {
    let Queues {
        mut data_rx,
        mut udp_rx,
        mut ctrl_rx,
    } = queues;
    let udp_queued = &handle.shared.udp_queued;
    let encode_udp = |frame: &Frame, buf: &mut BytesMut| {
        if let Frame::UdpDatagram { data, .. } = frame {
            udp_queued.fetch_sub(data.len(), Ordering::Relaxed);
        }
        encode_frame(frame, buf);
    };
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut nonce: u64 = 0;
    let mut finishing = false;
    let mut data_open = true;
    loop {
        tokio::select! {
            biased;
            ctrl = ctrl_rx.recv() => match ctrl {
                Some(Ctrl::Frame(frame)) => encode_frame(&frame, &mut buf),
                Some(Ctrl::Finish) | None => finishing = true,
            },
            data = data_rx.recv(), if data_open => match data {
                Some(frame) => encode_frame(&frame, &mut buf),
                None => data_open = false,
            },
            Some(frame) = udp_rx.recv() => encode_udp(&frame, &mut buf),
            _ = ping.tick() => {
                nonce = nonce.wrapping_add(1);
                encode_frame(&Frame::Ping { nonce }, &mut buf);
            }
        }
        // Coalesce whatever else is ready into the same write, control frames first.
        while !finishing && buf.len() < WRITE_COALESCE_BYTES {
            match ctrl_rx.try_recv() {
                Ok(Ctrl::Frame(frame)) => {
                    encode_frame(&frame, &mut buf);
                    continue;
                }
                Ok(Ctrl::Finish) => {
                    finishing = true;
                    break;
                }
                Err(_) => {}
            }
            // Stream data and datagrams take turns, so neither starves the other.
            let data = data_rx.try_recv();
            if let Ok(frame) = &data {
                encode_frame(frame, &mut buf);
            }
            let udp = udp_rx.try_recv();
            if let Ok(frame) = &udp {
                encode_udp(frame, &mut buf);
            }
            if data.is_err() && udp.is_err() {
                break;
            }
        }
        if !buf.is_empty() {
            wr.write_all(&buf).await?;
            buf.clear();
            if buf.capacity() > 2 * WRITE_COALESCE_BYTES {
                buf = BytesMut::with_capacity(64 * 1024);
            }
        }
        if finishing {
            wr.flush().await?;
            return wr.shutdown().await;
        }
        if ctrl_rx.is_empty() && data_rx.is_empty() && udp_rx.is_empty() {
            wr.flush().await?;
        }
    }
}

struct Reader {
    handle: MuxHandle,
    events: mpsc::UnboundedSender<TunnelEvent>,
    decoder: FrameDecoder,
    rules: ControlRules,
    udp: Option<Arc<dyn UdpInbound>>,
}

impl Reader {
    async fn run<R: AsyncRead + Unpin>(
        mut self,
        mut rd: R,
        mut buf: BytesMut,
        idle_timeout: Duration,
    ) -> MuxEnd {
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
                    Err(e) => return MuxEnd::Protocol(e.to_string()),
                }
            }
            // Every frame of this read is dispatched: batched datagrams go out.
            if let Some(udp) = &self.udp {
                udp.flush();
            }
            if buf.capacity() - buf.len() < READ_RESERVE_BYTES / 2 {
                buf.reserve(READ_RESERVE_BYTES);
            }
            tokio::select! {
                read = rd.read_buf(&mut buf) => match read {
                    Ok(0) if buf.is_empty() => return MuxEnd::PeerClosed,
                    Ok(0) => return MuxEnd::Protocol(format!("connection closed inside a frame ({} bytes pending)", buf.len())),
                    Ok(_) => last_heard = Instant::now(),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && buf.is_empty() => return MuxEnd::PeerClosed,
                    Err(e) => return MuxEnd::Io(e.to_string()),
                },
                _ = tokio::time::sleep_until(last_heard + idle_timeout) => return MuxEnd::Timeout,
            }
        }
    }

    /// Handles one frame; returns the end of the tunnel if this frame ends it.
    fn dispatch(&mut self, frame: Frame) -> Option<MuxEnd> {
        match frame {
            Frame::Open { stream_id, open } => self.open(stream_id, open),
            Frame::Data { stream_id, data } => {
                let mut table = self.handle.shared.table();
                let last_id = table.last_id;
                let Some(entry) = table.entries.get_mut(&stream_id) else {
                    return unknown_stream(stream_id, last_id, "DATA");
                };
                let len = data.len();
                if len > entry.recv_credit as usize {
                    return Some(MuxEnd::Protocol(format!(
                        "stream {stream_id} sent {len} bytes with only {} bytes of credit",
                        entry.recv_credit
                    )));
                }
                entry.recv_credit -= len as u32;
                let data = if len < COPY_BELOW_BYTES {
                    Bytes::copy_from_slice(&data)
                } else {
                    data
                };
                let _ = entry.tx.send(Inbound::Data(data));
                None
            }
            Frame::Fin { stream_id } => self.forward_to_stream(stream_id, "FIN", Inbound::Fin),
            Frame::Close { stream_id, reason } => {
                self.forward_to_stream(stream_id, "CLOSE", Inbound::Close(reason))
            }
            Frame::Window { stream_id, credit } => {
                self.forward_to_stream(stream_id, "WINDOW", Inbound::Credit(credit))
            }
            Frame::UdpDatagram { session_id, data } => {
                self.to_udp(|udp| udp.datagram(session_id, data))
            }
            other => self.control(other),
        }
    }

    fn control(&mut self, frame: Frame) -> Option<MuxEnd> {
        let ctrl_tx = &self.handle.shared.ctrl_tx;
        let control = self.rules.accept(frame);
        match apply_control(control, &self.events, self.udp.as_deref(), |reply| {
            let _ = ctrl_tx.send(Ctrl::Frame(reply));
        }) {
            Applied::Done => None,
            Applied::End(end) => Some(end),
            // Every stream and datagram frame is matched in `dispatch`.
            Applied::NotControl(frame) => Some(MuxEnd::Protocol(format!(
                "unexpected {} frame",
                frame.name()
            ))),
        }
    }

    fn to_udp(&self, call: impl FnOnce(&dyn UdpInbound) -> Result<(), String>) -> Option<MuxEnd> {
        // The decoder only yields UDP frames when a handler exists.
        let udp = self.udp.as_deref()?;
        call(udp).err().map(MuxEnd::Protocol)
    }

    fn open(&mut self, stream_id: u32, open: StreamOpen) -> Option<MuxEnd> {
        if self.rules.role() == Role::Edge {
            return Some(MuxEnd::Protocol("the hub sent an OPEN frame".into()));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut table = self.handle.shared.table();
            if stream_id <= table.last_id {
                return Some(MuxEnd::Protocol(format!(
                    "OPEN for stream {stream_id}, but ids must increase (last was {})",
                    table.last_id
                )));
            }
            table.last_id = stream_id;
            table.entries.insert(
                stream_id,
                StreamEntry {
                    tx,
                    recv_credit: INITIAL_STREAM_WINDOW,
                },
            );
        }
        let stream = MuxStream {
            id: stream_id,
            inbound: rx,
            mux: self.handle.clone(),
        };
        let _ = self
            .events
            .send(TunnelEvent::Opened(TunnelStream::from_mux(stream), open));
        None
    }

    fn forward_to_stream(&mut self, stream_id: u32, what: &str, msg: Inbound) -> Option<MuxEnd> {
        let table = self.handle.shared.table();
        match table.entries.get(&stream_id) {
            Some(entry) => {
                let _ = entry.tx.send(msg);
                None
            }
            None => unknown_stream(stream_id, table.last_id, what),
        }
    }
}

/// A frame for a stream we do not track: fine if the stream existed and already ended (frames
/// cross on the wire), a protocol error if it was never opened.
fn unknown_stream(stream_id: u32, last_id: u32, what: &str) -> Option<MuxEnd> {
    if stream_id != 0 && stream_id <= last_id {
        None
    } else {
        Some(MuxEnd::Protocol(format!(
            "{what} for stream {stream_id}, which was never opened"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn options(role: Role) -> MuxOptions {
        MuxOptions {
            role,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            udp: None,
        }
    }

    #[test]
    fn concurrent_opens_reach_the_hub_in_id_order() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (edge_io, hub_io) = tokio::io::duplex(1 << 20);
            let (edge, _edge_events) = spawn(edge_io, BytesMut::new(), options(Role::Edge));
            let (_hub, mut hub_events) = spawn(hub_io, BytesMut::new(), options(Role::Hub));
            const OPENS: usize = 400;
            let opens: Vec<_> = (0..OPENS)
                .map(|_| {
                    let edge = edge.clone();
                    tokio::spawn(async move {
                        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
                        let open = StreamOpen {
                            edge_port: 80,
                            client: addr,
                            edge_local: addr,
                        };
                        edge.open(open).await
                    })
                })
                .collect();
            let mut streams = Vec::new();
            for open in opens {
                streams.push(open.await.expect("task").expect("open"));
            }
            let mut opened = 0;
            while opened < OPENS {
                let event = tokio::time::timeout(Duration::from_secs(10), hub_events.recv())
                    .await
                    .expect("hub event in time")
                    .expect("hub events open");
                match event {
                    TunnelEvent::Opened(..) => opened += 1,
                    TunnelEvent::Ended(end) => panic!("tunnel ended after {opened} opens: {end:?}"),
                    TunnelEvent::Config(_) => {}
                }
            }
            assert_eq!(streams.len(), OPENS);
        });
    }
}
