//! Route handlers, one module per resource.

pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod cluster;
pub mod federation;
pub mod health;
pub mod policies;
pub mod servers;
pub mod sessions;
pub mod users;
