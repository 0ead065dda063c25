//! Status JSON shapes (docs/architecture.md, "Status JSON") and the wire names of close reasons.
use crate::protocol::{CloseReason, GoAwayReason};
use serde::Serialize;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HubStatus {
    pub running: bool,
    pub tunnel_port: u16,
    /// Whether QUIC is served (UDP, same port number).
    pub quic: bool,
    pub hub_id: String,
    pub fingerprint: String,
    pub edges: Vec<HubEdgeStatus>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HubEdgeStatus {
    pub edge_id: String,
    pub session_id: String,
    pub remote_addr: String,
    pub connected_at: u64,
    /// `"tcpTls"` or `"quic"`.
    pub transport: &'static str,
    pub active_streams: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// UDP sessions open now.
    pub udp_sessions: u64,
    /// Datagrams dropped (queue or socket buffer full, session already closed).
    pub udp_dropped: u64,
    /// Datagrams too large to carry.
    pub udp_oversized: u64,
    /// New UDP sessions refused (session cap, port not assigned).
    pub udp_refused: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ListenerErrorStatus {
    pub port: u16,
    pub protocol: &'static str,
    pub code: String,
    pub message: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeStatus {
    pub running: bool,
    pub connected: bool,
    pub hub: Option<String>,
    pub hub_id: Option<String>,
    pub session_id: Option<String>,
    pub hub_fingerprint: Option<String>,
    pub pinned: bool,
    /// `"tcpTls"` or `"quic"` while connected.
    pub transport: Option<&'static str>,
    /// Public address from STUN (`null` until discovered).
    pub public_ip: Option<String>,
    pub public_port: Option<u16>,
    pub active_streams: u64,
    pub udp_sessions: u64,
    pub udp_dropped: u64,
    pub udp_oversized: u64,
    pub udp_refused: u64,
    pub listen_ports: Vec<u16>,
    pub listen_ports_udp: Vec<u16>,
    pub listener_errors: Vec<ListenerErrorStatus>,
    pub last_error: Option<String>,
    /// Client connections reset because no tunnel came up within `gapHoldMs`.
    pub gap_refused: u64,
}

pub fn close_reason_name(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::ClientClosed => "clientClosed",
        CloseReason::TargetClosed => "targetClosed",
        CloseReason::TargetRefused => "targetRefused",
        CloseReason::Timeout => "timeout",
        CloseReason::TunnelLost => "tunnelLost",
        CloseReason::HubShutdown => "hubShutdown",
        CloseReason::Reset => "reset",
        CloseReason::ProtocolError => "protocolError",
    }
}

pub fn goaway_reason_name(reason: GoAwayReason) -> &'static str {
    match reason {
        GoAwayReason::HubShutdown => "hubShutdown",
        GoAwayReason::Revoked => "revoked",
        GoAwayReason::Superseded => "superseded",
        GoAwayReason::ProtocolError => "protocolError",
        GoAwayReason::Timeout => "timeout",
        GoAwayReason::LeaseLost => "leaseLost",
        GoAwayReason::NotOwner => "notOwner",
    }
}
