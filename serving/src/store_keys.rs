//! The keys the metadata store holds but never stores: whoever can write the database must
//! not be able to forge the audit trail's keyed entries or read the TOTP secrets. Each is
//! 32 random bytes in a file of its own outside the database (a node keeps them under
//! `<data>/keys/`; every process of a cluster is given the same files).
//!
//! ```text
//!  AuditKey    HMAC-SHA256("canopy/audit/v1" ‖ seq ‖ chain hash) on every appended entry
//!  SecretsKey  XChaCha20-Poly1305, random 24-byte nonce, the user id as associated data:
//!              sealed = version 1 ‖ nonce ‖ ciphertext+tag
//! ```

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::ServingError;

/// What a keyed audit entry's HMAC starts with, so the key signs nothing else by accident.
const AUDIT_MAC_TAG: &[u8] = b"canopy/audit/v1";
/// The first byte of a sealed secret: the layout below.
const SEALED_V1: u8 = 1;
const NONCE_LEN: usize = 24;

/// The key of the audit trail's HMACs.
#[derive(Clone)]
pub struct AuditKey([u8; 32]);

impl AuditKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads a key file (32 bytes), as `canopy verify --audit-key` does.
    pub fn read(path: &std::path::Path) -> Result<Self, ServingError> {
        let bytes = std::fs::read(path)
            .map_err(|e| ServingError::Internal(format!("reading {}: {e}", path.display())))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| {
            ServingError::Internal(format!("{} is not a 32-byte key", path.display()))
        })?;
        Ok(Self(bytes))
    }

    /// The HMAC (hex) of the entry `seq` whose chain hash is `hash` (hex). The chain hash
    /// covers every field and the entry before, so keying it keys the whole entry.
    pub fn entry_mac(&self, seq: i64, hash: &str) -> String {
        hex::encode(self.mac(seq, hash).finalize().into_bytes())
    }

    /// Whether `mac` (hex) is the HMAC of the entry `seq` with chain hash `hash`, compared in
    /// constant time.
    pub fn verifies(&self, seq: i64, hash: &str, mac: &str) -> bool {
        match hex::decode(mac) {
            Ok(mac) => self.mac(seq, hash).verify_slice(&mac).is_ok(),
            Err(_) => false,
        }
    }

    fn mac(&self, seq: i64, hash: &str) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes a key of any size");
        mac.update(AUDIT_MAC_TAG);
        mac.update(&seq.to_be_bytes());
        mac.update(hash.as_bytes());
        mac
    }

    /// A short public name of the key (not the key): the first 8 bytes of its SHA-256, hex.
    /// The entry that begins the keying names it, so a trail checked with another key says so.
    pub fn id(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"canopy/audit-key-id/v1")
            .chain_update(self.0)
            .finalize();
        hex::encode(&digest[..8])
    }
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditKey({})", self.id())
    }
}

/// The key secrets are sealed under at rest (today: TOTP secrets).
#[derive(Clone)]
pub struct SecretsKey(XChaCha20Poly1305);

impl SecretsKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(XChaCha20Poly1305::new(&bytes.into()))
    }

    /// Seals `plaintext` as `owner`'s: version ‖ random nonce ‖ ciphertext and tag. The owner
    /// is the associated data, so a sealed secret copied to another user's row does not open.
    pub fn seal(&self, owner: Uuid, plaintext: &[u8]) -> Result<Vec<u8>, ServingError> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .0
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| ServingError::Internal("sealing a secret failed".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`seal`](Self::seal) made for `owner`; a changed byte, another owner or
    /// another key is refused.
    pub fn open(&self, owner: Uuid, sealed: &[u8]) -> Result<Vec<u8>, ServingError> {
        let refused =
            || ServingError::Storage(format!("a sealed secret of user {owner} does not open"));
        let (version, rest) = sealed.split_first().ok_or_else(refused)?;
        if *version != SEALED_V1 || rest.len() < NONCE_LEN {
            return Err(refused());
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| refused())?;
        self.0
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| refused())
    }
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

/// The keys a store is opened with. A store without an audit key appends unkeyed entries
/// (the trail check reports them as such); one without a secrets key refuses to store a
/// secret rather than store it in the clear.
#[derive(Clone, Debug, Default)]
pub struct StoreKeys {
    pub audit: Option<AuditKey>,
    pub secrets: Option<SecretsKey>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_for_its_owner_and_key() {
        let key = SecretsKey::from_bytes([7; 32]);
        let owner = Uuid::new_v4();
        let sealed = key.seal(owner, b"totp secret").unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"totp secret"));
        assert_eq!(key.open(owner, &sealed).unwrap(), b"totp secret");
        assert_ne!(
            key.seal(owner, b"totp secret").unwrap(),
            sealed,
            "a fresh nonce each time"
        );
        assert!(key.open(Uuid::new_v4(), &sealed).is_err());
        assert!(
            SecretsKey::from_bytes([8; 32])
                .open(owner, &sealed)
                .is_err()
        );
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(key.open(owner, &flipped).is_err());
    }

    #[test]
    fn an_entry_mac_verifies_only_its_entry_under_its_key() {
        let key = AuditKey::from_bytes([1; 32]);
        let mac = key.entry_mac(3, "ab");
        assert!(key.verifies(3, "ab", &mac));
        assert!(!key.verifies(4, "ab", &mac));
        assert!(!key.verifies(3, "ac", &mac));
        assert!(!AuditKey::from_bytes([2; 32]).verifies(3, "ab", &mac));
        assert!(!key.verifies(3, "ab", "not hex"));
    }
}
