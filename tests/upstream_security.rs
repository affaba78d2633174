//! Upstream TLS and authentication against a real Distribution: a private CA, mutual TLS,
//! `insecureSkipVerify`, and basic authentication from a password file or a Docker
//! `config.json`, with refused credentials mapped to `403 DENIED` and no secret in the log.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::json;
use support::distribution::Secure;
use support::http::{client, get};
use support::skopeo::skopeo_copy_ok;
use support::{Distribution, ImageCache, Platform, Repo, gen_image, pull_verify};

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn pki(dir: &Path) -> Pki {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=imagecache test CA",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "127.0.0.1"), ("client", "imagecache")] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
    Pki {
        ca: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    }
}

fn push(dist: &Distribution, image: &support::Image, repo_tag: &str, creds: Option<&str>) {
    let mut extra = vec!["--all", "--preserve-digests"];
    if let Some(c) = creds {
        extra.extend(["--dest-creds", c]);
    }
    skopeo_copy_ok(
        &image.source_ref(),
        &format!("docker://{}/{repo_tag}", dist.addr()),
        &extra,
    );
}

#[tokio::test]
async fn private_ca_mutual_tls_and_insecure_skip_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let image = gen_image(
        &tmp.path().join("img"),
        41,
        &[5000],
        &Platform::linux_amd64(),
    );
    let dist = Distribution::start_secure(&Secure {
        cert: Some(pki.server_cert.clone()),
        key: Some(pki.server_key.clone()),
        ..Default::default()
    });
    push(&dist, &image, "secure/app:1", None);
    let c = client();
    let url = dist.url();
    assert!(url.starts_with("https://"));

    // Trusted through the configured CA.
    let cache = ImageCache::builder()
        .registry_with(json!({"name": "secure.test", "endpoint": url, "tls": {"caFile": pki.ca}}))
        .start();
    pull_verify(
        &c,
        &Repo::new(&cache.url(), "secure.test/secure/app"),
        "1",
        &image,
    )
    .await;

    // Without the CA the upstream is not trusted: a clean 503 that says why, not a 500.
    let cache = ImageCache::builder().registry("secure.test", &url).start();
    let r = get(
        &c,
        &format!("{}/v2/secure.test/secure/app/manifests/1", cache.url()),
        &[],
    )
    .await;
    r.assert_error(503, "UNAVAILABLE");
    assert!(
        r.text().to_lowercase().contains("certificate"),
        "{}",
        r.text()
    );

    // insecureSkipVerify accepts it.
    let cache = ImageCache::builder()
        .registry_with(
            json!({"name": "secure.test", "endpoint": url, "tls": {"insecureSkipVerify": true}}),
        )
        .start();
    pull_verify(
        &c,
        &Repo::new(&cache.url(), "secure.test/secure/app"),
        "1",
        &image,
    )
    .await;

    // Mutual TLS: the upstream demands a client certificate signed by its CA.
    drop(dist);
    let dist = Distribution::start_secure(&Secure {
        cert: Some(pki.server_cert.clone()),
        key: Some(pki.server_key.clone()),
        client_ca: Some(pki.ca.clone()),
        ..Default::default()
    });
    let certs = tmp.path().join("skopeo-certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&pki.client_cert, certs.join("client.cert")).unwrap();
    std::fs::copy(&pki.client_key, certs.join("client.key")).unwrap();
    std::fs::copy(&pki.ca, certs.join("ca.crt")).unwrap();
    skopeo_copy_ok(
        &image.source_ref(),
        &format!("docker://{}/secure/app:1", dist.addr()),
        &[
            "--all",
            "--preserve-digests",
            "--dest-cert-dir",
            certs.to_str().unwrap(),
        ],
    );
    let cache = ImageCache::builder()
        .registry_with(
            json!({"name": "secure.test", "endpoint": dist.url(), "tls": {"caFile": pki.ca}}),
        )
        .start();
    let r = get(
        &c,
        &format!("{}/v2/secure.test/secure/app/manifests/1", cache.url()),
        &[],
    )
    .await;
    assert!(
        r.status == 503 || r.status == 403,
        "no client certificate must fail cleanly: {} {}",
        r.status,
        r.text()
    );
    let cache = ImageCache::builder()
        .registry_with(json!({"name": "secure.test", "endpoint": dist.url(),
            "tls": {"caFile": pki.ca, "certFile": pki.client_cert, "keyFile": pki.client_key}}))
        .start();
    pull_verify(
        &c,
        &Repo::new(&cache.url(), "secure.test/secure/app"),
        "1",
        &image,
    )
    .await;
}

#[tokio::test]
async fn basic_auth_from_password_file_and_docker_config() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let password = "s3cret-Pa55word-never-logged";
    let htpasswd = tmp.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("alice:{}\n", bcrypt::hash(password, 5).unwrap()),
    )
    .unwrap();
    let dist = Distribution::start_secure(&Secure {
        cert: Some(pki.server_cert.clone()),
        key: Some(pki.server_key.clone()),
        htpasswd: Some(htpasswd),
        ..Default::default()
    });
    let image = gen_image(
        &tmp.path().join("img"),
        42,
        &[5000],
        &Platform::linux_amd64(),
    );
    push(
        &dist,
        &image,
        "private/app:1",
        Some(&format!("alice:{password}")),
    );
    let c = client();
    let registry = |auth: serde_json::Value| json!({"name": "private.test", "endpoint": dist.url(), "tls": {"caFile": pki.ca}, "auth": auth});

    let pw_file = tmp.path().join("password");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    let cache = ImageCache::builder()
        .registry_with(registry(
            json!({"username": "alice", "passwordFile": pw_file}),
        ))
        .start();
    pull_verify(
        &c,
        &Repo::new(&cache.url(), "private.test/private/app"),
        "1",
        &image,
    )
    .await;
    assert!(
        !cache.log().contains(password),
        "the password reached the log"
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("alice:{password}"));
    assert!(
        !cache.log().contains(&encoded),
        "the Authorization header reached the log"
    );

    // A kubernetes.io/dockerconfigjson secret's payload.
    let docker_config = tmp.path().join("config.json");
    std::fs::write(
        &docker_config,
        json!({"auths": {dist.addr(): {"auth": encoded}}}).to_string(),
    )
    .unwrap();
    let cache = ImageCache::builder()
        .registry_with(registry(json!({"dockerConfigFile": docker_config})))
        .start();
    pull_verify(
        &c,
        &Repo::new(&cache.url(), "private.test/private/app"),
        "1",
        &image,
    )
    .await;

    // Wrong credentials: 403 DENIED, never a 500, and the server stays up.
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "nope").unwrap();
    let mut cache = ImageCache::builder()
        .registry_with(registry(
            json!({"username": "alice", "passwordFile": wrong}),
        ))
        .start();
    let r = get(
        &c,
        &format!("{}/v2/private.test/private/app/manifests/1", cache.url()),
        &[],
    )
    .await;
    r.assert_error(403, "DENIED");
    assert!(cache.is_running());
}
