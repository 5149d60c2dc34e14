//! TOTP (RFC 6238: SHA-1, 6 digits, 30-second steps, one step of skew either way) and
//! one-time recovery codes.

use base64::Engine as _;
use rand::Rng;
use totp_rs::{Builder, Totp};

/// The issuer shown in authenticator apps.
pub const ISSUER: &str = "SARK";
/// Recovery codes issued at confirmation.
pub const RECOVERY_CODES: usize = 10;

/// What a user needs to add the secret to an authenticator app.
#[derive(Debug)]
pub struct Enrollment {
    /// The secret in base32.
    pub secret: String,
    /// `otpauth://totp/…` URI.
    pub otpauth_uri: String,
    /// The URI as a QR code, PNG, base64.
    pub qr_png_base64: String,
}

/// Why TOTP material could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TOTP: {0}")]
pub struct TotpError(String);

/// A new random 160-bit secret.
pub fn new_secret() -> zeroize::Zeroizing<Vec<u8>> {
    let mut secret = zeroize::Zeroizing::new(vec![0u8; 20]);
    rand::thread_rng().fill(&mut secret[..]);
    secret
}

fn totp(secret: &[u8], account: &str) -> Result<Totp, TotpError> {
    Builder::new()
        .with_secret(secret.to_vec())
        .with_skew(1)
        .with_issuer(Some(ISSUER))
        // The otpauth label separates issuer and account with `:`, so an account name may
        // not hold one; external accounts (`oidc:jo`) are shown as `oidc/jo`.
        .with_account_name(account.replace(':', "/"))
        .build()
        .map_err(|e| TotpError(e.to_string()))
}

/// The enrolment material for `secret`, labelled with `account`.
pub fn enrollment(secret: &[u8], account: &str) -> Result<Enrollment, TotpError> {
    let totp = totp(secret, account)?;
    let png = totp.to_qr_png().map_err(|e| TotpError(e.to_string()))?;
    Ok(Enrollment {
        secret: base32_encode(secret),
        otpauth_uri: totp.to_url().map_err(|e| TotpError(e.to_string()))?,
        qr_png_base64: base64::engine::general_purpose::STANDARD.encode(png),
    })
}

/// The time step a code is valid for at `unix_seconds` (within one step of skew), if any.
pub fn verify(secret: &[u8], code: &str, unix_seconds: u64) -> Option<i64> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let totp = totp(secret, "verify").ok()?;
    totp.check(code, unix_seconds)
        .and_then(|step| i64::try_from(step).ok())
}

fn base32_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let mut buffer = 0u32;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Ten new recovery codes, `xxxx-xxxx-xxxx` from an unambiguous alphabet.
pub fn recovery_codes() -> Vec<String> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    (0..RECOVERY_CODES)
        .map(|_| {
            let chars: String = (0..12)
                .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
                .collect();
            format!("{}-{}-{}", &chars[0..4], &chars[4..8], &chars[8..12])
        })
        .collect()
}

/// Whether `code` looks like a recovery code rather than a TOTP code.
pub fn is_recovery_code(code: &str) -> bool {
    normalize_recovery_code(code).len() == 12
}

fn normalize_recovery_code(code: &str) -> String {
    code.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The stored form of a recovery code: an HMAC keyed by a key derived from the secrets
/// key and bound to the user, so a database dump alone cannot be cracked offline.
pub fn hash_recovery_code(key: &[u8], user_id: uuid::Uuid, code: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(user_id.as_bytes());
    mac.update(normalize_recovery_code(code).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn external_account_names_make_valid_labels() {
        let enrollment = super::enrollment(&[7u8; 20], "oidc:test.user").unwrap();
        let uri = &enrollment.otpauth_uri;
        assert!(
            uri.contains("oidc%2Ftest.user") || uri.contains("oidc/test.user"),
            "{uri}"
        );
    }

    use super::*;

    /// RFC 6238 appendix B, SHA-1 secret "12345678901234567890", truncated to 6 digits.
    #[test]
    fn codes_match_the_rfc_test_vectors_and_report_their_step() {
        let secret = b"12345678901234567890";
        assert_eq!(verify(secret, "287082", 59), Some(1));
        assert_eq!(verify(secret, "081804", 1_111_111_109), Some(37_037_036));
        assert_eq!(
            verify(secret, "081804", 1_111_111_109 + 30),
            Some(37_037_036),
            "one step of skew"
        );
        assert_eq!(verify(secret, "081804", 1_111_111_109 + 90), None);
        assert_eq!(verify(secret, "28708", 59), None);
        assert_eq!(verify(secret, "abcdef", 59), None);
    }

    #[test]
    fn base32_matches_rfc_4648() {
        assert_eq!(base32_encode(b"foobar"), "MZXW6YTBOI");
        assert_eq!(
            base32_encode(b"12345678901234567890"),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
    }

    #[test]
    fn enrollment_gives_a_uri_and_a_png() {
        let secret = new_secret();
        let e = enrollment(&secret, "alice").unwrap();
        assert!(
            e.otpauth_uri.starts_with("otpauth://totp/SARK:alice?"),
            "{}",
            e.otpauth_uri
        );
        assert!(e.otpauth_uri.contains(&e.secret));
        let png = base64::engine::general_purpose::STANDARD
            .decode(&e.qr_png_base64)
            .unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }

    #[test]
    fn recovery_codes_are_distinct_and_hash_regardless_of_format() {
        let codes = recovery_codes();
        assert_eq!(codes.len(), 10);
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 10);
        assert!(is_recovery_code(&codes[0]) && !is_recovery_code("123456"));
        let (key, user) = (b"key".as_slice(), uuid::Uuid::new_v4());
        let hash = hash_recovery_code(key, user, &codes[0]);
        let reformatted = codes[0].to_uppercase().replace('-', " ");
        assert_eq!(hash, hash_recovery_code(key, user, &reformatted));
        assert_ne!(hash, hash_recovery_code(b"other key", user, &codes[0]));
        assert_ne!(
            hash,
            hash_recovery_code(key, uuid::Uuid::new_v4(), &codes[0])
        );
    }
}
