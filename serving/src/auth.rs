//! Identities, roles and what each may do; passwords, access tokens, refresh tokens, TOTP.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm as ArgonAlgorithm, Argon2, Params, Version};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use rand::RngCore;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use canopy_schemas::clock::unix_now;

use crate::ServingError;

/// A user's role. What each may do is [`Action::allowed`], one table.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Citizen,
    Expert,
    Stakeholder,
    Analyst,
    Operator,
    Auditor,
    Admin,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Self::Citizen,
        Self::Expert,
        Self::Stakeholder,
        Self::Analyst,
        Self::Operator,
        Self::Auditor,
        Self::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Citizen => "citizen",
            Self::Expert => "expert",
            Self::Stakeholder => "stakeholder",
            Self::Analyst => "analyst",
            Self::Operator => "operator",
            Self::Auditor => "auditor",
            Self::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Self::ALL.into_iter().find(|role| role.as_str() == text)
    }

    /// The vote component a role votes in; `None` for roles that do not vote.
    pub fn voter_role(self) -> Option<canopy_schemas::VoterRole> {
        use canopy_schemas::VoterRole;
        match self {
            Self::Citizen => Some(VoterRole::Citizen),
            Self::Expert => Some(VoterRole::Expert),
            Self::Stakeholder => Some(VoterRole::Stakeholder),
            _ => None,
        }
    }
}

/// Everything an authenticated caller can ask to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    CastVote,
    CastForOthers,
    CreateDecision,
    ReadResults,
    VerifyUsers,
    ReadAudit,
    EraseVoter,
    RegisterSensors,
    SubmitReadings,
    ReadEnvironment,
    QueryAnalytics,
    ManageRolls,
    ClaimInvitation,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CastVote => "cast votes",
            Self::CastForOthers => "submit batches of other voters' votes",
            Self::CreateDecision => "create decisions",
            Self::ReadResults => "read results",
            Self::VerifyUsers => "verify experts and stakeholders",
            Self::ReadAudit => "read the audit trail",
            Self::EraseVoter => "erase a voter from the record",
            Self::RegisterSensors => "register sensors",
            Self::SubmitReadings => "submit sensor readings",
            Self::ReadEnvironment => "read environmental data",
            Self::QueryAnalytics => "query the analytics lake in SQL",
            Self::ManageRolls => "import voter rolls and reissue their invitations",
            Self::ClaimInvitation => "claim an entry of a voter roll",
        }
    }

    /// The role table (also in the README):
    ///
    /// | action            | citizen | expert | stakeholder | analyst | operator | auditor | admin |
    /// |-------------------|---------|--------|-------------|---------|----------|---------|-------|
    /// | cast votes        | yes     | yes    | yes         |         |          |         |       |
    /// | batch for others  |         |        |             |         | yes      |         | yes   |
    /// | create decisions  |         |        |             |         | yes      |         | yes   |
    /// | read results      | yes     | yes    | yes         | yes     | yes      | yes     | yes   |
    /// | verify users      |         |        |             |         |          |         | yes   |
    /// | read audit trail  |         |        |             |         |          | yes     | yes   |
    /// | erase a voter     |         |        |             |         |          |         | yes   |
    /// | register sensors  |         |        |             |         | yes      |         | yes   |
    /// | submit readings   |         |        |             |         | yes      |         | yes   |
    /// | read env. data    | yes     | yes    | yes         | yes     | yes      | yes     | yes   |
    /// | SQL over the lake |         |        |             | yes     |          |         | yes   |
    /// | manage voter rolls|         |        |             |         | yes      |         | yes   |
    /// | claim invitations | yes     | yes    | yes         |         |          |         |       |
    ///
    /// Checkpoints, proofs and anchors (`/api/v1/audit/decisions/…`) are public: anyone may
    /// check the record.
    pub fn allowed(self, role: Role) -> bool {
        use Role::*;
        match self {
            Self::CastVote | Self::ClaimInvitation => {
                matches!(role, Citizen | Expert | Stakeholder)
            }
            Self::CastForOthers
            | Self::CreateDecision
            | Self::RegisterSensors
            | Self::SubmitReadings
            | Self::ManageRolls => matches!(role, Operator | Admin),
            Self::ReadResults | Self::ReadEnvironment => true,
            Self::VerifyUsers | Self::EraseVoter => role == Admin,
            Self::ReadAudit => matches!(role, Auditor | Admin),
            Self::QueryAnalytics => matches!(role, Analyst | Admin),
        }
    }
}

/// The claims of an access token. Role and vote weight travel in the token, so casting a
/// vote needs no database read; a token lives only minutes, so a role change takes effect
/// at the next refresh.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: uuid::Uuid,
    pub exp: u64,
    pub iat: u64,
    pub typ: String,
    pub role: Role,
    /// The verified vote weight in millionths (1 000 000 for citizens).
    pub weight: u32,
}

pub const ISSUER: &str = "canopy";
pub const AUDIENCE: &str = "canopy-api";
const ACCESS_TYPE: &str = "access";

/// Signs and checks access tokens with an RSA key pair (RS256 and nothing else).
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    public_pem: String,
    validation: Validation,
    pub access_ttl_s: u64,
    /// Tokens already verified, by the SHA-256 of their text, until they expire: an RS256
    /// check costs tens of microseconds, a hash lookup well under one. A tampered token
    /// hashes differently and takes the full check.
    verified: Mutex<HashMap<[u8; 32], Claims>>,
}

/// Bound on remembered tokens; the memory is cleared when it fills.
const VERIFIED_CACHE_ENTRIES: usize = 100_000;

impl TokenKeys {
    /// Loads the PKCS#8 PEM private key at `path`, generating and saving a 2048-bit one
    /// first if there is none (the first start of `canopy up`).
    pub fn load_or_generate(path: &Path) -> Result<Self, ServingError> {
        let private = if path.exists() {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| ServingError::Internal(format!("reading {}: {e}", path.display())))?;
            rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
                .map_err(|e| ServingError::Internal(format!("parsing {}: {e}", path.display())))?
        } else {
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|e| ServingError::Internal(e.to_string()))?;
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| ServingError::Internal(e.to_string()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    ServingError::Internal(format!("creating {}: {e}", dir.display()))
                })?;
            }
            write_private(path, pem.as_bytes())?;
            key
        };
        Self::from_private_key(&private)
    }

    pub fn from_private_key(private: &rsa::RsaPrivateKey) -> Result<Self, ServingError> {
        let internal = |e: &dyn std::fmt::Display| ServingError::Internal(e.to_string());
        let private_pem = private
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| internal(&e))?;
        let public_pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| internal(&e))?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256];
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 0;
        Ok(Self {
            encoding: EncodingKey::from_rsa_pem(private_pem.as_bytes())
                .map_err(|e| internal(&e))?,
            decoding: DecodingKey::from_rsa_pem(public_pem.as_bytes()).map_err(|e| internal(&e))?,
            public_pem,
            validation,
            access_ttl_s: 900,
            verified: Mutex::new(HashMap::new()),
        })
    }

    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    pub fn issue(
        &self,
        user: uuid::Uuid,
        role: Role,
        weight: u32,
    ) -> Result<(String, u64), ServingError> {
        let now = unix_now();
        let claims = Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: user,
            exp: now + self.access_ttl_s,
            iat: now,
            typ: ACCESS_TYPE.into(),
            role,
            weight,
        };
        let token = encode(&Header::new(Algorithm::RS256), &claims, &self.encoding)
            .map_err(|e| ServingError::Internal(e.to_string()))?;
        Ok((token, claims.exp))
    }

    /// Checks signature (RS256 only), issuer, audience, expiry and token type.
    pub fn verify(&self, token: &str) -> Result<Claims, ServingError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = unix_now();
        {
            let verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(claims) = verified.get(&key) {
                return match claims.exp > now {
                    true => Ok(claims.clone()),
                    false => Err(ServingError::TokenExpired),
                };
            }
        }
        let claims = self.verify_uncached(token)?;
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= VERIFIED_CACHE_ENTRIES {
            verified.clear();
        }
        verified.insert(key, claims.clone());
        Ok(claims)
    }

    fn verify_uncached(&self, token: &str) -> Result<Claims, ServingError> {
        use jsonwebtoken::errors::ErrorKind;
        let data =
            decode::<Claims>(token, &self.decoding, &self.validation).map_err(
                |error| match error.kind() {
                    ErrorKind::ExpiredSignature => ServingError::TokenExpired,
                    other => ServingError::InvalidToken(format!("{other:?}")),
                },
            )?;
        if data.claims.typ != ACCESS_TYPE {
            return Err(ServingError::InvalidToken("not an access token".into()));
        }
        Ok(data.claims)
    }
}

pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ServingError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ServingError::Internal(format!("creating {}: {e}", path.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| ServingError::Internal(format!("writing {}: {e}", path.display())))
}

/// Argon2id with OWASP's minimum parameters (19 MiB, 2 passes, 1 lane).
fn argon2() -> Argon2<'static> {
    Argon2::new(
        ArgonAlgorithm::Argon2id,
        Version::V0x13,
        Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters"),
    )
}

pub fn hash_password(password: &str) -> Result<String, ServingError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let hash: PasswordHash = argon2()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map_err(|e| ServingError::Internal(e.to_string()))?;
    Ok(hash.to_string())
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A fresh opaque refresh token and the hash under which it is stored.
pub fn new_refresh_token() -> (String, String) {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = refresh_token_hash(&token);
    (token, hash)
}

pub fn refresh_token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// RFC 6238 TOTP: SHA-1, 6 digits, 30 s steps, one step of drift either way.
pub fn totp(secret: &[u8]) -> Result<totp_rs::TOTP, ServingError> {
    totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, secret.to_vec())
        .map_err(|e| ServingError::Internal(e.to_string()))
}

pub fn new_totp_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 20];
    rand::rng().fill_bytes(&mut secret);
    secret
}

/// The time step `code` is valid for now (within one step of drift), if any.
pub fn totp_step(secret: &[u8], code: &str) -> Result<Option<u64>, ServingError> {
    let totp = totp(secret)?;
    let now = unix_now();
    let current = now / 30;
    for step in [current.saturating_sub(1), current, current + 1] {
        if totp.generate(step * 30) == code {
            return Ok(Some(step));
        }
    }
    Ok(None)
}
