//! The check that keeps an `authorization` bundle from locking the admins out.
//!
//! Before a new authorization version becomes active it is evaluated over a matrix of admin
//! sessions: every auth method, with MFA off, on and verified, or on and not verified, from
//! several addresses, at several moments from now to a year ahead. At every moment, some
//! admin session must still be allowed to write policies; otherwise nobody could repair the
//! policy over the API (the break-glass is `sark admin policy-rollback`).

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::{Value, json};

use sark_actors::policy::{CompiledBundle, PolicyError};

const AUTH_METHODS: &[&str] = &["password", "ldap", "oidc", "saml"];

/// `(mfa_enabled, mfa_verified)`.
const MFA_STATES: &[(bool, bool)] = &[(false, false), (true, true), (true, false)];

const ADDRESSES: &[Option<&str>] = &[
    None,
    Some("127.0.0.1"),
    Some("10.0.0.1"),
    Some("172.16.0.1"),
    Some("192.168.1.1"),
    Some("203.0.113.10"),
    Some("::1"),
];

const LATER: &[Duration] = &[
    Duration::zero(),
    Duration::hours(1),
    Duration::hours(13),
    Duration::days(1),
    Duration::days(3),
    Duration::days(7),
    Duration::days(30),
    Duration::days(90),
    Duration::days(365),
];

fn admin_input(
    method: &str,
    (mfa_enabled, mfa_verified): (bool, bool),
    ip: Option<&str>,
    at: DateTime<Utc>,
    node_id: &str,
) -> Value {
    json!({
        "user": {
            "id": uuid::Uuid::nil(),
            "username": "admin",
            "role": "admin",
            "teams": [],
            "mfa_enabled": mfa_enabled,
            "mfa_verified": mfa_verified,
            "auth_method": method,
        },
        "principal_type": "session",
        "scopes": [],
        "action": "write",
        "resource": "policies",
        "context": {
            "time": at.to_rfc3339_opts(SecondsFormat::Secs, true),
            "ip": ip,
            "node_id": node_id,
        },
    })
}

/// Ok when, at each checked moment, some admin session may write policies under
/// `compiled`; otherwise the first moment at which none may.
pub fn admins_keep_policy_writes(
    compiled: &CompiledBundle,
    now: DateTime<Utc>,
    node_id: &str,
) -> Result<(), String> {
    for later in LATER {
        let at = now + *later;
        let mut allowed = false;
        'search: for method in AUTH_METHODS {
            for mfa in MFA_STATES {
                for ip in ADDRESSES {
                    let input = admin_input(method, *mfa, *ip, at, node_id);
                    match compiled.eval_rule("allow", &input) {
                        Ok(Some(Value::Bool(true))) => {
                            allowed = true;
                            break 'search;
                        }
                        Ok(_) => {}
                        // Each evaluation could take the whole limit: one is enough to know
                        // that admins would be refused while it runs out.
                        Err(PolicyError::LimitExceeded(limit)) => {
                            return Err(format!(
                                "evaluating an admin's policy write ran past the {} ms limit",
                                limit.as_millis()
                            ));
                        }
                        Err(_) => {}
                    }
                }
            }
        }
        if !allowed {
            return Err(format!(
                "at {} no admin session (any auth method, with or without MFA, from any \
                 address) could write policies",
                at.to_rfc3339_opts(SecondsFormat::Secs, true)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sark_actors::policy::{PolicySettings, compile};

    fn check(source: &str) -> Result<(), String> {
        let compiled =
            compile("authorization", 1, "x", source, &PolicySettings::default()).unwrap();
        let now = DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        admins_keep_policy_writes(&compiled, now, "node-1")
    }

    #[test]
    fn the_built_in_and_the_handoff_policies_keep_admins_in() {
        check(crate::policy::BUILTIN_POLICIES[0].1).unwrap();
        let handoff = "package sark.authz\n\
            allow { input.user.role == \"admin\" }\n\
            allow { input.action == \"read\"; input.user.role == \"viewer\" }\n";
        check(handoff).unwrap();
        // Only some admins may: still a way in.
        check("package sark.authz\nallow if input.user.mfa_verified\n").unwrap();
        check("package sark.authz\nallow if input.user.auth_method == \"saml\"\n").unwrap();
    }

    #[test]
    fn policies_that_shut_every_admin_out_now_or_later_are_refused() {
        for source in [
            "package sark.authz\nallow if input.user.role == \"viewer\"\n",
            "package sark.authz\nallow := false\n",
            "package sark.authz\ndeny := true\n",
            "package sark.authz\nallow if input.action == \"read\"\n",
            // Expires in a month.
            "package sark.authz\nallow if time.parse_rfc3339_ns(input.context.time) < time.parse_rfc3339_ns(\"2026-12-20T00:00:00Z\")\n",
            // Fails to evaluate for everyone.
            "package sark.authz\nallow if to_number(input.user.username) > 0\n",
        ] {
            let err = check(source).unwrap_err();
            assert!(err.contains("could write policies"), "{source}: {err}");
        }
    }
}
