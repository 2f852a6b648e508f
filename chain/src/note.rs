//! Checkpoints as C2SP signed notes (c2sp.org/tlog-checkpoint, c2sp.org/signed-note):
//!
//! ```text
//! <origin>\n<tree size>\n<base64 root>\n      the note body: what is signed
//! \n
//! — <key name> <base64(key hash[4] ‖ Ed25519 signature[64])>\n
//! ```
//!
//! The key hash is the first four bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key); a
//! verifier key is written `<name>+<hex key hash>+<base64(0x01 ‖ public key)>`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::ChainError;
use crate::merkle::Hash;

const ED25519_ALGORITHM: u8 = 0x01;
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// A log's state at a size: what a checkpoint commits to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Names the log, e.g. `canopy.example/decision/<uuid>`.
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note body, the exact bytes that are signed.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root)
        )
    }

    /// The signed note: the body, a blank line, the signature line.
    pub fn sign(&self, signer: &NoteSigner) -> String {
        signer.sign_note(&self.body())
    }

    /// Parses a signed note and checks it carries a valid signature by `verifier`. Lines
    /// signed by other keys are allowed (a witness may cosign) and ignored.
    pub fn verify(note: &str, verifier: &NoteVerifier) -> Result<Checkpoint, ChainError> {
        let bad = |why: &str| ChainError::BadCheckpoint(why.to_string());
        let body = open_note(note, verifier)?;
        let mut lines = body.lines();
        let origin = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| bad("no origin line"))?
            .to_string();
        let size = lines
            .next()
            .and_then(|l| l.parse::<u64>().ok())
            .ok_or_else(|| bad("the size line is not a number"))?;
        let root: Hash = lines
            .next()
            .and_then(|l| BASE64.decode(l).ok())
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| bad("the root line is not 32 bytes of base64"))?;
        Ok(Checkpoint { origin, size, root })
    }
}

/// The body of a signed note (with its final newline) once a signature by `verifier` on it
/// checks. Lines signed by other keys are allowed (a witness may cosign) and ignored.
pub fn open_note(note: &str, verifier: &NoteVerifier) -> Result<String, ChainError> {
    let bad = |why: &str| ChainError::BadCheckpoint(why.to_string());
    let (body, signatures) = note
        .split_once("\n\n")
        .ok_or_else(|| bad("no blank line between the body and the signatures"))?;
    let body = format!("{body}\n");
    let mut verified = false;
    for line in signatures.lines() {
        let Some(rest) = line.strip_prefix(SIGNATURE_PREFIX) else {
            return Err(bad("a signature line does not start with an em dash"));
        };
        let (name, blob) = rest
            .split_once(' ')
            .ok_or_else(|| bad("a signature line has no signature"))?;
        let blob = BASE64
            .decode(blob)
            .map_err(|_| bad("a signature is not base64"))?;
        if name != verifier.name || blob.len() != 68 || blob[..4] != verifier.key_hash {
            continue;
        }
        let signature =
            Signature::from_slice(&blob[4..]).map_err(|_| bad("a signature is malformed"))?;
        verifier
            .key
            .verify(body.as_bytes(), &signature)
            .map_err(|_| ChainError::BadSignature)?;
        verified = true;
    }
    if !verified {
        return Err(ChainError::BadSignature);
    }
    Ok(body)
}

fn key_hash(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([ED25519_ALGORITHM]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// A node's Ed25519 signing key with its note name.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    key_hash: [u8; 4],
}

impl NoteSigner {
    /// From a 32-byte secret seed (keep it secret; generate it from the OS's randomness).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, ChainError> {
        if name.is_empty() || name.contains(['+', ' ', '\n']) {
            return Err(ChainError::BadKey(format!(
                "{name:?} is not a note key name"
            )));
        }
        let key = SigningKey::from_bytes(seed);
        let key_hash = key_hash(name, key.verifying_key().as_bytes());
        Ok(Self {
            name: name.to_string(),
            key,
            key_hash,
        })
    }

    /// `body` (text ending in a newline) as a signed note: the body, a blank line, the
    /// signature line.
    pub fn sign_note(&self, body: &str) -> String {
        let signature = self.key.sign(body.as_bytes());
        let mut blob = self.key_hash.to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        format!(
            "{body}\n{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            BASE64.encode(blob)
        )
    }

    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key: self.key.verifying_key(),
            key_hash: self.key_hash,
        }
    }
}

/// Checks signatures by one named key.
#[derive(Clone, Debug)]
pub struct NoteVerifier {
    name: String,
    key: VerifyingKey,
    key_hash: [u8; 4],
}

impl NoteVerifier {
    /// `<name>+<hex key hash>+<base64(0x01 ‖ public key)>`.
    pub fn encode(&self) -> String {
        let mut key = vec![ED25519_ALGORITHM];
        key.extend_from_slice(self.key.as_bytes());
        let hash = hex::encode(self.key_hash);
        format!("{}+{hash}+{}", self.name, BASE64.encode(key))
    }

    pub fn parse(text: &str) -> Result<Self, ChainError> {
        let bad = || ChainError::BadKey(format!("{text:?} is not a verifier key"));
        let mut parts = text.splitn(3, '+');
        let (name, hash, key) = (
            parts.next().ok_or_else(bad)?,
            parts.next().ok_or_else(bad)?,
            parts.next().ok_or_else(bad)?,
        );
        let key = BASE64.decode(key).map_err(|_| bad())?;
        let (&algorithm, public) = key.split_first().ok_or_else(bad)?;
        let public: [u8; 32] = public.try_into().map_err(|_| bad())?;
        if algorithm != ED25519_ALGORITHM {
            return Err(bad());
        }
        let key_hash = key_hash(name, &public);
        let written = hex::encode(key_hash);
        if written != hash {
            return Err(bad());
        }
        let key = VerifyingKey::from_bytes(&public).map_err(|_| bad())?;
        Ok(Self {
            name: name.to_string(),
            key,
            key_hash,
        })
    }
}
