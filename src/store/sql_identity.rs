//! The portable implementation of the identity ports (signing keys, API keys, lockout,
//! MFA), generated once per sqlx backend like `sql.rs`.

macro_rules! api_key_columns {
    () => {
        "id, user_id, name, prefix, key_hash, scopes, created_at, expires_at, last_used_at, revoked_at, revoked_reason"
    };
}

macro_rules! challenge_columns {
    () => {
        "id, user_id, username, auth_method, ip, created_at, expires_at"
    };
}

macro_rules! auth_request_columns {
    () => {
        "id, provider, browser_hash, data, redirect_uri, created_at, expires_at"
    };
}

macro_rules! login_code_columns {
    () => {
        "code_hash, user_id, auth_method, ip, created_at, expires_at"
    };
}

macro_rules! impl_identity_store {
    ($store:ty, $db:ty) => {
        impl $store {
            fn signing_key_row(row: &<$db as ::sqlx::Database>::Row) -> ::sqlx::Result<$crate::store::SigningKeyRecord> {
                use ::sqlx::Row;
                Ok($crate::store::SigningKeyRecord {
                    kid: row.try_get("kid")?,
                    algorithm: row.try_get("algorithm")?,
                    private_key: row.try_get("private_key")?,
                    public_key: row.try_get("public_key")?,
                    created_at: row.try_get("created_at")?,
                    retired_at: row.try_get("retired_at")?,
                })
            }

            fn api_key_row(row: &<$db as ::sqlx::Database>::Row) -> ::sqlx::Result<$crate::store::ApiKeyRecord> {
                use ::sqlx::Row;
                Ok($crate::store::ApiKeyRecord {
                    id: row.try_get("id")?,
                    user_id: row.try_get("user_id")?,
                    name: row.try_get("name")?,
                    prefix: row.try_get("prefix")?,
                    key_hash: row.try_get("key_hash")?,
                    scopes: row.try_get::<::sqlx::types::Json<Vec<String>>, _>("scopes")?.0,
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                    last_used_at: row.try_get("last_used_at")?,
                    revoked_at: row.try_get("revoked_at")?,
                    revoked_reason: row.try_get("revoked_reason")?,
                })
            }

            fn challenge_row(row: &<$db as ::sqlx::Database>::Row) -> ::sqlx::Result<$crate::store::ChallengeRecord> {
                use ::sqlx::Row;
                Ok($crate::store::ChallengeRecord {
                    id: row.try_get("id")?,
                    user_id: row.try_get("user_id")?,
                    username: row.try_get("username")?,
                    auth_method: row.try_get("auth_method")?,
                    ip: row.try_get("ip")?,
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                })
            }

            fn auth_request_row(row: &<$db as ::sqlx::Database>::Row) -> ::sqlx::Result<$crate::store::AuthRequestRecord> {
                use ::sqlx::Row;
                Ok($crate::store::AuthRequestRecord {
                    id: row.try_get("id")?,
                    provider: row.try_get("provider")?,
                    browser_hash: row.try_get("browser_hash")?,
                    data: row.try_get("data")?,
                    redirect_uri: row.try_get("redirect_uri")?,
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                })
            }

            fn login_code_row(row: &<$db as ::sqlx::Database>::Row) -> ::sqlx::Result<$crate::store::LoginCodeRecord> {
                use ::sqlx::Row;
                Ok($crate::store::LoginCodeRecord {
                    code_hash: row.try_get("code_hash")?,
                    user_id: row.try_get("user_id")?,
                    auth_method: row.try_get("auth_method")?,
                    ip: row.try_get("ip")?,
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                })
            }

            fn lock_state_row(row: &<$db as ::sqlx::Database>::Row) -> ::sqlx::Result<$crate::store::LockState> {
                use ::sqlx::Row;
                let failures: i32 = row.try_get("failures")?;
                Ok($crate::store::LockState {
                    failures: u32::try_from(failures.max(0)).unwrap_or(u32::MAX),
                    locked_until: row.try_get("locked_until")?,
                })
            }

            async fn insert_signing_key(
                tx: &mut ::sqlx::Transaction<'_, $db>,
                key: &$crate::store::SigningKeyRecord,
                unless_active: bool,
            ) -> Result<u64, ::sqlx::Error> {
                let sql = if unless_active {
                    "INSERT INTO signing_keys (kid, algorithm, private_key, public_key, created_at, retired_at) \
                     VALUES ($1, $2, $3, $4, $5, NULL) ON CONFLICT DO NOTHING"
                } else {
                    "INSERT INTO signing_keys (kid, algorithm, private_key, public_key, created_at, retired_at) \
                     VALUES ($1, $2, $3, $4, $5, NULL)"
                };
                let done = ::sqlx::query(sql)
                    .bind(&key.kid)
                    .bind(&key.algorithm)
                    .bind(&key.private_key)
                    .bind(&key.public_key)
                    .bind(key.created_at)
                    .execute(&mut **tx)
                    .await?;
                Ok(done.rows_affected())
            }
        }

        #[::async_trait::async_trait]
        impl $crate::store::SigningKeyStore for $store {
            async fn signing_keys(&self) -> $crate::store::StoreResult<Vec<$crate::store::SigningKeyRecord>> {
                let rows = ::sqlx::query(
                    "SELECT kid, algorithm, private_key, public_key, created_at, retired_at FROM signing_keys \
                     ORDER BY retired_at IS NOT NULL, retired_at DESC, created_at DESC",
                )
                .fetch_all(self.pool()?)
                .await
                .map_err($crate::store::db_error)?;
                Self::rows(rows, Self::signing_key_row)
            }

            async fn insert_first_signing_key(
                &self,
                key: &$crate::store::SigningKeyRecord,
            ) -> $crate::store::StoreResult<$crate::store::SigningKeyRecord> {
                let mut tx = Self::begin_write(self.writer()?).await.map_err($crate::store::db_error)?;
                // The unique index on the active key makes a racing second insert a no-op.
                Self::insert_signing_key(&mut tx, key, true).await.map_err($crate::store::db_error)?;
                let row = ::sqlx::query(
                    "SELECT kid, algorithm, private_key, public_key, created_at, retired_at FROM signing_keys \
                     WHERE retired_at IS NULL",
                )
                .fetch_one(&mut *tx)
                .await
                .map_err($crate::store::db_error)?;
                let active = Self::signing_key_row(&row).map_err($crate::store::db_error)?;
                tx.commit().await.map_err($crate::store::db_error)?;
                Ok(active)
            }

            async fn rotate_signing_key(
                &self,
                key: &$crate::store::SigningKeyRecord,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<()> {
                let mut tx = Self::begin_write(self.writer()?).await.map_err($crate::store::db_error)?;
                ::sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::store::db_error)?;
                Self::insert_signing_key(&mut tx, key, false).await.map_err($crate::store::db_error)?;
                tx.commit().await.map_err($crate::store::db_error)?;
                Ok(())
            }

            async fn prune_signing_keys(&self, cutoff: ::chrono::DateTime<::chrono::Utc>) -> $crate::store::StoreResult<u64> {
                let done = ::sqlx::query("DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < $1")
                    .bind(cutoff)
                    .execute(self.writer()?)
                    .await
                    .map_err($crate::store::db_error)?;
                Ok(done.rows_affected())
            }
        }

        #[::async_trait::async_trait]
        impl $crate::store::ApiKeyStore for $store {
            async fn create_api_key(&self, key: &$crate::store::ApiKeyRecord) -> $crate::store::StoreResult<bool> {
                let mut tx = Self::begin_write(self.writer()?).await.map_err($crate::store::db_error)?;
                let active: Option<bool> = ::sqlx::query_scalar(Self::USER_ACTIVE_FOR_SHARE_SQL)
                    .bind(key.user_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::store::db_error)?;
                if active != Some(true) {
                    return Ok(false);
                }
                ::sqlx::query(concat!(
                    "INSERT INTO api_keys (", api_key_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                ))
                .bind(key.id)
                .bind(key.user_id)
                .bind(&key.name)
                .bind(&key.prefix)
                .bind(&key.key_hash)
                .bind(::sqlx::types::Json(&key.scopes))
                .bind(key.created_at)
                .bind(key.expires_at)
                .bind(key.last_used_at)
                .bind(key.revoked_at)
                .bind(&key.revoked_reason)
                .execute(&mut *tx)
                .await
                .map_err($crate::store::db_error)?;
                tx.commit().await.map_err($crate::store::db_error)?;
                Ok(true)
            }

            async fn api_key_by_prefix(&self, prefix: &str) -> $crate::store::StoreResult<Option<$crate::store::ApiKeyRecord>> {
                let row = ::sqlx::query(concat!("SELECT ", api_key_columns!(), " FROM api_keys WHERE prefix = $1"))
                    .bind(prefix)
                    .fetch_optional(self.pool()?)
                    .await
                    .map_err($crate::store::db_error)?;
                row.as_ref().map(Self::api_key_row).transpose().map_err($crate::store::db_error)
            }

            async fn api_key(&self, id: ::uuid::Uuid) -> $crate::store::StoreResult<Option<$crate::store::ApiKeyRecord>> {
                let row = ::sqlx::query(concat!("SELECT ", api_key_columns!(), " FROM api_keys WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(self.pool()?)
                    .await
                    .map_err($crate::store::db_error)?;
                row.as_ref().map(Self::api_key_row).transpose().map_err($crate::store::db_error)
            }

            async fn api_keys(&self, user_id: Option<::uuid::Uuid>) -> $crate::store::StoreResult<Vec<$crate::store::ApiKeyRecord>> {
                let mut qb = ::sqlx::QueryBuilder::<$db>::new(concat!("SELECT ", api_key_columns!(), " FROM api_keys"));
                if let Some(user_id) = user_id {
                    qb.push(" WHERE user_id = ").push_bind(user_id);
                }
                qb.push(" ORDER BY created_at DESC, id DESC");
                let rows = qb.build().fetch_all(self.pool()?).await.map_err($crate::store::db_error)?;
                Self::rows(rows, Self::api_key_row)
            }

            async fn revoke_api_key(
                &self,
                id: ::uuid::Uuid,
                reason: &str,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<bool> {
                let done = ::sqlx::query(
                    "UPDATE api_keys SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL",
                )
                .bind(now)
                .bind(reason)
                .bind(id)
                .execute(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                Ok(done.rows_affected() == 1)
            }

            async fn revoke_user_api_keys(
                &self,
                user_id: ::uuid::Uuid,
                reason: &str,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<Vec<::uuid::Uuid>> {
                let rows = ::sqlx::query(
                    "UPDATE api_keys SET revoked_at = $1, revoked_reason = $2 \
                     WHERE user_id = $3 AND revoked_at IS NULL RETURNING id",
                )
                .bind(now)
                .bind(reason)
                .bind(user_id)
                .fetch_all(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                rows.iter()
                    .map(|r| ::sqlx::Row::try_get(r, "id").map_err($crate::store::db_error))
                    .collect()
            }

            async fn touch_api_key(&self, id: ::uuid::Uuid, now: ::chrono::DateTime<::chrono::Utc>) -> $crate::store::StoreResult<()> {
                ::sqlx::query(
                    "UPDATE api_keys SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)",
                )
                .bind(now)
                .bind(id)
                .bind(now - ::chrono::Duration::minutes(1))
                .execute(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                Ok(())
            }

            async fn revoked_api_key_ids(&self, now: ::chrono::DateTime<::chrono::Utc>) -> $crate::store::StoreResult<Vec<::uuid::Uuid>> {
                let rows = ::sqlx::query(
                    "SELECT id FROM api_keys WHERE revoked_at IS NOT NULL AND (expires_at IS NULL OR expires_at > $1)",
                )
                .bind(now)
                .fetch_all(self.pool()?)
                .await
                .map_err($crate::store::db_error)?;
                rows.iter()
                    .map(|r| ::sqlx::Row::try_get(r, "id").map_err($crate::store::db_error))
                    .collect()
            }
        }

        #[::async_trait::async_trait]
        impl $crate::store::LockoutStore for $store {
            async fn record_failure(
                &self,
                username: &str,
                rule: $crate::store::LockoutRule,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<$crate::store::LockState> {
                // One statement, so concurrent failures on any node are all counted. A
                // window that ended before `now` starts over at this failure.
                let row = ::sqlx::query(
                    "INSERT INTO login_failures (username, failures, window_started_at, locked_until) \
                     VALUES ($1, 1, $2, CASE WHEN 1 >= $3 THEN $4 ELSE NULL END) \
                     ON CONFLICT (username) DO UPDATE SET \
                       failures = CASE WHEN login_failures.window_started_at <= $5 THEN 1 \
                                       ELSE login_failures.failures + 1 END, \
                       window_started_at = CASE WHEN login_failures.window_started_at <= $5 THEN $2 \
                                                ELSE login_failures.window_started_at END, \
                       locked_until = CASE \
                         WHEN (CASE WHEN login_failures.window_started_at <= $5 THEN 1 \
                                    ELSE login_failures.failures + 1 END) >= $3 THEN $4 \
                         ELSE login_failures.locked_until END \
                     RETURNING failures, locked_until",
                )
                .bind(username)
                .bind(now)
                .bind(i64::from(rule.threshold))
                .bind(now + rule.lock_for)
                .bind(now - rule.window)
                .fetch_one(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                Self::lock_state_row(&row).map_err($crate::store::db_error)
            }

            async fn lock_state(&self, username: &str) -> $crate::store::StoreResult<Option<$crate::store::LockState>> {
                let row = ::sqlx::query("SELECT failures, locked_until FROM login_failures WHERE username = $1")
                    .bind(username)
                    .fetch_optional(self.pool()?)
                    .await
                    .map_err($crate::store::db_error)?;
                row.as_ref().map(Self::lock_state_row).transpose().map_err($crate::store::db_error)
            }

            async fn clear_failures(&self, username: &str, now: ::chrono::DateTime<::chrono::Utc>) -> $crate::store::StoreResult<bool> {
                let rows = ::sqlx::query("DELETE FROM login_failures WHERE username = $1 RETURNING locked_until")
                    .bind(username)
                    .fetch_all(self.writer()?)
                    .await
                    .map_err($crate::store::db_error)?;
                let mut was_locked = false;
                for row in rows {
                    let until: Option<::chrono::DateTime<::chrono::Utc>> =
                        ::sqlx::Row::try_get(&row, "locked_until").map_err($crate::store::db_error)?;
                    was_locked |= until.is_some_and(|t| t > now);
                }
                Ok(was_locked)
            }
        }

        #[::async_trait::async_trait]
        impl $crate::store::FederationStore for $store {
            async fn user_by_subject(
                &self,
                provider: &str,
                subject: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::User>> {
                let row = ::sqlx::query(concat!(
                    "SELECT ", user_columns!(), " FROM users WHERE provider = $1 AND subject = $2"
                ))
                .bind(provider)
                .bind(subject)
                .fetch_optional(self.pool()?)
                .await
                .map_err($crate::store::db_error)?;
                row.as_ref().map(Self::user_row).transpose().map_err($crate::store::db_error)
            }

            async fn put_auth_request(&self, r: &$crate::store::AuthRequestRecord) -> $crate::store::StoreResult<()> {
                ::sqlx::query(concat!(
                    "INSERT INTO auth_requests (", auth_request_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
                ))
                .bind(&r.id)
                .bind(&r.provider)
                .bind(&r.browser_hash)
                .bind(&r.data)
                .bind(&r.redirect_uri)
                .bind(r.created_at)
                .bind(r.expires_at)
                .execute(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                Ok(())
            }

            async fn take_auth_request(
                &self,
                id: &str,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<Option<$crate::store::AuthRequestRecord>> {
                let row = ::sqlx::query(concat!(
                    "DELETE FROM auth_requests WHERE id = $1 AND expires_at > $2 RETURNING ", auth_request_columns!()
                ))
                .bind(id)
                .bind(now)
                .fetch_optional(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                row.as_ref().map(Self::auth_request_row).transpose().map_err($crate::store::db_error)
            }

            async fn put_login_code(&self, c: &$crate::store::LoginCodeRecord) -> $crate::store::StoreResult<()> {
                ::sqlx::query(concat!(
                    "INSERT INTO login_codes (", login_code_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6)"
                ))
                .bind(&c.code_hash)
                .bind(c.user_id)
                .bind(&c.auth_method)
                .bind(&c.ip)
                .bind(c.created_at)
                .bind(c.expires_at)
                .execute(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                Ok(())
            }

            async fn take_login_code(
                &self,
                code_hash: &str,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<Option<$crate::store::LoginCodeRecord>> {
                let row = ::sqlx::query(concat!(
                    "DELETE FROM login_codes WHERE code_hash = $1 AND expires_at > $2 RETURNING ", login_code_columns!()
                ))
                .bind(code_hash)
                .bind(now)
                .fetch_optional(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                row.as_ref().map(Self::login_code_row).transpose().map_err($crate::store::db_error)
            }

            async fn use_assertion_id(
                &self,
                id: &str,
                expires_at: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<bool> {
                let done = ::sqlx::query(
                    "INSERT INTO saml_assertions (id, expires_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(expires_at)
                .execute(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                Ok(done.rows_affected() == 1)
            }
        }

        #[::async_trait::async_trait]
        impl $crate::store::HousekeepingStore for $store {
            async fn prune_expired(
                &self,
                now: ::chrono::DateTime<::chrono::Utc>,
                failures_before: ::chrono::DateTime<::chrono::Utc>,
                sessions_before: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<u64> {
                let mut tx = Self::begin_write(self.writer()?).await.map_err($crate::store::db_error)?;
                let mut removed = 0;
                let statements: [(&'static str, ::chrono::DateTime<::chrono::Utc>, Option<::chrono::DateTime<::chrono::Utc>>); 7] = [
                    (
                        "DELETE FROM login_failures WHERE window_started_at < $1 AND (locked_until IS NULL OR locked_until < $2)",
                        failures_before,
                        Some(now),
                    ),
                    ("DELETE FROM mfa_challenges WHERE expires_at < $1", now - ::chrono::Duration::hours(1), None),
                    ("DELETE FROM auth_requests WHERE expires_at < $1", now, None),
                    ("DELETE FROM login_codes WHERE expires_at < $1", now, None),
                    ("DELETE FROM saml_assertions WHERE expires_at < $1", now, None),
                    (
                        "DELETE FROM refresh_tokens_used WHERE session_id IN (SELECT id FROM sessions WHERE expires_at < $1)",
                        sessions_before,
                        None,
                    ),
                    ("DELETE FROM sessions WHERE expires_at < $1", sessions_before, None),
                ];
                for (sql, first, second) in statements {
                    let mut query = ::sqlx::query(sql).bind(first);
                    if let Some(second) = second {
                        query = query.bind(second);
                    }
                    removed += query.execute(&mut *tx).await.map_err($crate::store::db_error)?.rows_affected();
                }
                tx.commit().await.map_err($crate::store::db_error)?;
                Ok(removed)
            }
        }

        #[::async_trait::async_trait]
        impl $crate::store::MfaStore for $store {
            async fn put_pending_totp(
                &self,
                user_id: ::uuid::Uuid,
                secret: &str,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<()> {
                let done = ::sqlx::query(
                    "INSERT INTO mfa_totp (user_id, secret, created_at, confirmed_at, last_step) VALUES ($1, $2, $3, NULL, NULL) \
                     ON CONFLICT (user_id) DO UPDATE SET secret = excluded.secret, created_at = excluded.created_at \
                     WHERE mfa_totp.confirmed_at IS NULL",
                )
                .bind(user_id)
                .bind(secret)
                .bind(now)
                .execute(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                if done.rows_affected() == 0 {
                    return Err($crate::store::StoreError::Conflict("a confirmed TOTP enrolment".into()));
                }
                Ok(())
            }

            async fn totp(&self, user_id: ::uuid::Uuid) -> $crate::store::StoreResult<Option<$crate::store::TotpRecord>> {
                let row = ::sqlx::query(
                    "SELECT user_id, secret, created_at, confirmed_at, last_step FROM mfa_totp WHERE user_id = $1",
                )
                .bind(user_id)
                .fetch_optional(self.pool()?)
                .await
                .map_err($crate::store::db_error)?;
                row.map(|r| {
                    use ::sqlx::Row;
                    Ok($crate::store::TotpRecord {
                        user_id: r.try_get("user_id")?,
                        secret: r.try_get("secret")?,
                        created_at: r.try_get("created_at")?,
                        confirmed_at: r.try_get("confirmed_at")?,
                        last_step: r.try_get("last_step")?,
                    })
                })
                .transpose()
                .map_err($crate::store::db_error)
            }

            async fn confirm_totp(
                &self,
                user_id: ::uuid::Uuid,
                recovery_hashes: &[String],
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<bool> {
                let mut tx = Self::begin_write(self.writer()?).await.map_err($crate::store::db_error)?;
                let done = ::sqlx::query("UPDATE mfa_totp SET confirmed_at = $1 WHERE user_id = $2 AND confirmed_at IS NULL")
                    .bind(now)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::store::db_error)?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                ::sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::store::db_error)?;
                if !recovery_hashes.is_empty() {
                    let mut qb = ::sqlx::QueryBuilder::<$db>::new("INSERT INTO mfa_recovery_codes (user_id, code_hash) ");
                    qb.push_values(recovery_hashes, |mut b, hash| {
                        b.push_bind(user_id).push_bind(hash.clone());
                    });
                    qb.build().execute(&mut *tx).await.map_err($crate::store::db_error)?;
                }
                ::sqlx::query("UPDATE users SET mfa_enabled = TRUE, updated_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::store::db_error)?;
                tx.commit().await.map_err($crate::store::db_error)?;
                Ok(true)
            }

            async fn accept_totp_step(&self, user_id: ::uuid::Uuid, step: i64) -> $crate::store::StoreResult<bool> {
                let done = ::sqlx::query(
                    "UPDATE mfa_totp SET last_step = $1 WHERE user_id = $2 AND confirmed_at IS NOT NULL \
                     AND (last_step IS NULL OR last_step < $1)",
                )
                .bind(step)
                .bind(user_id)
                .execute(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                Ok(done.rows_affected() == 1)
            }

            async fn use_recovery_code(
                &self,
                user_id: ::uuid::Uuid,
                code_hash: &str,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<bool> {
                let done = ::sqlx::query(
                    "UPDATE mfa_recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
                )
                .bind(now)
                .bind(user_id)
                .bind(code_hash)
                .execute(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                Ok(done.rows_affected() == 1)
            }

            async fn recovery_codes_left(&self, user_id: ::uuid::Uuid) -> $crate::store::StoreResult<u64> {
                let left: i64 = ::sqlx::query_scalar(
                    "SELECT COUNT(*) FROM mfa_recovery_codes WHERE user_id = $1 AND used_at IS NULL",
                )
                .bind(user_id)
                .fetch_one(self.pool()?)
                .await
                .map_err($crate::store::db_error)?;
                Ok(left.max(0) as u64)
            }

            async fn reset_mfa(&self, user_id: ::uuid::Uuid) -> $crate::store::StoreResult<bool> {
                let mut tx = Self::begin_write(self.writer()?).await.map_err($crate::store::db_error)?;
                let removed = ::sqlx::query("DELETE FROM mfa_totp WHERE user_id = $1")
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::store::db_error)?
                    .rows_affected();
                for sql in [
                    "DELETE FROM mfa_recovery_codes WHERE user_id = $1",
                    "DELETE FROM mfa_challenges WHERE user_id = $1",
                ] {
                    ::sqlx::query(sql).bind(user_id).execute(&mut *tx).await.map_err($crate::store::db_error)?;
                }
                let disabled = ::sqlx::query("UPDATE users SET mfa_enabled = FALSE WHERE id = $1 AND mfa_enabled")
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::store::db_error)?
                    .rows_affected();
                tx.commit().await.map_err($crate::store::db_error)?;
                Ok(removed > 0 || disabled > 0)
            }

            async fn create_challenge(&self, c: &$crate::store::ChallengeRecord) -> $crate::store::StoreResult<()> {
                ::sqlx::query(concat!(
                    "INSERT INTO mfa_challenges (", challenge_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
                ))
                .bind(c.id)
                .bind(c.user_id)
                .bind(&c.username)
                .bind(&c.auth_method)
                .bind(&c.ip)
                .bind(c.created_at)
                .bind(c.expires_at)
                .execute(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                Ok(())
            }

            async fn challenge(
                &self,
                id: ::uuid::Uuid,
                now: ::chrono::DateTime<::chrono::Utc>,
            ) -> $crate::store::StoreResult<Option<$crate::store::ChallengeRecord>> {
                let row = ::sqlx::query(concat!(
                    "SELECT ", challenge_columns!(),
                    " FROM mfa_challenges WHERE id = $1 AND consumed_at IS NULL AND expires_at > $2"
                ))
                .bind(id)
                .bind(now)
                .fetch_optional(self.pool()?)
                .await
                .map_err($crate::store::db_error)?;
                row.as_ref().map(Self::challenge_row).transpose().map_err($crate::store::db_error)
            }

            async fn consume_challenge(&self, id: ::uuid::Uuid, now: ::chrono::DateTime<::chrono::Utc>) -> $crate::store::StoreResult<bool> {
                let done = ::sqlx::query(
                    "UPDATE mfa_challenges SET consumed_at = $1 WHERE id = $2 AND consumed_at IS NULL AND expires_at > $1",
                )
                .bind(now)
                .bind(id)
                .execute(self.writer()?)
                .await
                .map_err($crate::store::db_error)?;
                Ok(done.rows_affected() == 1)
            }
        }
    };
}

pub(crate) use {
    api_key_columns, auth_request_columns, challenge_columns, impl_identity_store,
    login_code_columns,
};
