//! Authorization of SARK's own resource routes through the active `authorization` bundle.
//!
//! Each guarded route names an action and a resource (documented in docs/api.md). The
//! policy decides through `data.<package>.allow`; undefined means deny, an evaluation
//! error denies, and every denial is audited.

use std::net::IpAddr;

use axum::http::StatusCode;
use serde_json::{Value, json};
use tracing::warn;

use super::principal::Principal;
use crate::http::errors::ApiError;
use crate::node::Node;

/// The bundle that guards SARK's API.
pub const AUTHORIZATION_BUNDLE: &str = "authorization";

/// The policy input for `principal` doing `action` on `resource`.
pub fn policy_input(
    node: &Node,
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
            "time": node.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "ip": ip.map(|ip| ip.to_string()),
            "node_id": node.node_id,
        },
    })
}

/// Whether the policy allows it, without auditing a denial (for checks such as "may this
/// user grant that scope").
pub fn allowed(
    node: &Node,
    principal: &Principal,
    action: &str,
    resource: &str,
    ip: Option<IpAddr>,
) -> bool {
    let Some(bundle) = node.policies.get(AUTHORIZATION_BUNDLE) else {
        return false;
    };
    let input = policy_input(node, principal, action, resource, ip);
    matches!(
        bundle.eval_rule("allow", input),
        Ok(Some(Value::Bool(true)))
    )
}

/// Allows the request or answers 403 with the policy's reason.
pub async fn authorize(
    node: &Node,
    principal: &Principal,
    action: &str,
    resource: &str,
    ip: Option<IpAddr>,
) -> Result<(), ApiError> {
    let Some(bundle) = node.policies.get(AUTHORIZATION_BUNDLE) else {
        return Err(ApiError::unavailable(
            "policy_unavailable",
            "the authorization policy is not loaded yet",
        ));
    };
    let input = policy_input(node, principal, action, resource, ip);
    let (reason, detail) = match bundle.eval_rule("allow", input.clone()) {
        Ok(Some(Value::Bool(true))) => return Ok(()),
        Ok(_) => {
            let reason = match bundle.eval_rule("reason", input) {
                Ok(Some(Value::String(reason))) => reason,
                _ => "the authorization policy does not allow this".to_owned(),
            };
            (reason, None)
        }
        Err(err) => {
            node.actor_metrics
                .policy_evaluation_errors
                .with_label_values(&[AUTHORIZATION_BUNDLE])
                .inc();
            warn!(error = %err, action, resource, "authorization policy failed to evaluate; denying");
            (
                "the authorization policy failed to evaluate".to_owned(),
                Some(err.to_string()),
            )
        }
    };
    let mut event = node.audit.event("authz_denied", "denied");
    event.actor = Some(principal.username.clone());
    event.ip = ip.map(|ip| ip.to_string());
    event.resource = Some(resource.to_owned());
    event.details = json!({
        "action": action,
        "reason": reason,
        "policy": AUTHORIZATION_BUNDLE,
        "policy_version": bundle.version,
        "error": detail,
    });
    node.record_audit(event).await;
    Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", reason))
}
