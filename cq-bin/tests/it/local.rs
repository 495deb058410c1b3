//! One host, no munged, no certificates: the Unix-socket transport, where the kernel says
//! who connected (issue "cq-core as a library people embed", cq-transport-unix).

use std::ffi::OsString;

use crate::support::{LIMIT, Munged, TestServer, output, stderr};
use crate::users::{PublicBinaries, shared_dir, users};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory for a server's socket: root's, mode 0755 (others may pass, not write).
fn socket_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `cq_server --auth local` needs no credential service: a user's job runs as that user,
/// whom the kernel named; the policy still decides (root is refused by default).
#[tokio::test]
async fn a_local_server_knows_its_users_from_the_kernel() {
    let dir = socket_dir();
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
    // Root's own private runtime directory, as pam_systemd makes it.
    let runtime = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        runtime.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    std::fs::create_dir(runtime.path().join("cq")).unwrap();
    let socket = runtime.path().join("cq/cq.sock");
    let server = TestServer::start_with(&munged, &["--socket", socket.to_str().unwrap()]).await;
    let over_tcp = output(server.client().args(["--", "true"])).await;
    assert!(over_tcp.status.success(), "{}", stderr(&over_tcp));
    let mut found = tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_client"));
    found
        .env("XDG_RUNTIME_DIR", runtime.path())
        .args([
            "--reconnect-timeout",
            "5",
            "--follow",
            "--",
            "echo",
            "local",
        ])
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
    let dir = socket_dir();
    let alices = dir.path().join("alice");
    std::fs::create_dir(&alices).unwrap();
    nix::unistd::chown(&alices, Some(users().alice.uid), Some(users().alice.gid)).unwrap();
    let socket = alices.join("fake.sock");
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

/// Red team: a socket in a directory a user can change let that user swap it for a link
/// (root's server then chmod'ed or deleted the link's target), and an inherited
/// `$XDG_RUNTIME_DIR` could point a client at a user's socket. Both are refused now.
#[tokio::test]
async fn sockets_live_only_where_others_cannot_swap_them() {
    let shared = shared_dir();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_server"));
    server
        .args(["--auth", "local", "--socket"])
        .arg(shared.path().join("cq.sock"))
        .arg("--state-dir")
        .arg(shared.path().join("state"))
        .stdin(std::process::Stdio::null());
    let refused = output(&mut server).await;
    assert!(!refused.status.success(), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("can be changed by others"),
        "{}",
        stderr(&refused)
    );

    // A runtime directory that is not the caller's private one is ignored: with neither a
    // host nor a socket of its own, the client tries localhost (and nothing answers there).
    let foreign = shared_dir();
    std::fs::create_dir(foreign.path().join("cq")).unwrap();
    let _fake = std::os::unix::net::UnixListener::bind(foreign.path().join("cq/cq.sock")).unwrap();
    let mut client = tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_client"));
    client
        .env("XDG_RUNTIME_DIR", foreign.path())
        .args(["-p", "1", "--reconnect-timeout", "0", "--", "true"])
        .stdin(std::process::Stdio::null());
    let out = output(&mut client).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(!stderr(&out).contains("unix:"), "{}", stderr(&out));
}

/// Red team: Unix connections have no address, so one local user could take every
/// connection slot; each local user now gets one host's share.
#[tokio::test]
async fn one_local_user_cannot_take_every_connection() {
    let dir = socket_dir();
    let socket = dir.path().join("cq.sock");
    let mut args: Vec<OsString> = vec![
        "--auth".into(),
        "local".into(),
        "--socket".into(),
        socket.clone().into(),
    ];
    let client_args = args.clone();
    args.extend([
        "--max-connections-per-host".into(),
        "3".into(),
        "--allow-root".into(),
    ]);
    let server = TestServer::start_exact(&args, client_args).await;
    let bins = PublicBinaries::new();
    // Alice holds three connections (connected, silent).
    let alice = &users().alice;
    let holder = format!(
        "import socket, sys, time\nheld = []\nfor _ in range(3):\n    s = socket.socket(socket.AF_UNIX)\n    s.connect({:?})\n    held.append(s)\nprint('held', flush=True)\ntime.sleep(60)\n",
        socket.display().to_string()
    );
    let mut holding = tokio::process::Command::new("setpriv")
        .args([
            format!("--reuid={}", alice.uid),
            format!("--regid={}", alice.gid),
            "--init-groups".to_owned(),
            "--".to_owned(),
            "/usr/bin/python3".to_owned(),
            "-c".to_owned(),
            holder,
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut said = String::new();
    // Kept open to the end: a holder whose stdout closed would die of SIGPIPE, and free its
    // connections, at its next write.
    let mut out = holding.stdout.take().unwrap();
    tokio::time::timeout(LIMIT, async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 16];
        while !said.contains("held") {
            let n = out.read(&mut buf).await.unwrap();
            assert!(n > 0, "the holder died");
            said.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await
    .expect("alice holds her connections");
    // No wait for the server to count them: it accepts connections in the order they were
    // made, so hers are counted before the fourth below.
    assert!(
        holding.try_wait().unwrap().is_none(),
        "the holder still runs"
    );
    let fourth =
        output(
            server
                .client_as(&bins, alice)
                .args(["--reconnect-timeout", "0", "--list"]),
        )
        .await;
    assert_eq!(
        fourth.status.code(),
        Some(255),
        "alice is over her share: {}",
        stderr(&fourth)
    );
    // Others still get in.
    let bob = output(server.client_as(&bins, &users().bob).arg("--list")).await;
    assert!(bob.status.success(), "{}", stderr(&bob));
    let root = output(server.client().arg("--list")).await;
    assert!(root.status.success(), "{}", stderr(&root));
    drop(out);
}
