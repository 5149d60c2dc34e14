//! Identity protocols: one module per way of proving who you are, or of proving it to
//! others.

pub mod jwt;
pub mod password;
pub mod totp;
