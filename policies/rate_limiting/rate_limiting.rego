# SARK's built-in rate-limiting policy: requests per minute for a principal on a route.
#
# Input: {"principal_type": "anonymous" | "session" | "api_key", "role": <role or null>,
#         "route": <route template>, "method": <HTTP method>,
#         "defaults": {"unauthenticated_per_minute", "authenticated_per_minute"}}
# The limits are shaped relative to the configured defaults
# (SARK_RATE_LIMIT__UNAUTHENTICATED_PER_MINUTE / _AUTHENTICATED_PER_MINUTE), which also
# apply wherever `limit` is undefined. Each distinct limit is counted in its own bucket.
package sark.rate_limiting

import rego.v1

# Routes that accept a credential: anonymous callers get few tries, whatever the default.
credential_routes := {
	"/api/v1/auth/login",
	"/api/v1/auth/login/ldap",
	"/api/v1/auth/mfa/verify",
	"/api/v1/auth/exchange",
	"/api/v1/auth/refresh",
}

# A third of the unauthenticated default (33 a minute by default).
limit := max([1, floor(input.defaults.unauthenticated_per_minute / 3)]) if {
	input.principal_type == "anonymous"
	input.route in credential_routes
}

# Policy decision clients evaluate on every request of their own: give machine clients
# six times the default (6000 a minute by default).
limit := input.defaults.authenticated_per_minute * 6 if {
	input.principal_type == "api_key"
	input.route == "/api/v1/authz/evaluate"
}

# Viewers only read; a lower ceiling (300 a minute by default) limits scraping by a stolen
# viewer session.
limit := max([1, floor((input.defaults.authenticated_per_minute * 3) / 10)]) if {
	input.principal_type == "session"
	input.role == "viewer"
}
