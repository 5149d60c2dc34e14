//! The secrets key, which encrypts secrets at rest and keys the audit chain, and the
//! private files of the data directory.
//!
//! The key is the same on every node. When it is not configured, a single node generates one
//! into its data directory (mode 0600). The store remembers the fingerprint of the key it
//! is sealed with, so a node started with a different key is refused instead of silently
//! unable to read what the others wrote.
//!
//! A key is replaced without downtime through a [`KeyRing`]: `secrets.key` seals, and the
//! keys in `secrets.previous_keys` still open what they sealed until `sark admin
//! rotate-secrets-key` has sealed it again (docs/operations.md, "Replacing the secrets key").

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sark_actors::store::SealedKind;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Name of the generated key file in the data directory.
pub const KEY_FILE: &str = "secrets.key";
/// Store key under which the key's fingerprint is kept.
pub const FINGERPRINT_META_KEY: &str = "secrets_key_fingerprint";

/// The secrets key (at least 32 bytes). Its `Debug` never shows it.
#[derive(Clone)]
pub struct SecretsKey(Zeroizing<Vec<u8>>);

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretsKey(<redacted>)")
    }
}

/// Why the key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key does not decode.
    #[error("`secrets.key`: {0}")]
    Invalid(String),
    /// A previous key does not decode, or is the sealing key again.
    #[error("`secrets.previous_keys`: {0}")]
    InvalidPrevious(String),
}

impl SecretsKey {
    /// Decodes a key given as base64 (standard or URL-safe) or hex; at least 32 bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .or_else(|| STANDARD.decode(text).ok())
            .or_else(|| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok())
            .ok_or_else(|| "must be base64 or hex".to_owned())?;
        if bytes.len() < 32 {
            return Err(format!(
                "must decode to at least 32 bytes (got {})",
                bytes.len()
            ));
        }
        Ok(Self(Zeroizing::new(bytes)))
    }

    /// The configured key, or the one in `data_dir` (generated on first start).
    pub fn load_or_generate(
        configured: Option<&str>,
        data_dir: &Path,
    ) -> Result<(Self, bool), SecretsError> {
        if let Some(text) = configured {
            return Self::parse(text)
                .map(|k| (k, false))
                .map_err(SecretsError::Invalid);
        }
        let path = data_dir.join(KEY_FILE);
        let mut bytes = Zeroizing::new(vec![0u8; 32]);
        rand::thread_rng().fill_bytes(&mut bytes);
        let encoded = Zeroizing::new(STANDARD.encode(&*bytes));
        let created = write_private_once(&path, encoded.as_bytes())?;
        let stored = read_private(&path)?;
        let key = Self::parse(&stored).map_err(|e| SecretsError::File {
            path: path.clone(),
            reason: e,
        })?;
        Ok((key, created))
    }

    /// A key for one purpose, derived so that no two uses share key material.
    pub fn derive(&self, purpose: &str) -> Zeroizing<Vec<u8>> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(b"sark key derivation v1:");
        mac.update(purpose.as_bytes());
        Zeroizing::new(mac.finalize().into_bytes().to_vec())
    }

    /// A public fingerprint that identifies the key without revealing it.
    pub fn fingerprint(&self) -> String {
        hex::encode(&self.derive("fingerprint")[..16])
    }

    /// The raw key bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The secrets keys a node holds: the one it seals with (`secrets.key`) and the ones it
/// still opens with (`secrets.previous_keys`), while a replaced key's values are sealed
/// again.
#[derive(Clone, Debug)]
pub struct KeyRing {
    primary: SecretsKey,
    previous: Vec<SecretsKey>,
}

impl KeyRing {
    /// A ring of `primary` alone.
    pub fn single(primary: SecretsKey) -> Self {
        Self {
            primary,
            previous: Vec::new(),
        }
    }

    /// `primary` (sealing) and `previous` (opening only).
    pub fn new(primary: SecretsKey, previous: Vec<SecretsKey>) -> Self {
        Self { primary, previous }
    }

    /// The key that seals.
    pub fn primary(&self) -> &SecretsKey {
        &self.primary
    }

    /// Every key, the sealing one first.
    pub fn keys(&self) -> impl Iterator<Item = &SecretsKey> {
        std::iter::once(&self.primary).chain(&self.previous)
    }

    /// The configured keys: the sealing key as [`SecretsKey::load_or_generate`] finds it,
    /// and the previous ones (none may be the sealing key again). Also says whether the
    /// sealing key was generated just now.
    pub fn load(
        configured: Option<&str>,
        previous: &[&str],
        data_dir: &Path,
    ) -> Result<(Self, bool), SecretsError> {
        let (primary, generated) = SecretsKey::load_or_generate(configured, data_dir)?;
        let previous = previous
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let key = SecretsKey::parse(text)
                    .map_err(|e| SecretsError::InvalidPrevious(format!("key {}: {e}", i + 1)))?;
                if key.fingerprint() == primary.fingerprint() {
                    return Err(SecretsError::InvalidPrevious(format!(
                        "key {} is `secrets.key` itself",
                        i + 1
                    )));
                }
                Ok(key)
            })
            .collect::<Result<_, _>>()?;
        Ok((Self::new(primary, previous), generated))
    }

    /// The key of the ring with this fingerprint.
    pub fn find(&self, fingerprint: &str) -> Option<&SecretsKey> {
        self.keys().find(|key| key.fingerprint() == fingerprint)
    }
}

/// Authenticated encryption of secrets at rest (signing keys, TOTP secrets) with
/// AES-256-GCM under a key derived from the secrets key. Each ciphertext is bound to a
/// context string (e.g. `totp:<user id>`), so a row copied elsewhere does not decrypt.
/// It seals with the ring's sealing key and opens with any key of the ring.
#[derive(Clone)]
pub struct SecretBox {
    /// One AES key per key of the ring, the sealing one first.
    keys: std::sync::Arc<[ring::aead::LessSafeKey]>,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox(<redacted>)")
    }
}

/// Why a ciphertext could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("stored secret cannot be decrypted with this node's secrets key")]
pub struct SealError;

const SEALED_PREFIX: &str = "v1:";

impl SecretBox {
    /// A box keyed by the at-rest encryption keys of `keys`.
    pub fn new(keys: &KeyRing) -> Self {
        let aead = |key: &SecretsKey| {
            let derived = key.derive("at-rest encryption");
            let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &derived)
                .unwrap_or_else(|_| unreachable!("a derived key is 32 bytes, as AES-256 needs"));
            ring::aead::LessSafeKey::new(unbound)
        };
        Self {
            keys: keys.keys().map(aead).collect(),
        }
    }

    /// A box of `key` alone.
    pub fn single(key: &SecretsKey) -> Self {
        Self::new(&KeyRing::single(key.clone()))
    }

    /// Encrypts `plaintext` for `context`; the result is printable.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; ring::aead::NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut buffer = plaintext.to_vec();
        self.keys[0]
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(context.as_bytes()),
                &mut buffer,
            )
            .map_err(|_| SealError)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buffer);
        Ok(format!("{SEALED_PREFIX}{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// Decrypts what [`SecretBox::seal`] produced for the same `context`, with any key of
    /// the ring.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.open_with_index(context, sealed)
            .map(|(plaintext, _)| plaintext)
    }

    /// Seals `sealed` again with the sealing key, unless it already is: `None` when it
    /// is, the new sealed text when a previous key opened it.
    pub fn reseal(&self, context: &str, sealed: &str) -> Result<Option<String>, SealError> {
        match self.open_with_index(context, sealed)? {
            (_, 0) => Ok(None),
            (plaintext, _) => self.seal(context, &plaintext).map(Some),
        }
    }

    /// The plaintext and the index in the ring of the key that opened it.
    fn open_with_index(
        &self,
        context: &str,
        sealed: &str,
    ) -> Result<(Zeroizing<Vec<u8>>, usize), SealError> {
        let raw = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
            .ok_or(SealError)?;
        if raw.len() < ring::aead::NONCE_LEN {
            return Err(SealError);
        }
        let (nonce, ciphertext) = raw.split_at(ring::aead::NONCE_LEN);
        for (index, key) in self.keys.iter().enumerate() {
            let nonce =
                ring::aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError)?;
            let mut buffer = Zeroizing::new(ciphertext.to_vec());
            if let Ok(plaintext) = key.open_in_place(
                nonce,
                ring::aead::Aad::from(context.as_bytes()),
                &mut buffer,
            ) {
                return Ok((Zeroizing::new(plaintext.to_vec()), index));
            }
        }
        Err(SealError)
    }
}

/// What a sealed value of `kind` stored under `id` is bound to: a row copied to another
/// id does not open.
pub fn sealing_context(kind: SealedKind, id: &str) -> String {
    let prefix = match kind {
        SealedKind::SigningKey => "signing_key",
        SealedKind::Totp => "totp",
        SealedKind::AuthRequest => "oidc",
    };
    format!("{prefix}:{id}")
}

/// Creates `path` with `contents` and mode 0600 unless it exists; returns whether it was
/// created. The file appears complete or not at all (written aside, then hard-linked), so
/// nodes racing on one data directory all end up reading the same content.
pub fn write_private_once(path: &Path, contents: &[u8]) -> Result<bool, SecretsError> {
    let fail = |reason: String| SecretsError::File {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create directory: {e}")))?;
    }
    let tmp = path.with_extension(format!("tmp.{}", uuid::Uuid::new_v4().simple()));
    write_private(&tmp, contents).map_err(|e| fail(e.to_string()))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(fail(e.to_string())),
    }
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Reads a private file, refusing one that other users can read.
fn read_private(path: &Path) -> Result<Zeroizing<String>, SecretsError> {
    let fail = |reason: String| SecretsError::File {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let mode = file
        .metadata()
        .map_err(|e| fail(e.to_string()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(fail(format!(
            "mode {:o} lets other users read it; chmod 600 it",
            mode & 0o777
        )));
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text)
        .map_err(|e| fail(e.to_string()))?;
    Ok(text)
}

/// 256 random bits, base64url without padding (43 characters): login codes, browser
/// bindings, refresh-token secrets.
pub fn random_token() -> String {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(&mut *bytes);
    URL_SAFE_NO_PAD.encode(*bytes)
}

/// SHA-256 of `value`, hex: how tokens, codes and policy sources are stored or named.
pub fn sha256_hex(value: &str) -> String {
    use sha2::Digest as _;
    hex::encode(Sha256::digest(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_from_base64_and_hex_and_must_be_long_enough() {
        let raw = [7u8; 32];
        assert_eq!(
            SecretsKey::parse(&STANDARD.encode(raw)).unwrap().bytes(),
            raw
        );
        assert_eq!(SecretsKey::parse(&hex::encode(raw)).unwrap().bytes(), raw);
        assert_eq!(
            SecretsKey::parse(&URL_SAFE_NO_PAD.encode(raw))
                .unwrap()
                .bytes(),
            raw
        );
        assert!(
            SecretsKey::parse(&STANDARD.encode([1u8; 16]))
                .unwrap_err()
                .contains("at least 32")
        );
        assert!(SecretsKey::parse("not a key!").is_err());
    }

    #[test]
    fn a_generated_key_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = SecretsKey::load_or_generate(None, dir.path()).unwrap();
        assert!(created);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (second, created) = SecretsKey::load_or_generate(None, dir.path()).unwrap();
        assert!(!created);
        assert_eq!(first.fingerprint(), second.fingerprint());
    }

    #[test]
    fn racing_creators_all_read_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let fingerprints: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        SecretsKey::load_or_generate(None, dir.path())
                            .unwrap()
                            .0
                            .fingerprint()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(fingerprints.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn a_world_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        SecretsKey::load_or_generate(None, dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SecretsKey::load_or_generate(None, dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn sealed_secrets_open_only_with_the_same_key_and_context() {
        let key = SecretsKey::parse(&hex::encode([1u8; 32])).unwrap();
        let other = SecretsKey::parse(&hex::encode([2u8; 32])).unwrap();
        let sealed = SecretBox::single(&key)
            .seal("totp:u1", b"JBSWY3DPEHPK3PXP")
            .unwrap();
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("JBSWY3DPEHPK3PXP"));
        assert_eq!(
            &*SecretBox::single(&key).open("totp:u1", &sealed).unwrap(),
            b"JBSWY3DPEHPK3PXP"
        );
        assert!(
            SecretBox::single(&key).open("totp:u2", &sealed).is_err(),
            "bound to its context"
        );
        assert!(
            SecretBox::single(&other).open("totp:u1", &sealed).is_err(),
            "bound to the key"
        );
        assert!(SecretBox::single(&key).open("totp:u1", "v1:AAAA").is_err());
        assert_ne!(
            sealed,
            SecretBox::single(&key)
                .seal("totp:u1", b"JBSWY3DPEHPK3PXP")
                .unwrap(),
            "fresh nonce"
        );
    }

    fn key(byte: u8) -> SecretsKey {
        SecretsKey::parse(&hex::encode([byte; 32])).unwrap()
    }

    #[test]
    fn a_ring_seals_with_its_first_key_and_opens_with_any() {
        let (old, new) = (key(1), key(2));
        let before = SecretBox::single(&old).seal("totp:u1", b"secret").unwrap();
        // Both orders a rolling update runs side by side: the new key added to open with,
        // then made the sealing key.
        let adding = SecretBox::new(&KeyRing::new(old.clone(), vec![new.clone()]));
        let sealing = SecretBox::new(&KeyRing::new(new.clone(), vec![old.clone()]));
        let during = sealing.seal("totp:u1", b"secret").unwrap();
        for (ring, sealed) in [(&adding, &before), (&adding, &during), (&sealing, &before)] {
            assert_eq!(&*ring.open("totp:u1", sealed).unwrap(), b"secret");
        }
        assert!(
            SecretBox::single(&old).open("totp:u1", &during).is_err(),
            "sealed with the new key"
        );
        assert!(
            sealing.open("totp:u2", &before).is_err(),
            "bound to its context"
        );
        assert_eq!(sealing.reseal("totp:u1", &during).unwrap(), None);
        let resealed = sealing.reseal("totp:u1", &before).unwrap().unwrap();
        assert_eq!(
            &*SecretBox::single(&new).open("totp:u1", &resealed).unwrap(),
            b"secret"
        );
        assert!(
            SecretBox::single(&key(3))
                .reseal("totp:u1", &before)
                .is_err()
        );
    }

    #[test]
    fn previous_keys_must_parse_and_differ_from_the_sealing_key() {
        let dir = tempfile::tempdir().unwrap();
        let (primary, old) = (hex::encode([4u8; 32]), hex::encode([5u8; 32]));
        let (ring, _) = KeyRing::load(Some(&primary), &[&old], dir.path()).unwrap();
        assert_eq!(ring.keys().count(), 2);
        assert_eq!(
            ring.find(&key(5).fingerprint()).unwrap().fingerprint(),
            key(5).fingerprint()
        );
        assert!(ring.find(&key(6).fingerprint()).is_none());
        let err = KeyRing::load(Some(&primary), &[&old, "short"], dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("`secrets.previous_keys`: key 2: must"),
            "{err}"
        );
        let err = KeyRing::load(Some(&primary), &[&primary], dir.path()).unwrap_err();
        assert!(err.to_string().contains("is `secrets.key` itself"), "{err}");
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_debug_hides_the_key() {
        let key = SecretsKey::parse(&hex::encode([9u8; 32])).unwrap();
        assert_ne!(*key.derive("a"), *key.derive("b"));
        assert_eq!(format!("{key:?}"), "SecretsKey(<redacted>)");
    }
}
