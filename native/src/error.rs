//! Errors that cross into JS. Each message starts with the stable code from docs/architecture.md.
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum AddonError {
    #[error("EINVALIDCONFIG: {0}")]
    InvalidConfig(String),
    #[error("EADDRINUSE: {0}")]
    AddrInUse(String),
    #[error("EACCES: {0}")]
    Access(String),
    #[error("ETLS: {0}")]
    Tls(String),
    #[error("ECLOSED: {0}")]
    Closed(String),
    #[error("EIO: {0}")]
    Io(String),
}

impl AddonError {
    /// Maps a bind/listen error on `what` (e.g. "0.0.0.0:8443") to its coded form.
    pub fn from_bind(err: &io::Error, what: &str) -> Self {
        let msg = format!("cannot listen on {what}: {err}");
        match err.kind() {
            io::ErrorKind::AddrInUse => Self::AddrInUse(msg),
            io::ErrorKind::PermissionDenied => Self::Access(msg),
            io::ErrorKind::AddrNotAvailable | io::ErrorKind::InvalidInput => {
                Self::InvalidConfig(msg)
            }
            _ => Self::Io(msg),
        }
    }

    /// The bare code (`EADDRINUSE`, …), as used in `listener.error` events.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidConfig(_) => "EINVALIDCONFIG",
            Self::AddrInUse(_) => "EADDRINUSE",
            Self::Access(_) => "EACCES",
            Self::Tls(_) => "ETLS",
            Self::Closed(_) => "ECLOSED",
            Self::Io(_) => "EIO",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            Self::InvalidConfig(m)
            | Self::AddrInUse(m)
            | Self::Access(m)
            | Self::Tls(m)
            | Self::Closed(m)
            | Self::Io(m) => m,
        }
    }
}
