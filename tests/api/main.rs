//! SARK's black-box tests: the HTTP contract of a running node.

// This crate is all test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_keys;
mod audit;
mod auth;
mod backup;
mod front_door;
mod fuzz;
mod health;
mod helpers;
mod ldap;
mod lifecycle;
mod limits;
mod mfa;
mod oidc;
mod policies;
mod saml;
mod secrets_in_logs;
mod secrets_rotation;
mod servers;
mod services;
mod siem;
mod supervision;
mod tls;
mod users;
