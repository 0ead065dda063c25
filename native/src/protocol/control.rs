//! The rules for connection-level control frames, shared by both transports (no I/O).
//!
//! The TLS mux reads control frames from the one multiplexed connection, the QUIC transport from its
//! control stream; both hand each frame to [`ControlRules::accept`] and carry out what it returns.
//! Which side may send what, and that UDP session ids only grow, is decided here once.

use super::frame::{EdgeConfig, Frame, GoAwayReason, StreamOpen, UdpCloseReason};

/// Which end of the tunnel this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Edge,
    Hub,
}

/// What a transport must do with one frame it received.
#[derive(Debug, PartialEq, Eq)]
pub enum Control {
    /// Send this frame back to the peer on the control channel (a `Pong` for a `Ping`).
    Reply(Frame),
    /// Nothing to do (a `Pong`: receiving it already proved the peer alive).
    Nothing,
    /// The hub pushed new settings (edge side only).
    Config(EdgeConfig),
    /// The peer is going away; the tunnel ends.
    GoAway(GoAwayReason, String),
    /// The edge opened a UDP session (hub side only); its id is already checked to be new.
    UdpOpen { session_id: u32, open: StreamOpen },
    /// Either side ended a UDP session.
    UdpClose {
        session_id: u32,
        reason: UdpCloseReason,
    },
    /// The peer broke a rule; the tunnel ends with a protocol error carrying this message.
    Violation(String),
    /// Not a control frame: the transport's stream or datagram path handles it.
    NotControl(Frame),
}

/// Per-tunnel state of the control rules.
#[derive(Debug)]
pub struct ControlRules {
    role: Role,
    /// Highest UDP session id the edge opened (hub side).
    last_udp_id: u32,
}

impl ControlRules {
    pub fn new(role: Role) -> Self {
        Self {
            role,
            last_udp_id: 0,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn accept(&mut self, frame: Frame) -> Control {
        match frame {
            Frame::Ping { nonce } => Control::Reply(Frame::Pong { nonce }),
            Frame::Pong { .. } => Control::Nothing,
            Frame::Config(config) => match self.role {
                Role::Hub => Control::Violation("the edge sent a CONFIG frame".into()),
                Role::Edge => Control::Config(config),
            },
            Frame::GoAway { reason, message } => Control::GoAway(reason, message),
            Frame::UdpOpen { session_id, open } => self.udp_open(session_id, open),
            Frame::UdpClose { session_id, reason } => Control::UdpClose { session_id, reason },
            other => Control::NotControl(other),
        }
    }

    fn udp_open(&mut self, session_id: u32, open: StreamOpen) -> Control {
        if self.role == Role::Edge {
            return Control::Violation("the hub sent a UDP_OPEN frame".into());
        }
        if session_id <= self.last_udp_id {
            return Control::Violation(format!(
                "UDP_OPEN for session {session_id}, but ids must increase (last was {})",
                self.last_udp_id
            ));
        }
        self.last_udp_id = session_id;
        Control::UdpOpen { session_id, open }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::net::SocketAddr;

    fn open() -> StreamOpen {
        let client: SocketAddr = "192.0.2.1:5353".parse().expect("literal address");
        let edge_local: SocketAddr = "192.0.2.9:53".parse().expect("literal address");
        StreamOpen {
            edge_port: 53,
            client,
            edge_local,
        }
    }

    #[test]
    fn a_ping_is_answered_with_the_same_nonce_and_a_pong_needs_nothing() {
        for role in [Role::Edge, Role::Hub] {
            let mut rules = ControlRules::new(role);
            assert_eq!(
                rules.accept(Frame::Ping { nonce: 7 }),
                Control::Reply(Frame::Pong { nonce: 7 })
            );
            assert_eq!(rules.accept(Frame::Pong { nonce: 7 }), Control::Nothing);
        }
    }

    #[test]
    fn only_the_hub_may_send_config() {
        let config = EdgeConfig::default();
        let mut edge = ControlRules::new(Role::Edge);
        assert_eq!(
            edge.accept(Frame::Config(config.clone())),
            Control::Config(config.clone())
        );
        let mut hub = ControlRules::new(Role::Hub);
        assert!(matches!(
            hub.accept(Frame::Config(config)),
            Control::Violation(m) if m.contains("CONFIG")
        ));
    }

    #[test]
    fn only_the_edge_opens_udp_sessions_and_their_ids_must_increase() {
        let mut edge = ControlRules::new(Role::Edge);
        assert!(matches!(
            edge.accept(Frame::UdpOpen { session_id: 1, open: open() }),
            Control::Violation(m) if m.contains("UDP_OPEN")
        ));
        let mut hub = ControlRules::new(Role::Hub);
        assert_eq!(
            hub.accept(Frame::UdpOpen {
                session_id: 2,
                open: open()
            }),
            Control::UdpOpen {
                session_id: 2,
                open: open()
            }
        );
        for repeated in [2, 1] {
            assert!(matches!(
                hub.accept(Frame::UdpOpen { session_id: repeated, open: open() }),
                Control::Violation(m) if m.contains("must increase (last was 2)")
            ));
        }
        assert!(matches!(
            hub.accept(Frame::UdpOpen {
                session_id: 9,
                open: open()
            }),
            Control::UdpOpen { session_id: 9, .. }
        ));
    }

    #[test]
    fn goaway_and_udp_close_pass_through_and_stream_frames_are_not_control() {
        let mut hub = ControlRules::new(Role::Hub);
        assert_eq!(
            hub.accept(Frame::GoAway {
                reason: GoAwayReason::HubShutdown,
                message: "bye".into()
            }),
            Control::GoAway(GoAwayReason::HubShutdown, "bye".into())
        );
        assert_eq!(
            hub.accept(Frame::UdpClose {
                session_id: 3,
                reason: UdpCloseReason::Idle
            }),
            Control::UdpClose {
                session_id: 3,
                reason: UdpCloseReason::Idle
            }
        );
        let data = Frame::Data {
            stream_id: 1,
            data: Bytes::from_static(b"x"),
        };
        assert_eq!(hub.accept(data.clone()), Control::NotControl(data));
        let datagram = Frame::UdpDatagram {
            session_id: 3,
            data: Bytes::from_static(b"y"),
        };
        assert_eq!(hub.accept(datagram.clone()), Control::NotControl(datagram));
    }
}
