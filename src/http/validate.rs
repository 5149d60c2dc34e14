//! Input validation: each check names the field and the rule in its 400.

use std::convert::Infallible;
use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::errors::ApiError;
use super::middleware::ClientIp;

/// The client's address, when the connection has one.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<ClientIp>().map(|c| c.0)))
    }
}

/// A username: `^[a-z0-9][a-z0-9._-]{0,63}$`.
pub fn username(field: &str, value: &str) -> Result<String, ApiError> {
    let valid = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(ApiError::invalid_field(
            field,
            "must match ^[a-z0-9][a-z0-9._-]{0,63}$",
        ))
    }
}

/// The name of an existing account: a local username, or `<provider>:<name>` for an
/// account provisioned from an external provider (which no one can create locally).
pub fn account_name(field: &str, value: &str) -> Result<String, ApiError> {
    let external = value.split_once(':').is_some_and(|(provider, name)| {
        ["ldap", "oidc", "saml"].contains(&provider)
            && (1..=80).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-@".contains(&b))
    });
    if external {
        return Ok(value.to_owned());
    }
    username(field, value).map_err(|_| {
        ApiError::invalid_field(
            field,
            "must match ^[a-z0-9][a-z0-9._-]{0,63}$, or be <provider>:<name> for an external account",
        )
    })
}

/// An email address: one `@`, a non-empty local part, a dotted domain, at most 254 bytes.
pub fn email(field: &str, value: &str) -> Result<String, ApiError> {
    let bad = || ApiError::invalid_field(field, "must be an email address (local@domain.tld)");
    if value.len() > 254 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (local, domain) = value.split_once('@').ok_or_else(bad)?;
    let domain_ok = !domain.contains('@')
        && domain.contains('.')
        && domain
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63)
        && !domain.starts_with('-');
    if local.is_empty() || local.len() > 64 || !domain_ok {
        return Err(bad());
    }
    Ok(value.to_owned())
}

/// A bounded free-text string (no control characters).
pub fn text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    if value.chars().count() > max {
        return Err(ApiError::invalid_field(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

/// Team names: at most 64, each 1-64 characters without control characters.
pub fn teams(field: &str, values: &[String]) -> Result<Vec<String>, ApiError> {
    if values.len() > 64 {
        return Err(ApiError::invalid_field(field, "must list at most 64 teams"));
    }
    values
        .iter()
        .map(|t| {
            if t.is_empty() {
                return Err(ApiError::invalid_field(
                    field,
                    "team names must not be empty",
                ));
            }
            text(field, t, 64)
        })
        .collect()
}

/// A page size: 1-500, default 50.
pub fn limit(value: Option<u32>) -> Result<u32, ApiError> {
    match value {
        None => Ok(50),
        Some(n) if (1..=500).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid_field(
            "limit",
            "must be between 1 and 500",
        )),
    }
}

/// An opaque, URL-safe cursor wrapping a keyset position.
pub fn encode_cursor(position: &str) -> String {
    URL_SAFE_NO_PAD.encode(position.as_bytes())
}

/// Decodes a cursor made by [`encode_cursor`].
pub fn decode_cursor(value: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(value) = value else { return Ok(None) };
    let invalid = || ApiError::invalid_field("cursor", "is not a cursor this API issued");
    if value.len() > 512 {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(value).map_err(|_| invalid())?;
    String::from_utf8(bytes).map(Some).map_err(|_| invalid())
}

/// One page of rows fetched with `limit + 1` from a keyset query: at most `limit` rows,
/// and the cursor of the last one when more follow.
pub fn keyset_page<T>(
    mut rows: Vec<T>,
    limit: u32,
    key: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = more
        .then(|| rows.last().map(|r| encode_cursor(&key(r))))
        .flatten();
    (rows, next)
}

/// One page of an in-memory list (short lists such as one user's sessions or keys): the
/// items after the one whose key is `after`, at most `limit`, and the next cursor.
pub fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    limit: u32,
    after: Option<String>,
) -> (Vec<T>, Option<String>) {
    let start = match after {
        Some(after) => items
            .iter()
            .position(|i| key(i) == after)
            .map_or(items.len(), |p| p + 1),
        None => 0,
    };
    let limit = limit as usize;
    let rest: Vec<T> = items.into_iter().skip(start).collect();
    let more = rest.len() > limit;
    let page: Vec<T> = rest.into_iter().take(limit).collect();
    let next = more
        .then(|| page.last().map(|i| encode_cursor(&key(i))))
        .flatten();
    (page, next)
}

/// For `#[serde(default, deserialize_with = "validate::nullable")]`: a field that may be
/// absent (keep), `null` (clear) or a value.
pub fn nullable<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_contract() {
        for ok in ["a", "alice", "bob.smith-2", "0x_1", &"a".repeat(64)] {
            assert!(username("username", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Alice",
            ".bob",
            "-x",
            "a b",
            "é",
            &"a".repeat(65),
            "a/b",
            "*",
        ] {
            assert!(username("username", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_are_checked_for_shape() {
        assert!(email("email", "alice@example.org").is_ok());
        for bad in [
            "alice",
            "@example.org",
            "alice@",
            "alice@localhost",
            "a b@example.org",
            "a@b@c.org",
            "a@.org",
        ] {
            assert!(email("email", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_a_400() {
        assert_eq!(
            decode_cursor(Some(&encode_cursor("bob"))).unwrap(),
            Some("bob".into())
        );
        assert!(decode_cursor(Some("***")).is_err());
        assert_eq!(decode_cursor(None).unwrap(), None);
        assert!(limit(Some(0)).is_err() && limit(Some(501)).is_err());
        assert_eq!(limit(None).unwrap(), 50);
    }

    #[test]
    fn the_fuzz_corpus_of_cursors_is_refused_or_read_without_panicking() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/cursor");
        for entry in std::fs::read_dir(dir).unwrap() {
            let cursor = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let _ = decode_cursor(Some(&cursor));
        }
    }

    proptest::proptest! {
        #[test]
        fn fuzz_any_cursor_is_refused_or_read(cursor in proptest::string::string_regex("(?s).{0,700}").unwrap()) {
            if let Ok(Some(position)) = decode_cursor(Some(&cursor)) {
                proptest::prop_assert_eq!(encode_cursor(&position), cursor);
            }
        }

        #[test]
        fn fuzz_cursors_round_trip(position in "[ -~]{0,380}") {
            proptest::prop_assert_eq!(decode_cursor(Some(&encode_cursor(&position))).unwrap(), Some(position));
        }
    }
}
