//! SARK's actors and their supervision trees.
//!
//! # Layout
//!
//! ```text
//! NodeSupervisor                (assembled by the `sark` crate from the specs here and in sark-cluster)
//! ├── SessionSupervisor ──── SessionActor × (sessions owned by this node)
//! ├── PolicySupervisor ───── PolicyActor × (one per policy bundle)      policy.rs
//! ├── SiemSupervisor ─────── SiemForwarder × (one per configured sink)
//! ├── AuditWriter            (group commit onto this node's hash chain)  audit.rs
//! ├── Limiter                (rate-limit buckets)                        limiter.rs
//! └── Membership             (sark-cluster)
//! ```
//!
//! Every supervisor is the one-for-one [`supervisor::Supervisor`]: a crashed child is
//! restarted from durable state with bounded back-off and counted in
//! `sark_actor_restarts_total{kind}`; a crash loop escalates.
//!
//! Actors reach durable state only through the ports in [`store`]; this crate knows no
//! database, no HTTP and no cluster transport.

pub mod audit;
pub mod clock;
pub mod limiter;
pub mod mailbox;
pub mod metrics;
pub mod policy;
pub mod session;
pub mod siem;
pub mod store;
pub mod supervisor;
