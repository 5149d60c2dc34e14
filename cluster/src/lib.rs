//! SARK node membership over ractor_cluster.
//!
//! ractor_cluster is the transport (node server, cookie handshake, process groups); it
//! notices a killed peer but never a hung one. Membership adds what it lacks: our own
//! heartbeats, the lease that fences a node cut off from the cluster, the member view that
//! health, placement and broadcasts read, and broadcasts that every member acknowledges or
//! is fenced from ([`broadcast`]).
//!
//! On a single node the cluster is real but has one member: the node server listens, the
//! heartbeat loop renews the node's own lease, and the lease lapses if the loop stalls.

#![warn(missing_docs)]

pub mod broadcast;
pub mod membership;
pub mod placement;
pub mod wire;
