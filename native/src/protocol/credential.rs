//! Edge credentials on the hub: a clear secret or a secret verifier, checked in constant time.
//!
//! A verifier is the string `v1:<salt hex, 32 chars>:<hmac hex, 64 chars>` where
//! hmac = HMAC-SHA256(key = salt, message = UTF-8 secret). A clear secret given in the config is turned
//! into a verifier with a random salt when loaded, so every check (known edge, wrong secret, unknown
//! edge) is the same work: one HMAC over the presented secret and one constant-time comparison.
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const SALT_LEN: usize = 16;
pub const MAC_LEN: usize = 32;
const BLOCK: usize = 64;

/// HMAC-SHA256 (RFC 2104). The keys used here are 16 bytes, but any length works.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; MAC_LEN] {
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..MAC_LEN].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// What the hub stores for one edge.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    salt: [u8; SALT_LEN],
    mac: [u8; MAC_LEN],
}

// Neither the salt nor the MAC is printed.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(***)")
    }
}

impl Credential {
    /// A verifier for `secret` with a random salt.
    pub fn from_secret(secret: &str) -> Self {
        let mut salt = [0u8; SALT_LEN];
        rand::thread_rng().fill_bytes(&mut salt);
        Self::with_salt(salt, secret)
    }

    pub fn with_salt(salt: [u8; SALT_LEN], secret: &str) -> Self {
        let mac = hmac_sha256(&salt, secret.as_bytes());
        Self { salt, mac }
    }

    /// Parses `v1:<32 hex>:<64 hex>` (hex in either case). The error says what is wrong, never the value.
    pub fn parse_verifier(text: &str) -> Result<Self, &'static str> {
        let mut parts = text.split(':');
        let (Some("v1"), Some(salt), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("expected \"v1:<salt hex>:<hmac hex>\"");
        };
        let mut out = Self {
            salt: [0; SALT_LEN],
            mac: [0; MAC_LEN],
        };
        hex::decode_to_slice(salt, &mut out.salt)
            .map_err(|_| "the salt must be 32 hex characters")?;
        hex::decode_to_slice(mac, &mut out.mac)
            .map_err(|_| "the hmac must be 64 hex characters")?;
        Ok(out)
    }

    /// The `v1:…` string form.
    pub fn to_verifier(&self) -> String {
        format!("v1:{}:{}", hex::encode(self.salt), hex::encode(self.mac))
    }

    fn matches(&self, presented: &str) -> bool {
        let mac = hmac_sha256(&self.salt, presented.as_bytes());
        mac.ct_eq(&self.mac).into()
    }
}

/// Verifies presented secrets. For an unknown edge, call `verify(None, presented)`: it does the same
/// work against a random dummy credential and returns false.
pub struct SecretVerifier {
    dummy: Credential,
}

impl SecretVerifier {
    pub fn new() -> Self {
        let mut mac = [0u8; MAC_LEN];
        rand::thread_rng().fill_bytes(&mut mac);
        let mut dummy = Credential::from_secret("");
        dummy.mac = mac;
        Self { dummy }
    }

    pub fn verify(&self, expected: Option<&Credential>, presented: &str) -> bool {
        let matches = expected.unwrap_or(&self.dummy).matches(presented);
        matches & expected.is_some()
    }
}

impl Default for SecretVerifier {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared test vector of docs/architecture.md (also in the TypeScript tests).
    const VECTOR_SALT: &str = "000102030405060708090a0b0c0d0e0f";
    const VECTOR_SECRET: &str = "s3cret";
    const VECTOR_HMAC: &str = "db9d9b81ba204c066b3a124ca7e56a999b63d1885072ff2f115b7a4b8a5daed9";

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 1 and 2 of RFC 4231.
        assert_eq!(
            hex::encode(hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn shared_test_vector() {
        let verifier = format!("v1:{VECTOR_SALT}:{VECTOR_HMAC}");
        let credential = Credential::parse_verifier(&verifier).unwrap();
        assert_eq!(credential.to_verifier(), verifier);
        let mut salt = [0u8; SALT_LEN];
        hex::decode_to_slice(VECTOR_SALT, &mut salt).unwrap();
        assert_eq!(Credential::with_salt(salt, VECTOR_SECRET), credential);
        let check = SecretVerifier::new();
        assert!(check.verify(Some(&credential), VECTOR_SECRET));
        assert!(!check.verify(Some(&credential), "s3cret "));
        assert!(!check.verify(Some(&credential), ""));
        // Upper-case hex is accepted.
        let upper = format!(
            "v1:{}:{}",
            VECTOR_SALT.to_uppercase(),
            VECTOR_HMAC.to_uppercase()
        );
        assert_eq!(Credential::parse_verifier(&upper).unwrap(), credential);
    }

    #[test]
    fn malformed_verifiers_are_refused() {
        let salt = VECTOR_SALT;
        let mac = VECTOR_HMAC;
        for bad in [
            String::new(),
            "v1".into(),
            format!("v2:{salt}:{mac}"),
            format!("v1:{salt}"),
            format!("v1:{salt}:{mac}:x"),
            format!("v1:{}:{mac}", &salt[2..]),
            format!("v1:{salt}:{}", &mac[1..]),
            format!("v1:{salt}:{}z", &mac[1..]),
            format!("v1:{salt}00:{mac}"),
        ] {
            assert!(Credential::parse_verifier(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn clear_secrets_get_a_random_salt() {
        let a = Credential::from_secret("s3cret");
        let b = Credential::from_secret("s3cret");
        assert_ne!(a, b, "salts differ");
        let check = SecretVerifier::new();
        assert!(check.verify(Some(&a), "s3cret"));
        assert!(check.verify(Some(&b), "s3cret"));
        assert!(!check.verify(Some(&a), "s3cre"));
        assert!(!format!("{a:?}").contains(&hex::encode(a.mac)));
    }

    #[test]
    fn unknown_edge_never_passes() {
        let check = SecretVerifier::new();
        assert!(!check.verify(None, "s3cret"));
        assert!(!check.verify(None, ""));
        assert_ne!(check.dummy, SecretVerifier::new().dummy, "dummy is random");
    }
}
