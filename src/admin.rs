//! `sark admin …`: break-glass operations that work on the store directly, for when the
//! API cannot help (the only admin is locked out or lost their second factor, a policy
//! broke access, a signing key must be replaced). Each one is audited, on this host's own
//! audit chain (`cli-<host>`). Running nodes pick the change up within
//! `auth.sync_seconds` (revocations, keys) or `policy.sync_seconds` (policies).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;
use serde_json::json;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use sark_actors::audit::{
    AuditHandle, AuditWriter, AuditWriterArguments, ChainKey, compare_with_siem, verify_chains,
};
use sark_actors::clock::{SharedClock, SystemClock};
use sark_actors::metrics::ActorMetrics;
use sark_actors::policy;
use sark_actors::supervisor::Slot;

use crate::auth::service::lockout_key;
use crate::config::Config;
use crate::core::lockout::Lockout;
use crate::hashing_keys::KeyCustody;
use crate::idp::{jwt, password};
use crate::secrets::sealing_context;
use crate::siem::export::read_export;
use crate::store::redis::Redis;
use crate::store::{Backend, CredentialRevocation, NewPolicyVersion, SealedKind, Store, UserPatch};

/// An admin operation.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Sets a user's password (read from a file, or generated and printed once) and
    /// revokes their sessions.
    ResetPassword {
        /// The account.
        username: String,
        /// A file holding the new password (it must not be readable by other users).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Also re-enables the account if it was disabled.
        #[arg(long)]
        enable: bool,
    },
    /// Clears the failed-login counter of a username.
    Unlock {
        /// The username.
        username: String,
    },
    /// Removes a user's TOTP and recovery codes.
    ResetMfa {
        /// The account.
        username: String,
    },
    /// Makes an earlier version of a policy bundle active again, as a new version.
    PolicyRollback {
        /// The bundle (`authorization`, …).
        bundle: String,
        /// The version to restore.
        version: i64,
    },
    /// Creates a new signing key; the old one verifies until its tokens have expired.
    RotateSigningKey,
    /// Seals again with `secrets.key` everything a key of `secrets.previous_keys` sealed
    /// (signing keys, TOTP secrets, pending logins, the hashing keys), replaces the
    /// signing key, and records `secrets.key` as the store's key. Runs while the nodes
    /// serve; run it again until it seals nothing (docs/operations.md).
    RotateSecretsKey,
    /// Removes cluster members that are gone for good from the voting membership, without
    /// a quorum: for survivors that lost their majority at once (docs/operations.md).
    /// Refuses a member that recorded itself within the last lease (it is up).
    ForgetMember {
        /// The members' node names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Revokes every session and API key created before TIME and refuses every access
    /// token issued before it (running nodes follow within `auth.sync_seconds`).
    RevokeAll {
        /// An RFC 3339 time, e.g. `2026-12-05T08:00:00Z`.
        #[arg(long)]
        before: chrono::DateTime<chrono::Utc>,
    },
    /// Finishes a restore from a backup, before any node starts on the restored store:
    /// revokes every credential the backup cannot vouch for (all that exist now) and
    /// starts a new generation of audit chains, so no sequence number a SIEM already
    /// received is handed out again (docs/disaster-recovery.md).
    FinishRestore,
    /// Verifies every audit chain in the store (events, links, sealed heads and
    /// checkpoints) and, given a SIEM export, that the store still holds every authentic
    /// event and stated head the SIEM received. Prints the result; fails when a chain breaks.
    AuditVerify {
        /// An export of the audit events from Splunk or Datadog (JSON lines or a JSON array).
        #[arg(long)]
        siem_export: Option<PathBuf>,
    },
}

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AdminError(String);

impl AdminError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Runs `command` against the store of `config`; returns what to print.
pub async fn run(command: AdminCommand, config: Config) -> Result<String, AdminError> {
    let clock: SharedClock = Arc::new(SystemClock);
    let (ring, _) = config
        .secrets
        .key_ring(&config.data_dir)
        .map_err(|e| AdminError::new(e.to_string()))?;
    let backend = Backend::open(&config)
        .await
        .map_err(|e| AdminError::new(e.to_string()))?;
    let mut initialized = false;
    for _ in 0..20 {
        initialized = backend
            .initialize(clock.now())
            .await
            .map_err(|e| AdminError::new(e.to_string()))?;
        if initialized {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if !initialized {
        return Err(AdminError::new(
            "`database.url`: the database cannot be reached",
        ));
    }
    let store = backend.store();
    let custody = Arc::new(KeyCustody::new(ring, store.clone()));
    custody
        .keys()
        .await
        .map_err(|e| AdminError::new(e.to_string()))?;
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    let chain = format!(
        "cli-{}",
        hostname
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
            .collect::<String>()
    );
    // Break-glass events reach the SIEM like the nodes' own: the nodes' forwarders deliver
    // them from the outbox.
    let sinks = crate::siem::sinks(&config, &hostname)
        .map_err(|e| AdminError::new(e.to_string()))?
        .iter()
        .map(|sink| sink.name().to_owned())
        .collect();
    // The restore's own event opens the new generation, like everything after it.
    if matches!(command, AdminCommand::FinishRestore) {
        store
            .next_audit_generation()
            .await
            .map_err(|e| AdminError::new(e.to_string()))?;
    }
    let audit = audit_writer(&store, &custody, chain, sinks, clock.clone()).await?;
    let operation = Operation {
        config: &config,
        store: &store,
        custody: &custody,
        audit: &audit,
        now: clock.now(),
    };
    let outcome = execute(command, operation).await;
    backend.close().await;
    outcome
}

async fn audit_writer(
    store: &Arc<dyn Store>,
    custody: &Arc<KeyCustody>,
    chain: String,
    sinks: Vec<String>,
    clock: SharedClock,
) -> Result<AuditHandle, AdminError> {
    let slot = Slot::default();
    let args = AuditWriterArguments {
        store: store.clone(),
        chain: chain.clone(),
        key: custody.clone(),
        sinks,
        max_batch: 16,
        metrics: ActorMetrics::register(&prometheus::Registry::new())
            .map_err(|e| AdminError::new(e.to_string()))?,
        clock: clock.clone(),
        node_id: chain.clone(),
        head_statements: None,
    };
    let (writer, _) = Actor::spawn(None, AuditWriter::default(), args)
        .await
        .map_err(|e| AdminError::new(e.to_string()))?;
    slot.set(writer);
    Ok(AuditHandle::new(slot, clock, chain))
}

/// `finish-restore`, once the new audit generation has begun (before the writer started):
/// everything issued until now is revoked, since the restored store cannot tell what was
/// revoked after its backup was taken.
async fn finish_restore(
    store: &Arc<dyn Store>,
    audit: &AuditHandle,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<String, AdminError> {
    let generation = store
        .audit_generation()
        .await
        .map_err(|e| AdminError::new(e.to_string()))?;
    let revoked = store
        .revoke_all_before(now, "restored_from_backup", now)
        .await
        .map_err(|e| AdminError::new(e.to_string()))?;
    record(
        audit,
        "store_restored",
        format!("audit_generation:{generation}"),
        json!({"audit_generation": generation, "credentials_not_before": now, "sessions_revoked": revoked.sessions, "api_keys_revoked": revoked.api_keys}),
    )
    .await?;
    Ok(format!(
        "restore finished: audit chains continue in generation {generation}; {} sessions and {} API keys revoked, access tokens issued before {now} refused",
        revoked.sessions, revoked.api_keys
    ))
}

async fn record(
    audit: &AuditHandle,
    event_type: &str,
    resource: String,
    details: serde_json::Value,
) -> Result<(), AdminError> {
    let event = audit
        .event(event_type, "success")
        .by("sark-admin")
        .on(resource)
        .with_details(details);
    audit
        .record(event)
        .await
        .map(|_| ())
        .map_err(|e| AdminError::new(format!("done, but not audited: {e}")))
}

/// What a command works with.
#[derive(Clone, Copy)]
struct Operation<'a> {
    config: &'a Config,
    store: &'a Arc<dyn Store>,
    custody: &'a KeyCustody,
    audit: &'a AuditHandle,
    now: chrono::DateTime<chrono::Utc>,
}

async fn execute(command: AdminCommand, operation: Operation<'_>) -> Result<String, AdminError> {
    let Operation {
        config,
        store,
        custody,
        audit,
        now,
    } = operation;
    let failed = |e: crate::store::StoreError| AdminError::new(e.to_string());
    // Lockout counters live in Redis when it is configured: an unlock clears both.
    let lockout = || -> Result<Lockout, AdminError> {
        let redis = config
            .redis
            .url
            .as_ref()
            .map(|url| Redis::new(url.expose()).map(Arc::new))
            .transpose()
            .map_err(|e| AdminError::new(e.to_string()))?;
        Lockout::new(redis, store.clone(), &prometheus::Registry::new())
            .map_err(|e| AdminError::new(e.to_string()))
    };
    match command {
        AdminCommand::ResetPassword {
            username,
            password_file,
            enable,
        } => {
            let user = store
                .user_by_username(&username)
                .await
                .map_err(failed)?
                .ok_or_else(|| AdminError::new(format!("no user {username}")))?;
            let (new_password, generated) = match password_file {
                Some(path) => (read_private(&path)?, false),
                None => (Zeroizing::new(password::generate_password(24)), true),
            };
            password::check_policy(&username, &new_password)
                .map_err(|v| AdminError::new(format!("password ({}): {}", v.rule, v.message)))?;
            let hash = password::hash_password(&new_password)
                .map_err(|e| AdminError::new(e.to_string()))?;
            let patch = UserPatch {
                password_hash: Some(hash),
                is_active: enable.then_some(true),
                ..Default::default()
            };
            let revoke = CredentialRevocation {
                reason: "password_reset",
                keep: None,
                api_keys: true,
            };
            let updated = store
                .update_user_revoking(&user.username, &patch, &revoke, now)
                .await
                .map_err(failed)?
                .ok_or_else(|| AdminError::new(format!("no user {username}")))?;
            let (revoked, keys) = (updated.revoked_sessions, updated.revoked_api_keys);
            lockout()?
                .clear(&lockout_key(&username), now)
                .await
                .map_err(failed)?;
            record(
                audit,
                "password_changed",
                format!("user:{username}"),
                json!({"reason": "admin_reset", "sessions_revoked": revoked.len(), "api_keys_revoked": keys.len(), "enabled": enable}),
            )
            .await?;
            Ok(if generated {
                format!(
                    "password of {username} reset; {} sessions and {} API keys revoked; new password: {}",
                    revoked.len(),
                    keys.len(),
                    &*new_password
                )
            } else {
                format!(
                    "password of {username} reset; {} sessions and {} API keys revoked",
                    revoked.len(),
                    keys.len()
                )
            })
        }
        AdminCommand::Unlock { username } => {
            let was_locked = lockout()?
                .clear(&lockout_key(&username), now)
                .await
                .map_err(failed)?;
            record(
                audit,
                "account_unlocked",
                format!("user:{username}"),
                json!({"was_locked": was_locked, "via": "cli"}),
            )
            .await?;
            Ok(format!("{username} unlocked (was locked: {was_locked})"))
        }
        AdminCommand::ResetMfa { username } => {
            let user = store
                .user_by_username(&username)
                .await
                .map_err(failed)?
                .ok_or_else(|| AdminError::new(format!("no user {username}")))?;
            let had = store.reset_mfa(user.id).await.map_err(failed)?;
            record(
                audit,
                "mfa_reset",
                format!("user:{username}"),
                json!({"had_mfa": had, "via": "cli"}),
            )
            .await?;
            Ok(format!("MFA of {username} reset (was set up: {had})"))
        }
        AdminCommand::PolicyRollback { bundle, version } => {
            let old = store
                .policy_version(&bundle, version)
                .await
                .map_err(failed)?
                .ok_or_else(|| {
                    AdminError::new(format!("bundle {bundle} has no version {version}"))
                })?;
            policy::compile(
                &bundle,
                version,
                &old.sha256,
                &old.source,
                &config.policy.settings(),
            )
            .map_err(|e| AdminError::new(format!("version {version} no longer compiles: {e}")))?;
            let sha256 = hex::encode(Sha256::digest(old.source.as_bytes()));
            let description = format!("rollback to version {version} (sark admin)");
            let new = NewPolicyVersion {
                bundle: &bundle,
                source: &old.source,
                sha256: &sha256,
                description: Some(&description),
                created_by: "sark-admin",
                now,
            };
            let stored = store.add_policy_version(&new).await.map_err(failed)?;
            record(
                audit,
                "policy_rolled_back",
                format!("policy:{bundle}"),
                json!({"from_version": version, "new_version": stored.version, "via": "cli"}),
            )
            .await?;
            Ok(format!(
                "{bundle}: version {version} is active again as version {}",
                stored.version
            ))
        }
        AdminCommand::RotateSigningKey => {
            let (kid, pruned) = rotate_signing_key(operation).await?;
            Ok(format!(
                "new signing key {kid} is active; {pruned} expired keys removed"
            ))
        }
        AdminCommand::RotateSecretsKey => rotate_secrets_key(operation).await,
        AdminCommand::ForgetMember { names } => forget_members(&names, operation).await,
        AdminCommand::RevokeAll { before } => {
            let revoked = store
                .revoke_all_before(before, "revoke_all", now)
                .await
                .map_err(failed)?;
            record(
                audit,
                "credentials_revoked_all",
                "credentials:all".into(),
                json!({"before": before, "sessions_revoked": revoked.sessions, "api_keys_revoked": revoked.api_keys}),
            )
            .await?;
            Ok(format!(
                "{} sessions and {} API keys created before {before} revoked; access tokens issued before it are refused",
                revoked.sessions, revoked.api_keys
            ))
        }
        AdminCommand::FinishRestore => finish_restore(store, audit, now).await,
        AdminCommand::AuditVerify { siem_export } => {
            let keys = custody
                .keys()
                .await
                .map_err(|e| AdminError::new(e.to_string()))?;
            audit_verify(store.as_ref(), &keys.audit_chain, siem_export.as_deref()).await
        }
    }
}

/// A new active signing key, sealed with the sealing key; the old ones verify until their
/// tokens have expired, and keys past that are removed. Returns the new `kid` and how
/// many keys were removed.
async fn rotate_signing_key(operation: Operation<'_>) -> Result<(String, u64), AdminError> {
    let failed = |e: crate::store::StoreError| AdminError::new(e.to_string());
    let (store, now) = (operation.store, operation.now);
    let record_key = jwt::new_signing_key(operation.custody.sealer(), now)
        .map_err(|e| AdminError::new(e.to_string()))?;
    store
        .rotate_signing_key(&record_key, now)
        .await
        .map_err(failed)?;
    let keep = chrono::Duration::seconds(crate::core::seconds(
        operation.config.auth.access_token_seconds + jwt::LEEWAY_SECONDS,
    ));
    let pruned = store.prune_signing_keys(now - keep).await.map_err(failed)?;
    record(
        operation.audit,
        "signing_key_rotated",
        format!("signing_key:{}", record_key.kid),
        json!({"pruned": pruned}),
    )
    .await?;
    Ok((record_key.kid, pruned))
}

/// Passes over the sealed values at most; a pass in which no row changed under it ends it.
const RESEAL_PASSES: usize = 3;

/// `rotate-secrets-key`. Every row is replaced only if it still holds what was read, so a
/// node writing meanwhile loses nothing: the next pass sees what it wrote.
async fn rotate_secrets_key(operation: Operation<'_>) -> Result<String, AdminError> {
    let Operation {
        store,
        custody,
        audit,
        ..
    } = operation;
    let failed = |e: crate::store::StoreError| AdminError::new(e.to_string());
    let custody_failed = |e: crate::hashing_keys::CustodyError| AdminError::new(e.to_string());
    let from = custody
        .store_key()
        .await
        .map_err(custody_failed)?
        .fingerprint();
    let to = custody.ring().primary().fingerprint();
    let hashing_keys = custody.reseal().await.map_err(custody_failed)?;
    let mut resealed: BTreeMap<SealedKind, u64> = BTreeMap::new();
    let mut unreadable = Vec::new();
    let mut totp_secrets = 0;
    let mut raced = 0;
    for _ in 0..RESEAL_PASSES {
        raced = 0;
        unreadable.clear();
        let values = store.sealed_values().await.map_err(failed)?;
        totp_secrets = values.iter().filter(|v| v.kind == SealedKind::Totp).count();
        for value in values {
            let context = sealing_context(value.kind, &value.id);
            match custody.sealer().reseal(&context, &value.sealed) {
                Ok(None) => {}
                Ok(Some(new)) if store.reseal(&value, &new).await.map_err(failed)? => {
                    *resealed.entry(value.kind).or_default() += 1;
                }
                Ok(Some(_)) => raced += 1,
                Err(_) => unreadable.push(format!("{:?} {}", value.kind, value.id)),
            }
        }
        if raced == 0 {
            break;
        }
    }
    if !unreadable.is_empty() || raced > 0 {
        return Err(AdminError::new(format!(
            "sealed again what could be; `secrets.key` was not recorded as the store's key: {} values changed while being sealed again in each of {RESEAL_PASSES} passes (run it again), and these open with no configured key: [{}]",
            raced,
            unreadable.join(", ")
        )));
    }
    let total: u64 = resealed.values().sum::<u64>() + u64::from(hashing_keys);
    if from == to && total == 0 {
        return Ok(format!(
            "nothing is sealed with a previous key; the store's key is {to}. The previous keys can be removed from `secrets.previous_keys` once every node runs with `secrets.key` {to}."
        ));
    }
    // A leaked key opens the signing keys it sealed: none of them signs from now on.
    let (kid, _) = rotate_signing_key(operation).await?;
    custody.adopt_sealing_key().await.map_err(custody_failed)?;
    let counts: BTreeMap<String, u64> = resealed
        .iter()
        .map(|(kind, n)| (format!("{kind:?}"), *n))
        .collect();
    record(
        audit,
        "secrets_key_rotated",
        format!("secrets_key:{to}"),
        json!({"from": from, "to": to, "resealed": counts, "hashing_keys_resealed": hashing_keys, "signing_key": kid, "totp_secrets": totp_secrets}),
    )
    .await?;
    Ok(format!(
        "sealed again with key {to}: {total} values ({}); new signing key {kid}; the store's key was {from} and is now {to}. \
         {totp_secrets} TOTP secrets were readable with the previous key: if the database may have been copied with it, have those users enrol again. \
         Run this again until it seals nothing, then remove the previous key from `secrets.previous_keys`.",
        if counts.is_empty() {
            "none".to_owned()
        } else {
            counts
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    ))
}

/// Verifies the chains, against a SIEM export when one is given.
async fn audit_verify(
    store: &dyn Store,
    key: &ChainKey,
    siem_export: Option<&std::path::Path>,
) -> Result<String, AdminError> {
    let failed = |e: crate::store::StoreError| AdminError::new(e.to_string());
    let mut verification = verify_chains(store, key).await.map_err(failed)?;
    let mut skipped = None;
    if let Some(path) = siem_export {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AdminError::new(format!("--siem-export {}: {e}", path.display())))?;
        let export = read_export(&text)
            .map_err(|e| AdminError::new(format!("--siem-export {}: {e}", path.display())))?;
        compare_with_siem(store, key, &export.events, &mut verification)
            .await
            .map_err(failed)?;
        skipped = Some(export.skipped);
    }
    let mut report = json!(verification);
    if let Some(skipped) = skipped {
        report["siem"]["skipped"] = json!(skipped);
    }
    let report =
        serde_json::to_string_pretty(&report).map_err(|e| AdminError::new(e.to_string()))?;
    if verification.ok {
        Ok(report)
    } else {
        Err(AdminError::new(format!(
            "the audit chains do not verify:\n{report}"
        )))
    }
}

/// Removes `names` from the voting membership; refuses all of them, before removing any,
/// when one is unknown or up.
async fn forget_members(names: &[String], operation: Operation<'_>) -> Result<String, AdminError> {
    let Operation {
        config,
        store,
        audit,
        now,
        ..
    } = operation;
    let failed = |e: crate::store::StoreError| AdminError::new(e.to_string());
    let members = store.cluster_members().await.map_err(failed)?;
    // A running node records itself every second; one seen within its lease is up.
    let up_within = chrono::Duration::seconds(crate::core::seconds(config.cluster.lease_seconds))
        .max(chrono::Duration::seconds(2));
    let mut chosen = Vec::new();
    for name in names {
        let member = members.iter().find(|m| &m.node_id == name).ok_or_else(|| {
            AdminError::new(format!(
                "{name} is not in the voting membership (members: {})",
                members
                    .iter()
                    .map(|m| m.node_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let ago = now - member.last_seen_at;
        if ago < up_within {
            return Err(AdminError::new(format!(
                "{name} is up (it recorded itself {} ms ago): stop it first, or let the cluster forget it",
                ago.num_milliseconds()
            )));
        }
        chosen.push(member.clone());
    }
    for member in &chosen {
        let removed = store
            .remove_member(&member.node_id, Some(now - up_within))
            .await
            .map_err(failed)?;
        if !removed {
            return Err(AdminError::new(format!(
                "{} recorded itself again meanwhile (it is up): not removed",
                member.node_id
            )));
        }
        record(
            audit,
            "member_forgotten",
            format!("node:{}", member.node_id),
            json!({"addr": member.addr, "last_seen_at": member.last_seen_at, "break_glass": true}),
        )
        .await?;
    }
    Ok(format!(
        "removed {} from the voting membership; the remaining members count only each other from their next second on",
        chosen
            .iter()
            .map(|m| m.node_id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

fn read_private(path: &std::path::Path) -> Result<Zeroizing<String>, AdminError> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| AdminError::new(format!("{}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(AdminError::new(format!(
            "{} is readable by other users; chmod o-r it",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| AdminError::new(format!("{}: {e}", path.display())))?;
    Ok(Zeroizing::new(
        text.trim_end_matches(['\n', '\r']).to_owned(),
    ))
}
