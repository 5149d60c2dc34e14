//! Storage: the ports declared in `sark_actors::store`, implemented for SQLite (the
//! embedded default) and PostgreSQL.
//!
//! Most SQL is portable between the two (`$n` parameters, `ON CONFLICT`, `RETURNING`),
//! so one implementation is generated for both by `sql::impl_portable_store`; each
//! backend module adds what differs (tag filtering, outbox claiming, partitions).
//!
//! A PostgreSQL store may be created while the database is down: it then answers
//! `Unavailable` until a background task has connected and run the migrations, so the node
//! starts degraded instead of refusing to start.

use std::borrow::Cow;
use std::sync::Arc;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, SqlSafeStr};

pub use sark_actors::store::*;

use crate::config::{Config, DatabaseKind};

pub mod postgres;
pub mod redis;
mod sql;
mod sql_identity;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod tests;

/// Why a store could not be opened at all (as opposed to being temporarily unavailable).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The configuration is wrong; the message names the key.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The database rejected the configured credentials or database name.
    #[error("`database.url`: {0}")]
    Rejected(String),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migration(String),
    /// The SQLite file could not be opened.
    #[error("cannot open the SQLite database {path}: {reason}")]
    Sqlite {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// An opened store of either backend.
#[derive(Clone)]
pub enum Backend {
    /// The embedded SQLite store.
    Sqlite(Arc<sqlite::SqliteStore>),
    /// A PostgreSQL store.
    Postgres(Arc<postgres::PgStore>),
}

impl Backend {
    /// Opens the store configured in `config`. SQLite is migrated before this returns; a
    /// PostgreSQL store is returned at once and migrated by [`Backend::initialize`].
    pub async fn open(config: &Config) -> Result<Self, OpenError> {
        match config.database_kind()? {
            DatabaseKind::Sqlite(path) => Ok(Backend::Sqlite(Arc::new(
                sqlite::SqliteStore::open(&path, &config.database).await?,
            ))),
            DatabaseKind::Postgres => Ok(Backend::Postgres(Arc::new(postgres::PgStore::new(
                &config.database,
            )?))),
        }
    }

    /// Connects and migrates, when that has not happened yet. `Ok(false)` means the database
    /// is unreachable for now and the caller should retry; errors are permanent.
    pub async fn initialize(&self, now: chrono::DateTime<chrono::Utc>) -> Result<bool, OpenError> {
        match self {
            Backend::Sqlite(_) => Ok(true),
            Backend::Postgres(pg) => pg.initialize(now).await,
        }
    }

    /// The store behind every port.
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite(s) => s.clone(),
            Backend::Postgres(p) => p.clone(),
        }
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        match self {
            Backend::Sqlite(s) => s.close().await,
            Backend::Postgres(p) => p.close().await,
        }
    }
}

/// One migration file, embedded in the binary.
struct EmbeddedMigration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

const SQLITE_MIGRATIONS: &[EmbeddedMigration] = &[
    EmbeddedMigration {
        version: 20261126000001,
        description: "create_schema",
        sql: include_str!("../migrations/sqlite/20261126000001_create_schema.sql"),
    },
    EmbeddedMigration {
        version: 20261126000002,
        description: "identity",
        sql: include_str!("../migrations/sqlite/20261126000002_identity.sql"),
    },
    EmbeddedMigration {
        version: 20261126000003,
        description: "audit_retention",
        sql: include_str!("../migrations/sqlite/20261126000003_audit_retention.sql"),
    },
    EmbeddedMigration {
        version: 20261127000001,
        description: "federation",
        sql: include_str!("../migrations/sqlite/20261127000001_federation.sql"),
    },
    EmbeddedMigration {
        version: 20261127000002,
        description: "saml",
        sql: include_str!("../migrations/sqlite/20261127000002_saml.sql"),
    },
    EmbeddedMigration {
        version: 20261204000001,
        description: "cluster_members",
        sql: include_str!("../migrations/sqlite/20261204000001_cluster_members.sql"),
    },
    EmbeddedMigration {
        version: 20261204000002,
        description: "sealed_chain_positions",
        sql: include_str!("../migrations/sqlite/20261204000002_sealed_chain_positions.sql"),
    },
    EmbeddedMigration {
        version: 20261206000001,
        description: "siem_outbox_claim_order",
        sql: include_str!("../migrations/sqlite/20261206000001_siem_outbox_claim_order.sql"),
    },
];

const POSTGRES_MIGRATIONS: &[EmbeddedMigration] = &[
    EmbeddedMigration {
        version: 20261126000001,
        description: "create_schema",
        sql: include_str!("../migrations/postgres/20261126000001_create_schema.sql"),
    },
    EmbeddedMigration {
        version: 20261126000002,
        description: "identity",
        sql: include_str!("../migrations/postgres/20261126000002_identity.sql"),
    },
    EmbeddedMigration {
        version: 20261126000003,
        description: "audit_retention",
        sql: include_str!("../migrations/postgres/20261126000003_audit_retention.sql"),
    },
    EmbeddedMigration {
        version: 20261127000001,
        description: "federation",
        sql: include_str!("../migrations/postgres/20261127000001_federation.sql"),
    },
    EmbeddedMigration {
        version: 20261127000002,
        description: "saml",
        sql: include_str!("../migrations/postgres/20261127000002_saml.sql"),
    },
    EmbeddedMigration {
        version: 20261204000001,
        description: "cluster_members",
        sql: include_str!("../migrations/postgres/20261204000001_cluster_members.sql"),
    },
    EmbeddedMigration {
        version: 20261204000002,
        description: "sealed_chain_positions",
        sql: include_str!("../migrations/postgres/20261204000002_sealed_chain_positions.sql"),
    },
    EmbeddedMigration {
        version: 20261206000001,
        description: "siem_outbox_claim_order",
        sql: include_str!("../migrations/postgres/20261206000001_siem_outbox_claim_order.sql"),
    },
];

fn migrator(migrations: &[EmbeddedMigration]) -> Migrator {
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|m| {
                Migration::new(
                    m.version,
                    Cow::Borrowed(m.description),
                    MigrationType::Simple,
                    AssertSqlSafe(m.sql).into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// The audit generation stored in meta (absent: 0).
pub(crate) fn audit_generation(stored: Option<String>) -> StoreResult<u32> {
    stored.map_or(Ok(0), |g| {
        g.parse().map_err(|_| {
            StoreError::Internal(format!(
                "meta {AUDIT_GENERATION_META}: `{g}` is not a generation"
            ))
        })
    })
}

/// Requests for a pooled connection that timed out, counted where driver errors are mapped
/// (which does not know the pool): one count for every store of the process.
static ACQUIRE_TIMEOUTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The state of `pools` now, with the process's acquire timeouts.
pub(crate) fn pool_stats<DB: sqlx::Database>(pools: &[(&sqlx::Pool<DB>, u32)]) -> PoolStats {
    let mut stats = PoolStats {
        acquire_timeouts: ACQUIRE_TIMEOUTS.load(std::sync::atomic::Ordering::Relaxed),
        ..PoolStats::default()
    };
    for (pool, max) in pools {
        let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
        stats.idle += idle;
        stats.in_use += pool.size().saturating_sub(idle);
        stats.max += max;
    }
    stats
}

/// Maps a driver error to what callers can act on: connection trouble is `Unavailable`
/// (503), uniqueness is `Conflict` (409), a refused value is `Invalid` (400), a lost
/// serialization race is `Contended`, the rest is internal.
pub(crate) fn db_error(err: sqlx::Error) -> StoreError {
    if matches!(err, sqlx::Error::PoolTimedOut) {
        ACQUIRE_TIMEOUTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => StoreError::Unavailable(err.to_string()),
        sqlx::Error::Database(db) => {
            if db.is_unique_violation() {
                // The constraint's name is internal: ports that know what clashed say so.
                return StoreError::Conflict("the record".into());
            }
            let code = db.code().unwrap_or_default();
            let message = db.message().to_owned();
            match code.as_ref() {
                // PostgreSQL: 08 connection, 53 resources, 57P0x shutdown, 57014 statement
                // timeout, 25006 read-only (a replica after failover). SQLite: busy, locked.
                c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P0") => {
                    StoreError::Unavailable(message)
                }
                "57014" | "25006" | "5" | "6" | "517" | "261" => StoreError::Unavailable(message),
                // Serialization failure, deadlock, lock not available: retryable.
                "40001" | "40P01" | "55P03" => StoreError::Contended(message),
                // Class 22 (data exception): e.g. a NUL character in text.
                c if c.starts_with("22") => StoreError::Invalid(message),
                _ => StoreError::Internal(message),
            }
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Corrupt(err.to_string())
        }
        other => StoreError::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod migration_tests {
    use super::*;

    fn files(dir: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn embedded(list: &[EmbeddedMigration]) -> Vec<String> {
        list.iter()
            .map(|m| format!("{}_{}.sql", m.version, m.description))
            .collect()
    }

    #[test]
    fn every_migration_file_is_embedded_in_order() {
        assert_eq!(files("migrations/sqlite"), embedded(SQLITE_MIGRATIONS));
        assert_eq!(files("migrations/postgres"), embedded(POSTGRES_MIGRATIONS));
    }
}
