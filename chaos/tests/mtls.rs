//! `mtls` scenario: nodes configured with `SARK_CLUSTER__TLS_*` form a cluster over mutual
//! TLS; a node whose certificate another CA signed, and a node without TLS, both dialing
//! with the right cookie, are refused at the handshake and never become members.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;

use sark_chaos::sandbox::{ClusterSandbox, SandboxOptions};

const COOKIE: &str = "mtls-scenario-cookie";

/// Writes a CA and a node certificate it signed (for the name `sark-cluster`) into `dir`;
/// returns the `SARK_CLUSTER__TLS_*` variables that use them.
fn pki(dir: &Path, name: &str) -> Vec<(&'static str, String)> {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} cluster CA"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let node_key = KeyPair::generate().unwrap();
    let node = CertificateParams::new(vec!["sark-cluster".to_owned()]).unwrap();
    let node_cert = node.signed_by(&node_key, &issuer).unwrap();
    let path = |file: &str| dir.join(format!("{name}-{file}"));
    std::fs::write(path("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(path("node.pem"), node_cert.pem()).unwrap();
    std::fs::write(path("node.key"), node_key.serialize_pem()).unwrap();
    std::fs::set_permissions(path("node.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    vec![
        (
            "SARK_CLUSTER__TLS_CA_FILE",
            path("ca.pem").display().to_string(),
        ),
        (
            "SARK_CLUSTER__TLS_CERT_FILE",
            path("node.pem").display().to_string(),
        ),
        (
            "SARK_CLUSTER__TLS_KEY_FILE",
            path("node.key").display().to_string(),
        ),
    ]
}

async fn members(sandbox: &ClusterSandbox) -> Vec<(String, String)> {
    let token = sandbox
        .login(0, "admin", &sandbox.bootstrap_password(0).unwrap())
        .await
        .unwrap();
    let cluster: Value = reqwest::Client::new()
        .get(format!("http://{}/api/v1/cluster", sandbox.nodes()[0].http))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    cluster["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["node_id"].as_str().unwrap().to_owned(),
                m["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Lines of node 0's log that report a refused TLS handshake.
fn refused_handshakes(sandbox: &ClusterSandbox) -> usize {
    sandbox.nodes()[0]
        .log()
        .iter()
        .filter(|l| l.contains("Error establishing secure socket"))
        .count()
}

/// Starts a lone node that dials node 0 of `cluster` with the cluster's cookie and
/// `extra` settings; returns it once node 0 has refused one more handshake.
async fn intruder(
    cluster: &ClusterSandbox,
    name: &str,
    extra: Vec<(&'static str, String)>,
) -> ClusterSandbox {
    let before = refused_handshakes(cluster);
    let mut env = vec![
        ("SARK_CLUSTER__NODE_NAME", name.to_owned()),
        (
            "SARK_CLUSTER__SEEDS",
            cluster.nodes()[0].cluster.to_string(),
        ),
        ("SARK_CLUSTER__COOKIE", COOKIE.to_owned()),
    ];
    env.extend(extra);
    // It never joins, so it is never ready: launched, not waited for.
    let intruder = ClusterSandbox::launch(1, SandboxOptions::with_env(&env))
        .await
        .unwrap();
    let started = Instant::now();
    while refused_handshakes(cluster) == before {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "node 0 never refused {name}: {:?}",
            cluster.nodes()[0]
                .log()
                .iter()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    intruder
}

#[tokio::test]
async fn only_nodes_of_the_cluster_ca_can_join() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = pki(dir.path(), "good");
    env.push(("SARK_CLUSTER__COOKIE", COOKIE.to_owned()));
    env.push(("SARK_CLUSTER__HEARTBEAT_MS", "200".to_owned()));
    env.push(("SARK_CLUSTER__LEASE_SECONDS", "2".to_owned()));
    let started = Instant::now();
    let cluster = ClusterSandbox::start(2, SandboxOptions::with_env(&env))
        .await
        .unwrap();
    loop {
        let up = members(&cluster).await;
        if up.len() == 2 && up.iter().all(|(_, status)| status == "up") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the TLS cluster did not form: {up:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("mTLS cluster of 2 formed in {:?}", started.elapsed());

    let foreign = intruder(&cluster, "foreign-ca", pki(dir.path(), "evil")).await;
    let plain = intruder(&cluster, "no-tls", Vec::new()).await;
    let names: Vec<String> = members(&cluster)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        !names.iter().any(|n| n == "foreign-ca" || n == "no-tls"),
        "{names:?}"
    );

    for sandbox in [foreign, plain, cluster] {
        let statuses = sandbox.shutdown().await.unwrap();
        assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
    }
}
