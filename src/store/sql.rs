//! The portable implementation of the storage ports, generated once per sqlx backend.
//!
//! The SQL here runs unchanged on SQLite and PostgreSQL. A backend type using the macro
//! provides:
//! - `fn pool(&self) -> StoreResult<&Pool<DB>>` (Unavailable until migrated), for reads,
//! - `fn writer(&self) -> StoreResult<&Pool<DB>>`, for every statement that writes (on
//!   SQLite a one-connection pool, so this process's writers queue in order instead of
//!   sleeping in SQLite's busy handler; on PostgreSQL the same pool),
//! - `async fn write_server_tags(tx, server_id, tags)` (keeps any tag index in step),
//! - `fn push_tag_filter(builder, tags)` (all tags must match),
//! - `const CLAIM_OUTBOX_SQL` (lease due outbox rows without double-claiming),
//! - `async fn rotate_current(&self, id, old_hash, new_hash, now)` (replace a session's live
//!   current refresh hash and remember the old one, atomically; `false` when `old_hash` is
//!   not it),
//! - `const USER_FOR_UPDATE_SQL` / `USER_ACTIVE_FOR_SHARE_SQL` (read a user row and lock it
//!   for the transaction: `FOR UPDATE`/`FOR SHARE` on PostgreSQL; SQLite's write
//!   transactions are exclusive already),
//! - `async fn begin_write(pool)` (a transaction that reads and then writes: `BEGIN
//!   IMMEDIATE` on SQLite, so it takes the write lock up front instead of failing later).

macro_rules! user_columns {
    () => {
        "id, username, email, role, teams, password_hash, is_active, mfa_enabled, provider, subject, created_at, updated_at"
    };
}

macro_rules! session_columns {
    () => {
        "id, user_id, refresh_hash, auth_method, ip, mfa_verified, created_at, last_seen_at, expires_at, revoked_at, revoked_reason, node_id"
    };
}

macro_rules! server_columns {
    () => {
        "id, name, endpoint, description, tags, created_at, updated_at, created_by"
    };
}

macro_rules! policy_columns {
    () => {
        "bundle, version, source, sha256, description, created_at, created_by"
    };
}

macro_rules! audit_columns {
    () => {
        r#"id, chain, seq, "timestamp", event_type, actor, ip, resource, outcome, details, node_id, prev_hash, hash"#
    };
}

macro_rules! impl_portable_store {
    ($store:ty, $db:ty) => {
        impl $store {
            fn user_row(row: &<$db as ::sqlx::Database>::Row) -> ::sqlx::Result<$crate::store::User> {
                use ::sqlx::Row;
                let role: String = row.try_get("role")?;
                Ok($crate::store::User {
                    id: row.try_get("id")?,
                    username: row.try_get("username")?,
                    email: row.try_get("email")?,
                    role: role.parse().map_err(|e: String| ::sqlx::Error::Decode(e.into()))?,
                    teams: row.try_get::<::sqlx::types::Json<Vec<String>>, _>("teams")?.0,
                    password_hash: row.try_get("password_hash")?,
                    is_active: row.try_get("is_active")?,
                    mfa_enabled: row.try_get("mfa_enabled")?,
                    provider: row.try_get("provider")?,
                    subject: row.try_get("subject")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            fn session_row(row: &<$db as ::sqlx::Database>::Row) -> ::sqlx::Result<$crate::store::SessionRecord> {
                use ::sqlx::Row;
                Ok($crate::store::SessionRecord {
                    id: row.try_get("id")?,
                    user_id: row.try_get("user_id")?,
                    refresh_hash: row.try_get("refresh_hash")?,
                    auth_method: row.try_get("auth_method")?,
                    ip: row.try_get("ip")?,
                    mfa_verified: row.try_get("mfa_verified")?,
                    created_at: row.try_get("created_at")?,
                    last_seen_at: row.try_get("last_seen_at")?,
                    expires_at: row.try_get("expires_at")?,
                    revoked_at: row.try_get("revoked_at")?,
                    revoked_reason: row.try_get("revoked_reason")?,
                    node_id: row.try_get("node_id")?,
                })
            }

            fn server_row(row: &<$db as ::sqlx::Database>::Row) -> ::sqlx::Result<$crate::store::Server> {
                use ::sqlx::Row;
                Ok($crate::store::Server {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    endpoint: row.try_get("endpoint")?,
                    description: row.try_get("description")?,
                    tags: row
                        .try_get::<::sqlx::types::Json<::std::collections::BTreeMap<String, String>>, _>("tags")?
                        .0,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                    created_by: row.try_get("created_by")?,
                })
            }

            fn policy_row(row: &<$db as ::sqlx::Database>::Row) -> ::sqlx::Result<$crate::store::PolicyVersion> {
                use ::sqlx::Row;
                Ok($crate::store::PolicyVersion {
                    bundle: row.try_get("bundle")?,
                    version: row.try_get("version")?,
                    source: row.try_get("source")?,
                    sha256: row.try_get("sha256")?,
                    description: row.try_get("description")?,
                    created_at: row.try_get("created_at")?,
                    created_by: row.try_get("created_by")?,
                })
            }

            fn audit_row(row: &<$db as ::sqlx::Database>::Row) -> ::sqlx::Result<$crate::store::ChainedEvent> {
                use ::sqlx::Row;
                Ok($crate::store::ChainedEvent {
                    event: $crate::store::AuditEvent {
                        id: row.try_get("id")?,
                        timestamp: row.try_get("timestamp")?,
                        event_type: row.try_get("event_type")?,
                        actor: row.try_get("actor")?,
                        ip: row.try_get("ip")?,
                        resource: row.try_get("resource")?,
                        outcome: row.try_get("outcome")?,
                        // A row edited into something unreadable is still read, so that
                        // verification reports it broken (its hash cannot match) with its
                        // chain and seq, instead of failing the whole read.
                        details: row
                            .try_get::<::sqlx::types::Json<::serde_json::Value>, _>("details")
                            .map_or_else(|_| ::serde_json::json!({"unreadable": true}), |d| d.0),
                        node_id: row.try_get("node_id")?,
                    },
                    chain: row.try_get("chain")?,
                    seq: row.try_get("seq")?,
                    prev_hash: row.try_get("prev_hash")?,
                    hash: row.try_get("hash")?,
                })
            }

            fn bind_user<'q>(
                query: ::sqlx::query::Query<'q, $db, <$db as ::sqlx::Database>::Arguments>,
                user: &'q $crate::store::User,
            ) -> ::sqlx::query::Query<'q, $db, <$db as ::sqlx::Database>::Arguments> {
                query
                    .bind(user.id)
                    .bind(&user.username)
                    .bind(&user.email)
                    .bind(user.role.as_str())
                    .bind(::sqlx::types::Json(&user.teams))
                    .bind(&user.password_hash)
                    .bind(user.is_active)
                    .bind(user.mfa_enabled)
                    .bind(&user.provider)
                    .bind(&user.subject)
                    .bind(user.created_at)
                    .bind(user.updated_at)
            }

            /// `UPDATE users SET …` for `patch`, returning the whole row.
            fn user_update(
                username: &str,
                patch: &$crate::store::UserPatch,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> ::sqlx::QueryBuilder<$db> {
                let mut qb = ::sqlx::QueryBuilder::<$db>::new("UPDATE users SET updated_at = ");
                qb.push_bind(now);
                if let Some(email) = &patch.email {
                    qb.push(", email = ").push_bind(email.clone());
                }
                if let Some(role) = patch.role {
                    qb.push(", role = ").push_bind(role.as_str());
                }
                if let Some(teams) = &patch.teams {
                    qb.push(", teams = ").push_bind(::sqlx::types::Json(teams.clone()));
                }
                if let Some(active) = patch.is_active {
                    qb.push(", is_active = ").push_bind(active);
                }
                if let Some(hash) = &patch.password_hash {
                    qb.push(", password_hash = ").push_bind(hash.clone());
                }
                if let Some(mfa) = patch.mfa_enabled {
                    qb.push(", mfa_enabled = ").push_bind(mfa);
                }
                qb.push(" WHERE username = ").push_bind(username.to_owned());
                qb.push(concat!(" RETURNING ", user_columns!()));
                qb
            }

            fn rows<T>(
                rows: Vec<<$db as ::sqlx::Database>::Row>,
                map: fn(&<$db as ::sqlx::Database>::Row) -> ::sqlx::Result<T>,
            ) -> $crate::store::StoreResult<Vec<T>> {
                rows.iter().map(|r| map(r).map_err($crate::store::db_error)).collect()
            }

            /// Moves each chain's checkpoint to its last event older than `before` and deletes
            /// the chain's events up to there; deletes API request rows older than `before`.
            /// Returns `(audit events, request rows)` removed.
            async fn prune_rows_before(
                tx: &mut ::sqlx::Transaction<'_, $db>,
                before: ::chrono::DateTime<::chrono::Utc>,
                now: ::chrono::DateTime<::chrono::Utc>,
                seal: &dyn $crate::store::PositionSeal,
            ) -> ::sqlx::Result<(u64, u64)> {
                let ends: Vec<(String, i64)> = ::sqlx::query_as(
                    r#"SELECT chain, MAX(seq) FROM audit_logs WHERE "timestamp" < $1 GROUP BY chain"#,
                )
                .bind(before)
                .fetch_all(&mut **tx)
                .await?;
                let mut events = 0;
                for (chain, seq) in ends {
                    Self::checkpoint(tx, &chain, seq, now, seal).await?;
                    events += ::sqlx::query("DELETE FROM audit_logs WHERE chain = $1 AND seq <= $2")
                        .bind(&chain)
                        .bind(seq)
                        .execute(&mut **tx)
                        .await?
                        .rows_affected();
                }
                let requests = ::sqlx::query(r#"DELETE FROM api_requests WHERE "timestamp" < $1"#)
                    .bind(before)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                Ok((events, requests))
            }

            /// Moves a chain's checkpoint forward to the stored event at `seq`, sealed.
            async fn checkpoint(
                tx: &mut ::sqlx::Transaction<'_, $db>,
                chain: &str,
                seq: i64,
                now: ::chrono::DateTime<::chrono::Utc>,
                seal: &dyn $crate::store::PositionSeal,
            ) -> ::sqlx::Result<()> {
                let hash: String = ::sqlx::query_scalar("SELECT hash FROM audit_logs WHERE chain = $1 AND seq = $2")
                    .bind(chain)
                    .bind(seq)
                    .fetch_one(&mut **tx)
                    .await?;
                // The seal covers the time as it reads back (microseconds).
                let now = ::chrono::SubsecRound::trunc_subsecs(now, 6);
                let mac = seal.seal($crate::store::PositionKind::Checkpoint, chain, seq, &hash, now);
                ::sqlx::query(
                    "INSERT INTO audit_checkpoints (chain, seq, hash, updated_at, mac) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, \
                     updated_at = excluded.updated_at, mac = excluded.mac WHERE excluded.seq > audit_checkpoints.seq",
                )
                .bind(chain)
                .bind(seq)
                .bind(hash)
                .bind(now)
                .bind(mac)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// A chain's row in `audit_chain_heads` or `audit_checkpoints`.
            async fn chain_position(
                &self,
                sql: &'static str,
                chain: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::SealedPosition>> {
                let row = ::sqlx::query(sql)
                    .bind(chain)
                    .fetch_optional(self.pool()?)
                    .await
                    .map_err($crate::store::db_error)?;
                row.map(|r| {
                    use ::sqlx::Row;
                    Ok($crate::store::SealedPosition {
                        seq: r.try_get("seq")?,
                        hash: r.try_get("hash")?,
                        at: r.try_get("updated_at")?,
                        mac: r.try_get("mac")?,
                    })
                })
                .transpose()
                .map_err($crate::store::db_error)
            }
        }

        #[::async_trait::async_trait]
        impl $crate::store::UserStore for $store {
            async fn create_user(&self, user: &$crate::store::User) -> $crate::store::StoreResult<()> {
                let query = ::sqlx::query(concat!(
                    "INSERT INTO users (", user_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                ));
                Self::bind_user(query, user).execute(self.writer()?).await.map_err(|e| {
                    match $crate::store::db_error(e) {
                        $crate::store::StoreError::Conflict(_) => {
                            $crate::store::StoreError::Conflict(format!("user {}", user.username))
                        }
                        other => other,
                    }
                })?;
                Ok(())
            }

            async fn create_user_if_absent(&self, user: &$crate::store::User) -> $crate::store::StoreResult<bool> {
                let query = ::sqlx::query(concat!(
                    "INSERT INTO users (", user_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING"
                ));
                let done = Self::bind_user(query, user)
                    .execute(self.writer()?)
                    .await
                    .map_err($crate::store::db_error)?;
                Ok(done.rows_affected() == 1)
            }

            async fn user_by_username(&self, username: &str) -> $crate::store::StoreResult<Option<$crate::store::User>> {
                let row = ::sqlx::query(concat!("SELECT ", user_columns!(), " FROM users WHERE username = $1"))
                    .bind(username)
                    .fetch_optional(self.pool()?)
                    .await
                    .map_err($crate::store::db_error)?;
                row.as_ref().map(Self::user_row).transpose().map_err($crate::store::db_error)
            }

            async fn user_by_id(&self, id: ::uuid::Uuid) -> $crate::store::StoreResult<Option<$crate::store::User>> {
                let row = ::sqlx::query(concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(self.pool()?)
                    .await
                    .map_err($crate::store::db_error)?;
                row.as_ref().map(Self::user_row).transpose().map_err($crate::store::db_error)
            }

            async fn list_users(&self, page: &$crate::store::PageRequest) -> $crate::store::StoreResult<Vec<$crate::store::User>> {
                let mut qb = ::sqlx::QueryBuilder::<$db>::new(concat!("SELECT ", user_columns!(), " FROM users"));
                if let Some(after) = &page.after {
                    qb.push(" WHERE username > ").push_bind(after.clone());
                }
                qb.push(" ORDER BY username LIMIT ").push_bind(i64::from(page.limit));
                let rows = qb.build().fetch_all(self.pool()?).await.map_err($crate::store::db_error)?;
                Self::rows(rows, Self::user_row)
            }

            async fn update_user(
                &self,
                username: &str,
                patch: &$crate::store::UserPatch,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<Option<$crate::store::User>> {
                let mut qb = Self::user_update(username, patch, now);
                let row = qb.build().fetch_optional(self.writer()?).await.map_err($crate::store::db_error)?;
                row.as_ref().map(Self::user_row).transpose().map_err($crate::store::db_error)
            }

            async fn update_user_revoking(
                &self,
                username: &str,
                patch: &$crate::store::UserPatch,
                revoke: &$crate::store::CredentialRevocation<'_>,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<Option<$crate::store::RevokingUpdate>> {
                let mut tx = Self::begin_write(self.writer()?).await.map_err($crate::store::db_error)?;
                let mut qb = Self::user_update(username, patch, now);
                let row = qb.build().fetch_optional(&mut *tx).await.map_err($crate::store::db_error)?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let user = Self::user_row(&row).map_err($crate::store::db_error)?;
                let ids = |rows: Vec<<$db as ::sqlx::Database>::Row>| {
                    rows.iter()
                        .map(|r| ::sqlx::Row::try_get(r, "id"))
                        .collect::<::sqlx::Result<Vec<::uuid::Uuid>>>()
                        .map_err($crate::store::db_error)
                };
                let mut sessions = ::sqlx::QueryBuilder::<$db>::new("UPDATE sessions SET revoked_at = ");
                sessions.push_bind(now).push(", revoked_reason = ").push_bind(revoke.reason.to_owned());
                sessions.push(" WHERE user_id = ").push_bind(user.id);
                sessions.push(" AND revoked_at IS NULL AND expires_at > ").push_bind(now);
                if let Some(keep) = revoke.keep {
                    sessions.push(" AND id <> ").push_bind(keep);
                }
                sessions.push(" RETURNING id");
                let revoked_sessions = ids(sessions.build().fetch_all(&mut *tx).await.map_err($crate::store::db_error)?)?;
                let revoked_api_keys = if revoke.api_keys {
                    ids(::sqlx::query(
                        "UPDATE api_keys SET revoked_at = $1, revoked_reason = $2 \
                         WHERE user_id = $3 AND revoked_at IS NULL RETURNING id",
                    )
                    .bind(now)
                    .bind(revoke.reason)
                    .bind(user.id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err($crate::store::db_error)?)?
                } else {
                    Vec::new()
                };
                tx.commit().await.map_err($crate::store::db_error)?;
                Ok(Some($crate::store::RevokingUpdate { user, revoked_sessions, revoked_api_keys }))
            }

            async fn delete_user(
                &self,
                username: &str,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<Option<$crate::store::DeletedUser>> {
                let mut tx = Self::begin_write(self.writer()?).await.map_err($crate::store::db_error)?;
                let row = ::sqlx::query(Self::USER_FOR_UPDATE_SQL)
                    .bind(username)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::store::db_error)?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let user = Self::user_row(&row).map_err($crate::store::db_error)?;
                let revoked = ::sqlx::query(
                    "UPDATE sessions SET revoked_at = $1, revoked_reason = 'user_deleted' \
                     WHERE user_id = $2 AND revoked_at IS NULL AND expires_at > $1 RETURNING id",
                )
                .bind(now)
                .bind(user.id)
                .fetch_all(&mut *tx)
                .await
                .map_err($crate::store::db_error)?;
                let revoked_sessions = revoked
                    .iter()
                    .map(|r| ::sqlx::Row::try_get(r, "id"))
                    .collect::<::sqlx::Result<Vec<::uuid::Uuid>>>()
                    .map_err($crate::store::db_error)?;
                let keys = ::sqlx::query(
                    "UPDATE api_keys SET revoked_at = $1, revoked_reason = 'user_deleted' \
                     WHERE user_id = $2 AND revoked_at IS NULL RETURNING id",
                )
                .bind(now)
                .bind(user.id)
                .fetch_all(&mut *tx)
                .await
                .map_err($crate::store::db_error)?;
                let revoked_api_keys = keys
                    .iter()
                    .map(|r| ::sqlx::Row::try_get(r, "id"))
                    .collect::<::sqlx::Result<Vec<::uuid::Uuid>>>()
                    .map_err($crate::store::db_error)?;
                ::sqlx::query("DELETE FROM users WHERE id = $1")
                    .bind(user.id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::store::db_error)?;
                tx.commit().await.map_err($crate::store::db_error)?;
                Ok(Some($crate::store::DeletedUser { user, revoked_sessions, revoked_api_keys }))
            }
        }

        #[::async_trait::async_trait]
        impl $crate::store::SessionStore for $store {
            async fn create_session(&self, s: &$crate::store::SessionRecord) -> $crate::store::StoreResult<bool> {
                let mut tx = Self::begin_write(self.writer()?).await.map_err($crate::store::db_error)?;
                let active: Option<bool> = ::sqlx::query_scalar(Self::USER_ACTIVE_FOR_SHARE_SQL)
                    .bind(s.user_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::store::db_error)?;
                if active != Some(true) {
                    return Ok(false);
                }
                ::sqlx::query(concat!(
                    "INSERT INTO sessions (", session_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                ))
                .bind(s.id)
                .bind(s.user_id)
                .bind(&s.refresh_hash)
                .bind(&s.auth_method)
                .bind(&s.ip)
                .bind(s.mfa_verified)
                .bind(s.created_at)
                .bind(s.last_seen_at)
                .bind(s.expires_at)
                .bind(s.revoked_at)
                .bind(&s.revoked_reason)
                .bind(&s.node_id)
                .execute(&mut *tx)
                .await
                .map_err($crate::store::db_error)?;
                tx.commit().await.map_err($crate::store::db_error)?;
                Ok(true)
            }

            async fn session(&self, id: ::uuid::Uuid) -> $crate::store::StoreResult<Option<$crate::store::SessionRecord>> {
                let row = ::sqlx::query(concat!("SELECT ", session_columns!(), " FROM sessions WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(self.pool()?)
                    .await
                    .map_err($crate::store::db_error)?;
                row.as_ref().map(Self::session_row).transpose().map_err($crate::store::db_error)
            }

            async fn rotate_refresh(
                &self,
                id: ::uuid::Uuid,
                old_hash: &str,
                new_hash: &str,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<$crate::store::RotateOutcome> {
                if self.rotate_current(id, old_hash, new_hash, now).await? {
                    return Ok($crate::store::RotateOutcome::Rotated);
                }
                // Only a token this session issued and already rotated is a reuse; a
                // token it never issued (a guess, a forgery) is merely not found.
                let reused = ::sqlx::query(
                    "SELECT s.id FROM sessions s JOIN refresh_tokens_used u ON u.session_id = s.id \
                     WHERE s.id = $1 AND u.hash = $2 AND s.revoked_at IS NULL AND s.expires_at > $3",
                )
                .bind(id)
                .bind(old_hash)
                .bind(now)
                .fetch_optional(self.pool()?)
                .await
                .map_err($crate::store::db_error)?;
                Ok(if reused.is_some() {
                    $crate::store::RotateOutcome::Reused
                } else {
                    $crate::store::RotateOutcome::NotFound
                })
            }

            async fn touch_session(&self, id: ::uuid::Uuid, now: ::chrono::DateTime<::chrono::Utc>) -> $crate::store::StoreResult<()> {
                ::sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id = $2 AND last_seen_at < $1")
                    .bind(now)
                    .bind(id)
                    .execute(self.writer()?)
                    .await
                    .map_err($crate::store::db_error)?;
                Ok(())
            }

            async fn revoke_session(
                &self,
                id: ::uuid::Uuid,
                reason: &str,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<bool> {
                let done = ::sqlx::query(
                    "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL",
                )
                .bind(now)
                .bind(reason)
                .bind(id)
                .execute(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                Ok(done.rows_affected() == 1)
            }

            async fn revoke_user_sessions(
                &self,
                user_id: ::uuid::Uuid,
                keep: Option<::uuid::Uuid>,
                reason: &str,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<Vec<::uuid::Uuid>> {
                let mut qb = ::sqlx::QueryBuilder::<$db>::new("UPDATE sessions SET revoked_at = ");
                qb.push_bind(now).push(", revoked_reason = ").push_bind(reason.to_owned());
                qb.push(" WHERE user_id = ").push_bind(user_id);
                qb.push(" AND revoked_at IS NULL AND expires_at > ").push_bind(now);
                if let Some(keep) = keep {
                    qb.push(" AND id <> ").push_bind(keep);
                }
                qb.push(" RETURNING id");
                let rows = qb.build().fetch_all(self.writer()?).await.map_err($crate::store::db_error)?;
                rows.iter()
                    .map(|r| ::sqlx::Row::try_get(r, "id").map_err($crate::store::db_error))
                    .collect()
            }

            async fn user_sessions(
                &self,
                user_id: ::uuid::Uuid,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<Vec<$crate::store::SessionRecord>> {
                let rows = ::sqlx::query(concat!(
                    "SELECT ", session_columns!(),
                    " FROM sessions WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 ORDER BY created_at, id"
                ))
                .bind(user_id)
                .bind(now)
                .fetch_all(self.pool()?)
                .await
                .map_err($crate::store::db_error)?;
                Self::rows(rows, Self::session_row)
            }

            async fn revoked_session_ids(&self, now: ::chrono::DateTime<::chrono::Utc>) -> $crate::store::StoreResult<Vec<::uuid::Uuid>> {
                let rows = ::sqlx::query("SELECT id FROM sessions WHERE revoked_at IS NOT NULL AND expires_at > $1")
                    .bind(now)
                    .fetch_all(self.pool()?)
                    .await
                    .map_err($crate::store::db_error)?;
                rows.iter()
                    .map(|r| ::sqlx::Row::try_get(r, "id").map_err($crate::store::db_error))
                    .collect()
            }

            async fn count_active_sessions(&self, now: ::chrono::DateTime<::chrono::Utc>) -> $crate::store::StoreResult<u64> {
                let count: i64 = ::sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND expires_at > $1")
                    .bind(now)
                    .fetch_one(self.pool()?)
                    .await
                    .map_err($crate::store::db_error)?;
                Ok(count.max(0) as u64)
            }
        }

        #[::async_trait::async_trait]
        impl $crate::store::ServerStore for $store {
            async fn create_server(&self, s: &$crate::store::Server) -> $crate::store::StoreResult<()> {
                let mut tx = Self::begin_write(self.writer()?).await.map_err($crate::store::db_error)?;
                ::sqlx::query(concat!("INSERT INTO servers (", server_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"))
                    .bind(s.id)
                    .bind(&s.name)
                    .bind(&s.endpoint)
                    .bind(&s.description)
                    .bind(::sqlx::types::Json(&s.tags))
                    .bind(s.created_at)
                    .bind(s.updated_at)
                    .bind(&s.created_by)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| match $crate::store::db_error(e) {
                        $crate::store::StoreError::Conflict(_) => {
                            $crate::store::StoreError::Conflict(format!("server {}", s.name))
                        }
                        other => other,
                    })?;
                Self::write_server_tags(&mut tx, s.id, &s.tags).await.map_err($crate::store::db_error)?;
                tx.commit().await.map_err($crate::store::db_error)?;
                Ok(())
            }

            async fn server(&self, name: &str) -> $crate::store::StoreResult<Option<$crate::store::Server>> {
                let row = ::sqlx::query(concat!("SELECT ", server_columns!(), " FROM servers WHERE name = $1"))
                    .bind(name)
                    .fetch_optional(self.pool()?)
                    .await
                    .map_err($crate::store::db_error)?;
                row.as_ref().map(Self::server_row).transpose().map_err($crate::store::db_error)
            }

            async fn list_servers(&self, q: &$crate::store::ServerQuery) -> $crate::store::StoreResult<Vec<$crate::store::Server>> {
                let mut qb = ::sqlx::QueryBuilder::<$db>::new(concat!("SELECT ", server_columns!(), " FROM servers WHERE 1 = 1"));
                if let Some(prefix) = &q.name_prefix {
                    // A comparison, not LIKE: the prefix is data, never a pattern.
                    qb.push(" AND substr(name, 1, length(").push_bind(prefix.clone());
                    qb.push(")) = ").push_bind(prefix.clone());
                }
                Self::push_tag_filter(&mut qb, &q.tags);
                if let Some(after) = &q.page.after {
                    qb.push(" AND name > ").push_bind(after.clone());
                }
                qb.push(" ORDER BY name LIMIT ").push_bind(i64::from(q.page.limit));
                let rows = qb.build().fetch_all(self.pool()?).await.map_err($crate::store::db_error)?;
                Self::rows(rows, Self::server_row)
            }

            async fn update_server(
                &self,
                name: &str,
                patch: &$crate::store::ServerPatch,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<Option<$crate::store::Server>> {
                let mut tx = Self::begin_write(self.writer()?).await.map_err($crate::store::db_error)?;
                let mut qb = ::sqlx::QueryBuilder::<$db>::new("UPDATE servers SET updated_at = ");
                qb.push_bind(now);
                if let Some(endpoint) = &patch.endpoint {
                    qb.push(", endpoint = ").push_bind(endpoint.clone());
                }
                if let Some(description) = &patch.description {
                    qb.push(", description = ").push_bind(description.clone());
                }
                if let Some(tags) = &patch.tags {
                    qb.push(", tags = ").push_bind(::sqlx::types::Json(tags.clone()));
                }
                qb.push(" WHERE name = ").push_bind(name.to_owned());
                qb.push(concat!(" RETURNING ", server_columns!()));
                let row = qb.build().fetch_optional(&mut *tx).await.map_err($crate::store::db_error)?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let server = Self::server_row(&row).map_err($crate::store::db_error)?;
                if patch.tags.is_some() {
                    Self::write_server_tags(&mut tx, server.id, &server.tags).await.map_err($crate::store::db_error)?;
                }
                tx.commit().await.map_err($crate::store::db_error)?;
                Ok(Some(server))
            }

            async fn delete_server(&self, name: &str) -> $crate::store::StoreResult<bool> {
                let done = ::sqlx::query("DELETE FROM servers WHERE name = $1")
                    .bind(name)
                    .execute(self.writer()?)
                    .await
                    .map_err($crate::store::db_error)?;
                Ok(done.rows_affected() == 1)
            }

            async fn count_servers(&self) -> $crate::store::StoreResult<u64> {
                let count: i64 = ::sqlx::query_scalar("SELECT COUNT(*) FROM servers")
                    .fetch_one(self.pool()?)
                    .await
                    .map_err($crate::store::db_error)?;
                Ok(count.max(0) as u64)
            }
        }

        #[::async_trait::async_trait]
        impl $crate::store::PolicyStore for $store {
            async fn add_policy_version(
                &self,
                new: &$crate::store::NewPolicyVersion<'_>,
            ) -> $crate::store::StoreResult<$crate::store::PolicyVersion> {
                let mut tx = Self::begin_write(self.writer()?).await.map_err($crate::store::db_error)?;
                // The upsert takes the bundle's row lock, so concurrent uploads get
                // consecutive versions.
                let version: i64 = ::sqlx::query_scalar(
                    "INSERT INTO policy_bundles (name, active_version, updated_at) VALUES ($1, 1, $2) \
                     ON CONFLICT (name) DO UPDATE SET active_version = policy_bundles.active_version + 1, \
                     updated_at = excluded.updated_at RETURNING active_version",
                )
                .bind(new.bundle)
                .bind(new.now)
                .fetch_one(&mut *tx)
                .await
                .map_err($crate::store::db_error)?;
                Self::insert_policy_version(&mut tx, new, version).await?;
                tx.commit().await.map_err($crate::store::db_error)?;
                Ok(Self::stored_version(new, version))
            }

            async fn seed_policy(&self, new: &$crate::store::NewPolicyVersion<'_>) -> $crate::store::StoreResult<bool> {
                let mut tx = Self::begin_write(self.writer()?).await.map_err($crate::store::db_error)?;
                let done = ::sqlx::query(
                    "INSERT INTO policy_bundles (name, active_version, updated_at) VALUES ($1, 1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(new.bundle)
                .bind(new.now)
                .execute(&mut *tx)
                .await
                .map_err($crate::store::db_error)?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                Self::insert_policy_version(&mut tx, new, 1).await?;
                tx.commit().await.map_err($crate::store::db_error)?;
                Ok(true)
            }

            async fn active_policy(&self, bundle: &str) -> $crate::store::StoreResult<Option<$crate::store::PolicyVersion>> {
                let row = ::sqlx::query(concat!(
                    "SELECT ", policy_columns!(), " FROM policy_versions v JOIN policy_bundles b \
                     ON b.name = v.bundle AND b.active_version = v.version WHERE b.name = $1"
                ))
                .bind(bundle)
                .fetch_optional(self.pool()?)
                .await
                .map_err($crate::store::db_error)?;
                row.as_ref().map(Self::policy_row).transpose().map_err($crate::store::db_error)
            }

            async fn active_policies(&self) -> $crate::store::StoreResult<Vec<$crate::store::PolicyVersion>> {
                let rows = ::sqlx::query(concat!(
                    "SELECT ", policy_columns!(), " FROM policy_versions v JOIN policy_bundles b \
                     ON b.name = v.bundle AND b.active_version = v.version ORDER BY b.name"
                ))
                .fetch_all(self.pool()?)
                .await
                .map_err($crate::store::db_error)?;
                Self::rows(rows, Self::policy_row)
            }

            async fn policy_version(
                &self,
                bundle: &str,
                version: i64,
            ) -> $crate::store::StoreResult<Option<$crate::store::PolicyVersion>> {
                let row = ::sqlx::query(concat!(
                    "SELECT ", policy_columns!(), " FROM policy_versions WHERE bundle = $1 AND version = $2"
                ))
                .bind(bundle)
                .bind(version)
                .fetch_optional(self.pool()?)
                .await
                .map_err($crate::store::db_error)?;
                row.as_ref().map(Self::policy_row).transpose().map_err($crate::store::db_error)
            }

            async fn policy_versions(&self, bundle: &str) -> $crate::store::StoreResult<Vec<$crate::store::PolicyVersion>> {
                let rows = ::sqlx::query(concat!(
                    "SELECT ", policy_columns!(), " FROM policy_versions WHERE bundle = $1 ORDER BY version DESC"
                ))
                .bind(bundle)
                .fetch_all(self.pool()?)
                .await
                .map_err($crate::store::db_error)?;
                Self::rows(rows, Self::policy_row)
            }
        }

        impl $store {
            async fn insert_policy_version(
                tx: &mut ::sqlx::Transaction<'_, $db>,
                new: &$crate::store::NewPolicyVersion<'_>,
                version: i64,
            ) -> $crate::store::StoreResult<()> {
                ::sqlx::query(concat!(
                    "INSERT INTO policy_versions (", policy_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
                ))
                .bind(new.bundle)
                .bind(version)
                .bind(new.source)
                .bind(new.sha256)
                .bind(new.description)
                .bind(new.now)
                .bind(new.created_by)
                .execute(&mut **tx)
                .await
                .map_err($crate::store::db_error)?;
                Ok(())
            }

            fn stored_version(new: &$crate::store::NewPolicyVersion<'_>, version: i64) -> $crate::store::PolicyVersion {
                $crate::store::PolicyVersion {
                    bundle: new.bundle.to_owned(),
                    version,
                    source: new.source.to_owned(),
                    sha256: new.sha256.to_owned(),
                    description: new.description.map(str::to_owned),
                    created_at: new.now,
                    created_by: new.created_by.to_owned(),
                }
            }
        }

        impl $store {
            /// Marks outbox rows delivered, only those still leased by `owner`.
            async fn mark_outbox_delivered(
                tx: &mut ::sqlx::Transaction<'_, $db>,
                owner: &str,
                ids: &[i64],
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<()> {
                if ids.is_empty() {
                    return Ok(());
                }
                let mut qb = ::sqlx::QueryBuilder::<$db>::new("UPDATE siem_outbox SET delivered_at = ");
                qb.push_bind(now).push(", last_error = NULL, lease_owner = NULL, lease_until = NULL WHERE lease_owner = ");
                qb.push_bind(owner.to_owned()).push(" AND id IN (");
                let mut list = qb.separated(", ");
                for id in ids {
                    list.push_bind(*id);
                }
                qb.push(")");
                qb.build().execute(&mut **tx).await.map_err($crate::store::db_error)?;
                Ok(())
            }
        }

        #[::async_trait::async_trait]
        impl $crate::store::AuditStore for $store {
            async fn audit_generation(&self) -> $crate::store::StoreResult<u32> {
                let stored = $crate::store::MetaStore::meta(self, $crate::store::AUDIT_GENERATION_META).await?;
                $crate::store::audit_generation(stored)
            }

            async fn append_audit(
                &self,
                chain: &str,
                prev_seq: i64,
                events: &[$crate::store::ChainedEvent],
                head_mac: &str,
                sinks: &[String],
            ) -> $crate::store::StoreResult<()> {
                let Some(last) = events.last() else {
                    return Ok(());
                };
                let now = last.event.timestamp;
                let mut tx = Self::begin_write(self.writer()?).await.map_err($crate::store::db_error)?;
                let moved = if prev_seq == 0 {
                    ::sqlx::query(
                        "INSERT INTO audit_chain_heads (chain, seq, hash, updated_at, mac) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(chain)
                    .bind(last.seq)
                    .bind(&last.hash)
                    .bind(now)
                    .bind(head_mac)
                    .execute(&mut *tx)
                    .await
                } else {
                    ::sqlx::query(
                        "UPDATE audit_chain_heads SET seq = $1, hash = $2, updated_at = $3, mac = $4 WHERE chain = $5 AND seq = $6",
                    )
                    .bind(last.seq)
                    .bind(&last.hash)
                    .bind(now)
                    .bind(head_mac)
                    .bind(chain)
                    .bind(prev_seq)
                    .execute(&mut *tx)
                    .await
                }
                .map_err($crate::store::db_error)?;
                if moved.rows_affected() != 1 {
                    return Err($crate::store::StoreError::Contended(format!("audit chain {chain}")));
                }
                let mut qb = ::sqlx::QueryBuilder::<$db>::new(concat!("INSERT INTO audit_logs (", audit_columns!(), ") "));
                qb.push_values(events, |mut b, e| {
                    b.push_bind(e.event.id)
                        .push_bind(e.chain.clone())
                        .push_bind(e.seq)
                        .push_bind(e.event.timestamp)
                        .push_bind(e.event.event_type.clone())
                        .push_bind(e.event.actor.clone())
                        .push_bind(e.event.ip.clone())
                        .push_bind(e.event.resource.clone())
                        .push_bind(e.event.outcome.clone())
                        .push_bind(::sqlx::types::Json(e.event.details.clone()))
                        .push_bind(e.event.node_id.clone())
                        .push_bind(e.prev_hash.clone())
                        .push_bind(e.hash.clone());
                });
                qb.build().execute(&mut *tx).await.map_err($crate::store::db_error)?;
                if !sinks.is_empty() {
                    let rows: Vec<(&String, &$crate::store::ChainedEvent)> =
                        sinks.iter().flat_map(|s| events.iter().map(move |e| (s, e))).collect();
                    let mut qb = ::sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO siem_outbox (sink, audit_id, payload, created_at, next_attempt_at) ",
                    );
                    qb.push_values(rows, |mut b, (sink, e)| {
                        b.push_bind(sink.clone())
                            .push_bind(e.event.id)
                            .push_bind(::sqlx::types::Json(e.clone()))
                            .push_bind(e.event.timestamp)
                            .push_bind(e.event.timestamp);
                    });
                    qb.build().execute(&mut *tx).await.map_err($crate::store::db_error)?;
                }
                tx.commit().await.map_err($crate::store::db_error)?;
                Ok(())
            }

            async fn chain_head(&self, chain: &str) -> $crate::store::StoreResult<Option<$crate::store::SealedPosition>> {
                self.chain_position("SELECT seq, hash, updated_at, mac FROM audit_chain_heads WHERE chain = $1", chain).await
            }

            async fn audit_checkpoint(&self, chain: &str) -> $crate::store::StoreResult<Option<$crate::store::SealedPosition>> {
                self.chain_position("SELECT seq, hash, updated_at, mac FROM audit_checkpoints WHERE chain = $1", chain).await
            }

            async fn list_audit(&self, q: &$crate::store::AuditQuery) -> $crate::store::StoreResult<Vec<$crate::store::ChainedEvent>> {
                let mut qb = ::sqlx::QueryBuilder::<$db>::new(concat!("SELECT ", audit_columns!(), " FROM audit_logs WHERE 1 = 1"));
                if let Some(t) = &q.event_type {
                    qb.push(" AND event_type = ").push_bind(t.clone());
                }
                if let Some(actor) = &q.actor {
                    qb.push(" AND actor = ").push_bind(actor.clone());
                }
                if let Some(since) = q.since {
                    qb.push(r#" AND "timestamp" >= "#).push_bind(since);
                }
                if let Some(until) = q.until {
                    qb.push(r#" AND "timestamp" < "#).push_bind(until);
                }
                if let Some((ts, id)) = q.before {
                    qb.push(r#" AND ("timestamp" < "#).push_bind(ts);
                    qb.push(r#" OR ("timestamp" = "#).push_bind(ts);
                    qb.push(" AND id < ").push_bind(id).push("))");
                }
                qb.push(r#" ORDER BY "timestamp" DESC, id DESC LIMIT "#).push_bind(i64::from(q.limit));
                let rows = qb.build().fetch_all(self.pool()?).await.map_err($crate::store::db_error)?;
                Self::rows(rows, Self::audit_row)
            }

            async fn audit_chains(&self) -> $crate::store::StoreResult<Vec<String>> {
                // A chain whose head row was deleted is still found by its events.
                ::sqlx::query_scalar(
                    "SELECT chain FROM audit_chain_heads UNION SELECT chain FROM audit_checkpoints \
                     UNION SELECT DISTINCT chain FROM audit_logs ORDER BY chain",
                )
                    .fetch_all(self.pool()?)
                    .await
                    .map_err($crate::store::db_error)
            }

            async fn chain_segment(
                &self,
                chain: &str,
                after_seq: i64,
                limit: u32,
            ) -> $crate::store::StoreResult<Vec<$crate::store::ChainedEvent>> {
                let rows = ::sqlx::query(concat!(
                    "SELECT ", audit_columns!(), " FROM audit_logs WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                ))
                .bind(chain)
                .bind(after_seq)
                .bind(i64::from(limit))
                .fetch_all(self.pool()?)
                .await
                .map_err($crate::store::db_error)?;
                Self::rows(rows, Self::audit_row)
            }
        }

        #[::async_trait::async_trait]
        impl $crate::store::SiemOutbox for $store {
            async fn claim_outbox(
                &self,
                sink: &str,
                owner: &str,
                now: ::chrono::DateTime<::chrono::Utc>,
                lease_until: ::chrono::DateTime<::chrono::Utc>,
                limit: u32,
            ) -> $crate::store::StoreResult<Vec<$crate::store::OutboxEntry>> {
                self.complete_and_claim_outbox(owner, &[], sink, now, lease_until, limit).await
            }

            async fn complete_outbox(
                &self,
                owner: &str,
                ids: &[i64],
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<()> {
                if ids.is_empty() {
                    return Ok(());
                }
                let mut tx = Self::begin_write(self.writer()?).await.map_err($crate::store::db_error)?;
                Self::mark_outbox_delivered(&mut tx, owner, ids, now).await?;
                tx.commit().await.map_err($crate::store::db_error)
            }

            async fn complete_and_claim_outbox(
                &self,
                owner: &str,
                delivered: &[i64],
                sink: &str,
                now: ::chrono::DateTime<::chrono::Utc>,
                lease_until: ::chrono::DateTime<::chrono::Utc>,
                limit: u32,
            ) -> $crate::store::StoreResult<Vec<$crate::store::OutboxEntry>> {
                let mut tx = Self::begin_write(self.writer()?).await.map_err($crate::store::db_error)?;
                Self::mark_outbox_delivered(&mut tx, owner, delivered, now).await?;
                let rows = ::sqlx::query(Self::CLAIM_OUTBOX_SQL)
                    .bind(owner)
                    .bind(lease_until)
                    .bind(sink)
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err($crate::store::db_error)?;
                tx.commit().await.map_err($crate::store::db_error)?;
                let mut entries = rows
                    .iter()
                    .map(|r| {
                        use ::sqlx::Row;
                        Ok($crate::store::OutboxEntry {
                            id: r.try_get("id")?,
                            sink: r.try_get("sink")?,
                            event: r.try_get::<::sqlx::types::Json<$crate::store::ChainedEvent>, _>("payload")?.0,
                            attempts: r.try_get("attempts")?,
                        })
                    })
                    .collect::<::sqlx::Result<Vec<_>>>()
                    .map_err($crate::store::db_error)?;
                entries.sort_by_key(|e| e.id);
                Ok(entries)
            }

            async fn release_outbox(
                &self,
                owner: &str,
                ids: &[i64],
                error: &str,
                retry_at: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<()> {
                if ids.is_empty() {
                    return Ok(());
                }
                let mut qb = ::sqlx::QueryBuilder::<$db>::new(
                    "UPDATE siem_outbox SET lease_owner = NULL, lease_until = NULL, attempts = attempts + 1, last_error = ",
                );
                qb.push_bind(error.to_owned()).push(", next_attempt_at = ").push_bind(retry_at);
                qb.push(" WHERE lease_owner = ").push_bind(owner.to_owned()).push(" AND id IN (");
                let mut list = qb.separated(", ");
                for id in ids {
                    list.push_bind(*id);
                }
                qb.push(")");
                qb.build().execute(self.writer()?).await.map_err($crate::store::db_error)?;
                Ok(())
            }

            async fn hand_over_outbox(&self, owner: &str) -> $crate::store::StoreResult<u64> {
                let done = ::sqlx::query(
                    "UPDATE siem_outbox SET lease_owner = NULL, lease_until = NULL \
                     WHERE lease_owner = $1 AND delivered_at IS NULL",
                )
                .bind(owner)
                .execute(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                Ok(done.rows_affected())
            }

            async fn set_aside_outbox(
                &self,
                owner: &str,
                id: i64,
                error: &str,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<()> {
                ::sqlx::query(
                    "UPDATE siem_outbox SET delivered_at = $1, last_error = $2, lease_owner = NULL, \
                     lease_until = NULL WHERE id = $3 AND lease_owner = $4",
                )
                .bind(now)
                .bind(error)
                .bind(id)
                .bind(owner)
                .execute(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                Ok(())
            }

            async fn prune_outbox(
                &self,
                delivered_before: ::chrono::DateTime<::chrono::Utc>,
                set_aside_before: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<u64> {
                let done = ::sqlx::query(
                    "DELETE FROM siem_outbox WHERE delivered_at IS NOT NULL AND \
                     ((last_error IS NULL AND delivered_at < $1) OR delivered_at < $2)",
                )
                .bind(delivered_before)
                .bind(set_aside_before)
                .execute(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                Ok(done.rows_affected())
            }

            async fn outbox_stats(&self, sink: &str) -> $crate::store::StoreResult<$crate::store::OutboxStats> {
                let row = ::sqlx::query(
                    "SELECT COUNT(*) AS queued, MIN(created_at) AS oldest FROM siem_outbox \
                     WHERE sink = $1 AND delivered_at IS NULL",
                )
                .bind(sink)
                .fetch_one(self.pool()?)
                .await
                .map_err($crate::store::db_error)?;
                use ::sqlx::Row;
                let queued: i64 = row.try_get("queued").map_err($crate::store::db_error)?;
                let oldest = row.try_get("oldest").map_err($crate::store::db_error)?;
                Ok($crate::store::OutboxStats { queued: queued.max(0) as u64, oldest_queued_at: oldest })
            }
        }

        #[::async_trait::async_trait]
        impl $crate::store::RequestLogStore for $store {
            async fn record_requests(&self, rows: &[$crate::store::ApiRequestRow]) -> $crate::store::StoreResult<()> {
                if rows.is_empty() {
                    return Ok(());
                }
                let mut qb = ::sqlx::QueryBuilder::<$db>::new(
                    r#"INSERT INTO api_requests ("timestamp", method, route, status, duration_us, principal, node_id) "#,
                );
                qb.push_values(rows, |mut b, row| {
                    b.push_bind(row.timestamp)
                        .push_bind(row.method.clone())
                        .push_bind(row.route.clone())
                        .push_bind(i32::from(row.status))
                        .push_bind(row.duration_us)
                        .push_bind(row.principal.clone())
                        .push_bind(row.node_id.clone());
                });
                qb.build().execute(self.writer()?).await.map_err($crate::store::db_error)?;
                Ok(())
            }

            async fn count_requests(&self, since: ::chrono::DateTime<::chrono::Utc>) -> $crate::store::StoreResult<u64> {
                let n: i64 = ::sqlx::query_scalar(r#"SELECT COUNT(*) FROM api_requests WHERE "timestamp" >= $1"#)
                    .bind(since)
                    .fetch_one(self.pool()?)
                    .await
                    .map_err($crate::store::db_error)?;
                Ok(u64::try_from(n).unwrap_or(0))
            }
        }

        #[::async_trait::async_trait]
        impl $crate::store::RecoveryStore for $store {
            async fn sealed_values(&self) -> $crate::store::StoreResult<Vec<$crate::store::SealedValue>> {
                use $crate::store::{SealedKind, SealedValue};
                let pool = self.pool()?;
                let fail = $crate::store::db_error;
                let keys: Vec<(String, String)> =
                    ::sqlx::query_as("SELECT kid, private_key FROM signing_keys ORDER BY kid")
                        .fetch_all(pool)
                        .await
                        .map_err(fail)?;
                let totp: Vec<(::uuid::Uuid, String)> =
                    ::sqlx::query_as("SELECT user_id, secret FROM mfa_totp ORDER BY user_id")
                        .fetch_all(pool)
                        .await
                        .map_err(fail)?;
                // SAML's pending logins hold nothing sealed (their data is empty).
                let pending: Vec<(String, String)> =
                    ::sqlx::query_as("SELECT id, data FROM auth_requests WHERE data <> '' ORDER BY id")
                        .fetch_all(pool)
                        .await
                        .map_err(fail)?;
                let value = |kind, (id, sealed): (String, String)| SealedValue { kind, id, sealed };
                Ok(keys
                    .into_iter()
                    .map(|row| value(SealedKind::SigningKey, row))
                    .chain(totp.into_iter().map(|(id, sealed)| value(SealedKind::Totp, (id.to_string(), sealed))))
                    .chain(pending.into_iter().map(|row| value(SealedKind::AuthRequest, row)))
                    .collect())
            }

            async fn reseal(&self, value: &$crate::store::SealedValue, resealed: &str) -> $crate::store::StoreResult<bool> {
                use $crate::store::SealedKind;
                let pool = self.writer()?;
                let done = match value.kind {
                    SealedKind::SigningKey => ::sqlx::query(
                        "UPDATE signing_keys SET private_key = $1 WHERE kid = $2 AND private_key = $3",
                    )
                    .bind(resealed)
                    .bind(&value.id),
                    SealedKind::Totp => ::sqlx::query(
                        "UPDATE mfa_totp SET secret = $1 WHERE user_id = $2 AND secret = $3",
                    )
                    .bind(resealed)
                    .bind(::uuid::Uuid::parse_str(&value.id).map_err(|e| {
                        $crate::store::StoreError::Invalid(format!("user id {}: {e}", value.id))
                    })?),
                    SealedKind::AuthRequest => ::sqlx::query(
                        "UPDATE auth_requests SET data = $1 WHERE id = $2 AND data = $3",
                    )
                    .bind(resealed)
                    .bind(&value.id),
                }
                .bind(&value.sealed)
                .execute(pool)
                .await
                .map_err($crate::store::db_error)?;
                Ok(done.rows_affected() == 1)
            }

            async fn revoke_all_before(
                &self,
                before: ::chrono::DateTime<::chrono::Utc>,
                reason: &str,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<$crate::store::RevokedAll> {
                let mut tx = Self::begin_write(self.writer()?).await.map_err($crate::store::db_error)?;
                let mut revoked = [0u64; 2];
                let statements = [
                    "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
                     WHERE revoked_at IS NULL AND expires_at > $1 AND created_at < $3",
                    "UPDATE api_keys SET revoked_at = $1, revoked_reason = $2 \
                     WHERE revoked_at IS NULL AND created_at < $3",
                ];
                for (count, sql) in revoked.iter_mut().zip(statements) {
                    *count = ::sqlx::query(sql)
                        .bind(now)
                        .bind(reason)
                        .bind(before)
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::store::db_error)?
                        .rows_affected();
                }
                let [sessions, api_keys] = revoked;
                // RFC 3339 in UTC with a fixed width sorts as time: the later cut-off wins.
                let cutoff = before.to_rfc3339_opts(::chrono::SecondsFormat::Micros, true);
                ::sqlx::query(
                    "INSERT INTO meta (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE meta.value < excluded.value",
                )
                .bind($crate::store::CREDENTIALS_NOT_BEFORE_META)
                .bind(cutoff)
                .execute(&mut *tx)
                .await
                .map_err($crate::store::db_error)?;
                tx.commit().await.map_err($crate::store::db_error)?;
                Ok($crate::store::RevokedAll { sessions, api_keys })
            }

            async fn credentials_not_before(&self) -> $crate::store::StoreResult<Option<::chrono::DateTime<::chrono::Utc>>> {
                let stored = $crate::store::MetaStore::meta(self, $crate::store::CREDENTIALS_NOT_BEFORE_META).await?;
                stored
                    .map(|t| {
                        ::chrono::DateTime::parse_from_rfc3339(&t)
                            .map(|t| t.with_timezone(&::chrono::Utc))
                            .map_err(|_| $crate::store::StoreError::Internal(format!("meta {}: `{t}` is not a time", $crate::store::CREDENTIALS_NOT_BEFORE_META)))
                    })
                    .transpose()
            }

            async fn next_audit_generation(&self) -> $crate::store::StoreResult<u32> {
                let mut tx = Self::begin_write(self.writer()?).await.map_err($crate::store::db_error)?;
                let stored: Option<String> = ::sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
                    .bind($crate::store::AUDIT_GENERATION_META)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::store::db_error)?;
                let next = $crate::store::audit_generation(stored)? + 1;
                ::sqlx::query(
                    "INSERT INTO meta (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind($crate::store::AUDIT_GENERATION_META)
                .bind(next.to_string())
                .execute(&mut *tx)
                .await
                .map_err($crate::store::db_error)?;
                tx.commit().await.map_err($crate::store::db_error)?;
                Ok(next)
            }
        }

        #[::async_trait::async_trait]
        impl $crate::store::MetaStore for $store {
            async fn meta(&self, key: &str) -> $crate::store::StoreResult<Option<String>> {
                ::sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
                    .bind(key)
                    .fetch_optional(self.pool()?)
                    .await
                    .map_err($crate::store::db_error)
            }

            async fn set_meta(&self, key: &str, value: &str) -> $crate::store::StoreResult<()> {
                ::sqlx::query(
                    "INSERT INTO meta (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(key)
                .bind(value)
                .execute(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                Ok(())
            }

            async fn put_meta_if_absent(&self, key: &str, value: &str) -> $crate::store::StoreResult<String> {
                let pool = self.pool()?;
                ::sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(key)
                    .bind(value)
                    .execute(pool)
                    .await
                    .map_err($crate::store::db_error)?;
                ::sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
                    .bind(key)
                    .fetch_one(pool)
                    .await
                    .map_err($crate::store::db_error)
            }
        }

        #[::async_trait::async_trait]
        impl $crate::store::MembershipStore for $store {
            async fn record_member(
                &self,
                node_id: &str,
                addr: &str,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<()> {
                ::sqlx::query(
                    "INSERT INTO cluster_members (node_id, addr, joined_at, last_seen_at) VALUES ($1, $2, $3, $3) \
                     ON CONFLICT (node_id) DO UPDATE SET addr = excluded.addr, last_seen_at = excluded.last_seen_at",
                )
                .bind(node_id)
                .bind(addr)
                .bind(now)
                .execute(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                Ok(())
            }

            async fn cluster_members(&self) -> $crate::store::StoreResult<Vec<$crate::store::StoredMember>> {
                use ::sqlx::Row as _;
                let rows = ::sqlx::query("SELECT node_id, addr, last_seen_at FROM cluster_members ORDER BY node_id")
                    .fetch_all(self.pool()?)
                    .await
                    .map_err($crate::store::db_error)?;
                Self::rows(rows, |row| {
                    Ok($crate::store::StoredMember {
                        node_id: row.try_get("node_id")?,
                        addr: row.try_get("addr")?,
                        last_seen_at: row.try_get("last_seen_at")?,
                    })
                })
            }

            async fn remove_member(
                &self,
                node_id: &str,
                seen_before: Option<::chrono::DateTime<::chrono::Utc>>,
            ) -> $crate::store::StoreResult<bool> {
                let done = match seen_before {
                    Some(before) => ::sqlx::query("DELETE FROM cluster_members WHERE node_id = $1 AND last_seen_at < $2")
                        .bind(node_id)
                        .bind(before)
                        .execute(self.writer()?)
                        .await,
                    None => ::sqlx::query("DELETE FROM cluster_members WHERE node_id = $1")
                        .bind(node_id)
                        .execute(self.writer()?)
                        .await,
                }
                .map_err($crate::store::db_error)?;
                Ok(done.rows_affected() == 1)
            }
        }
    };
}

pub(crate) use {
    audit_columns, impl_portable_store, policy_columns, server_columns, session_columns,
    user_columns,
};
