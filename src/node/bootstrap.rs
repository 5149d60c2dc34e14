//! Bootstrap: the records a store needs before a node can serve (signing keys, built-in
//! policies, the first admin), retried until the store answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tracing::{error, info, warn};
use uuid::Uuid;

use sark_actors::audit::AuditHandle;
use sark_actors::policy::{self};

use super::{BOOTSTRAP_PASSWORD_FILE, NodeError};
use crate::config::Config;
use crate::core::revocation::RevocationList;
use crate::hashing_keys::{CustodyError, KeyCustody};
use crate::idp::jwt::{TokenKeys, TokenSettings};
use crate::idp::password::{self};
use crate::policy::BUILTIN_POLICIES;
use crate::secrets;
use crate::store::{Backend, NewPolicyVersion, OpenError, Role, Store, StoreError, User};

/// First-start creation: key fingerprint, built-in policies, the bootstrap admin. Every step
/// is insert-if-absent, so nodes starting together on one database all succeed.
pub(super) struct Bootstrap {
    pub(super) config: Arc<Config>,
    pub(super) backend: Backend,
    pub(super) store: Arc<dyn Store>,
    pub(super) custody: Arc<KeyCustody>,
    pub(super) audit: AuditHandle,
    pub(super) ready: Arc<AtomicBool>,
    pub(super) tokens: Arc<std::sync::OnceLock<Arc<TokenKeys>>>,
    pub(super) revocations: Arc<RevocationList>,
}

impl Bootstrap {
    /// Returns the admin account if this call created it.
    pub(super) async fn run_once(&self) -> Result<Option<User>, NodeError> {
        if !self.backend.initialize(self.audit.now()).await? {
            return Err(NodeError::Store(OpenError::Migration(
                "database unreachable".into(),
            )));
        }
        let created_admin = self
            .create_records()
            .await
            .map_err(|e| NodeError::Startup(e.to_string()))?;
        self.ready.store(true, Ordering::Release);
        Ok(created_admin)
    }

    pub(super) async fn run_until_done(self, fatal: watch::Sender<Option<String>>) {
        let mut delay = Duration::from_millis(250);
        loop {
            match self.backend.initialize(self.audit.now()).await {
                Ok(true) => match self.create_records().await {
                    Ok(created_admin) => {
                        self.ready.store(true, Ordering::Release);
                        info!("database ready");
                        if let Some(admin) = created_admin {
                            record_admin_created(self.audit.clone(), admin).await;
                        }
                        return;
                    }
                    Err(BootstrapError::Store(StoreError::Unavailable(reason))) => {
                        warn!(reason, "database unavailable during bootstrap; retrying");
                    }
                    Err(err) => {
                        error!(error = %err, "bootstrap failed");
                        let _ = fatal.send(Some(err.to_string()));
                        return;
                    }
                },
                Ok(false) => {}
                Err(err) => {
                    error!(error = %err, "database refused initialisation");
                    let _ = fatal.send(Some(err.to_string()));
                    return;
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Returns the admin account if this call created it.
    pub(super) async fn create_records(&self) -> Result<Option<User>, BootstrapError> {
        // The key check, and the hashing keys kept for every node from the first start on.
        self.custody.keys().await.map_err(|e| match e {
            CustodyError::Store(err) => BootstrapError::Store(err),
            other => BootstrapError::Keys(other),
        })?;
        let now = self.audit.now();
        for (name, source) in BUILTIN_POLICIES {
            let sha256 = crate::secrets::sha256_hex(source);
            policy::compile(name, 1, &sha256, source, &self.config.policy.settings()).map_err(
                |e| BootstrapError::Policy(format!("built-in policy {name} does not compile: {e}")),
            )?;
            let new = NewPolicyVersion {
                bundle: name,
                source,
                sha256: &sha256,
                description: Some("built-in"),
                created_by: "system",
                now,
            };
            if self.store.seed_policy(&new).await? {
                info!(bundle = name, "seeded built-in policy");
            }
        }
        let now = self.audit.now();
        if self.tokens.get().is_none() {
            let settings = TokenSettings {
                issuer: self.config.auth.issuer.clone(),
                audience: self.config.auth.audience.clone(),
                lifetime: Duration::from_secs(self.config.auth.access_token_seconds),
            };
            let keys = TokenKeys::load(
                self.store.as_ref(),
                self.custody.sealer().clone(),
                settings,
                now,
            )
            .await
            .map_err(|e| match e {
                crate::idp::jwt::TokenError::Store(err) => BootstrapError::Store(err),
                other => BootstrapError::Policy(other.to_string()),
            })?;
            // Revocations first: tokens are accepted only once both are there.
            self.revocations.load(self.store.as_ref(), now).await?;
            let _ = self.tokens.set(Arc::new(keys));
        }
        self.revocations.load(self.store.as_ref(), now).await?;
        self.bootstrap_admin().await
    }

    pub(super) async fn bootstrap_admin(&self) -> Result<Option<User>, BootstrapError> {
        // Created once in the life of the database: an admin who was deleted or renamed on
        // purpose does not come back at the next restart.
        const DONE: &str = "bootstrap_admin_created";
        if self.store.meta(DONE).await?.is_some() {
            return Ok(None);
        }
        if self.store.user_by_username("admin").await?.is_some() {
            self.store
                .put_meta_if_absent(DONE, &self.audit.now().to_rfc3339())
                .await?;
            return Ok(None);
        }
        let configured = self
            .config
            .bootstrap_admin_password
            .as_ref()
            .map(|p| p.expose().to_owned());
        let generated = configured.is_none();
        let password =
            zeroize::Zeroizing::new(configured.unwrap_or_else(|| password::generate_password(24)));
        let hash = password::hash_password(&password)
            .map_err(|e| BootstrapError::Policy(e.to_string()))?;
        // A generated password goes to a private file before the account exists, so it can
        // never be committed without being written down; the file gets its final name
        // only if this node's insert wins.
        let pending_file = if generated {
            let path = self.config.data_dir.join(format!(
                "{BOOTSTRAP_PASSWORD_FILE}.pending.{}",
                Uuid::new_v4().simple()
            ));
            let mut contents = zeroize::Zeroizing::new(password.as_bytes().to_vec());
            contents.push(b'\n');
            secrets::write_private_once(&path, &contents)
                .map_err(|e| BootstrapError::Policy(e.to_string()))?;
            Some(path)
        } else {
            None
        };
        let now = self.audit.now();
        let admin = User::local("admin".into(), Role::Admin, Some(hash), now);
        let created = self.store.create_user_if_absent(&admin).await;
        if matches!(created, Ok(true)) {
            self.store
                .put_meta_if_absent(DONE, &now.to_rfc3339())
                .await?;
        }
        let Some(pending) = pending_file else {
            if created? {
                info!("created the bootstrap admin with the configured password");
                return Ok(Some(admin));
            }
            return Ok(None);
        };
        if !matches!(created, Ok(true)) {
            let _ = std::fs::remove_file(&pending);
            return created.map(|_| None).map_err(Into::into);
        }
        let path = self.config.data_dir.join(BOOTSTRAP_PASSWORD_FILE);
        std::fs::rename(&pending, &path).map_err(|e| {
            BootstrapError::Policy(format!(
                "the bootstrap password is in {} but could not be renamed to {}: {e}",
                pending.display(),
                path.display()
            ))
        })?;
        info!(path = %path.display(), "created the bootstrap admin; its generated password is in this file (mode 0600)");
        Ok(Some(admin))
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum BootstrapError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(CustodyError),
    #[error("{0}")]
    Policy(String),
}

/// Audits the creation of the bootstrap admin once the AuditWriter is up.
pub(super) async fn record_admin_created(audit: AuditHandle, admin: User) {
    let event = audit
        .event("user_created", "success")
        .by("system")
        .on(format!("user:{}", admin.username))
        .with_details(json!({"user_id": admin.id, "role": admin.role, "reason": "bootstrap"}));
    // The writer may still be starting (with PostgreSQL it starts once the database is
    // up): poll for it briefly rather than lose the event.
    for _ in 0..600 {
        if audit.writer().is_some() {
            match audit.record(event.clone()).await {
                Ok(_) => return,
                Err(err) => warn!(error = %err, "bootstrap audit event not recorded yet; retrying"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    warn!("could not audit the creation of the bootstrap admin");
}
