//! Access tokens: JWTs signed with Ed25519 (`EdDSA`), verified locally with the algorithm
//! pinned and `iss`, `aud` and `exp` checked.
//!
//! Signing keys live in the store, their private halves sealed with the secrets key, so
//! every node signs and verifies with the same keys. The first start creates one; `sark
//! admin rotate-signing-key` adds a new active key, and the retired one keeps verifying
//! until every token it signed has expired.

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

use crate::secrets::SecretBox;
use crate::store::{SigningKeyRecord, SigningKeyStore, StoreError};

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

/// The node's signing and verification keys.
pub struct TokenKeys {
    set: RwLock<Arc<KeySet>>,
    sealer: SecretBox,
    settings: TokenSettings,
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
        .seal(&format!("signing_key:{kid}"), pkcs8.as_ref())
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
            .open(&format!("signing_key:{}", active.kid), &active.private_key)
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
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
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
            .map(|data| data.claims)
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
