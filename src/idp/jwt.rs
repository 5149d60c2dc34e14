//! Access tokens: JWTs signed with Ed25519 (`EdDSA`), verified locally with the algorithm
//! pinned and `iss`, `aud` and `exp` checked.
//!
//! Signing keys live in the store, their private halves sealed with the secrets key, so
//! every node signs and verifies with the same keys. The first start creates one; `sark
//! admin rotate-signing-key` adds a new active key, and the retired one keeps verifying
//! until every token it signed has expired.
//!
//! A verified token is remembered (by its SHA-256, at most [`VERIFIED_CAPACITY`] of them),
//! so a client's next request with it skips the Ed25519 verification, the one costly step
//! of an authenticated request. A remembered token is accepted only while its signing key
//! is still in the key set and its `exp` (with the leeway) has not passed; revocation is
//! checked after this, on every request, remembered or not.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::secrets::{SecretBox, sealing_context};
use crate::store::{SealedKind, SigningKeyRecord, SigningKeyStore, StoreError};

/// The one algorithm SARK signs and accepts.
pub const ALGORITHM: &str = "EdDSA";
/// Clock skew tolerated when checking `exp`, in seconds.
pub const LEEWAY_SECONDS: u64 = 30;

/// The claims of a SARK access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The user's id.
    pub sub: String,
    /// The session's id.
    pub sid: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
    /// The user's name.
    pub username: String,
    /// The user's email when the token was issued, so `/auth/me` needs no store read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The user's role when the token was issued.
    pub role: String,
    /// The user's teams when the token was issued.
    pub teams: Vec<String>,
    /// Whether the user had MFA enabled when the token was issued.
    pub mfa_enabled: bool,
    /// Whether a second factor was verified in this session.
    pub mfa: bool,
    /// How the user authenticated (`password`, `ldap`, …).
    pub amr: String,
}

/// Why a token was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token is malformed, has a bad signature, or fails a claim check.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token names a key this node does not know (yet).
    #[error("unknown signing key")]
    UnknownKey,
    /// Stored key material could not be used.
    #[error("signing keys unusable: {0}")]
    Keys(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct VerifyKey {
    decoding: DecodingKey,
    public: String,
}

struct KeySet {
    signing_kid: String,
    signing: EncodingKey,
    verifying: HashMap<String, VerifyKey>,
}

/// Issuer and audience of tokens, and their lifetime.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// `iss` of issued tokens, required of accepted ones.
    pub issuer: String,
    /// `aud` of issued tokens, required of accepted ones.
    pub audience: String,
    /// Access-token lifetime.
    pub lifetime: Duration,
}

/// Verified tokens remembered at most; when full, the memory starts over.
pub const VERIFIED_CAPACITY: usize = 16_384;

/// A verified token: its claims and the key that verified it.
struct Verified {
    claims: AccessClaims,
    kid: String,
}

/// The node's signing and verification keys.
pub struct TokenKeys {
    set: RwLock<Arc<KeySet>>,
    sealer: SecretBox,
    settings: TokenSettings,
    verified: RwLock<HashMap<[u8; 32], Arc<Verified>>>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Makes a new Ed25519 signing key, its private half sealed for the store.
pub fn new_signing_key(
    sealer: &SecretBox,
    now: DateTime<Utc>,
) -> Result<SigningKeyRecord, TokenError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| TokenError::Keys("key generation failed".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| TokenError::Keys("generated key unusable".into()))?;
    let mut id = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut id);
    let kid = hex::encode(id);
    let private_key = sealer
        .seal(
            &sealing_context(SealedKind::SigningKey, &kid),
            pkcs8.as_ref(),
        )
        .map_err(|e| TokenError::Keys(e.to_string()))?;
    Ok(SigningKeyRecord {
        kid,
        algorithm: ALGORITHM.into(),
        private_key,
        public_key: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        created_at: now,
        retired_at: None,
    })
}

impl TokenKeys {
    /// Loads the keys from the store, creating the first one if there is none.
    pub async fn load(
        store: &dyn SigningKeyStore,
        sealer: SecretBox,
        settings: TokenSettings,
        now: DateTime<Utc>,
    ) -> Result<Self, TokenError> {
        let mut records = store.signing_keys().await?;
        if records.is_empty() {
            store
                .insert_first_signing_key(&new_signing_key(&sealer, now)?)
                .await?;
            records = store.signing_keys().await?;
        }
        let set = Self::build(&sealer, &settings, &records, now)?;
        Ok(Self {
            set: RwLock::new(Arc::new(set)),
            sealer,
            settings,
            verified: RwLock::new(HashMap::new()),
        })
    }

    /// Re-reads the keys (after a rotation, or on a token with an unknown `kid`).
    pub async fn reload(
        &self,
        store: &dyn SigningKeyStore,
        now: DateTime<Utc>,
    ) -> Result<(), TokenError> {
        let records = store.signing_keys().await?;
        let set = Self::build(&self.sealer, &self.settings, &records, now)?;
        *self.set.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        Ok(())
    }

    fn build(
        sealer: &SecretBox,
        settings: &TokenSettings,
        records: &[SigningKeyRecord],
        now: DateTime<Utc>,
    ) -> Result<KeySet, TokenError> {
        let active = records
            .iter()
            .find(|r| r.retired_at.is_none())
            .ok_or_else(|| TokenError::Keys("no active signing key".into()))?;
        let pkcs8 = sealer
            .open(
                &sealing_context(SealedKind::SigningKey, &active.kid),
                &active.private_key,
            )
            .map_err(|e| TokenError::Keys(e.to_string()))?;
        // A retired key verifies as long as a token it signed can still be unexpired.
        let keep =
            chrono::Duration::from_std(settings.lifetime + Duration::from_secs(LEEWAY_SECONDS))
                .unwrap_or(chrono::Duration::MAX);
        let mut verifying = HashMap::new();
        for record in records.iter().filter(|r| r.algorithm == ALGORITHM) {
            if record
                .retired_at
                .is_some_and(|retired| retired + keep < now)
            {
                continue;
            }
            let decoding = DecodingKey::from_ed_components(&record.public_key)
                .map_err(|e| TokenError::Keys(format!("key {}: {e}", record.kid)))?;
            verifying.insert(
                record.kid.clone(),
                VerifyKey {
                    decoding,
                    public: record.public_key.clone(),
                },
            );
        }
        Ok(KeySet {
            signing_kid: active.kid.clone(),
            signing: EncodingKey::from_ed_der(&pkcs8),
            verifying,
        })
    }

    fn current(&self) -> Arc<KeySet> {
        self.set
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The token settings.
    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// Signs `claims` with the active key.
    pub fn issue(&self, claims: &AccessClaims) -> Result<String, TokenError> {
        let set = self.current();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(set.signing_kid.clone());
        jsonwebtoken::encode(&header, claims, &set.signing)
            .map_err(|e| TokenError::Keys(e.to_string()))
    }

    /// Verifies a token: the header must say `EdDSA` and name a known key, the signature
    /// must hold, and `iss`, `aud` and `exp` must be right (with a small leeway).
    ///
    /// A token verified before is taken from memory if its key is still known and it has
    /// not expired at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<AccessClaims, TokenError> {
        let now = now.timestamp();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let remembered = self
            .verified
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&digest)
            .cloned();
        if let Some(verified) = remembered {
            if !self.current().verifying.contains_key(&verified.kid) {
                return Err(TokenError::UnknownKey);
            }
            let leeway = i64::try_from(LEEWAY_SECONDS).unwrap_or(i64::MAX);
            if verified.claims.exp.saturating_add(leeway) < now {
                return Err(TokenError::Invalid("ExpiredSignature".into()));
            }
            return Ok(verified.claims.clone());
        }
        let (claims, kid) = self.verify_signed(token)?;
        let mut verified = self
            .verified
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= VERIFIED_CAPACITY {
            verified.clear();
        }
        verified.insert(
            digest,
            Arc::new(Verified {
                claims: claims.clone(),
                kid,
            }),
        );
        Ok(claims)
    }

    /// The full verification, and the key that verified.
    fn verify_signed(&self, token: &str) -> Result<(AccessClaims, String), TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| TokenError::Invalid("no kid".into()))?;
        let set = self.current();
        let key = set.verifying.get(&kid).ok_or(TokenError::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECONDS;
        jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &validation)
            .map(|data| (data.claims, kid))
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// The public keys, as a JSON Web Key Set.
    pub fn jwks(&self) -> Value {
        let set = self.current();
        let mut kids: Vec<&String> = set.verifying.keys().collect();
        kids.sort();
        let keys: Vec<Value> = kids
            .into_iter()
            .filter_map(|kid| set.verifying.get(kid).map(|k| (kid, k)))
            .map(|(kid, key)| {
                json!({"kty": "OKP", "crv": "Ed25519", "x": key.public, "kid": kid, "alg": ALGORITHM, "use": "sig"})
            })
            .collect();
        json!({ "keys": keys })
    }
}

#[cfg(test)]
mod tests {
    // jsonwebtoken checks `exp` against the system clock: the tests' tokens follow it.
    #![allow(clippy::disallowed_methods)]

    use super::*;

    fn keys(records: &[SigningKeyRecord], sealer: &SecretBox) -> TokenKeys {
        let settings = TokenSettings {
            issuer: "sark".into(),
            audience: "sark-api".into(),
            lifetime: Duration::from_secs(900),
        };
        let set = TokenKeys::build(sealer, &settings, records, Utc::now()).unwrap();
        TokenKeys {
            set: RwLock::new(Arc::new(set)),
            sealer: sealer.clone(),
            settings,
            verified: RwLock::new(HashMap::new()),
        }
    }

    fn claims(now: i64, jti: &str) -> AccessClaims {
        AccessClaims {
            iss: "sark".into(),
            aud: "sark-api".into(),
            sub: "u".into(),
            sid: "s".into(),
            iat: now,
            exp: now + 60,
            jti: jti.into(),
            username: "bob".into(),
            email: None,
            role: "viewer".into(),
            teams: Vec::new(),
            mfa_enabled: false,
            mfa: false,
            amr: "password".into(),
        }
    }

    fn sealer() -> SecretBox {
        SecretBox::single(&crate::secrets::SecretsKey::parse(&"09".repeat(32)).unwrap())
    }

    #[test]
    fn a_remembered_token_expires_like_any_other() {
        let sealer = sealer();
        let keys = keys(&[new_signing_key(&sealer, Utc::now()).unwrap()], &sealer);
        let now = Utc::now();
        let token = keys.issue(&claims(now.timestamp(), "a")).unwrap();
        assert_eq!(keys.verify(&token, now).unwrap().jti, "a");
        assert_eq!(keys.verified.read().unwrap().len(), 1, "remembered");
        let at = |seconds| now + chrono::Duration::seconds(seconds);
        assert_eq!(keys.verify(&token, at(60 + 30)).unwrap().jti, "a");
        assert!(matches!(
            keys.verify(&token, at(60 + 31)),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn a_remembered_token_of_a_removed_key_is_refused() {
        let sealer = sealer();
        let old = new_signing_key(&sealer, Utc::now()).unwrap();
        let keys = keys(std::slice::from_ref(&old), &sealer);
        let now = Utc::now().timestamp();
        let token = keys.issue(&claims(now, "a")).unwrap();
        keys.verify(&token, Utc::now()).unwrap();
        // The old key retired long ago and a new one is active: the old one is gone.
        let retired = SigningKeyRecord {
            retired_at: Some(Utc::now() - chrono::Duration::days(1)),
            ..old
        };
        let new = new_signing_key(&sealer, Utc::now()).unwrap();
        let set = TokenKeys::build(&sealer, &keys.settings, &[new, retired], Utc::now()).unwrap();
        *keys.set.write().unwrap() = Arc::new(set);
        assert!(matches!(
            keys.verify(&token, Utc::now()),
            Err(TokenError::UnknownKey)
        ));
    }

    #[test]
    fn the_memory_of_verified_tokens_is_bounded_and_forged_tokens_are_not_remembered() {
        let sealer = sealer();
        let keys = keys(&[new_signing_key(&sealer, Utc::now()).unwrap()], &sealer);
        let now = Utc::now().timestamp();
        let token = keys.issue(&claims(now, "a")).unwrap();
        let (head, signature) = token.rsplit_once('.').unwrap();
        // Another first character: the signature no longer matches, whatever it was.
        let first = if signature.starts_with('A') { 'B' } else { 'A' };
        let forged = format!("{head}.{first}{}", &signature[1..]);
        assert!(keys.verify(&forged, Utc::now()).is_err());
        assert!(keys.verified.read().unwrap().is_empty());
        for i in 0..VERIFIED_CAPACITY + 10 {
            let token = keys.issue(&claims(now, &i.to_string())).unwrap();
            keys.verify(&token, Utc::now()).unwrap();
            assert!(keys.verified.read().unwrap().len() <= VERIFIED_CAPACITY);
        }
    }
}
