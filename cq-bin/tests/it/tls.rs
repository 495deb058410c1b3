//! Mutual TLS end to end: the real binaries, certificates from the real tooling.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cq_auth::ChannelCredentials;
use cq_auth::mtls::TlsServerAuthenticator;
use cq_core::{Client, CommandJob};
use cq_transport_tls::{ClientTls, TlsConnector, init_ca_and_server, issue_client};
use tempfile::TempDir;

use crate::support::{LIMIT, Munged, TestServer, bare_client, output, script, stderr};

/// A CA with a server certificate for 127.0.0.1, in a temporary directory.
pub(crate) struct Pki {
    dir: TempDir,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        init_ca_and_server(
            dir.path(),
            &["127.0.0.1".into(), "localhost".into()],
            cq_transport_tls::Existing::Refuse,
        )
        .unwrap();
        Self { dir }
    }

    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub(crate) fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        let files = issue_client(self.dir.path(), name, self.dir.path(), false).unwrap();
        (files.cert, files.key)
    }

    pub(crate) fn server_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--auth".into(), "tls".into()];
        for (option, file) in [
            ("--tls-ca", "ca.pem"),
            ("--tls-cert", "server.pem"),
            ("--tls-key", "server.key"),
        ] {
            args.push(option.into());
            args.push(self.path(file).into());
        }
        args
    }

    /// Client options presenting `cert`/`key` and trusting this CA.
    pub(crate) fn client_args(&self, cert: &Path, key: &Path) -> Vec<OsString> {
        vec![
            "--auth".into(),
            "tls".into(),
            "--tls-ca".into(),
            self.path("ca.pem").into(),
            "--tls-cert".into(),
            cert.into(),
            "--tls-key".into(),
            key.into(),
        ]
    }
}

fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .expect("the test user has a name")
        .name
}

async fn tls_server(pki: &Pki, extra: &[OsString]) -> TestServer {
    let (cert, key) = pki.client(&me());
    let mut args = pki.server_args();
    args.extend_from_slice(extra);
    TestServer::start_args(&args, pki.client_args(&cert, &key)).await
}

#[tokio::test]
async fn a_job_over_mutual_tls_runs_for_the_certificates_user() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let post_out = dir.path().join("post.out");
    let post = script(
        dir.path(),
        "post",
        &format!("echo \"$1 $2 $CQ_OUTCOME\" > {}", post_out.display()),
    );
    let out = output(
        server
            .client()
            .args(["-E", "USE=ssl"])
            .arg("-P")
            .arg(&post)
            .args(["--", "sh", "-c", "test \"$USE\" = ssl"]),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&post_out).unwrap(), "0 0 exited\n");
    let uid = nix::unistd::getuid().as_raw();
    let accepted = server.wait_for_log("accepted").await;
    assert!(
        accepted.contains(&format!("owner={}({uid})@127.0.0.1", me())),
        "{accepted}"
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[]).await;
    let tls = ClientTls::without_identity(&pki.path("ca.pem")).unwrap();
    let connector = TlsConnector::new("127.0.0.1", server.addr.port(), "127.0.0.1", &tls).unwrap();
    let client = Client::new(connector, ChannelCredentials, TlsServerAuthenticator);
    let err = tokio::time::timeout(
        LIMIT,
        client.submit(CommandJob::new(["true"]), cq_core::SubmitKey::random()),
    )
    .await
    .unwrap()
    .unwrap_err();
    // TLS 1.3: the handshake looks fine to the client; the refusal arrives on the first read.
    assert!(err.to_string().contains("CertificateRequired"), "{err}");
    assert!(
        err.hint().unwrap().contains("--tls-cert"),
        "{:?}",
        err.hint()
    );
    server.wait_for_log("TLS handshake failed").await;
    server.assert_serves().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[]).await;
    let other = Pki::new();
    let (cert, key) = other.client(&me());
    let mut args = pki.client_args(&cert, &key);
    args.extend(["--".into(), "true".into()]);
    let out = output(bare_client(server.addr).args(&args)).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("signed by the server's CA"),
        "{}",
        stderr(&out)
    );
    let logged = server.wait_for_log("TLS handshake failed").await;
    assert!(logged.contains("invalid peer certificate"), "{logged}");
    server.assert_serves().await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[]).await;
    let (cert, key) = expired_client(&pki, &me());
    let mut args = pki.client_args(&cert, &key);
    args.extend(["--".into(), "true".into()]);
    let out = output(bare_client(server.addr).args(&args)).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("CertificateExpired"),
        "{}",
        stderr(&out)
    );
    let logged = server.wait_for_log("TLS handshake failed").await;
    assert!(logged.contains("certificate expired"), "{logged}");
    server.assert_serves().await;
}

/// A client certificate from the CA in `pki` that expired yesterday.
fn expired_client(pki: &Pki, name: &str) -> (PathBuf, PathBuf) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki.path("ca.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(pki.path("ca.pem")).unwrap(),
        ca_key,
    )
    .unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (pki.path("expired.pem"), pki.path("expired.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[tokio::test]
async fn certificate_names_must_map_to_a_local_user() {
    let pki = Pki::new();
    let map = pki.path("users");
    std::fs::write(
        &map,
        format!("# certificate name -> local user\nvm-desktop {}\n", me()),
    )
    .unwrap();
    let server = tls_server(&pki, &["--tls-user-map".into(), map.clone().into()]).await;

    let (cert, key) = pki.client("vm-desktop");
    let mut args = pki.client_args(&cert, &key);
    args.extend(["--".into(), "true".into()]);
    let mapped = output(bare_client(server.addr).args(&args)).await;
    assert!(
        mapped.status.success(),
        "a mapped name is allowed: {}",
        stderr(&mapped)
    );

    let (cert, key) = pki.client("vm-stranger");
    let mut args = pki.client_args(&cert, &key);
    args.extend(["--".into(), "true".into()]);
    let stranger = output(bare_client(server.addr).args(&args)).await;
    assert_eq!(stranger.status.code(), Some(255));
    assert!(
        stderr(&stranger).contains("\"vm-stranger\" is not in the TLS user map"),
        "{}",
        stderr(&stranger)
    );
    let logged = server.wait_for_log("rejected a request").await;
    assert!(logged.contains("vm-stranger"), "{logged}");
}

#[tokio::test]
async fn without_a_map_the_name_must_be_a_local_user() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[]).await;
    let (cert, key) = pki.client("no-such-user-on-this-host");
    let mut args = pki.client_args(&cert, &key);
    args.extend(["--".into(), "true".into()]);
    let out = output(bare_client(server.addr).args(&args)).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("maps to no local user"),
        "{}",
        stderr(&out)
    );
    server.assert_serves().await;
}

#[tokio::test]
async fn mixing_plain_and_tls_fails_fast_and_says_so() {
    let pki = Pki::new();
    let tls = tls_server(&pki, &[]).await;
    let munged = Munged::start();
    let plain = TestServer::start(&munged).await;

    let plain_to_tls =
        output(crate::support::client_for(tls.addr, &munged.socket()).args(["--", "true"])).await;
    assert_eq!(plain_to_tls.status.code(), Some(255));
    assert!(
        stderr(&plain_to_tls).contains("only speaks cq over mutual TLS: use --auth tls"),
        "{}",
        stderr(&plain_to_tls)
    );

    let (cert, key) = pki.client("someone");
    let mut args = pki.client_args(&cert, &key);
    args.extend(["--".into(), "true".into()]);
    let tls_to_plain = output(bare_client(plain.addr).args(&args)).await;
    assert_eq!(tls_to_plain.status.code(), Some(255));
    assert!(
        stderr(&tls_to_plain).contains("does not seem to use TLS"),
        "{}",
        stderr(&tls_to_plain)
    );
}

#[tokio::test]
async fn the_tooling_writes_private_keys_and_never_overwrites_silently() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let server = env!("CARGO_BIN_EXE_cq_server");
    let init = || {
        let mut cmd = tokio::process::Command::new(server);
        cmd.args(["tls", "init"])
            .arg(&pki)
            .args(["--host", "buildhost", "--host", "10.0.0.5"]);
        cmd
    };
    assert!(output(&mut init()).await.status.success());
    let mode = |file: &str| {
        std::fs::metadata(pki.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        (
            mode("ca.key"),
            mode("server.key"),
            mode("ca.pem"),
            mode("server.pem")
        ),
        (0o600, 0o600, 0o644, 0o644)
    );

    let again = output(&mut init()).await;
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("exists; pass --force"),
        "{}",
        stderr(&again)
    );
    assert!(output(init().arg("--force")).await.status.success());

    let client = output(
        tokio::process::Command::new(server)
            .args(["tls", "client", "vm1", "--dir"])
            .arg(&pki),
    )
    .await;
    assert!(client.status.success(), "{}", stderr(&client));
    assert_eq!(mode("vm1.key"), 0o600);
}

/// A worker authenticates with a certificate of its own, and is admitted by the name it
/// maps to (and its address); a certificate that maps to another user is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_certificate_runs_the_coordinators_jobs() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cq.toml");
    std::fs::write(
        &config,
        format!("[policy]\nworkers = [\"{}@127.0.0.1\"]\n", me()),
    )
    .unwrap();
    let server = tls_server(
        &pki,
        &["--config".into(), config.into(), "--no-local-worker".into()],
    )
    .await;
    let worker = |name: &str, cert: &Path, key: &Path| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_worker"));
        cmd.args(["-h", "127.0.0.1", "-p", &server.addr.port().to_string()])
            .args(["--name", name, "--allow-root-jobs"])
            .args(pki.client_args(cert, key))
            .arg("--spool")
            .arg(dir.path().join(name))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd
    };
    let users = crate::users::users();
    let (other_cert, other_key) = pki.client(&users.alice.name);
    let mut refused = worker("impostor", &other_cert, &other_key).spawn().unwrap();
    let status = tokio::time::timeout(LIMIT, refused.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    // The server's own user (root) has a certificate already: the clients' here.
    let (cert, key) = (
        pki.path(&format!("{}.pem", me())),
        pki.path(&format!("{}.key", me())),
    );
    let _worker = worker("t1", &cert, &key).spawn().unwrap();
    server
        .wait_for_log_matching(|l| l.contains("a worker joined") && l.contains("worker=t1 "))
        .await;
    let out = output(
        server
            .client()
            .args(["--", "sh", "-c", "echo over tls; exit 6"]),
    )
    .await;
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let started = server
        .wait_for_log_matching(|l| l.contains("started") && l.contains("worker=t1"))
        .await;
    assert!(started.contains("job=1 "), "{started}");
    let log = output(server.client().args(["--log", "1"])).await;
    assert_eq!(String::from_utf8_lossy(&log.stdout), "over tls\n");
}
