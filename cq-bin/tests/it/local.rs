//! One host, no munged, no certificates: the Unix-socket transport, where the kernel says
//! who connected (issue "cq-core as a library people embed", cq-transport-unix).

use std::ffi::OsString;

use crate::support::{LIMIT, Munged, TestServer, output, stderr};
use crate::users::{PublicBinaries, shared_dir, users};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cq_server --auth local` needs no credential service: a user's job runs as that user,
/// whom the kernel named; the policy still decides (root is refused by default).
#[tokio::test]
async fn a_local_server_knows_its_users_from_the_kernel() {
    let dir = shared_dir();
    let socket = dir.path().join("cq.sock");
    let client_args: Vec<OsString> = vec![
        "--auth".into(),
        "local".into(),
        "--socket".into(),
        socket.clone().into(),
    ];
    let server = TestServer::start_exact(&client_args, client_args.clone()).await;
    let bins = PublicBinaries::new();
    let alice = output(
        server
            .client_as(&bins, &users().alice)
            .args(["--follow", "--", "id", "-un"]),
    )
    .await;
    assert!(alice.status.success(), "{}", stderr(&alice));
    assert_eq!(stdout(&alice).trim(), users().alice.name);
    let root = output(server.client().args(["--", "true"])).await;
    assert_eq!(root.status.code(), Some(255));
    assert!(stderr(&root).contains("root"), "{}", stderr(&root));
    let listed = output(server.client_as(&bins, &users().alice).arg("--list")).await;
    assert!(
        stdout(&listed).contains(&format!("{}(", users().alice.name)),
        "{}",
        stdout(&listed)
    );
}

/// A server on TCP (MUNGE) serves this host's Unix socket too; a client given no host
/// finds that socket by itself (here through `$XDG_RUNTIME_DIR`).
#[tokio::test]
async fn a_server_serves_its_socket_beside_tcp_and_clients_find_it() {
    let munged = Munged::start();
    let runtime = shared_dir();
    std::fs::create_dir(runtime.path().join("cq")).unwrap();
    let socket = runtime.path().join("cq/cq.sock");
    let server = TestServer::start_with(&munged, &["--socket", socket.to_str().unwrap()]).await;
    let over_tcp = output(server.client().args(["--", "true"])).await;
    assert!(over_tcp.status.success(), "{}", stderr(&over_tcp));
    let mut found = tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_client"));
    found
        .env("XDG_RUNTIME_DIR", runtime.path())
        .args(["--follow", "--", "echo", "local"])
        .stdin(std::process::Stdio::null());
    let found = output(&mut found).await;
    assert!(found.status.success(), "{}", stderr(&found));
    assert_eq!(stdout(&found).trim(), "local");
    assert!(
        stderr(&found).contains(&format!("unix:{}", socket.display())),
        "{}",
        stderr(&found)
    );
}

/// A client believes only a server process running as root or as its own user: a socket
/// another user serves (here alice's own cq_server) cannot answer for the real one.
#[tokio::test]
async fn a_client_refuses_a_socket_served_by_another_user() {
    let bins = PublicBinaries::new();
    let dir = shared_dir();
    let socket = dir.path().join("fake.sock");
    let state = shared_dir();
    // It would take root's job, and answer as alice.
    let config = state.path().join("cq.toml");
    std::fs::write(&config, "[policy]\nusers = [\"root\"]\nallow_root = true\n").unwrap();
    let mut fake = crate::users::as_user(&users().alice, &bins.server());
    fake.extend([
        "--auth".into(),
        "local".into(),
        "--socket".into(),
        socket.clone().into(),
        "--state-dir".into(),
        state.path().join("s").into(),
        "--config".into(),
        config.into(),
        "-p".into(),
        "0".into(),
    ]);
    let (exe, rest) = fake.split_first().unwrap();
    let mut child = tokio::process::Command::new(exe)
        .args(rest)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::timeout(LIMIT, async {
        while !socket.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("alice's server serves its socket");
    let mut client = tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_client"));
    client
        .args(["--auth", "local", "--socket"])
        .arg(&socket)
        .args(["--", "true"])
        .stdin(std::process::Stdio::null());
    let out = output(&mut client).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("not as the server's"),
        "{}",
        stderr(&out)
    );
    let _ = child.start_kill();
}
