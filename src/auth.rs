//! The authentication and authorization services: their rules, over the node's [`Core`],
//! answering domain [`Error`]s (never HTTP).
//!
//! - [`principal`]: who is calling: the principal a session's access token or an API key
//!   proves.
//! - [`api_keys`]: the API key format.
//! - [`guard`]: authorization of resource routes through the active `authorization` policy.
//! - [`service`]: logins, MFA challenges, token refresh, logout, credential changes.
//! - [`mfa`]: TOTP enrolment.
//! - [`sessions`]: listing sessions as the members that own their actors describe them.
//! - [`forward`]: session operations run on the member that owns the session.
//!
//! [`Core`]: crate::core::Core
//! [`Error`]: crate::error::Error

pub mod api_keys;
pub mod forward;
pub mod guard;
pub mod key_material;
pub mod mfa;
pub mod principal;
pub mod service;
pub mod sessions;
