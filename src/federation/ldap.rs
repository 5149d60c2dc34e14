//! LDAP logins: a service account searches for the user (and their groups) over a small
//! pool of connections, then a fresh connection binds as the user with the submitted
//! password. `ldap://`, `ldaps://` and StartTLS; every connection and operation has a
//! deadline.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ldap3::{
    Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry, SearchOptions, ldap_escape,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::ExternalIdentity;
use crate::config::{ConfigError, LdapConfig};

/// LDAP result code of a bind with a wrong password.
const INVALID_CREDENTIALS: u32 = 49;
/// LDAP result codes that refuse a bind for the user's sake (inappropriate
/// authentication, insufficient access, unwilling to perform).
const BIND_REFUSED: [u32; 3] = [48, 50, 53];
/// LDAP result code of a search that matched more entries than asked for.
const SIZE_LIMIT_EXCEEDED: u32 = 4;

/// The directory could not be asked: unreachable, too slow, TLS failed, or it answered
/// with an error that is not about the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(String);

impl From<ldap3::LdapError> for Unavailable {
    fn from(err: ldap3::LdapError) -> Self {
        Self(err.to_string())
    }
}

/// Why the directory did not vouch for a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No entry matched the user filter.
    UnknownUser,
    /// Several entries matched: the filter does not identify one user.
    Ambiguous,
    /// The bind as the user failed.
    WrongPassword,
}

impl Rejection {
    /// For audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::UnknownUser => "unknown_user",
            Rejection::Ambiguous => "ambiguous_user",
            Rejection::WrongPassword => "wrong_password",
        }
    }
}

/// The configured directory and its pool of service-bound connections.
pub struct LdapProvider {
    config: LdapConfig,
    tls: Option<Arc<ClientConfig>>,
    idle: Mutex<Vec<Ldap>>,
    permits: Arc<Semaphore>,
}

/// A directory entry that matched a username.
#[derive(Debug)]
pub struct Found {
    /// The entry's DN (what the password is bound against).
    dn: String,
    /// Who the entry is, once the password is right.
    pub identity: ExternalIdentity,
}

/// A service-bound connection, returned to the pool by [`LdapProvider::check_in`].
struct Service {
    ldap: Ldap,
    _permit: OwnedSemaphorePermit,
}

fn tls_config(config: &LdapConfig) -> Result<Option<Arc<ClientConfig>>, ConfigError> {
    let Some(path) = &config.ca_file else {
        return Ok(None);
    };
    let problem = |e: &dyn std::fmt::Display| {
        ConfigError::from_key(
            "ldap.ca_file",
            format!("{}: not a PEM CA certificate ({e})", path.display()),
        )
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| problem(&e))? {
        roots
            .add(cert.map_err(|e| problem(&e))?)
            .map_err(|e| problem(&e))?;
    }
    if roots.is_empty() {
        return Err(problem(&"no certificate in the file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| problem(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(tls)))
}

impl LdapProvider {
    /// Checks the TLS settings; connects to nothing yet.
    pub fn new(config: LdapConfig) -> Result<Self, ConfigError> {
        let tls = tls_config(&config)?;
        let permits = Arc::new(Semaphore::new(config.pool_size));
        Ok(Self {
            config,
            tls,
            idle: Mutex::new(Vec::new()),
            permits,
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.timeout_seconds)
    }

    async fn connect(&self) -> Result<Ldap, Unavailable> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.timeout())
            .set_starttls(self.config.starttls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        // The connection handshake (TCP, TLS, StartTLS) as a whole has the deadline too.
        let (conn, ldap) = tokio::time::timeout(
            self.timeout(),
            LdapConnAsync::with_settings(settings, &self.config.url),
        )
        .await
        .map_err(|_| Unavailable("connecting timed out".into()))??;
        ldap3::drive!(conn);
        Ok(ldap)
    }

    /// A connection bound as the service account: an idle one, or a new one.
    async fn check_out(&self) -> Result<Service, Unavailable> {
        let permit = tokio::time::timeout(self.timeout(), self.permits.clone().acquire_owned())
            .await
            .map_err(|_| Unavailable("every pooled connection is busy".into()))?
            .map_err(|_| Unavailable("the pool is closed".into()))?;
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let Some(mut ldap) = idle else { break };
            if !ldap.is_closed() {
                return Ok(Service {
                    ldap,
                    _permit: permit,
                });
            }
        }
        let mut ldap = self.connect().await?;
        let bound = ldap
            .with_timeout(self.timeout())
            .simple_bind(&self.config.bind_dn, self.config.bind_password.expose())
            .await?;
        if bound.rc != 0 {
            return Err(Unavailable(format!(
                "the service bind as ldap.bind_dn failed: {bound}"
            )));
        }
        Ok(Service {
            ldap,
            _permit: permit,
        })
    }

    fn check_in(&self, service: Service) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(service.ldap);
    }

    /// Searches `base` with `filter` for at most `limit` entries; `None` when more match.
    async fn search(
        &self,
        service: &mut Service,
        base: &str,
        filter: &str,
        attrs: &[&str],
        limit: i32,
    ) -> Result<Option<Vec<SearchEntry>>, Unavailable> {
        let ldap3::SearchResult(entries, result) = service
            .ldap
            .with_search_options(SearchOptions::new().sizelimit(limit))
            .with_timeout(self.timeout())
            .search(base, Scope::Subtree, filter, attrs.to_vec())
            .await?;
        match result.rc {
            0 => Ok(Some(
                entries.into_iter().map(SearchEntry::construct).collect(),
            )),
            SIZE_LIMIT_EXCEEDED => Ok(None),
            _ => Err(Unavailable(format!("search under {base} failed: {result}"))),
        }
    }

    /// Finds the one entry of `username` (and its groups): the identity the directory
    /// would vouch for once the password is checked, or why there is none.
    pub async fn lookup(&self, username: &str) -> Result<Result<Found, Rejection>, Unavailable> {
        let mut service = self.check_out().await?;
        let filter = self
            .config
            .user_filter
            .replace("{username}", &ldap_escape(username));
        let found = self
            .search(
                &mut service,
                &self.config.user_base,
                &filter,
                &["uid", "mail", "entryUUID"],
                2,
            )
            .await?;
        let entry = match found.as_deref() {
            None | Some([_, _, ..]) => {
                self.check_in(service);
                return Ok(Err(Rejection::Ambiguous));
            }
            Some([]) => {
                self.check_in(service);
                return Ok(Err(Rejection::UnknownUser));
            }
            Some([entry]) => entry.clone(),
        };
        let groups = match &self.config.group_base {
            Some(base) => {
                let filter = self
                    .config
                    .group_filter
                    .replace("{dn}", &ldap_escape(&entry.dn))
                    .replace("{username}", &ldap_escape(username));
                let groups = self
                    .search(&mut service, base, &filter, &["cn"], 1000)
                    .await?
                    .unwrap_or_default();
                groups
                    .into_iter()
                    .flat_map(|g| {
                        let cns = g.attrs.get("cn").cloned().unwrap_or_default();
                        std::iter::once(g.dn).chain(cns)
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        self.check_in(service);
        let first = |attr: &str| entry.attrs.get(attr).and_then(|v| v.first()).cloned();
        Ok(Ok(Found {
            identity: ExternalIdentity {
                provider: "ldap",
                subject: first("entryUUID").unwrap_or_else(|| entry.dn.clone()),
                name: first("uid").unwrap_or_else(|| username.to_owned()),
                email: first("mail"),
                role: self
                    .config
                    .role_mapping
                    .role_for(groups.iter().map(String::as_str)),
            },
            dn: entry.dn,
        }))
    }

    /// Checks `password` by a bind as the found entry, on a connection of its own (a bind
    /// changes a connection's identity, and pooled connections must stay the service's).
    /// `password` must not be empty (that would be an anonymous bind): refused here too.
    pub async fn check_password(
        &self,
        found: &Found,
        password: &str,
    ) -> Result<Result<(), Rejection>, Unavailable> {
        if password.is_empty() {
            return Ok(Err(Rejection::WrongPassword));
        }
        let mut user = self.connect().await?;
        let bound = user
            .with_timeout(self.timeout())
            .simple_bind(&found.dn, password)
            .await?;
        let _ = user.unbind().await;
        match bound.rc {
            0 => Ok(Ok(())),
            rc if rc == INVALID_CREDENTIALS || BIND_REFUSED.contains(&rc) => {
                Ok(Err(Rejection::WrongPassword))
            }
            _ => Err(Unavailable(format!("the user bind failed: {bound}"))),
        }
    }

    /// Whether the directory answers a search by the service account now.
    pub async fn probe(&self) -> Result<(), Unavailable> {
        let mut service = self.check_out().await?;
        let ldap3::SearchResult(_, result) = service
            .ldap
            .with_timeout(self.timeout())
            .search("", Scope::Base, "(objectClass=*)", vec!["1.1"])
            .await?;
        if result.rc != 0 {
            return Err(Unavailable(format!("root DSE search failed: {result}")));
        }
        self.check_in(service);
        Ok(())
    }
}
