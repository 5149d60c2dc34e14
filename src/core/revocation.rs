//! Revoked credentials that are still inside their lifetime, held in memory so every
//! request is checked without a store round trip.
//!
//! Revocations are written to the store first and added here before the revoking call
//! returns; the whole list is reloaded from the store before the node reports ready and
//! periodically after (which drops entries that have expired). So is the time before which
//! every access token is refused, recorded when a store is restored from a backup.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{PoisonError, RwLock};

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use uuid::Uuid;

use crate::store::{Store, StoreResult};

/// Ids with the moment they were added here.
type Entries = RwLock<HashMap<Uuid, Instant>>;

/// Revoked sessions and API keys.
#[derive(Debug, Default)]
pub struct RevocationList {
    sessions: Entries,
    api_keys: Entries,
    /// Access tokens issued before this (Unix seconds) are refused; 0 for none.
    not_before: AtomicI64,
    loaded: AtomicBool,
}

/// Replaces `entries` with `stored`, keeping whatever was added after `since`: a
/// revocation that raced with the reload is never forgotten.
fn replace(entries: &Entries, stored: Vec<Uuid>, since: Instant) {
    let mut current = entries.write().unwrap_or_else(PoisonError::into_inner);
    let mut next: HashMap<Uuid, Instant> = stored.into_iter().map(|id| (id, since)).collect();
    next.extend(
        current
            .iter()
            .filter(|(_, added)| **added >= since)
            .map(|(id, added)| (*id, *added)),
    );
    *current = next;
}

fn insert(entries: &Entries, ids: &[Uuid]) {
    let now = Instant::now();
    entries
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(ids.iter().map(|id| (*id, now)));
}

fn contains(entries: &Entries, id: Uuid) -> bool {
    entries
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .contains_key(&id)
}

impl RevocationList {
    /// Replaces the list with what the store holds at `now`.
    pub async fn load(&self, store: &dyn Store, now: DateTime<Utc>) -> StoreResult<()> {
        let since = Instant::now();
        // An access token may outlive its session's expiry by the verification leeway;
        // keep revocations that long too.
        let horizon = now - chrono::Duration::seconds(crate::idp::jwt::LEEWAY_SECONDS as i64 * 2);
        let sessions = store.revoked_session_ids(horizon).await?;
        let api_keys = store.revoked_api_key_ids(horizon).await?;
        let not_before = store.credentials_not_before().await?;
        replace(&self.sessions, sessions, since);
        replace(&self.api_keys, api_keys, since);
        // Token times are whole seconds: those of the cut-off's own second are accepted,
        // so a login just after it works.
        let not_before = not_before.map_or(0, |t| t.timestamp());
        self.not_before.store(not_before, Ordering::Release);
        self.loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the list was loaded from the store at least once.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Refuses sessions from now on.
    pub fn revoke_sessions(&self, ids: &[Uuid]) {
        insert(&self.sessions, ids);
    }

    /// Refuses API keys from now on.
    pub fn revoke_api_keys(&self, ids: &[Uuid]) {
        insert(&self.api_keys, ids);
    }

    /// Whether a session is revoked.
    pub fn session_revoked(&self, id: Uuid) -> bool {
        contains(&self.sessions, id)
    }

    /// Whether an access token issued at `issued_at` (Unix seconds) predates the recorded
    /// cut-off of a restore.
    pub fn issued_too_early(&self, issued_at: i64) -> bool {
        issued_at < self.not_before.load(Ordering::Acquire)
    }

    /// Whether an API key is revoked.
    pub fn api_key_revoked(&self, id: Uuid) -> bool {
        contains(&self.api_keys, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_keeps_revocations_made_while_it_ran_and_drops_expired_ones() {
        let list = RevocationList::default();
        let old = Uuid::now_v7();
        list.revoke_sessions(&[old]);
        let since = Instant::now();
        let racing = Uuid::now_v7();
        list.revoke_sessions(&[racing]);
        let stored = Uuid::now_v7();
        replace(&list.sessions, vec![stored], since);
        assert!(list.session_revoked(stored));
        assert!(list.session_revoked(racing), "added after the reload began");
        assert!(
            !list.session_revoked(old),
            "not in the store any more: expired"
        );
    }
}
