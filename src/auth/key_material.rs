//! The material of an API key: `sark_<prefix>_<secret>`. The prefix (8 lowercase hex
//! characters) finds the key; only a SHA-256 of the secret (256 random bits) is stored,
//! compared in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Every key starts with this.
pub const KEY_PREFIX: &str = "sark_";

/// A freshly made key: shown once, then only its hash is kept.
pub struct NewKey {
    /// The whole key, for the creator.
    pub key: Zeroizing<String>,
    /// Its public prefix.
    pub prefix: String,
    /// The stored hash.
    pub hash: String,
}

/// Makes a new key.
pub fn generate() -> NewKey {
    let mut prefix = [0u8; 4];
    let mut secret = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(&mut prefix);
    rand::thread_rng().fill_bytes(&mut *secret);
    let prefix = hex::encode(prefix);
    let secret = Zeroizing::new(URL_SAFE_NO_PAD.encode(*secret));
    NewKey {
        key: Zeroizing::new(format!("{KEY_PREFIX}{prefix}_{}", &*secret)),
        hash: hash_secret(&secret),
        prefix,
    }
}

/// Splits a presented key into prefix and secret; `None` if it is not shaped like one.
pub fn parse(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (prefix, secret) = rest.split_once('_')?;
    let well_formed = prefix.len() == 8
        && prefix.bytes().all(|b| b.is_ascii_hexdigit())
        && (40..=64).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then_some((prefix, secret))
}

fn hash_secret(secret: &str) -> String {
    crate::secrets::sha256_hex(secret)
}

/// Whether `secret` matches the stored hash, compared in constant time.
pub fn matches(secret: &str, stored_hash: &str) -> bool {
    hash_secret(secret)
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_only_their_own_secret_matches() {
        let new = generate();
        assert!(new.key.starts_with("sark_"));
        let (prefix, secret) = parse(&new.key).unwrap();
        assert_eq!(prefix, new.prefix);
        assert!(matches(secret, &new.hash));
        assert!(!matches(&secret.replace('a', "b"), &new.hash) || !secret.contains('a'));
        assert!(!new.hash.contains(secret));
        let other = generate();
        assert_ne!(other.key, new.key);
        assert!(!matches(secret, &other.hash));
    }

    #[test]
    fn malformed_keys_are_not_parsed() {
        for bad in [
            "",
            "sark_",
            "sark_zzzzzzzz_abc",
            "sark_0123abcd",
            "bearer sark_0123abcd_x",
            "sark_0123abcd_short",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
