//! The PostgreSQL store.
//!
//! Created without a connection, so a node whose database is down still starts (degraded);
//! [`PgStore::initialize`] connects and migrates, and every call answers `Unavailable`
//! until it has succeeded.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, Utc};
use sqlx::migrate::MigrateError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool, Postgres, QueryBuilder, Transaction};
use tracing::{info, warn};
use uuid::Uuid;

use super::sql::{
    audit_columns, impl_portable_store, policy_columns, server_columns, session_columns,
    user_columns,
};
use super::sql_identity::{
    api_key_columns, auth_request_columns, challenge_columns, impl_identity_store,
    login_code_columns,
};
use super::{OpenError, PoolStats, StoreError, StoreResult, TimeSeriesLayout, db_error};
use crate::config::{ConfigError, DatabaseConfig};

/// Daily partitions created ahead of today.
const PARTITIONS_AHEAD: u64 = 3;

/// The PostgreSQL implementation of every storage port.
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    /// The pool's size at most.
    max_connections: u32,
    layout: OnceLock<TimeSeriesLayout>,
}

impl PgStore {
    /// A store for `config.url`, not yet connected.
    pub fn new(config: &DatabaseConfig) -> Result<Self, OpenError> {
        let url = config
            .url
            .as_ref()
            .ok_or_else(|| ConfigError::from_key("database.url", "is required for PostgreSQL"))?;
        let options = PgConnectOptions::from_str(url.expose())
            .map_err(|e| {
                ConfigError::from_key(
                    "database.url",
                    format!("is not a valid PostgreSQL URL ({})", redact_url_error(&e)),
                )
            })?
            .application_name("sark")
            // A hung statement or lock wait fails the request instead of holding it
            // (and a pool connection) forever.
            .options([(
                "statement_timeout",
                format!("{}ms", config.statement_timeout_ms),
            )]);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(config.min_connections.min(config.max_connections))
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            max_connections: config.max_connections,
            layout: OnceLock::new(),
        })
    }

    /// Runs the migrations and prepares partitions, once. `Ok(false)` when the database
    /// cannot be reached yet; an error when it refuses our credentials or the migration fails.
    pub async fn initialize(&self, now: DateTime<Utc>) -> Result<bool, OpenError> {
        if self.layout.get().is_some() {
            return Ok(true);
        }
        match super::migrator(super::POSTGRES_MIGRATIONS)
            .run(&self.pool)
            .await
        {
            Ok(()) => {}
            Err(MigrateError::Execute(err)) | Err(MigrateError::ExecuteMigration(err, _)) => {
                return classify_connect_error(err);
            }
            Err(err) => return Err(OpenError::Migration(err.to_string())),
        }
        let layout: Option<String> =
            match sqlx::query_scalar("SELECT value FROM meta WHERE key = 'time_series_layout'")
                .fetch_optional(&self.pool)
                .await
            {
                Ok(layout) => layout,
                Err(err) => return classify_connect_error(err),
            };
        let layout = match layout.as_deref() {
            Some("timescaledb") => TimeSeriesLayout::Timescaledb,
            _ => TimeSeriesLayout::NativePartitions,
        };
        info!(layout = ?layout, "audit_logs and api_requests time-series layout");
        let _ = self.layout.set(layout);
        if layout == TimeSeriesLayout::Timescaledb {
            self.compression_policies().await;
        }
        self.maintain(now).await;
        Ok(true)
    }

    /// TimescaleDB: compresses chunks older than a week (idempotent). Retention is SARK's
    /// own job (`prune_time_series`), which moves the chains' checkpoints before it drops
    /// chunks, so no TimescaleDB retention policy is added.
    async fn compression_policies(&self) {
        for (table, segment_by) in [("audit_logs", "chain"), ("api_requests", "route")] {
            let steps = [
                format!(
                    "ALTER TABLE {table} SET (timescaledb.compress, timescaledb.compress_segmentby = '{segment_by}')"
                ),
                format!(
                    "SELECT add_compression_policy('{table}', INTERVAL '7 days', if_not_exists => true)"
                ),
            ];
            for sql in steps {
                // Table and column names come from the fixed list above.
                if let Err(err) = sqlx::query(AssertSqlSafe(sql)).execute(&self.pool).await {
                    warn!(table, error = %err, "could not set the TimescaleDB compression policy");
                    break;
                }
            }
        }
    }

    /// Creates the daily partitions from today to a few days ahead (native layout only).
    /// Failures are logged, not fatal: rows outside every partition go to the default one.
    pub async fn maintain(&self, now: DateTime<Utc>) {
        if self.layout.get() != Some(&TimeSeriesLayout::NativePartitions) {
            return;
        }
        if let Err(err) = self.create_partitions(now.date_naive()).await {
            warn!(error = %err, "could not create the coming days' partitions");
        }
    }

    async fn create_partitions(&self, today: NaiveDate) -> Result<(), sqlx::Error> {
        let mut first_error = None;
        for table in ["audit_logs", "api_requests"] {
            for ahead in 0..=PARTITIONS_AHEAD {
                let Some(day) = today.checked_add_days(Days::new(ahead)) else {
                    continue;
                };
                // One transaction per partition: a day that cannot be created (rows for it
                // already in the default partition) does not stop the others.
                let created = async {
                    let mut tx = self.pool.begin().await?;
                    // Nodes maintaining partitions at the same moment take turns.
                    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('sark.partitions'))")
                        .execute(&mut *tx)
                        .await?;
                    Self::create_partition(&mut tx, table, day).await?;
                    tx.commit().await
                }
                .await;
                if let Err(err) = created {
                    warn!(table, day = %day, error = %err, "could not create a partition");
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn create_partition(
        tx: &mut Transaction<'_, Postgres>,
        table: &str,
        day: NaiveDate,
    ) -> Result<(), sqlx::Error> {
        let Some(next) = day.checked_add_days(Days::new(1)) else {
            return Ok(());
        };
        // Identifiers and bounds come from a fixed table list and dates, never from input.
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {table}_p{} PARTITION OF {table} FOR VALUES FROM ('{} 00:00:00+00') TO ('{} 00:00:00+00')",
            day.format("%Y%m%d"),
            day.format("%Y-%m-%d"),
            next.format("%Y-%m-%d"),
        );
        sqlx::query(AssertSqlSafe(sql)).execute(&mut **tx).await?;
        Ok(())
    }

    fn pool(&self) -> StoreResult<&PgPool> {
        if self.layout.get().is_none() {
            return Err(StoreError::Unavailable(
                "database not reachable since start-up".into(),
            ));
        }
        Ok(&self.pool)
    }

    /// PostgreSQL locks rows, not the database: writers share the pool.
    fn writer(&self) -> StoreResult<&PgPool> {
        self.pool()
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Replaces a session's live current refresh hash and remembers the old one, in one
    /// statement (one round trip, committed on its own); `false` when `old_hash` is not
    /// the session's live current hash.
    async fn rotate_current(
        &self,
        id: Uuid,
        old_hash: &str,
        new_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let rotated: i64 = sqlx::query_scalar(
            "WITH rotated AS (UPDATE sessions SET refresh_hash = $1, last_seen_at = $2 \
               WHERE id = $3 AND refresh_hash = $4 AND revoked_at IS NULL AND expires_at > $2 \
               RETURNING id), \
             remembered AS (INSERT INTO refresh_tokens_used (hash, session_id, used_at) \
               SELECT $4, id, $2 FROM rotated ON CONFLICT DO NOTHING) \
             SELECT count(*) FROM rotated",
        )
        .bind(new_hash)
        .bind(now)
        .bind(id)
        .bind(old_hash)
        .fetch_one(self.writer()?)
        .await
        .map_err(db_error)?;
        Ok(rotated == 1)
    }

    /// Claims due rows; `SKIP LOCKED` lets several nodes claim at once without waiting on
    /// or double-claiming each other's rows.
    /// Due rows are taken in the order of the `siem_outbox_due` index, which the claim
    /// reads only as far as the rows it takes (ordered by id alone, it sorted the whole
    /// queue on every claim).
    const CLAIM_OUTBOX_SQL: &'static str = "UPDATE siem_outbox SET lease_owner = $1, lease_until = $2 \
         WHERE id IN (SELECT id FROM siem_outbox WHERE sink = $3 AND delivered_at IS NULL \
         AND next_attempt_at <= $4 AND (lease_until IS NULL OR lease_until <= $4) ORDER BY next_attempt_at, id LIMIT $5 \
         FOR UPDATE SKIP LOCKED) RETURNING id, sink, payload, attempts";

    const USER_FOR_UPDATE_SQL: &'static str = concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE username = $1 FOR UPDATE"
    );
    const USER_ACTIVE_FOR_SHARE_SQL: &'static str =
        "SELECT is_active FROM users WHERE id = $1 FOR SHARE";

    async fn begin_write(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        pool.begin().await
    }

    /// Tags live in the JSONB column, indexed by GIN: nothing else to keep in step.
    async fn write_server_tags(
        _tx: &mut Transaction<'_, Postgres>,
        _server_id: Uuid,
        _tags: &BTreeMap<String, String>,
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// One containment test per pair: `env:prod` and `env:dev` together match nothing,
    /// as on SQLite (a map of the pairs would keep only one of them).
    fn push_tag_filter(qb: &mut QueryBuilder<Postgres>, tags: &[(String, String)]) {
        for (key, value) in tags {
            let pair = serde_json::json!({ key.as_str(): value });
            qb.push(" AND tags @> ").push_bind(sqlx::types::Json(pair));
        }
    }
}

/// Unreachable databases are retried; refused credentials or a missing database are a
/// configuration error.
fn classify_connect_error(err: sqlx::Error) -> Result<bool, OpenError> {
    if let sqlx::Error::Database(db) = &err {
        let code = db.code().unwrap_or_default();
        if code == "28P01" || code == "28000" || code == "3D000" {
            return Err(OpenError::Rejected(db.message().to_owned()));
        }
    }
    match db_error(err) {
        StoreError::Unavailable(reason) => {
            warn!(
                reason,
                "database unreachable; the node is degraded until it returns"
            );
            Ok(false)
        }
        other => Err(OpenError::Migration(other.to_string())),
    }
}

/// URL parse errors may echo the URL, which holds the password.
fn redact_url_error(err: &sqlx::Error) -> &'static str {
    match err {
        sqlx::Error::Configuration(_) => "malformed URL",
        _ => "unreadable URL",
    }
}

impl_portable_store!(PgStore, Postgres);
impl_identity_store!(PgStore, Postgres);

impl PgStore {
    /// The daily partitions of `table` whose whole day ends at or before `before`.
    async fn old_partitions(
        &self,
        table: &str,
        before: DateTime<Utc>,
    ) -> Result<Vec<String>, sqlx::Error> {
        let children: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
             WHERE p.relname = $1",
        )
        .bind(table)
        .fetch_all(&self.pool)
        .await?;
        let prefix = format!("{table}_p");
        Ok(children
            .into_iter()
            .filter(|name| {
                name.strip_prefix(&prefix)
                    .filter(|day| day.len() == 8)
                    .and_then(|day| NaiveDate::parse_from_str(day, "%Y%m%d").ok())
                    .and_then(|day| day.checked_add_days(Days::new(1)))
                    .and_then(|end| end.and_hms_opt(0, 0, 0))
                    .is_some_and(|end| end.and_utc() <= before)
            })
            .collect())
    }

    /// Drops one old daily partition; for `audit_logs`, first moves the checkpoint of every
    /// chain it holds to its last event there. Returns the rows dropped.
    async fn drop_partition(
        &self,
        table: &str,
        partition: &str,
        now: DateTime<Utc>,
        seal: &dyn super::PositionSeal,
    ) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('sark.partitions'))")
            .execute(&mut *tx)
            .await?;
        // `partition` is a name read from pg_class that matched `<table>_pYYYYMMDD`.
        if table == "audit_logs" {
            let ends: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT chain, MAX(seq) FROM {partition} GROUP BY chain"
            )))
            .fetch_all(&mut *tx)
            .await?;
            for (chain, seq) in ends {
                Self::checkpoint(&mut tx, &chain, seq, now, seal).await?;
            }
        }
        let rows: i64 =
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {partition}")))
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query(AssertSqlSafe(format!("DROP TABLE {partition}")))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        info!(partition, rows, "retention dropped a partition");
        Ok(u64::try_from(rows).unwrap_or(0))
    }

    /// TimescaleDB: checkpoints for the events about to go, then whole chunks dropped.
    async fn drop_chunks(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
        seal: &dyn super::PositionSeal,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let ends: Vec<(String, i64)> = sqlx::query_as(
            r#"SELECT chain, MAX(seq) FROM audit_logs WHERE "timestamp" < $1 GROUP BY chain"#,
        )
        .bind(before)
        .fetch_all(&mut *tx)
        .await?;
        for (chain, seq) in ends {
            Self::checkpoint(&mut tx, &chain, seq, now, seal).await?;
        }
        for table in ["audit_logs", "api_requests"] {
            sqlx::query("SELECT drop_chunks($1, older_than => $2)")
                .bind(table)
                .bind(before)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }
}

#[async_trait::async_trait]
impl super::RetentionStore for PgStore {
    async fn prune_time_series(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
        seal: &dyn super::PositionSeal,
    ) -> StoreResult<super::Pruned> {
        let pool = self.pool()?;
        let mut pruned = super::Pruned::default();
        if self.layout.get() == Some(&TimeSeriesLayout::Timescaledb) {
            self.drop_chunks(before, now, seal)
                .await
                .map_err(db_error)?;
            return Ok(pruned);
        }
        for table in ["audit_logs", "api_requests"] {
            for partition in self.old_partitions(table, before).await.map_err(db_error)? {
                let rows = self
                    .drop_partition(table, &partition, now, seal)
                    .await
                    .map_err(db_error)?;
                if table == "audit_logs" {
                    pruned.audit_events += rows;
                } else {
                    pruned.api_requests += rows;
                }
            }
        }
        // Rows outside the daily partitions (the default partition) go row by row.
        let mut tx = pool.begin().await.map_err(db_error)?;
        let (events, requests) = Self::prune_rows_before(&mut tx, before, now, seal)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        pruned.audit_events += events;
        pruned.api_requests += requests;
        Ok(pruned)
    }
}

#[async_trait::async_trait]
impl super::StoreHealth for PgStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(self.pool()?)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn time_series(&self) -> TimeSeriesLayout {
        self.layout
            .get()
            .copied()
            .unwrap_or(TimeSeriesLayout::NativePartitions)
    }

    fn pool_stats(&self) -> PoolStats {
        super::pool_stats(&[(&self.pool, self.max_connections)])
    }
}
