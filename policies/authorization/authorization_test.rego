package sark.authz_test

import rego.v1

import data.sark.authz

user(role) := {"id": "u1", "username": "u", "role": role, "teams": [], "mfa_enabled": false, "mfa_verified": false, "auth_method": "password"}

request(role, action, resource) := {
	"user": user(role),
	"principal_type": "session",
	"scopes": [],
	"action": action,
	"resource": resource,
	"context": {"time": "2026-11-26T12:00:00Z", "ip": "127.0.0.1", "node_id": "n1"},
}

test_admin_may_delete_servers if authz.allow with input as request("admin", "write", "servers")

test_admin_may_write_users if authz.allow with input as request("admin", "write", "users")

test_operator_may_read_and_write_servers if {
	authz.allow with input as request("operator", "read", "servers")
	authz.allow with input as request("operator", "write", "servers")
}

test_operator_may_read_policies if authz.allow with input as request("operator", "read", "policies")

test_operator_may_not_write_policies if not authz.allow with input as request("operator", "write", "policies")

test_operator_may_not_touch_users if {
	not authz.allow with input as request("operator", "read", "users")
	not authz.allow with input as request("operator", "write", "users")
}

test_viewer_may_read_servers if authz.allow with input as request("viewer", "read", "servers")

test_viewer_may_not_write_servers if not authz.allow with input as request("viewer", "write", "servers")

test_viewer_may_not_read_policies if not authz.allow with input as request("viewer", "read", "policies")

test_unknown_role_is_denied if not authz.allow with input as request("intruder", "read", "servers")

test_denial_says_why if {
	authz.reason == "the role does not permit this action" with input as request("viewer", "write", "servers")
}

mfa_admin(verified) := object.union(request("admin", "write", "policies"), {"user": object.union(user("admin"), {"mfa_enabled": true, "mfa_verified": verified})})

test_admin_with_mfa_must_verify_it_to_write_policies if {
	not authz.allow with input as mfa_admin(false)
	authz.reason == "this action needs a verified second factor" with input as mfa_admin(false)
	authz.allow with input as mfa_admin(true)
}

test_admin_with_unverified_mfa_may_still_read if {
	authz.allow with input as object.union(mfa_admin(false), {"action": "read"})
}

api_key(role, scopes, action, resource) := object.union(request(role, action, resource), {"principal_type": "api_key", "scopes": scopes})

test_api_key_is_limited_to_its_scopes if {
	authz.allow with input as api_key("admin", ["read:servers"], "read", "servers")
	not authz.allow with input as api_key("admin", ["read:servers"], "write", "servers")
	authz.reason == "the API key's scopes do not include this action" with input as api_key("admin", ["read:servers"], "write", "servers")
}

test_api_key_scope_never_exceeds_the_role if not authz.allow with input as api_key("viewer", ["write:servers"], "write", "servers")

test_admin_scope_grants_what_the_role_grants if authz.allow with input as api_key("admin", ["admin"], "write", "users")
