//! The keys that hash rather than seal: the audit chains' key and the recovery codes' key.
//!
//! What they hashed cannot be hashed again (the events reached the SIEM with their hashes,
//! and only its user knows a recovery code), so they must outlive the secrets key they
//! were derived from. The store keeps them, sealed with the secrets key (meta
//! [`HASHING_KEYS_META`]): replacing the secrets key seals them again and leaves them as
//! they are. A store that has none yet gets them derived from the key its fingerprint
//! names, exactly as they were derived before they were kept.

use std::sync::Arc;

use sark_actors::audit::{ChainKey, ChainKeySource};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::secrets::{FINGERPRINT_META_KEY, KeyRing, SecretBox, SecretsKey};
use crate::store::{Store, StoreError};

/// Store key under which the hashing keys are kept, sealed.
pub const HASHING_KEYS_META: &str = "hashing_keys";

/// What the sealed hashing keys are bound to.
const SEALING_CONTEXT: &str = "meta:hashing_keys";

/// The keys, opened.
pub struct HashingKeys {
    /// Keys the audit chains' hashes and seals.
    pub audit_chain: ChainKey,
    /// Keys the stored hashes of MFA recovery codes.
    pub recovery_codes: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for HashingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashingKeys(<redacted>)")
    }
}

/// The stored form, sealed as JSON: the derived secrets, hex.
#[derive(Serialize, Deserialize)]
struct Stored {
    audit_chain: String,
    recovery_codes: String,
}

impl Stored {
    /// The secrets derived from `key` as nodes have always derived them.
    fn derived_from(key: &SecretsKey) -> Self {
        Self {
            audit_chain: hex::encode(&*key.derive("audit chain")),
            recovery_codes: hex::encode(&*key.derive("mfa recovery codes")),
        }
    }

    fn open(self) -> Result<HashingKeys, CustodyError> {
        let decode = |text: &str| hex::decode(text).map_err(|_| CustodyError::Unreadable);
        Ok(HashingKeys {
            audit_chain: ChainKey::derive(&Zeroizing::new(decode(&self.audit_chain)?)),
            recovery_codes: Zeroizing::new(decode(&self.recovery_codes)?),
        })
    }
}

/// Why the store's keys are not at hand.
#[derive(Debug, thiserror::Error)]
pub enum CustodyError {
    /// The store did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store was sealed with a key that is not configured.
    #[error(
        "`secrets.key`: this database is sealed with a different secrets key (fingerprint {stored}); every node must use the same key, or hold it in `secrets.previous_keys` while it is being replaced"
    )]
    WrongKey {
        /// The fingerprint the store recorded.
        stored: String,
    },
    /// The stored hashing keys do not open with any configured key.
    #[error(
        "`secrets.key`: the stored hashing keys ({HASHING_KEYS_META}) do not open with any configured key"
    )]
    Unreadable,
}

impl From<CustodyError> for Error {
    fn from(err: CustodyError) -> Self {
        match err {
            CustodyError::Store(err) => err.into(),
            other => Error::internal(other.to_string()),
        }
    }
}

/// Holds the secrets keys a node was given and opens what the store keeps with them.
pub struct KeyCustody {
    ring: KeyRing,
    sealer: SecretBox,
    store: Arc<dyn Store>,
    opened: tokio::sync::OnceCell<Arc<HashingKeys>>,
}

impl std::fmt::Debug for KeyCustody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCustody").finish_non_exhaustive()
    }
}

impl KeyCustody {
    /// Custody of `ring` over `store`; nothing is read until asked.
    pub fn new(ring: KeyRing, store: Arc<dyn Store>) -> Self {
        Self {
            sealer: SecretBox::new(&ring),
            ring,
            store,
            opened: tokio::sync::OnceCell::new(),
        }
    }

    /// Seals with the sealing key and opens with any key of the ring.
    pub fn sealer(&self) -> &SecretBox {
        &self.sealer
    }

    /// The keys given to this node.
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// The key the store says it is sealed with, recorded as the sealing key on a store
    /// that says nothing yet; refused when it is not one of the ring's.
    pub async fn store_key(&self) -> Result<&SecretsKey, CustodyError> {
        let stored = self
            .store
            .put_meta_if_absent(FINGERPRINT_META_KEY, &self.ring.primary().fingerprint())
            .await?;
        self.ring
            .find(&stored)
            .ok_or(CustodyError::WrongKey { stored })
    }

    /// The hashing keys, read (or, the first time, derived and stored) once.
    pub async fn keys(&self) -> Result<Arc<HashingKeys>, CustodyError> {
        self.opened
            .get_or_try_init(|| async {
                let root = self.store_key().await?;
                let sealed = match self.store.meta(HASHING_KEYS_META).await? {
                    Some(sealed) => sealed,
                    None => {
                        let fresh = self.seal(&Stored::derived_from(root))?;
                        self.store
                            .put_meta_if_absent(HASHING_KEYS_META, &fresh)
                            .await?
                    }
                };
                self.open(&sealed).map(Arc::new)
            })
            .await
            .cloned()
    }

    /// Seals the stored hashing keys again with the sealing key; says whether they were
    /// sealed with a previous one.
    pub async fn reseal(&self) -> Result<bool, CustodyError> {
        self.keys().await?;
        let sealed = self
            .store
            .meta(HASHING_KEYS_META)
            .await?
            .ok_or(CustodyError::Unreadable)?;
        match self
            .sealer
            .reseal(SEALING_CONTEXT, &sealed)
            .map_err(|_| CustodyError::Unreadable)?
        {
            Some(resealed) => {
                self.store.set_meta(HASHING_KEYS_META, &resealed).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Records the sealing key as the store's key, once everything is sealed with it.
    pub async fn adopt_sealing_key(&self) -> Result<(), CustodyError> {
        Ok(self
            .store
            .set_meta(FINGERPRINT_META_KEY, &self.ring.primary().fingerprint())
            .await?)
    }

    fn seal(&self, stored: &Stored) -> Result<String, CustodyError> {
        let json =
            Zeroizing::new(serde_json::to_vec(stored).map_err(|_| CustodyError::Unreadable)?);
        self.sealer
            .seal(SEALING_CONTEXT, &json)
            .map_err(|_| CustodyError::Unreadable)
    }

    fn open(&self, sealed: &str) -> Result<HashingKeys, CustodyError> {
        let json = self
            .sealer
            .open(SEALING_CONTEXT, sealed)
            .map_err(|_| CustodyError::Unreadable)?;
        serde_json::from_slice::<Stored>(&json)
            .map_err(|_| CustodyError::Unreadable)?
            .open()
    }
}

#[async_trait::async_trait]
impl ChainKeySource for KeyCustody {
    async fn chain_key(&self) -> Result<ChainKey, StoreError> {
        match self.keys().await {
            Ok(keys) => Ok(keys.audit_chain.clone()),
            Err(CustodyError::Store(err)) => Err(err),
            Err(other) => Err(StoreError::Internal(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::SecretsKey;
    use crate::store::AuditEvent;
    use crate::store::tests::sqlite_store;

    fn key(byte: u8) -> SecretsKey {
        SecretsKey::parse(&hex::encode([byte; 32])).unwrap()
    }

    fn event() -> AuditEvent {
        AuditEvent {
            id: uuid::Uuid::nil(),
            timestamp: chrono::DateTime::UNIX_EPOCH,
            event_type: "login".into(),
            actor: Some("jo".into()),
            ip: None,
            resource: None,
            outcome: "success".into(),
            details: serde_json::json!({}),
            node_id: "n1".into(),
        }
    }

    /// What a key hashes: an audit event and a recovery code.
    fn hashes_of(keys: &HashingKeys) -> (String, String) {
        (
            keys.audit_chain.hash("n1", 1, "genesis", &event()),
            crate::idp::totp::hash_recovery_code(
                &keys.recovery_codes,
                uuid::Uuid::nil(),
                "abcd-efgh-ijkl",
            ),
        )
    }

    #[tokio::test]
    async fn the_hashing_keys_outlive_the_secrets_key_they_came_from() {
        let (store, _guard) = sqlite_store().await;
        let (old, new) = (key(1), key(2));
        // As every node derived them before they were kept in the store.
        let derived = (
            ChainKey::derive(&old.derive("audit chain")).hash("n1", 1, "genesis", &event()),
            crate::idp::totp::hash_recovery_code(
                &old.derive("mfa recovery codes"),
                uuid::Uuid::nil(),
                "abcd-efgh-ijkl",
            ),
        );
        let first = KeyCustody::new(KeyRing::single(old.clone()), store.clone());
        assert_eq!(hashes_of(&first.keys().await.unwrap()), derived);

        let rotating = KeyCustody::new(KeyRing::new(new.clone(), vec![old.clone()]), store.clone());
        assert_eq!(hashes_of(&rotating.keys().await.unwrap()), derived);
        assert!(rotating.reseal().await.unwrap(), "sealed with the old key");
        assert!(
            !rotating.reseal().await.unwrap(),
            "nothing left to seal again"
        );
        rotating.adopt_sealing_key().await.unwrap();

        let after = KeyCustody::new(KeyRing::single(new.clone()), store.clone());
        assert_eq!(hashes_of(&after.keys().await.unwrap()), derived);
        let stale = KeyCustody::new(KeyRing::single(old.clone()), store.clone());
        let refused = stale.keys().await.unwrap_err();
        assert!(
            matches!(refused, CustodyError::WrongKey { .. }),
            "{refused}"
        );
        assert!(
            refused.to_string().contains(&new.fingerprint()),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn a_store_sealed_with_an_unknown_key_is_refused_before_anything_is_written() {
        let (store, _guard) = sqlite_store().await;
        KeyCustody::new(KeyRing::single(key(1)), store.clone())
            .keys()
            .await
            .unwrap();
        let other = KeyCustody::new(KeyRing::new(key(2), vec![key(3)]), store.clone());
        assert!(matches!(
            other.keys().await,
            Err(CustodyError::WrongKey { .. })
        ));
        assert!(matches!(
            other.reseal().await,
            Err(CustodyError::WrongKey { .. })
        ));
    }
}
