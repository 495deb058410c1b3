//! Authorization against a hostile requester (issue "Security I"): two unprivileged users on a
//! client host, and root on a client host, all in the server's MUNGE realm. Each test is a
//! finding of the red team, reproduced against the real programs.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::unistd::Group;

use crate::durable::Gate;
use crate::support::{Munged, TestServer, output, script, stderr};
use crate::users::{PublicBinaries, shared_dir, users};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn munge_args(munged: &Munged) -> Vec<OsString> {
    vec!["--munge-socket".into(), munged.socket().into()]
}

/// A server (root) with `config` as its configuration file, plus `extra` options.
async fn server_with_config(
    munged: &Munged,
    config: &str,
    extra: &[&str],
) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cq.toml");
    std::fs::write(&path, config).unwrap();
    let mut args = munge_args(munged);
    args.extend(["--config".into(), path.into()]);
    args.extend(extra.iter().map(OsString::from));
    let server = TestServer::start_exact(&args, munge_args(munged)).await;
    (server, dir)
}

/// Finding 1: a root server with `--run-as server` ran every user's job as root.
#[tokio::test]
async fn a_root_server_that_runs_jobs_as_itself_admits_only_root() {
    let munged = Munged::start();
    let bins = PublicBinaries::new();
    let mut args = munge_args(&munged);
    args.extend(["--run-as".into(), "server".into()]);
    let server = TestServer::start_exact(&args, munge_args(&munged)).await;
    server.wait_for_log("admits users [root]").await;

    let alice = output(
        server
            .client_as(&bins, &users().alice)
            .args(["--follow", "--", "id", "-u"]),
    )
    .await;
    assert_eq!(alice.status.code(), Some(255), "{}", stdout(&alice));
    assert!(
        stderr(&alice).contains("may not use this server"),
        "{}",
        stderr(&alice)
    );
    assert!(!stdout(&alice).contains('0'), "a user's job ran as root");
    // Root itself still needs allow_root.
    let root = output(server.client().args(["--", "true"])).await;
    assert!(
        stderr(&root).contains("refuses jobs from root"),
        "{}",
        stderr(&root)
    );
}

/// Finding 2: the job's group came from the MUNGE credential, which root on a client host
/// chooses: `setpriv --regid=<shadow>` gave the job /etc/shadow.
#[tokio::test]
async fn a_group_claimed_in_the_credential_is_never_the_jobs() {
    let munged = Munged::start();
    let bins = PublicBinaries::new();
    let alice = &users().alice;
    let shadow = Group::from_name("shadow").unwrap().expect("a shadow group");
    let forged: Vec<OsString> = vec![
        "setpriv".into(),
        format!("--reuid={}", alice.uid).into(),
        format!("--regid={}", shadow.gid).into(),
        "--clear-groups".into(),
        "--".into(),
        bins.client().into(),
    ];
    let server = TestServer::start(&munged).await;
    let out = output(server.client_via(&forged).args([
        "--follow",
        "--",
        "sh",
        "-c",
        "id -g; id -G; cat /etc/shadow > /dev/null 2>&1 && echo read-shadow || echo no-shadow",
    ]))
    .await;
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(alice.gid.to_string().as_str()),
        "{text}{}",
        stderr(&out)
    );
    let groups: Vec<u32> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    assert!(!groups.contains(&shadow.gid.as_raw()), "{groups:?}");
    assert!(
        groups.contains(&users().extra.gid.as_raw()),
        "the account's own groups: {groups:?}"
    );
    assert_eq!(lines.next(), Some("no-shadow"));

    // Nor does the claimed group pass a policy of groups.
    let (strict, _config) =
        server_with_config(&munged, "[policy]\ngroups = [\"shadow\"]\n", &[]).await;
    let refused = output(strict.client_via(&forged).args(["--", "true"])).await;
    assert_eq!(refused.status.code(), Some(255));
    assert!(
        stderr(&refused).contains("may not use this server"),
        "{}",
        stderr(&refused)
    );
}

/// Finding 3a: the allow list checked the program through a symlink and ran the symlink:
/// swapped between acceptance and start, it ran another file.
#[tokio::test]
async fn a_symlink_swapped_after_the_check_runs_nothing_else() {
    let munged = Munged::start();
    let bins = PublicBinaries::new();
    let shared = shared_dir();
    let config = format!(
        "[policy]\nallow_root = true\ncommands = [\"/bin/true\", \"/bin/cat\"]\n[jobs]\ncwd = \"{}\"\n",
        shared.path().display()
    );
    let (server, _config) = server_with_config(&munged, &config, &[]).await;
    let link = shared.path().join("true");
    std::os::unix::fs::symlink("/bin/true", &link).unwrap();
    let marker = shared.path().join("touched");
    let alice = || server.client_as(&bins, &users().alice);

    let honest = output(alice().args(["--", "./true"])).await;
    assert!(
        honest.status.success(),
        "the link to an allowed file runs: {}",
        stderr(&honest)
    );

    let gate_dir = shared_dir();
    let gate = Gate::new(gate_dir.path());
    let blocker = output(
        alice()
            .args(["--detach", "--", "cat"])
            .arg(gate_dir.path().join("gate")),
    )
    .await;
    assert!(blocker.status.success(), "{}", stderr(&blocker));
    let queued = output(alice().args(["--detach", "--", "./true"]).arg(&marker)).await;
    assert!(queued.status.success(), "{}", stderr(&queued));
    let id = stdout(&queued).trim().to_owned();
    // Accepted as ./true; now ./true is touch.
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("/usr/bin/touch", &link).unwrap();
    gate.open().await;
    let waited = output(alice().args(["--wait", &id])).await;
    assert_eq!(waited.status.code(), Some(126), "{}", stderr(&waited));
    assert!(
        stderr(&waited).contains("not among the commands this server runs"),
        "{}",
        stderr(&waited)
    );
    assert!(!marker.exists(), "the swapped-in program ran");
}

/// Finding 3b: a relative program was checked against `/` and run in the job's directory.
#[tokio::test]
async fn a_relative_program_is_checked_where_it_runs() {
    let munged = Munged::start();
    let bins = PublicBinaries::new();
    let shared = shared_dir();
    let build = script(shared.path(), "build.sh", "echo built in $(pwd)");
    let config = format!(
        "[policy]\ncommands = [\"{}\"]\n[jobs]\ncwd = \"{}\"\n",
        build.display(),
        shared.path().display()
    );
    let (server, _config) = server_with_config(&munged, &config, &[]).await;
    let out =
        output(
            server
                .client_as(&bins, &users().alice)
                .args(["--follow", "--", "./build.sh"]),
        )
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("built in {}", shared.path().display())
    );
}

/// Finding 3c: no deny list names every variable that makes an interpreter run code of the
/// requester's choice; with an allow list of commands, only allowed variables pass.
#[tokio::test]
async fn with_a_command_list_only_allowed_variables_reach_the_job() {
    let munged = Munged::start();
    let bins = PublicBinaries::new();
    let (server, _config) = server_with_config(
        &munged,
        "[policy]\ncommands = [\"/bin/sh\"]\nenv_allow = [\"USE\"]\n",
        &[],
    )
    .await;
    let shared = shared_dir();
    let marker = shared.path().join("ran");
    let payload = format!("touch {}", marker.display());
    for (name, value) in [
        ("PYTHONPATH", "/tmp/evil"),
        ("PERL5LIB", "/tmp/evil"),
        ("BASH_FUNC_true%%", &format!("() {{ {payload}; }}")),
        ("SHELLOPTS", "xtrace"),
        ("PS4", &format!("$({payload})")),
        ("IFS", "x"),
        ("ENV", "/tmp/evil"),
    ] {
        let out = output(server.client_as(&bins, &users().alice).args([
            "-E",
            &format!("{name}={value}"),
            "--",
            "sh",
            "-c",
            "true",
        ]))
        .await;
        assert_eq!(out.status.code(), Some(255), "{name} passed");
        assert!(
            stderr(&out).contains(&format!("{name} is not among them")),
            "{name}: {}",
            stderr(&out)
        );
    }
    assert!(!marker.exists());
    let fine = output(server.client_as(&bins, &users().alice).args([
        "-E",
        "USE=X",
        "--follow",
        "--",
        "sh",
        "-c",
        "echo $USE",
    ]))
    .await;
    assert_eq!(stdout(&fine).trim(), "X", "{}", stderr(&fine));
}

/// Finding 4: the working directory was entered (and the program looked up) with root's
/// rights, and the error told existing from missing paths root alone can see.
#[tokio::test]
async fn the_working_directory_is_entered_with_the_requesters_rights_only() {
    let munged = Munged::start();
    let bins = PublicBinaries::new();
    let u = users();
    let shared = shared_dir();
    let home = shared.path().join("bob-home");
    let public = home.join("pub");
    std::fs::create_dir_all(&public).unwrap();
    std::fs::write(public.join("secret"), "bob's secret\n").unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        public.join("secret"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::os::unix::fs::chown(&home, Some(u.bob.uid.as_raw()), Some(u.bob.gid.as_raw())).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let server = TestServer::start(&munged).await;

    let reading = output(
        server
            .client_as(&bins, &u.alice)
            .arg("--cwd")
            .arg(&public)
            .args(["--follow", "--", "cat", "secret"]),
    )
    .await;
    assert!(
        !stdout(&reading).contains("bob's secret"),
        "alice read bob's file"
    );
    assert_ne!(reading.status.code(), Some(0));
    let existing = stderr(&reading);
    assert!(
        existing.contains("cannot enter the working directory"),
        "{existing}"
    );
    assert!(existing.contains("Permission denied"), "{existing}");

    let probing = output(
        server
            .client_as(&bins, &u.alice)
            .arg("--cwd")
            .arg(home.join("no-such-dir"))
            .args(["--", "true"]),
    )
    .await;
    let missing = stderr(&probing);
    assert_eq!(probing.status.code(), reading.status.code(), "{missing}");
    assert!(
        missing.contains("Permission denied") && !missing.contains("does not exist"),
        "a path alice cannot see looks the same, there or not: {missing}"
    );
    // Bob may.
    let bob = output(
        server
            .client_as(&bins, &u.bob)
            .arg("--cwd")
            .arg(&public)
            .args(["--follow", "--", "cat", "secret"]),
    )
    .await;
    assert_eq!(stdout(&bob), "bob's secret\n", "{}", stderr(&bob));
}

fn mode(path: &Path) -> u32 {
    path.metadata().unwrap().mode() & 0o777
}

/// Finding 5: the state directory was 0755 and the database (every job's `-E` values)
/// 0644.
#[tokio::test]
async fn the_state_is_readable_by_the_server_alone() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let out = output(
        server
            .client()
            .args(["-E", "TOKEN=s3cret", "--", "sh", "-c", "echo logged"]),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let state = server.state_dir.path();
    assert_eq!(mode(state), 0o700);
    assert_eq!(mode(&state.join("logs")), 0o700);
    for file in ["cq.db", "cq.db-wal", "cq.db-shm", "logs/1.log"] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file}");
    }

    // A state directory others could read is closed; one that is another user's is refused.
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let closed = TestServer::start_program(
        vec![env!("CARGO_BIN_EXE_cq_server").into()],
        open,
        &munge_args(&munged),
        munge_args(&munged),
    )
    .await;
    assert_eq!(mode(closed.state_dir.path()), 0o700);
    let theirs = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(theirs.path(), Some(users().bob.uid.as_raw()), None).unwrap();
    let refused = output(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_server"))
            .args(["-h", "127.0.0.1", "-p", "0", "--state-dir"])
            .arg(theirs.path())
            .args(munge_args(&munged)),
    )
    .await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains(&format!("belongs to uid {}", users().bob.uid)),
        "{}",
        stderr(&refused)
    );
}

/// Finding 7: a merged waiter's `--cancel` cancelled the shared job for everybody. Now it
/// withdraws the waiter; the job goes on for its owner. (Findings 6's rule — who may wait,
/// list, read and cancel — is `queue::only_the_owner_and_named_admins_may_read_or_cancel_a_job`.)
#[tokio::test]
async fn a_merged_waiters_cancel_withdraws_it_and_the_job_goes_on() {
    let munged = Munged::start();
    let bins = PublicBinaries::new();
    let hook_dir = shared_dir();
    // Merge everything into the first job in the queue, if there is one.
    let hook = script(
        hook_dir.path(),
        "hook",
        "id=$(cat | tr ',' '\\n' | grep -m1 '\"id\"' | tr -dc '0-9')\n\
         if [ -n \"$id\" ]; then echo \"{\\\"decision\\\": \\\"merge\\\", \\\"job\\\": $id}\"; else echo '{\"decision\": \"accept\"}'; fi",
    );
    let hook = hook.to_str().unwrap();
    let (server, _config) = server_with_config(
        &munged,
        "[policy]\nmerge_across_users = true\n",
        &["--submit-hook", hook],
    )
    .await;
    let u = users();
    let gate_dir = shared_dir();
    let gate = Gate::new(gate_dir.path());
    let first = output(server.client_as(&bins, &u.alice).args([
        "--detach",
        "--",
        "sh",
        "-c",
        &gate.wait(),
    ]))
    .await;
    assert!(first.status.success(), "{}", stderr(&first));
    let merged = output(
        server
            .client_as(&bins, &u.bob)
            .args(["--detach", "--", "true"]),
    )
    .await;
    assert!(merged.status.success(), "{}", stderr(&merged));
    assert_eq!(
        stdout(&merged).trim(),
        "1",
        "bob's submission merged into alice's job"
    );

    // Bob learns the outcome but may not read the log of another user's job.
    let log = output(server.client_as(&bins, &u.bob).args(["--log", "1"])).await;
    assert_eq!(log.status.code(), Some(255), "{}", stderr(&log));
    let withdrawn = output(server.client_as(&bins, &u.bob).args(["--cancel", "1"])).await;
    assert!(withdrawn.status.success(), "{}", stderr(&withdrawn));
    assert!(
        stderr(&withdrawn).contains("no longer wait for job 1"),
        "{}",
        stderr(&withdrawn)
    );
    gate.open().await;
    let alice = output(server.client_as(&bins, &u.alice).args(["--wait", "1"])).await;
    assert!(
        alice.status.success(),
        "the job went on for its owner: {}",
        stderr(&alice)
    );
}
