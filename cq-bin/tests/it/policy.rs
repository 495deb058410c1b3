//! Run as the requester, the submit policy, the configuration file and its reload.
//!
//! These tests need root (CI runs as root): the server switches users and a test user is
//! created on the first use.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;

use nix::unistd::User;

use crate::support::{Munged, TestServer, output, stderr};
use crate::tls::Pki;
use crate::users::{ALICE, PublicBinaries, as_user, users};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory others may enter, with a root-owned file nobody else may write.
fn root_owned_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path().join("owned-by-root");
    std::fs::write(&file, "root's\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, file)
}

#[tokio::test]
async fn a_job_runs_as_its_requester_with_its_groups_and_home() {
    let uid = users().alice.uid.as_raw();
    let extra_gid = users().extra.gid.as_raw();
    let pki = Pki::new();
    let (cert, key) = pki.client(ALICE);
    let server = TestServer::start_args(&pki.server_args(), pki.client_args(&cert, &key)).await;
    let (_dir, file) = root_owned_file();
    let command = format!(
        "id -u; id -G; echo \"$HOME $USER $LOGNAME\"; echo changed >> {}",
        file.display()
    );
    let out = output(
        server
            .client()
            .args(["--follow", "--", "sh", "-c", &command]),
    )
    .await;
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(uid.to_string().as_str()), "{text}");
    let groups: Vec<u32> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    assert!(groups.contains(&extra_gid), "{groups:?} lacks {extra_gid}");
    assert!(!groups.contains(&0), "root's group kept: {groups:?}");
    assert_eq!(
        lines.next(),
        Some("/nonexistent/cq-test-user cq-test-user cq-test-user")
    );
    assert!(text.contains("Permission denied"), "{text}");
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "root's\n");
}

#[tokio::test]
async fn root_is_refused_by_default_and_allowed_by_the_config_file() {
    let munged = Munged::start();
    let auth: Vec<OsString> = vec!["--munge-socket".into(), munged.socket().into()];
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());

    let strict = TestServer::start_exact(&auth, auth.clone()).await;
    let refused = output(strict.client().args(["--", "sh", "-c", &touch])).await;
    assert_eq!(refused.status.code(), Some(255));
    let message = stderr(&refused);
    assert!(
        message.contains("refuses jobs from root") && message.contains("--allow-root"),
        "{message}"
    );
    assert!(!marker.exists(), "a refused job ran");

    let config = dir.path().join("cq.toml");
    std::fs::write(&config, "[policy]\nallow_root = true\n").unwrap();
    let mut args = auth.clone();
    args.extend(["--config".into(), config.into()]);
    let allowed = TestServer::start_exact(&args, auth).await;
    let ran = output(allowed.client().args(["--", "sh", "-c", &touch])).await;
    assert!(ran.status.success(), "{}", stderr(&ran));
    assert!(marker.exists());
}

#[tokio::test]
async fn denied_variables_and_commands_are_refused_with_the_reason() {
    let munged = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cq.toml");
    std::fs::write(&config, "[policy]\ncommands = [\"/bin/sh\"]\n").unwrap();
    let server = TestServer::start_with(&munged, &["--config", config.to_str().unwrap()]).await;
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());

    let preload =
        output(
            server
                .client()
                .args(["-E", "LD_PRELOAD=/tmp/evil.so", "--", "sh", "-c", &touch]),
        )
        .await;
    assert_eq!(preload.status.code(), Some(255));
    assert!(
        stderr(&preload).contains("LD_PRELOAD is not among them"),
        "{}",
        stderr(&preload)
    );
    let other = output(
        server
            .client()
            .args(["--", "touch", marker.to_str().unwrap()]),
    )
    .await;
    assert_eq!(other.status.code(), Some(255));
    assert!(
        stderr(&other).contains("touch is not among the commands this server runs"),
        "{}",
        stderr(&other)
    );
    assert!(!marker.exists(), "a refused job ran");
    let allowed = output(server.client().args(["--", "sh", "-c", &touch])).await;
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    assert!(marker.exists());
}

#[tokio::test]
async fn sighup_reloads_the_policy() {
    let munged = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cq.toml");
    std::fs::write(&config, "[policy]\nallow_root = true\n").unwrap();
    let server = TestServer::start_exact(
        &[
            "--munge-socket".into(),
            munged.socket().into(),
            "--config".into(),
            config.clone().into(),
        ],
        vec!["--munge-socket".into(), munged.socket().into()],
    )
    .await;
    let with_path = || output_args(&server, &["-E", "LD_LIBRARY_PATH=/opt/lib", "--", "true"]);
    assert_eq!(with_path().await.status.code(), Some(255));

    std::fs::write(
        &config,
        "[policy]\nallow_root = true\nenv_allow = [\"LD_LIBRARY_PATH\"]\n",
    )
    .unwrap();
    server.hang_up();
    server.wait_for_log("policy reloaded").await;
    let out = with_path().await;
    assert!(out.status.success(), "{}", stderr(&out));

    // A broken file keeps the policy in force.
    std::fs::write(&config, "[policy]\nallow_root = maybe\n").unwrap();
    server.hang_up();
    let line = server.wait_for_log("keeping the old policy").await;
    assert!(line.contains("cq.toml:2"), "{line}");
    assert!(with_path().await.status.success());
}

async fn output_args(server: &TestServer, args: &[&str]) -> std::process::Output {
    output(server.client().args(args)).await
}

#[tokio::test]
async fn the_config_file_sets_options_and_the_command_line_wins() {
    let munged = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cq.toml");
    // The port is overridden by the fixture's -p 0; the log limit is not.
    std::fs::write(&config, "[server]\nport = 1\nlog_limit = \"10\"\n").unwrap();
    let server = TestServer::start_with(&munged, &["--config", config.to_str().unwrap()]).await;
    assert_ne!(server.addr.port(), 1);
    let out = output(
        server
            .client()
            .args(["--detach", "--", "echo", "0123456789abcdef"]),
    )
    .await;
    let id = stdout(&out).trim().to_owned();
    let waited = output(server.client().args(["--wait", &id])).await;
    assert!(waited.status.success(), "{}", stderr(&waited));
    let log = output(server.client().args(["--log", &id])).await;
    assert!(stdout(&log).starts_with("0123456789"), "{}", stdout(&log));
    assert!(!stdout(&log).contains("abcdef"), "{}", stdout(&log));
}

#[tokio::test]
async fn config_errors_name_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cq.toml");
    std::fs::write(&config, "[server]\nhost = \"127.0.0.1\"\nport = \"lots\"\n").unwrap();
    let server = run_server(&["--config", config.to_str().unwrap()]).await;
    assert_eq!(server.status.code(), Some(1));
    let message = stderr(&server);
    let expected = format!("cq_server: {}:3: server.port: ", config.display());
    assert!(message.starts_with(&expected), "{message}");

    std::fs::write(&config, "[client]\nlist = true\n").unwrap();
    let mut client = tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_client"));
    client.args(["--config", config.to_str().unwrap(), "--", "true"]);
    let client = output(&mut client).await;
    assert_eq!(client.status.code(), Some(255));
    assert_eq!(
        stderr(&client),
        format!(
            "cq_client: {}:2: client.list: no such option here\n",
            config.display()
        )
    );

    let missing = run_server(&["--config", "/nonexistent/cq.toml"]).await;
    assert!(
        stderr(&missing).contains("cannot read /nonexistent/cq.toml"),
        "{}",
        stderr(&missing)
    );
}

async fn run_server(args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_server"));
    cmd.args(args).stdin(std::process::Stdio::null());
    output(&mut cmd).await
}

#[tokio::test]
async fn a_server_not_run_as_root_runs_jobs_as_itself_and_admits_only_its_user() {
    let user = users().alice.clone();
    let uid = user.uid.as_raw();
    let munged = Munged::start();
    let bin = PublicBinaries::new();
    let state = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(state.path(), Some(uid), Some(user.gid.as_raw())).unwrap();
    let auth: Vec<OsString> = vec!["--munge-socket".into(), munged.socket().into()];
    let server =
        TestServer::start_program(as_user(&user, &bin.server()), state, &auth, auth.clone()).await;

    let root = output(server.client().args(["--", "true"])).await;
    assert_eq!(root.status.code(), Some(255));
    assert!(
        stderr(&root).contains("refuses jobs from root"),
        "{}",
        stderr(&root)
    );

    let client_as = |who: &User| {
        let mut cmd = tokio::process::Command::new("setpriv");
        cmd.args(&as_user(who, &bin.client())[1..])
            .args(["-h", "127.0.0.1", "-p", &server.addr.port().to_string()])
            .args(&auth)
            .current_dir("/")
            .stdin(std::process::Stdio::null());
        cmd
    };
    let own = output(client_as(&user).args(["--follow", "--", "id", "-u"])).await;
    assert!(own.status.success(), "{}", stderr(&own));
    assert_eq!(stdout(&own).trim(), uid.to_string());

    let bob = &users().bob;
    let other = output(client_as(bob).args(["--", "true"])).await;
    assert_eq!(other.status.code(), Some(255));
    assert!(
        stderr(&other).contains(&format!("{}({})", bob.name, bob.uid))
            && stderr(&other).contains("may not use this server"),
        "{}",
        stderr(&other)
    );
}
