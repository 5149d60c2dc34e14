//! TLS configurations from the node's certificate files: the HTTPS listener's server
//! configuration, and the cluster's mutual TLS.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sark_cluster::membership::ClusterTls;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, ServerConfig};

use crate::config::ClusterConfig;

/// The certificate chain in the PEM file `path` (configuration key `key`).
fn cert_chain(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("`{key}`: {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{key}`: {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("`{key}`: {} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The private key in the PEM file `path` (configuration key `key`), which other users
/// must not be able to read.
fn private_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("`{key}`: {}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o004 != 0 {
        return Err(format!(
            "`{key}`: {} is readable by other users; chmod o-r it",
            path.display()
        ));
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("`{key}`: {}: {e}", path.display()))
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a TLS 1.3 server configuration from PEM files.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs = cert_chain("http.tls_cert_file", cert_file)?;
    let key = private_key("http.tls_key_file", key_file)?;
    let mut config = ServerConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!("`http.tls_key_file`: does not match the certificate or is unusable: {e}")
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Mutual TLS 1.3 between nodes, when `cluster.tls_*` is configured: every connection, in
/// either direction, needs a certificate of the cluster CA.
pub fn cluster_tls(config: &ClusterConfig) -> Result<Option<ClusterTls>, String> {
    let (Some(cert_file), Some(key_file), Some(ca_file)) = (
        &config.tls_cert_file,
        &config.tls_key_file,
        &config.tls_ca_file,
    ) else {
        return Ok(None);
    };
    let certs = cert_chain("cluster.tls_cert_file", cert_file)?;
    let key = private_key("cluster.tls_key_file", key_file)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in cert_chain("cluster.tls_ca_file", ca_file)? {
        roots
            .add(ca)
            .map_err(|e| format!("`cluster.tls_ca_file`: {}: {e}", ca_file.display()))?;
    }
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), ring())
        .build()
        .map_err(|e| format!("`cluster.tls_ca_file`: {e}"))?;
    let unusable = |e: rustls::Error| {
        format!("`cluster.tls_key_file`: does not match the certificate or is unusable: {e}")
    };
    let server = ServerConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(unusable)?;
    let client = ClientConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(unusable)?;
    let server_name = ServerName::try_from(config.tls_server_name.clone())
        .map_err(|e| format!("`cluster.tls_server_name`: {e}"))?;
    Ok(Some(ClusterTls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        server_name,
    }))
}
