//! The embedded SQLite store: one file in WAL mode, migrated at open.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool, Transaction};
use uuid::Uuid;

use super::sql::{
    audit_columns, impl_portable_store, policy_columns, server_columns, session_columns,
    user_columns,
};
use super::sql_identity::{
    api_key_columns, auth_request_columns, challenge_columns, impl_identity_store,
    login_code_columns,
};
use super::{OpenError, PoolStats, StoreResult, TimeSeriesLayout, db_error};
use crate::config::DatabaseConfig;

/// The SQLite implementation of every storage port.
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// One connection, for every write (see `writer`).
    writer: SqlitePool,
    /// The readers' pool size at most.
    max_readers: u32,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs the migrations.
    ///
    /// Several processes opening one file at once is safe: migrations run under an
    /// exclusive lock on a sibling lock file.
    pub async fn open(path: &Path, config: &DatabaseConfig) -> Result<Self, OpenError> {
        let fail = |reason: String| OpenError::Sqlite {
            path: path.display().to_string(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        // Created 0600 before SQLite opens it: the WAL and shared-memory files take the
        // database file's permissions, and the database holds password hashes.
        match File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(fail(e.to_string())),
        }
        // Processes opening one file together take turns until it is in WAL mode and
        // migrated: switching the journal mode is refused, not waited for, while another
        // connection holds the file.
        let lock_path = path.with_extension("migrate.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| fail(format!("cannot open {}: {e}", lock_path.display())))?;
        lock.lock()
            .map_err(|e| fail(format!("cannot lock {}: {e}", lock_path.display())))?;
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|e| fail(e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before it is acknowledged, so acknowledged audit
            // events survive power loss as well as kill -9.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(config.min_connections.min(config.max_connections))
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .connect_with(options.clone())
            .await
            .map_err(|e| fail(e.to_string()))?;
        // SQLite has one writer at a time. Contending connections wait in its busy handler,
        // which sleeps up to 100 ms between tries; queueing for one connection instead
        // hands the lock over as soon as a commit ends. Other processes still meet the busy
        // timeout.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .connect_with(options)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let migrated = super::migrator(super::SQLITE_MIGRATIONS).run(&pool).await;
        drop(lock);
        migrated.map_err(|e| OpenError::Migration(e.to_string()))?;
        Ok(Self {
            pool,
            writer,
            max_readers: config.max_connections,
        })
    }

    fn pool(&self) -> StoreResult<&SqlitePool> {
        Ok(&self.pool)
    }

    fn writer(&self) -> StoreResult<&SqlitePool> {
        Ok(&self.writer)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }

    /// Replaces a session's live current refresh hash and remembers the old one, in one
    /// transaction; `false` when `old_hash` is not the session's live current hash.
    async fn rotate_current(
        &self,
        id: Uuid,
        old_hash: &str,
        new_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut tx = Self::begin_write(self.writer()?).await.map_err(db_error)?;
        let done = sqlx::query(
            "UPDATE sessions SET refresh_hash = $1, last_seen_at = $2 \
             WHERE id = $3 AND refresh_hash = $4 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(new_hash)
        .bind(now)
        .bind(id)
        .bind(old_hash)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        // Remembered, so a second presentation is recognised as a reuse.
        sqlx::query(
            "INSERT INTO refresh_tokens_used (hash, session_id, used_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(old_hash)
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(true)
    }

    /// Claims due rows with one statement; SQLite runs writes one at a time, so the
    /// subquery and the update see the same rows.
    /// Due rows are taken in the order of the `siem_outbox_due` index, which the claim
    /// reads only as far as the rows it takes (ordered by id alone, it sorted the whole
    /// queue on every claim).
    const CLAIM_OUTBOX_SQL: &'static str = "UPDATE siem_outbox SET lease_owner = $1, lease_until = $2 \
         WHERE id IN (SELECT id FROM siem_outbox WHERE sink = $3 AND delivered_at IS NULL \
         AND next_attempt_at <= $4 AND (lease_until IS NULL OR lease_until <= $4) ORDER BY next_attempt_at, id LIMIT $5) \
         RETURNING id, sink, payload, attempts";

    const USER_FOR_UPDATE_SQL: &'static str = concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE username = $1"
    );
    const USER_ACTIVE_FOR_SHARE_SQL: &'static str = "SELECT is_active FROM users WHERE id = $1";

    /// `BEGIN IMMEDIATE` takes the write lock up front: a deferred transaction that reads
    /// and then writes fails with SQLITE_BUSY_SNAPSHOT under concurrent writers instead of
    /// waiting its turn.
    async fn begin_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    async fn write_server_tags(
        tx: &mut Transaction<'_, Sqlite>,
        server_id: Uuid,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM server_tags WHERE server_id = $1")
            .bind(server_id)
            .execute(&mut **tx)
            .await?;
        if tags.is_empty() {
            return Ok(());
        }
        let mut qb =
            QueryBuilder::<Sqlite>::new("INSERT INTO server_tags (server_id, key, value) ");
        qb.push_values(tags, |mut b, (k, v)| {
            b.push_bind(server_id)
                .push_bind(k.clone())
                .push_bind(v.clone());
        });
        qb.build().execute(&mut **tx).await?;
        Ok(())
    }

    fn push_tag_filter(qb: &mut QueryBuilder<Sqlite>, tags: &[(String, String)]) {
        for (key, value) in tags {
            qb.push(" AND EXISTS (SELECT 1 FROM server_tags t WHERE t.server_id = servers.id AND t.key = ")
                .push_bind(key.clone())
                .push(" AND t.value = ")
                .push_bind(value.clone())
                .push(")");
        }
    }
}

impl_portable_store!(SqliteStore, Sqlite);
impl_identity_store!(SqliteStore, Sqlite);

#[async_trait::async_trait]
impl super::RetentionStore for SqliteStore {
    async fn prune_time_series(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
        seal: &dyn super::PositionSeal,
    ) -> StoreResult<super::Pruned> {
        let mut tx = Self::begin_write(&self.writer)
            .await
            .map_err(super::db_error)?;
        let (audit_events, api_requests) = Self::prune_rows_before(&mut tx, before, now, seal)
            .await
            .map_err(super::db_error)?;
        tx.commit().await.map_err(super::db_error)?;
        Ok(super::Pruned {
            audit_events,
            api_requests,
        })
    }
}

#[async_trait::async_trait]
impl super::StoreHealth for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn time_series(&self) -> TimeSeriesLayout {
        TimeSeriesLayout::Plain
    }

    fn pool_stats(&self) -> PoolStats {
        super::pool_stats(&[(&self.pool, self.max_readers), (&self.writer, 1)])
    }
}
