# SARK's built-in rate-limiting policy: requests per minute for a principal on a route.
#
# Input: {"principal_type": "anonymous" | "session" | "api_key", "role": <role or null>,
#         "route": <route template>, "method": <HTTP method>}
# Where `limit` is undefined the configured defaults apply
# (SARK_RATE_LIMIT__UNAUTHENTICATED_PER_MINUTE / _AUTHENTICATED_PER_MINUTE).
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

limit := 30 if {
	input.principal_type == "anonymous"
	input.route in credential_routes
}

# Policy decision clients evaluate on every request of their own: give machine clients room.
limit := 6000 if {
	input.principal_type == "api_key"
	input.route == "/api/v1/authz/evaluate"
}

# Viewers only read; a lower ceiling limits scraping by a stolen viewer session.
limit := 300 if {
	input.principal_type == "session"
	input.role == "viewer"
}
