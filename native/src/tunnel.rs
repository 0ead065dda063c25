//! What the roles (`hub.rs`, `edge.rs`) see of a tunnel, whatever carries it: open streams, push
//! config, shut down, relay UDP. The TLS transport multiplexes frames (`mux.rs`); the QUIC transport
//! maps streams and datagrams onto QUIC (`transport/quic.rs`). Both report the same `TunnelEvent`s.
use crate::mux::MuxHandle;
use crate::protocol::{Control, EdgeConfig, Frame, GoAwayReason, Role, StreamOpen, UdpCloseReason};
use crate::relay::TunnelStream;
use crate::transport::quic::QuicHandle;
use bytes::Bytes;
use tokio::sync::mpsc;

/// Bytes of datagrams one tunnel holds for its writer (TLS: the mux's datagram queue; QUIC: quinn's
/// datagram send buffer); a datagram that does not fit is dropped and counted. The edge has one
/// tunnel and absorbs its clients' bursts while the writer is descheduled: 4 MiB is ~3,500 datagrams
/// of 1,200 bytes, 25 ms at 137k datagrams/s (1 MiB overflowed at that rate on a loaded 2-core
/// machine). The hub has one tunnel per edge: 1 MiB each bounds its memory.
pub fn udp_send_queue_bytes(role: Role) -> usize {
    match role {
        Role::Edge => 4 * 1024 * 1024,
        Role::Hub => 1024 * 1024,
    }
}

/// Why a tunnel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelEnd {
    /// The peer closed the connection without a GoAway.
    PeerClosed,
    PeerGoAway(GoAwayReason, String),
    /// We ended it (`shutdown`), with or without a GoAway.
    Local(Option<GoAwayReason>, String),
    Timeout,
    Protocol(String),
    Io(String),
}

/// What the owner of a tunnel learns, in order.
#[derive(Debug)]
pub enum TunnelEvent {
    /// The peer opened a stream (hub side).
    Opened(TunnelStream, StreamOpen),
    /// The hub pushed new settings (edge side).
    Config(EdgeConfig),
    /// The tunnel is over; no more events follow.
    Ended(TunnelEnd),
}

#[derive(Debug, thiserror::Error)]
#[error("tunnel closed")]
pub struct TunnelClosed;

/// Result of handing one UDP datagram to the tunnel. UDP is unreliable: a full queue drops the
/// datagram (the caller counts it) instead of waiting, so UDP never holds up TCP streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpSend {
    Sent,
    /// The tunnel's UDP queue is full.
    Dropped,
    /// Larger than the tunnel can carry right now (QUIC: the path's datagram size).
    Oversized {
        max: usize,
    },
    Closed,
}

/// Receives the UDP half of a tunnel. Called from the tunnel's reader tasks: implementations must
/// not block (no awaiting; `try_send` on sockets). An `Err` is a protocol error that ends the tunnel.
pub trait UdpInbound: Send + Sync + 'static {
    /// `UdpOpen` from the edge (hub side only; the tunnel rejects it on the edge).
    fn open(&self, session_id: u32, open: StreamOpen) -> Result<(), String>;
    fn datagram(&self, session_id: u32, data: Bytes) -> Result<(), String>;
    fn close(&self, session_id: u32, reason: UdpCloseReason) -> Result<(), String>;
    /// The reader has handed over every datagram of one read (TLS: all frames decoded from one
    /// read; QUIC: every datagram ready at once): datagrams a handler held back to send them in a
    /// batch go out now. Until then a handler may hold a bounded number of them.
    fn flush(&self) {}
    /// The tunnel ended: every session ends with `reason` (no `UdpClose` can be sent any more).
    fn tunnel_ended(&self, reason: UdpCloseReason);
}

/// A running tunnel, either transport. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Tunnel {
    Mux(MuxHandle),
    Quic(QuicHandle),
}

impl Tunnel {
    /// `"tcpTls"` or `"quic"`, as in events and status.
    pub fn transport(&self) -> &'static str {
        match self {
            Self::Mux(_) => "tcpTls",
            Self::Quic(_) => "quic",
        }
    }

    /// Opens a stream for a TCP client (edge side).
    pub async fn open(&self, open: StreamOpen) -> Result<TunnelStream, TunnelClosed> {
        match self {
            Self::Mux(mux) => mux.open(open).await.map(TunnelStream::from_mux),
            Self::Quic(quic) => quic.open(open).await,
        }
    }

    /// Pushes new settings to the edge (hub side).
    pub fn push_config(&self, config: EdgeConfig) -> Result<(), TunnelClosed> {
        match self {
            Self::Mux(mux) => mux.push_config(config),
            Self::Quic(quic) => quic.push_config(config),
        }
    }

    /// Ends the tunnel: sends the GoAway (if any), closes the connection and aborts all streams.
    /// Only the first call has an effect; completion is reported as `TunnelEvent::Ended`.
    pub fn shutdown(&self, goaway: Option<(GoAwayReason, String)>) {
        match self {
            Self::Mux(mux) => mux.shutdown(goaway),
            Self::Quic(quic) => quic.shutdown(goaway),
        }
    }

    pub fn active_streams(&self) -> usize {
        match self {
            Self::Mux(mux) => mux.active_streams(),
            Self::Quic(quic) => quic.active_streams(),
        }
    }

    /// Announces a UDP session (edge side). Reliable and ordered before its datagrams.
    pub fn udp_open(&self, session_id: u32, open: StreamOpen) -> Result<(), TunnelClosed> {
        match self {
            Self::Mux(mux) => mux.udp_open(session_id, open),
            Self::Quic(quic) => quic.udp_open(session_id, open),
        }
    }

    /// Ends a UDP session on the peer. Reliable; best effort once the tunnel is closing.
    pub fn udp_close(&self, session_id: u32, reason: UdpCloseReason) {
        match self {
            Self::Mux(mux) => mux.udp_close(session_id, reason),
            Self::Quic(quic) => quic.udp_close(session_id, reason),
        }
    }

    /// Datagrams the transport itself dropped on receipt (QUIC: its receive buffer overflowed).
    pub fn udp_receive_drops(&self) -> u64 {
        match self {
            Self::Mux(_) => 0,
            Self::Quic(quic) => quic.udp_receive_drops(),
        }
    }

    /// Sends one datagram of a session. Never waits.
    pub fn udp_datagram(&self, session_id: u32, data: &[u8]) -> UdpSend {
        match self {
            Self::Mux(mux) => mux.udp_datagram(session_id, data),
            Self::Quic(quic) => quic.udp_datagram(session_id, data),
        }
    }
}

/// What became of a frame handed to [`apply_control`].
pub(crate) enum Applied {
    /// Carried out; the tunnel goes on.
    Done,
    /// The tunnel ends here.
    End(TunnelEnd),
    /// Not a control frame: the caller's stream or datagram path decides.
    NotControl(Frame),
}

/// Carries out what the control rules decided about one frame, the same way on both transports.
/// `reply` sends a frame back on the transport's control channel.
pub(crate) fn apply_control(
    control: Control,
    events: &mpsc::UnboundedSender<TunnelEvent>,
    udp: Option<&dyn UdpInbound>,
    reply: impl FnOnce(Frame),
) -> Applied {
    match control {
        Control::Reply(frame) => {
            reply(frame);
            Applied::Done
        }
        Control::Nothing => Applied::Done,
        Control::Config(config) => {
            let _ = events.send(TunnelEvent::Config(config));
            Applied::Done
        }
        Control::GoAway(reason, message) => Applied::End(TunnelEnd::PeerGoAway(reason, message)),
        Control::UdpOpen { session_id, open } => on_udp(udp, |udp| udp.open(session_id, open)),
        Control::UdpClose { session_id, reason } => {
            on_udp(udp, |udp| udp.close(session_id, reason))
        }
        Control::Violation(message) => Applied::End(TunnelEnd::Protocol(message)),
        Control::NotControl(frame) => Applied::NotControl(frame),
    }
}

fn on_udp(
    udp: Option<&dyn UdpInbound>,
    call: impl FnOnce(&dyn UdpInbound) -> Result<(), String>,
) -> Applied {
    match udp.map(call) {
        Some(Err(message)) => Applied::End(TunnelEnd::Protocol(message)),
        // Without a UDP handler the decoder never yields UDP frames.
        Some(Ok(())) | None => Applied::Done,
    }
}
