//! Authentication and authorization of requests.
//!
//! - [`principal`]: who is calling (a session's access token or an API key), resolved by
//!   middleware before rate limiting, and the extractor handlers use.
//! - [`revocation`]: revoked sessions and API keys, checked on every request.
//! - [`api_keys`]: the API key format.
//! - [`guard`]: authorization of resource routes through the active `authorization` policy.
//! - [`service`]: logins, MFA challenges, token refresh, logout.

pub mod api_keys;
pub mod forward;
pub mod guard;
pub mod lockout;
pub mod principal;
pub mod revocation;
pub mod service;
