//! Prometheus series of the membership.

use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

use super::view::{MemberStatus, MembershipView};

/// Prometheus series of the membership.
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    /// Members by status, this node included.
    pub members: IntGaugeVec,
    /// Times this node's lease lapsed.
    pub lease_expired: IntCounter,
    /// 1 while this node holds a valid lease, else 0.
    pub lease_valid: IntGauge,
    /// Session actors running on this node.
    pub sessions_active: IntGauge,
}

impl ClusterMetrics {
    /// Creates the series and registers them.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            members: IntGaugeVec::new(
                Opts::new(
                    "sark_cluster_members",
                    "Cluster members by status, as this node sees them",
                ),
                &["status"],
            )?,
            lease_expired: IntCounter::new(
                "sark_cluster_lease_expired_total",
                "Times this node's cluster lease lapsed (it then checks the store for every token and policy)",
            )?,
            lease_valid: IntGauge::new(
                "sark_cluster_lease_valid",
                "1 while this node holds a valid cluster lease (a majority of the voting members answered recently), else 0",
            )?,
            sessions_active: IntGauge::new(
                "sark_sessions_active",
                "Session actors running on this node",
            )?,
        };
        registry.register(Box::new(metrics.members.clone()))?;
        registry.register(Box::new(metrics.lease_expired.clone()))?;
        registry.register(Box::new(metrics.lease_valid.clone()))?;
        registry.register(Box::new(metrics.sessions_active.clone()))?;
        Ok(metrics)
    }

    pub(super) fn observe(&self, view: &MembershipView, lease_valid: bool, lease_lapsed: bool) {
        self.lease_valid.set(i64::from(lease_valid));
        let members = view.members();
        for status in [MemberStatus::Up, MemberStatus::Suspect, MemberStatus::Down] {
            let count = members.iter().filter(|m| m.status == status).count();
            self.members
                .with_label_values(&[status.as_str()])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        if let Some(me) = members.first() {
            self.sessions_active
                .set(i64::try_from(me.sessions).unwrap_or(i64::MAX));
        }
        if lease_lapsed {
            self.lease_expired.inc();
        }
    }
}
