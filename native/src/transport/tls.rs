//! TLS for the tunnel (rustls with the ring provider, ALPN `portway/1`): the hub's identity
//! (load or generate), its server config, and the edge's verifier, which pins a certificate
//! fingerprint, trusts a CA, or (neither given) accepts any certificate but reports its fingerprint.
//! Handshake signatures are always verified.
use crate::error::AddonError;
use crate::protocol::ALPN;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// The ring provider, with AES-128-GCM first: as strong as needed here and cheaper per byte than
/// AES-256-GCM on the bulk data path (both sides use this order, so it is what gets negotiated).
fn provider() -> Arc<CryptoProvider> {
    let mut provider = ring::default_provider();
    let rank = |suite: &rustls::SupportedCipherSuite| match suite.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 1,
        _ => 2,
    };
    provider.cipher_suites.sort_by_key(rank);
    Arc::new(provider)
}

fn tls_err(msg: impl std::fmt::Display) -> AddonError {
    AddonError::Tls(msg.to_string())
}

/// sha256 of the DER encoding, lowercase hex.
pub fn fingerprint_der(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn parse_certs(cert_pem: &str) -> Result<Vec<CertificateDer<'static>>, AddonError> {
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(format!("cannot parse certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err("no CERTIFICATE block found in the PEM"));
    }
    Ok(certs)
}

fn parse_key(key_pem: &str) -> Result<PrivateKeyDer<'static>, AddonError> {
    rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| tls_err(format!("cannot parse private key PEM: {e}")))?
        .ok_or_else(|| tls_err("no PRIVATE KEY block found in the PEM"))
}

/// `certFingerprint`: fingerprint of the first certificate in the PEM.
pub fn cert_fingerprint(cert_pem: &str) -> Result<String, AddonError> {
    Ok(fingerprint_der(parse_certs(cert_pem)?[0].as_ref()))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsIdentity {
    pub cert_pem: String,
    pub key_pem: String,
    pub fingerprint: String,
}

// The private key never appears in logs.
impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("fingerprint", &self.fingerprint)
            .field("key_pem", &"***")
            .finish_non_exhaustive()
    }
}

/// `tlsIdentity`: loads the pair from the paths, or, when neither file exists, generates a
/// self-signed pair (SANs: the given names plus localhost and 127.0.0.1) and writes it (key 0600).
pub fn tls_identity(
    cert_path: &Path,
    key_path: &Path,
    sans: &[String],
) -> Result<TlsIdentity, AddonError> {
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let read = |p: &Path| {
                fs::read_to_string(p)
                    .map_err(|e| tls_err(format!("cannot read {}: {e}", p.display())))
            };
            let cert_pem = read(cert_path)?;
            let key_pem = read(key_path)?;
            // Checks that the pair is usable before handing it out.
            server_config(&cert_pem, &key_pem)?;
            let fingerprint = cert_fingerprint(&cert_pem)?;
            Ok(TlsIdentity {
                cert_pem,
                key_pem,
                fingerprint,
            })
        }
        (false, false) => {
            let mut names: Vec<String> = sans.iter().filter(|s| !s.is_empty()).cloned().collect();
            for default in ["localhost", "127.0.0.1"] {
                if !names.iter().any(|n| n == default) {
                    names.push(default.to_string());
                }
            }
            let generated = rcgen::generate_simple_self_signed(names)
                .map_err(|e| tls_err(format!("cannot generate a certificate: {e}")))?;
            let cert_pem = generated.cert.pem();
            let key_pem = generated.key_pair.serialize_pem();
            let fingerprint = fingerprint_der(generated.cert.der().as_ref());
            write_file(key_path, &key_pem, 0o600)?;
            write_file(cert_path, &cert_pem, 0o644)?;
            Ok(TlsIdentity {
                cert_pem,
                key_pem,
                fingerprint,
            })
        }
        (true, false) => Err(tls_err(format!(
            "certificate {} exists but key {} does not; remove the certificate or provide the key",
            cert_path.display(),
            key_path.display()
        ))),
        (false, true) => Err(tls_err(format!(
            "key {} exists but certificate {} does not; remove the key or provide the certificate",
            key_path.display(),
            cert_path.display()
        ))),
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), AddonError> {
    let fail = |e: std::io::Error| tls_err(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(fail)?;
    file.write_all(contents.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)
}

/// The hub's rustls server config (TLS 1.3 and 1.2, ALPN `portway/1`).
pub fn server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, AddonError> {
    build_server_config(cert_pem, key_pem, rustls::DEFAULT_VERSIONS)
}

/// The hub's rustls server config for QUIC: the same identity, provider and ALPN, TLS 1.3 only.
pub fn quic_server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, AddonError> {
    build_server_config(cert_pem, key_pem, &[&rustls::version::TLS13])
}

fn build_server_config(
    cert_pem: &str,
    key_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<ServerConfig>, AddonError> {
    let certs = parse_certs(cert_pem)?;
    let key = parse_key(key_pem)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            tls_err(format!(
                "certificate and key do not form a usable pair: {e}"
            ))
        })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The pinned fingerprint did not match; carried inside the rustls error so the edge can tell it apart.
#[derive(Debug, thiserror::Error)]
#[error("hub certificate fingerprint {actual} does not match the pinned {expected}")]
pub struct FingerprintMismatch {
    pub expected: String,
    pub actual: String,
}

/// Finds a `FingerprintMismatch` inside an I/O error returned by the TLS handshake.
pub fn fingerprint_mismatch(err: &std::io::Error) -> Option<&FingerprintMismatch> {
    match err.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<FingerprintMismatch>()
        }
        _ => None,
    }
}

#[derive(Debug)]
struct EdgeVerifier {
    pin: Option<String>,
    ca: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for EdgeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(expected) = &self.pin {
            let actual = fingerprint_der(end_entity.as_ref());
            if !bool::from(subtle::ConstantTimeEq::ct_eq(
                actual.as_bytes(),
                expected.as_bytes(),
            )) {
                let mismatch = FingerprintMismatch {
                    expected: expected.clone(),
                    actual,
                };
                return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(mismatch)),
                )));
            }
        }
        match &self.ca {
            Some(ca) => {
                ca.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The edge's rustls client config. `pin` is a normalized sha256 hex fingerprint.
pub fn client_config(
    pin: Option<&str>,
    ca_pem: Option<&str>,
) -> Result<Arc<ClientConfig>, AddonError> {
    build_client_config(pin, ca_pem, rustls::DEFAULT_VERSIONS)
}

/// The edge's rustls client config for QUIC: the same verifier (pin / CA), TLS 1.3 only.
pub fn quic_client_config(
    pin: Option<&str>,
    ca_pem: Option<&str>,
) -> Result<Arc<ClientConfig>, AddonError> {
    build_client_config(pin, ca_pem, &[&rustls::version::TLS13])
}

fn build_client_config(
    pin: Option<&str>,
    ca_pem: Option<&str>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>, AddonError> {
    let provider = provider();
    let ca = match ca_pem.filter(|p| !p.trim().is_empty()) {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in parse_certs(pem)? {
                roots
                    .add(cert)
                    .map_err(|e| tls_err(format!("caPem: {e}")))?;
            }
            let verifier =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| tls_err(format!("caPem: {e}")))?;
            Some(verifier)
        }
        None => None,
    };
    let verifier = EdgeVerifier {
        pin: pin.map(str::to_string),
        ca,
        provider: provider.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// SNI / verification name for `host` (an IP address or a DNS name).
pub fn server_name(host: &str) -> Result<ServerName<'static>, AddonError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string())
        .map_err(|e| AddonError::InvalidConfig(format!("server name {host:?}: {e}")))
}

/// The `FingerprintMismatch` inside a QUIC handshake error. quinn reports the rustls error as text
/// (with our error in its `Debug` form), so it is read back from there.
pub fn fingerprint_mismatch_text(err: &str) -> Option<FingerprintMismatch> {
    let field = |name: &str| {
        let start = err.find(&format!("{name}: \""))? + name.len() + 3;
        let len = err[start..].find('"')?;
        Some(err[start..start + len].to_string())
    };
    if !err.contains("FingerprintMismatch") {
        return None;
    }
    Some(FingerprintMismatch {
        expected: field("expected")?,
        actual: field("actual")?,
    })
}

/// Fingerprint of the certificate the peer presented on an established connection.
pub fn peer_fingerprint(conn: &rustls::ClientConnection) -> Option<String> {
    conn.peer_certificates()
        .and_then(|certs| certs.first())
        .map(|c| fingerprint_der(c.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_then_load_same_identity() {
        let dir = std::env::temp_dir().join(format!("portway-tls-{}", rand::random::<u64>()));
        let cert = dir.join("hub.crt");
        let key = dir.join("hub.key");
        let first = tls_identity(&cert, &key, &["hub.example".to_string()]).unwrap();
        assert_eq!(first.fingerprint.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&key).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let second = tls_identity(&cert, &key, &[]).unwrap();
        assert_eq!(first.fingerprint, second.fingerprint);
        assert_eq!(
            cert_fingerprint(&second.cert_pem).unwrap(),
            first.fingerprint
        );
        fs::remove_file(&cert).unwrap();
        assert!(tls_identity(&cert, &key, &[])
            .unwrap_err()
            .to_string()
            .starts_with("ETLS: "));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn fingerprint_mismatch_is_read_back_from_quic_error_text() {
        let text = "the cryptographic handshake failed: error 46: invalid peer certificate: \
            Other(OtherError(FingerprintMismatch { expected: \"aa\", actual: \"bb\" }))";
        let mismatch = fingerprint_mismatch_text(text).expect("mismatch");
        assert_eq!(mismatch.expected, "aa");
        assert_eq!(mismatch.actual, "bb");
        assert!(fingerprint_mismatch_text("timed out").is_none());
    }

    #[test]
    fn bad_pem_is_a_clear_error() {
        assert!(cert_fingerprint("garbage")
            .unwrap_err()
            .to_string()
            .starts_with("ETLS: "));
        assert!(server_config("x", "y").is_err());
    }
}
