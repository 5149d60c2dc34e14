package sark.rate_limiting_test

import rego.v1

import data.sark.rate_limiting

test_anonymous_logins_are_tightly_limited if {
	rate_limiting.limit == 30 with input as {"principal_type": "anonymous", "role": null, "route": "/api/v1/auth/login", "method": "POST"}
	rate_limiting.limit == 30 with input as {"principal_type": "anonymous", "role": null, "route": "/api/v1/auth/refresh", "method": "POST"}
}

test_api_keys_evaluating_policies_get_a_high_limit if {
	rate_limiting.limit == 6000 with input as {"principal_type": "api_key", "role": "operator", "route": "/api/v1/authz/evaluate", "method": "POST"}
}

test_viewer_sessions_get_a_lower_ceiling if {
	rate_limiting.limit == 300 with input as {"principal_type": "session", "role": "viewer", "route": "/api/v1/servers", "method": "GET"}
}

test_other_requests_use_the_configured_default if {
	not rate_limiting.limit with input as {"principal_type": "session", "role": "admin", "route": "/api/v1/servers", "method": "GET"}
	not rate_limiting.limit with input as {"principal_type": "anonymous", "role": null, "route": "/health", "method": "GET"}
}
