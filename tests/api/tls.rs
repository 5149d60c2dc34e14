use std::os::unix::fs::PermissionsExt;

use crate::helpers::spawn_app_with;

#[tokio::test]
async fn the_native_https_listener_speaks_tls_1_3_only() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = certified.cert.pem();
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, certified.signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let app = spawn_app_with(|c| {
        c.http.tls_cert_file = Some(cert_file.clone());
        c.http.tls_key_file = Some(key_file.clone());
    })
    .await;
    let root = reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap();
    let url = format!("https://localhost:{}/health", app.addr.port());

    let client = reqwest::Client::builder()
        .add_root_certificate(root.clone())
        .resolve("localhost", app.addr)
        .build()
        .unwrap();
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("strict-transport-security"));

    let tls12_only = reqwest::Client::builder()
        .add_root_certificate(root)
        .resolve("localhost", app.addr)
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    assert!(
        tls12_only.get(&url).send().await.is_err(),
        "a TLS 1.2 client must be refused"
    );

    let plain = reqwest::Client::new()
        .get(format!("http://{}/health", app.addr))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP is not served on the TLS port"
    );

    // A failed handshake does not stop the listener.
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    app.stop().await;
}
