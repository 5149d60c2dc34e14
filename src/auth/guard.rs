//! Authorization of SARK's own resource routes through the active `authorization` bundle.
//!
//! Each guarded route names an action and a resource (documented in docs/api.md). The
//! policy decides through `data.<package>.allow`; undefined means deny, an evaluation
//! error denies, and every denial is audited.

use std::net::IpAddr;

use serde_json::{Value, json};
use tracing::warn;

use sark_actors::policy::{PolicyError, RuleValue};

use super::principal::Principal;
use crate::core::Core;
use crate::error::{Error, ErrorKind};

/// The bundle that guards SARK's API.
pub const AUTHORIZATION_BUNDLE: &str = "authorization";

/// The policy input for `principal` doing `action` on `resource`.
pub fn policy_input(
    node: &Core,
    principal: &Principal,
    action: &str,
    resource: &str,
    ip: Option<IpAddr>,
) -> Value {
    json!({
        "user": {
            "id": principal.user_id,
            "username": principal.username,
            "role": principal.role,
            "teams": principal.teams,
            "mfa_enabled": principal.mfa_enabled,
            "mfa_verified": principal.mfa_verified,
            "auth_method": principal.auth_method,
        },
        "principal_type": principal.principal_type(),
        "scopes": principal.scopes(),
        "action": action,
        "resource": resource,
        "context": {
            "time": to_the_second(node.clock.now()),
            "ip": ip.map(|ip| ip.to_string()),
            "node_id": node.node_id,
        },
    })
}

/// `now` in RFC 3339 to the second, formatted once per second on each thread (every
/// policy input carries it).
fn to_the_second(now: chrono::DateTime<chrono::Utc>) -> String {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> =
            const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    LAST.with_borrow_mut(|(second, text)| {
        if *second != now.timestamp() {
            *second = now.timestamp();
            *text = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        }
        text.clone()
    })
}

/// An answer of the `authorization` bundle.
#[derive(Debug)]
pub struct Decision {
    /// Only `allow == true` allows; undefined, false or an error deny.
    pub allowed: bool,
    /// The policy's `reason`, or why it could not decide.
    pub reason: Option<String>,
    /// The bundle version that answered.
    pub version: i64,
    /// Whether the answer came from the decision cache.
    pub cached: bool,
    /// The evaluation failure, if it failed (the decision is then a denial).
    pub error: Option<PolicyError>,
}

/// Asks the active `authorization` bundle about `input`; 503 while it is not loaded.
pub fn decide(node: &Core, input: &Value) -> Result<Decision, Error> {
    let Some(bundle) = node.policies.get(AUTHORIZATION_BUNDLE) else {
        return Err(Error::unavailable(
            "policy_unavailable",
            "the authorization policy is not loaded yet",
        ));
    };
    let metrics = &node.actor_metrics;
    let decision = |allowed, reason, cached, error| Decision {
        allowed,
        reason,
        version: bundle.version,
        cached,
        error,
    };
    Ok(match bundle.eval("allow", input, metrics) {
        Ok(RuleValue {
            value: Some(Value::Bool(true)),
            cached,
        }) => decision(true, None, cached, None),
        Ok(allow) => match bundle.eval("reason", input, metrics) {
            Ok(RuleValue {
                value: Some(Value::String(reason)),
                cached,
            }) => decision(false, Some(reason), allow.cached && cached, None),
            Ok(reason) => decision(false, None, allow.cached && reason.cached, None),
            Err(err) => {
                let reason = "the authorization policy failed to evaluate".to_owned();
                decision(false, Some(reason), false, Some(err))
            }
        },
        Err(err) => {
            let reason = match err {
                PolicyError::LimitExceeded(_) => "the authorization policy ran out of time",
                _ => "the authorization policy failed to evaluate",
            };
            decision(false, Some(reason.to_owned()), false, Some(err))
        }
    })
}

/// Whether the policy allows it, without auditing a denial (for checks such as "may this
/// user grant that scope").
pub fn allowed(
    node: &Core,
    principal: &Principal,
    action: &str,
    resource: &str,
    ip: Option<IpAddr>,
) -> bool {
    let input = policy_input(node, principal, action, resource, ip);
    decide(node, &input).is_ok_and(|d| d.allowed)
}

/// Writes the `authz_denied` event of a denial.
pub async fn audit_denial(
    node: &Core,
    actor: &str,
    ip: Option<IpAddr>,
    action: &str,
    resource: &str,
    decision: &Decision,
) {
    if let Some(err) = &decision.error {
        warn!(error = %err, action, resource, "authorization policy failed to evaluate; denying");
    }
    let event = node
        .audit
        .event("authz_denied", "denied")
        .by(actor)
        .from_ip(ip)
        .on(resource.to_owned())
        .with_details(json!({
            "action": action,
            "reason": decision.reason,
            "policy": AUTHORIZATION_BUNDLE,
            "policy_version": decision.version,
            "error": decision.error.as_ref().map(ToString::to_string),
        }));
    node.record_audit(event).await;
}

/// A node cut off from the cluster (its lease lapsed) may have missed a policy activation:
/// it brings `bundle` up to the stored version before deciding, or answers 503.
async fn fenced_policy_check(node: &Core, bundle: &str) -> Result<(), Error> {
    if node.lease_fresh() {
        return Ok(());
    }
    match node.catch_up_policy(bundle).await {
        Ok(true) => Ok(()),
        _ => Err(Error::unavailable(
            "policy_unavailable",
            "this node is cut off from the cluster and cannot confirm the current policy version; retry",
        )),
    }
}

/// Allows the request or answers 403 with the policy's reason; every denial is audited.
pub async fn authorize(
    node: &Core,
    principal: &Principal,
    action: &str,
    resource: &str,
    ip: Option<IpAddr>,
) -> Result<(), Error> {
    fenced_policy_check(node, AUTHORIZATION_BUNDLE).await?;
    let input = policy_input(node, principal, action, resource, ip);
    let decision = decide(node, &input)?;
    if decision.allowed {
        return Ok(());
    }
    audit_denial(node, &principal.username, ip, action, resource, &decision).await;
    let reason = decision
        .reason
        .unwrap_or_else(|| "the authorization policy does not allow this".to_owned());
    Err(Error::new(ErrorKind::Forbidden, "forbidden", reason))
}
