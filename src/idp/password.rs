//! Passwords: argon2id hashing (OWASP parameters: 19 MiB, 2 iterations, 1 lane), the
//! password policy, and verification that takes the same time whether or not the account
//! exists.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::Rng;
use rand::distributions::Alphanumeric;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

/// Memory cost in KiB.
const MEMORY_KIB: u32 = 19 * 1024;
/// Iterations.
const ITERATIONS: u32 = 2;
/// Lanes.
const LANES: u32 = 1;
/// Shortest acceptable password, in characters.
pub const MIN_LENGTH: usize = 12;
/// Longest password accepted at all (hashing cost is bounded by input size).
pub const MAX_LENGTH: usize = 1024;

fn hasher() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, ITERATIONS, LANES, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// Hashes a password into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Checks a password against a PHC string; false for a malformed hash.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    hasher()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// A random password of `len` letters and digits.
pub fn generate_password(len: usize) -> String {
    rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Memory one argon2 hash or verification takes (`m=19456` KiB).
pub const HASH_MEMORY_BYTES: u64 = MEMORY_KIB as u64 * 1024;

/// Runs argon2 off the async runtime, a bounded number at a time (each takes
/// [`HASH_MEMORY_BYTES`]). A permit lives as long as its blocking work, not as long as the
/// request that asked for it, so requests that time out cannot pile up unbounded work.
#[derive(Clone, Debug)]
pub struct PasswordHasherPool {
    permits: Arc<Semaphore>,
}

impl Default for PasswordHasherPool {
    fn default() -> Self {
        Self::new(default_concurrency(memory_limit()))
    }
}

/// How many hashes run at once by default: two per core, but never more than a quarter of
/// the process's memory limit (`memory_limit`, the cgroup's when it has one) holds.
pub fn default_concurrency(memory_limit: Option<u64>) -> usize {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let by_memory = memory_limit.map_or(usize::MAX, |limit| {
        usize::try_from(limit / 4 / HASH_MEMORY_BYTES).unwrap_or(usize::MAX)
    });
    (cores * 2).min(by_memory).max(1)
}

/// The memory limit of this process's cgroup (v2 `memory.max`, else v1
/// `memory.limit_in_bytes`); `None` without one.
pub fn memory_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|file| std::fs::read_to_string(file).ok())
    .find_map(|text| text.trim().parse::<u64>().ok())
    // cgroup v1 writes "no limit" as a number near i64::MAX.
    .filter(|limit| *limit < 1 << 60)
}

impl PasswordHasherPool {
    /// A pool running at most `concurrency` hashes at once.
    pub fn new(concurrency: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    /// Hashes on a blocking thread.
    pub async fn hash(&self, password: Zeroizing<String>) -> Result<String, HashError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| HashError(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hash_password(&password)
        })
        .await
        .map_err(|e| HashError(e.to_string()))?
    }

    /// Verifies on a blocking thread. Without a stored hash (unknown user, no password) a
    /// dummy hash is checked instead, so the answer takes as long either way.
    pub async fn verify(&self, password: Zeroizing<String>, phc: Option<String>) -> bool {
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return false;
        };
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| dummy_hash().to_owned());
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            verify_password(&password, &phc)
        })
        .await
        .unwrap_or(false);
        ok && known
    }
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        // A fixed salt is fine here: this hash never protects anything.
        let salt = SaltString::encode_b64(b"sark-dummy-salt!")
            .unwrap_or_else(|_| SaltString::generate(&mut OsRng));
        hasher()
            .hash_password(b"no account has this password", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// A password-policy rule that a password broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyViolation {
    /// The rule's name: `min_length`, `max_length`, `not_username`, `common_password`.
    pub rule: &'static str,
    /// What is wrong, for humans.
    pub message: String,
}

fn common_passwords() -> &'static HashSet<&'static str> {
    static LIST: OnceLock<HashSet<&'static str>> = OnceLock::new();
    LIST.get_or_init(|| {
        include_str!("common-passwords.txt")
            .lines()
            .filter(|l| !l.is_empty())
            .collect()
    })
}

/// Checks the password policy: at least 12 characters, not the username (nor containing
/// it), and not a common password, also with digits or symbols appended.
pub fn check_policy(username: &str, password: &str) -> Result<(), PolicyViolation> {
    let length = password.chars().count();
    if length < MIN_LENGTH {
        return Err(PolicyViolation {
            rule: "min_length",
            message: format!("must be at least {MIN_LENGTH} characters (got {length})"),
        });
    }
    if length > MAX_LENGTH {
        return Err(PolicyViolation {
            rule: "max_length",
            message: format!("must be at most {MAX_LENGTH} characters"),
        });
    }
    let lower = password.to_lowercase();
    let name = username.to_lowercase();
    if !name.is_empty() && (lower == name || (name.chars().count() >= 4 && lower.contains(&name))) {
        return Err(PolicyViolation {
            rule: "not_username",
            message: "must not be or contain the username".into(),
        });
    }
    let stem = lower.trim_end_matches(|c: char| c.is_ascii_digit() || c.is_ascii_punctuation());
    let list = common_passwords();
    if list.contains(lower.as_str()) || (stem.chars().count() >= 4 && list.contains(stem)) {
        return Err(PolicyViolation {
            rule: "common_password",
            message: "is one of the most common passwords (or one with digits or symbols appended)"
                .into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let hash = hash_password("correct horse battery staple").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password("correct horse battery staple", &hash));
        assert!(!verify_password("wrong", &hash));
        assert!(!verify_password("anything", "not a phc string"));
    }

    #[test]
    fn generated_passwords_are_random_alphanumerics() {
        let a = generate_password(24);
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, generate_password(24));
    }

    #[test]
    fn the_policy_names_the_rule_that_failed() {
        let rule = |u: &str, p: &str| check_policy(u, p).err().map(|v| v.rule);
        assert_eq!(rule("alice", "short"), Some("min_length"));
        let long = "x".repeat(1025);
        assert_eq!(rule("alice", &long), Some("max_length"));
        assert_eq!(rule("alice.smith99", "alice.smith99"), Some("not_username"));
        assert_eq!(rule("alice", "ALICE-in-chains-2026"), Some("not_username"));
        assert_eq!(rule("bob", "1qaz2wsx3edc"), Some("common_password"));
        assert_eq!(
            rule("bob", "password12345678"),
            Some("common_password"),
            "a common stem with digits"
        );
        assert_eq!(rule("bob", "Password!!!!2024"), Some("common_password"));
        assert_eq!(rule("bob", "violet kettle swims at dawn"), None);
        assert!(common_passwords().len() > 19_000);
    }

    #[tokio::test]
    async fn verification_without_a_hash_fails_but_still_runs_argon2() {
        let pool = PasswordHasherPool::default();
        let hash = pool
            .hash(Zeroizing::new("violet kettle swims".into()))
            .await
            .unwrap();
        assert!(
            pool.verify(Zeroizing::new("violet kettle swims".into()), Some(hash))
                .await
        );
        assert!(
            !pool
                .verify(Zeroizing::new("no account has this password".into()), None)
                .await
        );
        assert!(dummy_hash().starts_with("$argon2id$"));
    }
}

#[cfg(test)]
mod concurrency_tests {
    use super::*;

    #[test]
    fn the_default_concurrency_fits_a_quarter_of_the_memory_limit() {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        assert_eq!(default_concurrency(None), cores * 2);
        // 256 MiB: a quarter holds three hashes of 19 MiB.
        assert_eq!(default_concurrency(Some(256 << 20)), (cores * 2).min(3));
        assert_eq!(default_concurrency(Some(1 << 20)), 1, "at least one");
    }
}
