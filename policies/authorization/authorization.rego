# SARK's built-in authorization policy: who may do what to SARK's own resources.
#
# Input: {"user": {"id", "username", "role", "teams", "mfa_enabled", "mfa_verified",
#         "auth_method"}, "principal_type": "session" | "api_key", "scopes": [...],
#         "action": "read" | "write" | "evaluate", "resource": "servers" | "users" |
#         "policies" | "audit" | "cluster" | "authz", "context": {"time", "ip", "node_id"}}
package sark.authz

import rego.v1

default allow := false

allow if {
	role_permits
	mfa_satisfied
	scope_permits
}

# Admins may do everything; the other roles' rights are spelled out rule by rule (a
# literal map of rights would be rebuilt on every evaluation).
role_permits if input.user.role == "admin"

role_permits if {
	input.user.role == "operator"
	input.resource == "servers"
	input.action in ["read", "write"]
}

role_permits if {
	input.user.role == "operator"
	input.resource == "policies"
	input.action == "read"
}

role_permits if {
	input.user.role == "operator"
	input.resource == "authz"
	input.action == "evaluate"
}

role_permits if {
	input.user.role == "viewer"
	input.resource == "servers"
	input.action == "read"
}

# Writes to users and policies change who may do what: an admin who has MFA enabled must
# have verified the second factor in this session.
sensitive_write if {
	input.action == "write"
	input.resource in ["users", "policies"]
}

mfa_satisfied if not sensitive_write

mfa_satisfied if not input.user.mfa_enabled

mfa_satisfied if input.user.mfa_verified == true

# API keys are further limited to their scopes (`<action>:<resource>` or `admin`).
scope_permits if input.principal_type != "api_key"

scope_permits if "admin" in input.scopes

scope_permits if concat(":", [input.action, input.resource]) in input.scopes

reason := "the role does not permit this action" if not role_permits

reason := "this action needs a verified second factor" if {
	role_permits
	not mfa_satisfied
}

reason := "the API key's scopes do not include this action" if {
	role_permits
	mfa_satisfied
	not scope_permits
}
