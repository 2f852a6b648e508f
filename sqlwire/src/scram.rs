//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, server side, against stored
//! verifiers: the server never sees or keeps the secret, only `StoredKey` and `ServerKey`.
//!
//! ```text
//!  client-first   n,,n=,r=<client nonce>
//!  server-first   r=<client nonce><server nonce>,s=<salt>,i=<iterations>
//!  client-final   c=<gs2 header>,r=<nonce>,p=<ClientProof>
//!  server-final   v=<ServerSignature>
//! ```
//!
//! One account may hold several SQL tokens: they share the account's salt and iteration
//! count, so the server-first message is the same whichever token the client holds, and
//! the proof is checked against every verifier of the account (a MAC and a hash each; all
//! of them, so the time does not tell which one matched).
//!
//! Channel binding (`SCRAM-SHA-256-PLUS`) is not offered: a client that supports it sends
//! the `y` flag, which is accepted because the server never advertised it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// PostgreSQL's default iteration count, which clients accept without complaint.
pub const SCRAM_ITERATIONS: u32 = 4096;
/// The only mechanism offered.
pub const MECHANISM: &str = "SCRAM-SHA-256";

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any size");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA256 with one output block: SCRAM's `Hi`.
fn hi(secret: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = Vec::with_capacity(salt.len() + 4);
    first.extend_from_slice(salt);
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(secret, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(secret, &u);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the server keeps of a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramVerifier {
    /// The verifier of `secret`. PostgreSQL applies SASLprep to passwords first; the
    /// secrets this server issues are ASCII letters, digits, `-` and `_`, which SASLprep
    /// leaves as they are.
    pub fn derive(secret: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = hi(secret.as_bytes(), salt, iterations.max(1));
        let client_key = hmac(&salted, b"Client Key");
        Self {
            salt: salt.to_vec(),
            iterations: iterations.max(1),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }
}

/// Why an exchange ended without a sign-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScramError {
    /// The client broke the protocol (a message that does not parse, a nonce or channel
    /// binding that does not match the first message).
    Malformed(&'static str),
    /// A well-formed proof no verifier accepts.
    WrongProof,
}

/// The client-first message, parsed.
#[derive(Clone, Debug)]
pub struct ClientFirst {
    gs2_header: String,
    bare: String,
    nonce: String,
}

impl ClientFirst {
    pub fn parse(data: &[u8]) -> Result<Self, ScramError> {
        let text = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut parts = text.splitn(3, ',');
        let flag = parts.next().unwrap_or("");
        let authzid = parts.next().ok_or(ScramError::Malformed("no gs2 header"))?;
        let bare = parts
            .next()
            .ok_or(ScramError::Malformed("no client-first-bare"))?;
        match flag {
            "n" | "y" => {}
            _ if flag.starts_with("p=") => {
                return Err(ScramError::Malformed("channel binding was not offered"));
            }
            _ => return Err(ScramError::Malformed("bad gs2 flag")),
        }
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identities are not supported",
            ));
        }
        let mut attributes = bare.split(',');
        // PostgreSQL clients send an empty name (the startup message carries the user).
        if !attributes.next().is_some_and(|a| a.starts_with("n=")) {
            return Err(ScramError::Malformed("no username attribute"));
        }
        let nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b','))
            .ok_or(ScramError::Malformed("no client nonce"))?;
        Ok(Self {
            gs2_header: format!("{flag},{authzid},"),
            bare: bare.to_owned(),
            nonce: nonce.to_owned(),
        })
    }
}

/// The verifiers an account may sign in with; all share `salt` and `iterations`.
#[derive(Clone, Debug)]
pub struct Candidates<K> {
    pub salt: Vec<u8>,
    pub iterations: u32,
    /// `(key, StoredKey, ServerKey)`: whatever names a verifier to the caller, and its keys.
    pub verifiers: Vec<(K, [u8; 32], [u8; 32])>,
}

/// After the server-first message: what the client-final message is checked against.
#[derive(Debug)]
pub struct Exchange<K> {
    client_first: ClientFirst,
    server_first: String,
    nonce: String,
    candidates: Candidates<K>,
}

impl<K: Clone> Exchange<K> {
    /// Starts an exchange: the server-first message to send.
    pub fn start(client_first: ClientFirst, candidates: Candidates<K>) -> (Self, String) {
        let server_nonce: [u8; 18] = rand::random();
        let nonce = format!("{}{}", client_first.nonce, STANDARD.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&candidates.salt),
            candidates.iterations
        );
        let exchange = Self {
            client_first,
            server_first: server_first.clone(),
            nonce,
            candidates,
        };
        (exchange, server_first)
    }

    /// Checks the client-final message; on success, the verifier that matched and the
    /// server-final message to send.
    pub fn finish(&self, data: &[u8]) -> Result<(K, String), ScramError> {
        let text = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attributes = without_proof.split(',');
        let binding = attributes
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding attribute"))?;
        let nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if binding != STANDARD.encode(self.client_first.gs2_header.as_bytes()) {
            return Err(ScramError::Malformed("channel binding does not match"));
        }
        if !constant_time_eq(nonce.as_bytes(), self.nonce.as_bytes()) {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof = STANDARD
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed("proof is not 32 bytes"));
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first.bare, self.server_first, without_proof
        );
        let mut matched = None;
        // Every verifier is tried, so the time does not depend on which one matches.
        for (key, stored_key, server_key) in &self.candidates.verifiers {
            let signature = hmac(stored_key, auth_message.as_bytes());
            let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
            let hashed: [u8; 32] = Sha256::digest(&client_key).into();
            if constant_time_eq(&hashed, stored_key) && matched.is_none() {
                matched = Some((key.clone(), *server_key));
            }
        }
        let (key, server_key) = matched.ok_or(ScramError::WrongProof)?;
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        Ok((key, format!("v={}", STANDARD.encode(server_signature))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's side of the exchange, by the RFC's formulas.
    fn client_final(
        secret: &str,
        client_first_bare: &str,
        server_first: &str,
        gs2: &str,
    ) -> (String, [u8; 32]) {
        let fields: Vec<&str> = server_first.split(',').collect();
        let nonce = fields[0].strip_prefix("r=").unwrap();
        let salt = STANDARD
            .decode(fields[1].strip_prefix("s=").unwrap())
            .unwrap();
        let iterations: u32 = fields[2].strip_prefix("i=").unwrap().parse().unwrap();
        let salted = hi(secret.as_bytes(), &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c={},r={nonce}", STANDARD.encode(gs2));
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac(&stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_signature = hmac(&hmac(&salted, b"Server Key"), auth.as_bytes());
        (
            format!("{without_proof},p={}", STANDARD.encode(proof)),
            server_signature,
        )
    }

    fn candidates(secrets: &[&str]) -> Candidates<usize> {
        let salt = b"0123456789abcdef".to_vec();
        Candidates {
            verifiers: secrets
                .iter()
                .enumerate()
                .map(|(i, secret)| {
                    let v = ScramVerifier::derive(secret, &salt, 64);
                    (i, v.stored_key, v.server_key)
                })
                .collect(),
            salt,
            iterations: 64,
        }
    }

    #[test]
    fn pbkdf2_matches_rfc_7914_vector() {
        // RFC 7914 §11: PBKDF2-HMAC-SHA256("passwd", "salt", 1), first 32 bytes.
        assert_eq!(
            hex(&hi(b"passwd", b"salt", 1)),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_right_secret_of_several_signs_in_and_a_wrong_one_does_not() {
        let first = ClientFirst::parse(b"n,,n=,r=abcdefgh").unwrap();
        let (exchange, server_first) = Exchange::start(first, candidates(&["one", "two"]));
        let (message, expected) = client_final("two", "n=,r=abcdefgh", &server_first, "n,,");
        let (key, server_final) = exchange.finish(message.as_bytes()).unwrap();
        assert_eq!(key, 1);
        assert_eq!(server_final, format!("v={}", STANDARD.encode(expected)));

        let (message, _) = client_final("three", "n=,r=abcdefgh", &server_first, "n,,");
        assert_eq!(
            exchange.finish(message.as_bytes()).unwrap_err(),
            ScramError::WrongProof
        );
    }

    #[test]
    fn a_tampered_nonce_or_binding_is_malformed() {
        let first = ClientFirst::parse(b"y,,n=,r=abcdefgh").unwrap();
        let (exchange, server_first) = Exchange::start(first, candidates(&["one"]));
        let (message, _) = client_final("one", "n=,r=abcdefgh", &server_first, "n,,");
        assert!(matches!(
            exchange.finish(message.as_bytes()),
            Err(ScramError::Malformed(_))
        ));
        let (message, _) = client_final("one", "n=,r=abcdefgh", &server_first, "y,,");
        assert!(exchange.finish(message.as_bytes()).is_ok());
        let forged = message.replacen("r=abcdefgh", "r=abcdefgX", 1);
        assert!(matches!(
            exchange.finish(forged.as_bytes()),
            Err(ScramError::Malformed(_))
        ));
        for bad in [
            &b"p=tls-server-end-point,,n=,r=x"[..],
            b"n,a=admin,n=,r=x",
            b"n,,r=x",
            b"",
            b"\xff",
        ] {
            assert!(ClientFirst::parse(bad).is_err(), "{bad:?}");
        }
    }
}
