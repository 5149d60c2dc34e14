//! Identity protocols: one module per way of proving who you are.

pub mod password;
