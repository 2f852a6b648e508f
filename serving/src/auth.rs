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
    /// An analysis agent's account: it votes in the environmental-data component when an
    /// operator invokes the agents, and never signs in (its password is random and unkept).
    Agent,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Self::Citizen,
        Self::Expert,
        Self::Stakeholder,
        Self::Analyst,
        Self::Operator,
        Self::Auditor,
        Self::Admin,
        Self::Agent,
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
            Self::Agent => "agent",
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
            Self::Agent => Some(VoterRole::AnalysisAgent),
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
    AnalyzeProposals,
    InvokeAgents,
    ImportData,
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
            Self::AnalyzeProposals => "run the analysis agents and read their status",
            Self::InvokeAgents => "have the analysis agents vote",
            Self::ImportData => "import external data into the lake",
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
    /// | analyse proposals |         |        |             | yes     | yes      |         | yes   |
    /// | invoke the agents |         |        |             |         | yes      |         | yes   |
    /// | import data       |         |        |             |         | yes      |         | yes   |
    ///
    /// Agent accounts (role `agent`) do none of these: they never sign in, and vote only
    /// when an operator invokes the agents.
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
            | Self::ManageRolls
            | Self::InvokeAgents
            | Self::ImportData => matches!(role, Operator | Admin),
            Self::AnalyzeProposals => matches!(role, Analyst | Operator | Admin),
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
                metrics::counter!("canopy_cache_lookups_total", "cache" => "tokens", "result" => "hit")
                    .increment(1);
                return match claims.exp > now {
                    true => Ok(claims.clone()),
                    false => Err(ServingError::TokenExpired),
                };
            }
        }
        metrics::counter!("canopy_cache_lookups_total", "cache" => "tokens", "result" => "miss")
            .increment(1);
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
        // Why a token is refused stays in the log: the answer names no library internals.
        let data =
            decode::<Claims>(token, &self.decoding, &self.validation).map_err(
                |error| match error.kind() {
                    ErrorKind::ExpiredSignature => ServingError::TokenExpired,
                    other => {
                        tracing::debug!(reason = ?other, "refused a token");
                        ServingError::InvalidToken
                    }
                },
            )?;
        if data.claims.typ != ACCESS_TYPE {
            tracing::debug!(typ = %data.claims.typ, "refused a token that is not an access token");
            return Err(ServingError::InvalidToken);
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

/// Argon2id's memory cost, in KiB: OWASP's minimum (19 MiB, 2 passes, 1 lane).
pub const ARGON2_M_COST_KIB: u32 = 19 * 1024;

fn argon2_params() -> Params {
    Params::new(ARGON2_M_COST_KIB, 2, 1, None).expect("valid argon2 parameters")
}

/// Argon2id with OWASP's minimum parameters (19 MiB, 2 passes, 1 lane).
fn argon2() -> Argon2<'static> {
    Argon2::new(ArgonAlgorithm::Argon2id, Version::V0x13, argon2_params())
}

/// Hashes with a fresh allocation and no bound: for the command line (`canopy admin
/// create`), not for requests, which go through [`PasswordHashing`].
pub fn hash_password(password: &str) -> Result<String, ServingError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let hash: PasswordHash = argon2()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map_err(|e| ServingError::Internal(e.to_string()))?;
    Ok(hash.to_string())
}

/// Checks with a fresh allocation and no bound (see [`hash_password`]).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// How much memory password hashing may hold, and how many requests may wait for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashingLimits {
    /// KiB all hashes running at once may use: `memory_kib / 19 MiB` run at once (at least
    /// one), each in a buffer allocated once and reused.
    pub memory_kib: u32,
    /// Requests that may wait for a hash slot; beyond them a request is refused at once
    /// with 503 `busy`.
    pub max_waiting: usize,
}

impl Default for HashingLimits {
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            max_waiting: 32,
        }
    }
}

/// Argon2 behind a semaphore sized to memory. Each slot owns one buffer of the hash's
/// memory cost, allocated on first use and reused, so hashing never holds more than
/// `slots × 19 MiB` whatever the load (without it, 100 concurrent sign-ins allocated 100
/// buffers on 100 blocking threads, and the allocator kept them). An unknown username is
/// checked against a dummy hash of the same parameters: it costs what a known one does.
pub struct PasswordHashing {
    slots: tokio::sync::Semaphore,
    slot_count: usize,
    buffers: Mutex<Vec<Vec<argon2::Block>>>,
    waiting: std::sync::atomic::AtomicUsize,
    max_waiting: usize,
    dummy_hash: String,
}

impl std::fmt::Debug for PasswordHashing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHashing")
            .field("slots", &self.slot_count)
            .field("max_waiting", &self.max_waiting)
            .finish_non_exhaustive()
    }
}

/// Holds a place in the waiting line; leaving (a slot, or a dropped request) frees it.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl PasswordHashing {
    pub fn new(limits: HashingLimits) -> Result<Self, ServingError> {
        let slot_count = (limits.memory_kib / ARGON2_M_COST_KIB).max(1) as usize;
        // The dummy's password is random and forgotten: nothing verifies against it.
        let mut unguessable = [0u8; 32];
        rand::rng().fill_bytes(&mut unguessable);
        let dummy_hash = hash_password(&hex::encode(unguessable))?;
        Ok(Self {
            slots: tokio::sync::Semaphore::new(slot_count),
            slot_count,
            buffers: Mutex::new(Vec::new()),
            waiting: Default::default(),
            max_waiting: limits.max_waiting,
            dummy_hash,
        })
    }

    /// Hashes running at once at most.
    pub fn slots(&self) -> usize {
        self.slot_count
    }

    /// Waits for a hash slot; `busy` at once if too many requests wait already. A caller
    /// that checks more than a hash (the sign-in throttle) takes the slot first, so a busy
    /// refusal changes nothing.
    pub async fn slot(&self) -> Result<HashSlot<'_>, ServingError> {
        use std::sync::atomic::Ordering;
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting + self.slot_count {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(ServingError::Busy { retry_after_s: 1 });
        }
        let waiting = Waiting(&self.waiting);
        let permit = self
            .slots
            .acquire()
            .await
            .map_err(|e| ServingError::Internal(e.to_string()))?;
        Ok(HashSlot {
            hashing: self,
            _permit: permit,
            _waiting: waiting,
        })
    }

    /// A new password's hash (PHC string), in a slot of its own.
    pub async fn hash(&self, password: &str) -> Result<String, ServingError> {
        self.slot().await?.hash(password).await
    }

    /// Whether `password` matches `stored`, in a slot of its own (see [`HashSlot::verify`]).
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<bool, ServingError> {
        self.slot().await?.verify(password, stored).await
    }
}

/// One of [`PasswordHashing`]'s slots, held: at most that many hashes run at once.
pub struct HashSlot<'a> {
    hashing: &'a PasswordHashing,
    _permit: tokio::sync::SemaphorePermit<'a>,
    _waiting: Waiting<'a>,
}

impl HashSlot<'_> {
    /// Runs `work` with the slot's buffer on a blocking thread.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<argon2::Block>) -> T + Send + 'static,
    ) -> Result<T, ServingError> {
        let mut buffer = self
            .hashing
            .buffers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_else(|| vec![argon2::Block::new(); argon2_params().block_count()]);
        let (result, buffer) = tokio::task::spawn_blocking(move || {
            let result = work(&mut buffer);
            (result, buffer)
        })
        .await
        .map_err(|e| ServingError::Internal(e.to_string()))?;
        self.hashing
            .buffers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(buffer);
        Ok(result)
    }

    /// A new password's hash (PHC string).
    pub async fn hash(&self, password: &str) -> Result<String, ServingError> {
        let password = password.to_string();
        self.run(move |buffer| {
            let mut salt = [0u8; 16];
            rand::rng().fill_bytes(&mut salt);
            let mut output = [0u8; 32];
            argon2()
                .hash_password_into_with_memory(
                    password.as_bytes(),
                    &salt,
                    &mut output,
                    buffer.as_mut_slice(),
                )
                .map_err(|e| ServingError::Internal(e.to_string()))?;
            let internal = |e: &dyn std::fmt::Display| ServingError::Internal(e.to_string());
            let salt = argon2::password_hash::phc::Salt::new(&salt).map_err(|e| internal(&e))?;
            let output =
                argon2::password_hash::phc::Output::new(&output).map_err(|e| internal(&e))?;
            let params = argon2::password_hash::phc::ParamsString::try_from(&argon2_params())
                .map_err(|e| internal(&e))?;
            Ok(PasswordHash {
                algorithm: ArgonAlgorithm::Argon2id.ident(),
                version: Some(Version::V0x13.into()),
                params,
                salt: Some(salt),
                hash: Some(output),
            }
            .to_string())
        })
        .await?
    }

    /// Whether `password` matches `stored`; with no stored hash (an unknown username) the
    /// dummy is checked, at the same cost, and the answer is false.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<bool, ServingError> {
        let known = stored.is_some();
        let stored = stored.unwrap_or(&self.hashing.dummy_hash).to_string();
        let password = password.to_string();
        let matches = self
            .run(move |buffer| verify_in(buffer, password.as_bytes(), &stored))
            .await?;
        Ok(known && matches)
    }
}

/// Recomputes `stored`'s hash of `password` in `buffer` (a larger buffer for a hash of
/// larger parameters than today's, which no account has) and compares in constant time.
fn verify_in(buffer: &mut Vec<argon2::Block>, password: &[u8], stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let Ok(algorithm) = ArgonAlgorithm::try_from(parsed.algorithm.as_str()) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let mut larger;
    let blocks = if params.block_count() <= buffer.len() {
        buffer.as_mut_slice()
    } else {
        larger = vec![argon2::Block::new(); params.block_count()];
        larger.as_mut_slice()
    };
    let mut output = vec![0u8; expected.len()];
    let hashed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password,
        salt.as_ref(),
        &mut output,
        blocks,
    );
    hashed.is_ok()
        && argon2::password_hash::phc::Output::new(&output).is_ok_and(|output| &output == expected)
}

/// A username as it is compared: NFKC-normalised (so a full-width or composed spelling is
/// the same name) and lowercased. `BFVictim` and `bfvictim` are one account.
pub fn username_key(username: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    username.nfkc().collect::<String>().to_lowercase()
}

/// The common passwords (NIST SP 800-63B: "passwords obtained from previous breach
/// corpuses"), bundled: Django's list of 19 640, lowercase.
static COMMON_PASSWORDS: std::sync::LazyLock<std::collections::HashSet<&'static str>> =
    std::sync::LazyLock::new(|| {
        include_str!("../data/common-passwords.txt")
            .lines()
            .filter(|line| !line.starts_with("# ") && !line.is_empty())
            .collect()
    });

pub const MIN_PASSWORD_CHARS: usize = 10;
pub const MAX_PASSWORD_CHARS: usize = 256;

/// Why a new password is refused, if it is (NIST SP 800-63B 5.1.1.2: length, breached and
/// common passwords, repetitive or sequential characters, context-specific words). No
/// composition rules: a long passphrase of lowercase words is welcome.
pub fn password_weakness(password: &str, username: &str) -> Option<&'static str> {
    let chars: Vec<char> = password.chars().collect();
    if chars.len() < MIN_PASSWORD_CHARS {
        return Some("a password has at least 10 characters");
    }
    if chars.len() > MAX_PASSWORD_CHARS {
        return Some("a password has at most 256 characters");
    }
    let lowered = password.to_lowercase();
    // The list's entry with a few digits or symbols added ("password2024!") is as common.
    let core = lowered.trim_end_matches(|c: char| !c.is_alphabetic());
    let core = core.trim_start_matches(|c: char| !c.is_alphabetic());
    let padding = lowered.chars().count() - core.chars().count();
    if COMMON_PASSWORDS.contains(lowered.as_str())
        || (padding <= 6 && COMMON_PASSWORDS.contains(core))
    {
        return Some("this password is among the most common ones; choose another");
    }
    let name = username_key(username);
    if name.chars().count() >= 3 && username_key(password).contains(&name) {
        return Some("a password may not contain the username");
    }
    let distinct: std::collections::HashSet<char> = chars.iter().copied().collect();
    if distinct.len() < 4 {
        return Some("a password of so few different characters is easy to guess");
    }
    let steps: Vec<i64> = chars
        .windows(2)
        .map(|pair| i64::from(u32::from(pair[1])) - i64::from(u32::from(pair[0])))
        .collect();
    if steps.iter().all(|&d| d == 1) || steps.iter().all(|&d| d == -1) {
        return Some("a run of consecutive characters is easy to guess");
    }
    None
}

/// Crockford's base32: no I, L, O or U, so a code copied by hand survives.
const RECOVERY_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// 20 symbols of 5 bits: 100 bits, beyond guessing (and guesses are throttled).
const RECOVERY_SYMBOLS: usize = 20;
/// Codes issued when 2FA is turned on (or the codes are renewed).
pub const RECOVERY_CODES: usize = 10;

/// A fresh recovery code, `XXXXX-XXXXX-XXXXX-XXXXX`, and the hash it is stored under.
pub fn new_recovery_code() -> (String, String) {
    use rand::Rng;
    let mut rng = rand::rng();
    let symbols: String = (0..RECOVERY_SYMBOLS)
        .map(|_| char::from(RECOVERY_ALPHABET[rng.random_range(0..RECOVERY_ALPHABET.len())]))
        .collect();
    let hash = hex::encode(Sha256::digest(symbols.as_bytes()));
    let shown = symbols
        .as_bytes()
        .chunks(5)
        .map(|group| String::from_utf8_lossy(group).into_owned())
        .collect::<Vec<_>>()
        .join("-");
    (shown, hash)
}

/// The hash a recovery code is stored under, whatever case, spaces and dashes it was typed
/// with; `None` for what cannot be one. The code is random (100 bits), so SHA-256 without
/// salt is enough against a stolen table.
pub fn recovery_code_hash(code: &str) -> Option<String> {
    let symbols: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let valid = symbols.len() == RECOVERY_SYMBOLS
        && symbols.bytes().all(|b| RECOVERY_ALPHABET.contains(&b));
    valid.then(|| hex::encode(Sha256::digest(symbols.as_bytes())))
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
