package sark.rate_limiting_test

import rego.v1

import data.sark.rate_limiting

defaults := {"unauthenticated_per_minute": 100, "authenticated_per_minute": 1000}

request(principal_type, role, route, method) := {
	"principal_type": principal_type,
	"role": role,
	"route": route,
	"method": method,
	"defaults": defaults,
}

test_anonymous_logins_are_tightly_limited if {
	rate_limiting.limit == 33 with input as request("anonymous", null, "/api/v1/auth/login", "POST")
	rate_limiting.limit == 33 with input as request("anonymous", null, "/api/v1/auth/refresh", "POST")
}

test_limits_follow_the_configured_defaults if {
	low := object.union(request("anonymous", null, "/api/v1/auth/login", "POST"), {"defaults": {"unauthenticated_per_minute": 2, "authenticated_per_minute": 1}})
	rate_limiting.limit == 1 with input as low
	rate_limiting.limit == 1 with input as object.union(request("session", "viewer", "/api/v1/servers", "GET"), {"defaults": {"unauthenticated_per_minute": 2, "authenticated_per_minute": 1}})
}

test_api_keys_evaluating_policies_get_a_high_limit if {
	rate_limiting.limit == 6000 with input as request("api_key", "operator", "/api/v1/authz/evaluate", "POST")
}

test_viewer_sessions_get_a_lower_ceiling if {
	rate_limiting.limit == 300 with input as request("session", "viewer", "/api/v1/servers", "GET")
}

test_other_requests_use_the_configured_default if {
	not rate_limiting.limit with input as request("session", "admin", "/api/v1/servers", "GET")
	not rate_limiting.limit with input as request("anonymous", null, "/health", "GET")
}
