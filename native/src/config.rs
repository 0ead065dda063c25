//! Config JSON from TypeScript (see docs/architecture.md), parsed and validated once at the boundary.
use crate::error::AddonError;
use crate::protocol::Credential;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    #[default]
    V1,
    V2,
    None,
}

/// How the edge reaches the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum TransportMode {
    /// TLS over TCP.
    #[default]
    TcpTls,
    /// QUIC only.
    Quic,
    /// QUIC first; TLS if QUIC is not connected within `quicFallbackTimeoutMs`.
    QuicWithFallback,
}

/// When the hub answers an authenticated edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Admission {
    /// Accept as soon as the secret checks out.
    #[default]
    Immediate,
    /// Emit `edge.admitting` and wait for `hubAdmitEdge` (or `admissionTimeoutMs`).
    Deferred,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HubConfig {
    #[serde(default = "default_hub_id")]
    pub hub_id: String,
    #[serde(default = "default_bind_host")]
    pub bind_host: String,
    pub tunnel_port: u16,
    #[serde(default = "default_target_host")]
    pub target_host: String,
    #[serde(default)]
    pub proxy_protocol_tcp: ProxyProtocol,
    #[serde(default = "default_udp_proxy")]
    pub proxy_protocol_udp: ProxyProtocol,
    pub cert_pem: String,
    pub key_pem: String,
    #[serde(default = "default_ping_ms")]
    pub ping_interval_ms: u64,
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
    #[serde(default = "default_handshake_ms")]
    pub handshake_timeout_ms: u64,
    #[serde(default = "default_connect_ms")]
    pub target_connect_timeout_ms: u64,
    /// A UDP session with no datagram in either direction for this long expires.
    #[serde(default = "default_udp_idle_ms")]
    pub udp_idle_timeout_ms: u64,
    /// Most concurrent UDP sessions per edge; new ones beyond it are refused (and counted).
    #[serde(default = "default_max_udp_sessions")]
    pub max_udp_sessions_per_edge: u32,
    /// Serve QUIC on UDP at the tunnel port number (next to TLS on TCP).
    #[serde(default = "default_true")]
    pub quic: bool,
    #[serde(default)]
    pub admission: Admission,
    /// `deferred`: how long an authenticated edge waits for `hubAdmitEdge` before it is refused.
    #[serde(default = "default_handshake_ms")]
    pub admission_timeout_ms: u64,
    #[serde(default)]
    pub edges: Vec<EdgeEntry>,
}

/// One allowed edge (`NativeEdge`): exactly one of `secret` (clear) or `secretVerifier`
/// (`v1:<salt hex>:<hmac hex>`, see `protocol::credential`).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeEntry {
    pub id: String,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_verifier: Option<String>,
    /// Built from `secret` or `secretVerifier` by validation.
    #[serde(skip)]
    pub credential: Option<Credential>,
    #[serde(default)]
    pub listen_ports: Vec<u16>,
    #[serde(default)]
    pub listen_ports_udp: Vec<u16>,
    /// Edge port (as a decimal string) → "host:port".
    #[serde(default)]
    pub targets: BTreeMap<String, String>,
    #[serde(default = "default_stun_secs")]
    pub stun_interval_secs: u32,
}

// The secret never appears in logs or error messages.
impl std::fmt::Debug for EdgeEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeEntry")
            .field("id", &self.id)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field(
                "secret_verifier",
                &self.secret_verifier.as_ref().map(|_| "***"),
            )
            .field("listen_ports", &self.listen_ports)
            .field("listen_ports_udp", &self.listen_ports_udp)
            .field("targets", &self.targets)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HubAddress {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for HubAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeConfigJson {
    pub hubs: Vec<HubAddress>,
    pub edge_id: String,
    pub secret: String,
    #[serde(default = "default_bind_host")]
    pub bind_address: String,
    #[serde(default)]
    pub hub_cert_fingerprint: Option<String>,
    #[serde(default)]
    pub ca_pem: Option<String>,
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default = "default_ping_ms")]
    pub ping_interval_ms: u64,
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
    #[serde(default = "default_reconnect_initial_ms")]
    pub reconnect_initial_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    #[serde(default)]
    pub transport_mode: TransportMode,
    /// `quicWithFallback`: how long QUIC may take to connect before TLS is used.
    #[serde(default = "default_handshake_ms")]
    pub quic_fallback_timeout_ms: u64,
    /// STUN servers ("host:port") for public address discovery; empty = off.
    #[serde(default)]
    pub stun_servers: Vec<String>,
    /// A client connection arriving while no tunnel is up waits this long for one, then is reset
    /// (0 = reset at once).
    #[serde(default = "default_gap_hold_ms")]
    pub gap_hold_ms: u64,
}

impl std::fmt::Debug for EdgeConfigJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeConfigJson")
            .field("hubs", &self.hubs)
            .field("edge_id", &self.edge_id)
            .field("secret", &"***")
            .finish_non_exhaustive()
    }
}

fn default_hub_id() -> String {
    "hub".into()
}
fn default_bind_host() -> String {
    "0.0.0.0".into()
}
fn default_target_host() -> String {
    "127.0.0.1".into()
}
fn default_udp_proxy() -> ProxyProtocol {
    ProxyProtocol::V2
}
fn default_ping_ms() -> u64 {
    5_000
}
fn default_idle_ms() -> u64 {
    15_000
}
fn default_handshake_ms() -> u64 {
    5_000
}
fn default_connect_ms() -> u64 {
    5_000
}
fn default_true() -> bool {
    true
}
fn default_udp_idle_ms() -> u64 {
    60_000
}
fn default_max_udp_sessions() -> u32 {
    1024
}
fn default_stun_secs() -> u32 {
    300
}
fn default_gap_hold_ms() -> u64 {
    3_000
}
fn default_reconnect_initial_ms() -> u64 {
    250
}
fn default_reconnect_max_ms() -> u64 {
    30_000
}

fn invalid(msg: impl std::fmt::Display) -> AddonError {
    AddonError::InvalidConfig(msg.to_string())
}

fn check_ms(name: &str, value: u64) -> Result<Duration, AddonError> {
    if value == 0 || value > 24 * 3600 * 1000 {
        return Err(invalid(format!(
            "{name} must be between 1 and 86400000 ms, got {value}"
        )));
    }
    Ok(Duration::from_millis(value))
}

fn check_ports(what: &str, ports: &[u16]) -> Result<(), AddonError> {
    if ports.contains(&0) {
        return Err(invalid(format!("{what}: port 0 is not allowed")));
    }
    Ok(())
}

/// Validates a "host:port" target (host may be a name, IPv4 or [IPv6]).
fn check_target(port_key: &str, target: &str) -> Result<(), AddonError> {
    let bad = || {
        invalid(format!(
            "targets[{port_key}]: expected \"host:port\", got {target:?}"
        ))
    };
    let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(())
}

impl EdgeEntry {
    /// Checks the entry and builds its credential.
    fn validate(&mut self) -> Result<(), AddonError> {
        if self.id.is_empty() || self.id.len() > crate::protocol::handshake::MAX_EDGE_ID_LEN {
            return Err(invalid(format!(
                "edge id {:?} must have 1..=128 bytes",
                self.id
            )));
        }
        self.credential = Some(match (&self.secret, &self.secret_verifier) {
            (Some(secret), None) => {
                if secret.is_empty() || secret.len() > crate::protocol::handshake::MAX_SECRET_LEN {
                    return Err(invalid(format!(
                        "edge {:?}: secret must have 1..=512 bytes",
                        self.id
                    )));
                }
                Credential::from_secret(secret)
            }
            (None, Some(verifier)) => Credential::parse_verifier(verifier)
                .map_err(|what| invalid(format!("edge {:?}: secretVerifier: {what}", self.id)))?,
            _ => {
                return Err(invalid(format!(
                    "edge {:?}: exactly one of secret or secretVerifier is required",
                    self.id
                )))
            }
        });
        check_ports(
            &format!("edge {:?} listenPorts", self.id),
            &self.listen_ports,
        )?;
        check_ports(
            &format!("edge {:?} listenPortsUdp", self.id),
            &self.listen_ports_udp,
        )?;
        for (key, target) in &self.targets {
            key.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                invalid(format!(
                    "edge {:?}: target key {key:?} is not a port",
                    self.id
                ))
            })?;
            check_target(key, target)?;
        }
        Ok(())
    }

    /// Whether `other` authenticates the edge differently (a changed secret drops the session).
    pub fn credential_changed(&self, other: &EdgeEntry) -> bool {
        self.secret != other.secret || self.secret_verifier != other.secret_verifier
    }

    /// Where a stream or UDP session arriving on `edge_port` goes.
    pub fn target_for(&self, edge_port: u16, target_host: &str) -> String {
        match self.targets.get(&edge_port.to_string()) {
            Some(t) => t.clone(),
            None if target_host.contains(':') => format!("[{target_host}]:{edge_port}"),
            None => format!("{target_host}:{edge_port}"),
        }
    }

    pub fn wire_config(&self) -> crate::protocol::EdgeConfig {
        crate::protocol::EdgeConfig {
            listen_ports: sorted_unique(&self.listen_ports),
            listen_ports_udp: sorted_unique(&self.listen_ports_udp),
            stun_interval_secs: self.stun_interval_secs,
        }
    }
}

pub fn sorted_unique(ports: &[u16]) -> Vec<u16> {
    let mut v = ports.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// Parses and validates the `edges` list (also used by `hubUpdateEdges`).
pub fn parse_edges(json: &str) -> Result<Vec<EdgeEntry>, AddonError> {
    let mut edges: Vec<EdgeEntry> = serde_json::from_str(json).map_err(invalid)?;
    validate_edges(&mut edges)?;
    Ok(edges)
}

fn validate_edges(edges: &mut [EdgeEntry]) -> Result<(), AddonError> {
    let mut seen = std::collections::HashSet::new();
    for e in edges.iter_mut() {
        e.validate()?;
        if !seen.insert(e.id.as_str()) {
            return Err(invalid(format!("edge id {:?} appears twice", e.id)));
        }
    }
    Ok(())
}

/// Validated hub settings.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub raw: HubConfig,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub target_connect_timeout: Duration,
    pub udp_idle_timeout: Duration,
    pub admission_timeout: Duration,
}

pub fn parse_hub_config(json: &str) -> Result<HubSettings, AddonError> {
    let mut raw: HubConfig = serde_json::from_str(json).map_err(invalid)?;
    if raw.hub_id.is_empty() {
        return Err(invalid("hubId must not be empty"));
    }
    if raw.proxy_protocol_udp == ProxyProtocol::V1 {
        return Err(invalid("proxyProtocolUdp must be \"v2\" or \"none\""));
    }
    validate_edges(&mut raw.edges)?;
    let ping_interval = check_ms("pingIntervalMs", raw.ping_interval_ms)?;
    let idle_timeout = check_ms("idleTimeoutMs", raw.idle_timeout_ms)?;
    if idle_timeout <= ping_interval {
        return Err(invalid("idleTimeoutMs must be greater than pingIntervalMs"));
    }
    if raw.max_udp_sessions_per_edge == 0 {
        return Err(invalid("maxUdpSessionsPerEdge must be at least 1"));
    }
    Ok(HubSettings {
        admission_timeout: check_ms("admissionTimeoutMs", raw.admission_timeout_ms)?,
        udp_idle_timeout: check_ms("udpIdleTimeoutMs", raw.udp_idle_timeout_ms)?,
        ping_interval,
        idle_timeout,
        handshake_timeout: check_ms("handshakeTimeoutMs", raw.handshake_timeout_ms)?,
        target_connect_timeout: check_ms("targetConnectTimeoutMs", raw.target_connect_timeout_ms)?,
        raw,
    })
}

/// Validated edge settings.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub raw: EdgeConfigJson,
    /// Normalized (lowercase, no colons) sha256 hex, if pinned.
    pub fingerprint: Option<String>,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    pub quic_fallback_timeout: Duration,
    pub gap_hold: Duration,
}

pub fn normalize_fingerprint(fp: &str) -> Result<String, AddonError> {
    let norm: String = fp
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if norm.len() != 64 || !norm.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(
            "hubCertFingerprint must be 64 hex characters (sha256)",
        ));
    }
    Ok(norm)
}

pub fn parse_edge_config(json: &str) -> Result<EdgeSettings, AddonError> {
    let raw: EdgeConfigJson = serde_json::from_str(json).map_err(invalid)?;
    if raw.hubs.is_empty() {
        return Err(invalid("hubs must list at least one hub"));
    }
    if let Some(h) = raw.hubs.iter().find(|h| h.host.is_empty() || h.port == 0) {
        return Err(invalid(format!("hub address {h} is not valid")));
    }
    if raw.edge_id.is_empty() || raw.edge_id.len() > crate::protocol::handshake::MAX_EDGE_ID_LEN {
        return Err(invalid("edgeId must have 1..=128 bytes"));
    }
    if raw.secret.is_empty() || raw.secret.len() > crate::protocol::handshake::MAX_SECRET_LEN {
        return Err(invalid("secret must have 1..=512 bytes"));
    }
    let fingerprint = match raw.hub_cert_fingerprint.as_deref() {
        Some(fp) if !fp.is_empty() => Some(normalize_fingerprint(fp)?),
        _ => None,
    };
    let ping_interval = check_ms("pingIntervalMs", raw.ping_interval_ms)?;
    let idle_timeout = check_ms("idleTimeoutMs", raw.idle_timeout_ms)?;
    if idle_timeout <= ping_interval {
        return Err(invalid("idleTimeoutMs must be greater than pingIntervalMs"));
    }
    let reconnect_initial = check_ms("reconnectInitialMs", raw.reconnect_initial_ms)?;
    let reconnect_max = check_ms("reconnectMaxMs", raw.reconnect_max_ms)?;
    if reconnect_max < reconnect_initial {
        return Err(invalid(
            "reconnectMaxMs must be at least reconnectInitialMs",
        ));
    }
    for server in &raw.stun_servers {
        let valid = server.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if !valid {
            return Err(invalid(format!(
                "stunServers: expected \"host:port\", got {server:?}"
            )));
        }
    }
    let gap_hold = match raw.gap_hold_ms {
        0 => Duration::ZERO,
        ms => check_ms("gapHoldMs", ms)?,
    };
    Ok(EdgeSettings {
        gap_hold,
        quic_fallback_timeout: check_ms("quicFallbackTimeoutMs", raw.quic_fallback_timeout_ms)?,
        raw,
        fingerprint,
        ping_interval,
        idle_timeout,
        reconnect_initial,
        reconnect_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "\"certPem\":\"c\",\"keyPem\":\"k\"";

    #[test]
    fn hub_config_defaults_and_errors() {
        let ok = parse_hub_config(&format!("{{\"tunnelPort\":0,{CERT}}}")).unwrap();
        assert_eq!(ok.raw.proxy_protocol_tcp, ProxyProtocol::V1);
        assert_eq!(ok.raw.proxy_protocol_udp, ProxyProtocol::V2);
        assert_eq!(ok.udp_idle_timeout, Duration::from_secs(60));
        assert_eq!(ok.raw.max_udp_sessions_per_edge, 1024);
        assert_eq!(ok.raw.admission, Admission::Immediate);
        assert_eq!(ok.admission_timeout, Duration::from_secs(5));
        let deferred = parse_hub_config(&format!(
            "{{\"tunnelPort\":0,{CERT},\"admission\":\"deferred\",\"admissionTimeoutMs\":250}}"
        ))
        .unwrap();
        assert_eq!(deferred.raw.admission, Admission::Deferred);
        assert_eq!(deferred.admission_timeout, Duration::from_millis(250));
        assert!(parse_hub_config(&format!(
            "{{\"tunnelPort\":0,{CERT},\"admission\":\"later\"}}"
        ))
        .is_err());
        let err = parse_hub_config(&format!(
            "{{\"tunnelPort\":0,{CERT},\"maxUdpSessionsPerEdge\":0}}"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("maxUdpSessionsPerEdge"), "{err}");
        let err =
            parse_hub_config(&format!("{{\"tunnelPort\":0,{CERT},\"bogus\":1}}")).unwrap_err();
        assert!(err.to_string().starts_with("EINVALIDCONFIG: "), "{err}");
        let err = parse_hub_config("not json").unwrap_err();
        assert!(err.to_string().starts_with("EINVALIDCONFIG: "));
        let bad_target = format!(
            "{{\"tunnelPort\":0,{CERT},\"edges\":[{{\"id\":\"e\",\"secret\":\"s\",\"targets\":{{\"80\":\"nope\"}}}}]}}"
        );
        assert!(parse_hub_config(&bad_target).is_err());
    }

    #[test]
    fn edge_needs_exactly_one_credential() {
        let verifier = "v1:000102030405060708090a0b0c0d0e0f:db9d9b81ba204c066b3a124ca7e56a999b63d1885072ff2f115b7a4b8a5daed9";
        let ok = parse_edges(&format!(
            r#"[{{"id":"a","secretVerifier":"{verifier}"}},{{"id":"b","secret":"s"}}]"#
        ))
        .unwrap();
        let check = crate::protocol::SecretVerifier::new();
        assert!(check.verify(ok[0].credential.as_ref(), "s3cret"));
        assert!(check.verify(ok[1].credential.as_ref(), "s"));
        assert!(!format!("{:?}", ok[0]).contains("db9d9b"));
        for bad in [
            r#"[{"id":"a"}]"#.to_string(),
            format!(r#"[{{"id":"a","secret":"s","secretVerifier":"{verifier}"}}]"#),
            r#"[{"id":"a","secretVerifier":"v1:00:11"}]"#.to_string(),
            r#"[{"id":"a","secret":""}]"#.to_string(),
        ] {
            let err = parse_edges(&bad).expect_err(&bad);
            assert!(err.to_string().starts_with("EINVALIDCONFIG: "), "{err}");
        }
        let malformed = parse_edges(r#"[{"id":"a","secretVerifier":"v1:zz"}]"#).unwrap_err();
        assert!(
            malformed.to_string().contains("secretVerifier"),
            "{malformed}"
        );
        assert!(ok[0].credential_changed(&ok[1]));
        assert!(!ok[0].credential_changed(&ok[0].clone()));
    }

    #[test]
    fn target_lookup() {
        let e: EdgeEntry = serde_json::from_str(
            r#"{"id":"e","secret":"s","listenPorts":[80,81],"targets":{"80":"10.0.0.5:8080"}}"#,
        )
        .unwrap();
        assert_eq!(e.target_for(80, "127.0.0.1"), "10.0.0.5:8080");
        assert_eq!(e.target_for(81, "127.0.0.1"), "127.0.0.1:81");
        assert_eq!(e.target_for(81, "::1"), "[::1]:81");
    }

    #[test]
    fn fingerprint_normalized() {
        let fp = "AB:".repeat(31) + "AB";
        assert_eq!(normalize_fingerprint(&fp).unwrap(), "ab".repeat(32));
        assert!(normalize_fingerprint("abc").is_err());
    }
}
