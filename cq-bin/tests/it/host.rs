//! The host around the queue (issue "Security III"): terminals, inherited descriptors, files
//! others could plant, account changes between submission and start, revocation, limits,
//! the submit hook. Key files are tested where they are made (cq-transport-tls `certs.rs`).

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use nix::unistd::User;

use crate::durable::Gate;
use crate::support::{LIMIT, Munged, TestServer, output, script, stderr};
use crate::tls::Pki;
use crate::users::{ALICE, BOB, PublicBinaries, shared_dir, users};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn munge_args(munged: &Munged) -> Vec<OsString> {
    vec!["--munge-socket".into(), munged.socket().into()]
}

/// A shell snippet that says whether it can open a controlling terminal, and whether it
/// leads a session of its own.
const TERMINAL_PROBE: &str = "if ( : </dev/tty ) 2>/dev/null; then echo tty; else echo no-tty; fi; \
     read -r _ _ _ _ _ sid _ < /proc/$$/stat; \
     if [ \"$sid\" = \"$$\" ]; then echo own-session; else echo server-session; fi";

/// Finding 1: jobs stayed in the server's session and could reach the terminal it was
/// started from (TIOCSTI into the admin's shell, or reading what the admin types).
#[tokio::test]
async fn jobs_and_hooks_get_no_terminal() {
    let munged = Munged::start();
    let pty = nix::pty::openpty(None, None).expect("a pseudo-terminal");
    let hook_dir = shared_dir();
    let hook_out = hook_dir.path().join("hook.out");
    let hook = script(
        hook_dir.path(),
        "hook",
        &format!(
            "( {TERMINAL_PROBE} ) > {}\necho '{{\"decision\": \"accept\"}}'",
            hook_out.display()
        ),
    );
    let mut args = vec![OsString::from("--allow-root")];
    args.extend(munge_args(&munged));
    args.extend(["--submit-hook".into(), hook.into()]);
    // The server's controlling terminal is the pty, as when an admin starts it in a shell.
    let server = TestServer::launch_with_stdin(
        vec![
            "setsid".into(),
            "--ctty".into(),
            env!("CARGO_BIN_EXE_cq_server").into(),
        ],
        tempfile::tempdir().unwrap(),
        0,
        args,
        munge_args(&munged),
        Stdio::from(pty.slave),
    )
    .await;
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid())).unwrap();
    let tty_nr: i64 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(4)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(
        tty_nr, 0,
        "the server has the terminal (else this test proves nothing)"
    );

    let out = output(
        server
            .client()
            .args(["--follow", "--", "sh", "-c", TERMINAL_PROBE]),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "no-tty\nown-session\n");
    assert_eq!(
        std::fs::read_to_string(&hook_out).unwrap(),
        "no-tty\nown-session\n"
    );
    drop(pty.master);
}

/// Finding 8: a server started with `9</root-only-file` gave every job that descriptor.
#[tokio::test]
async fn only_descriptors_zero_to_two_cross_into_a_job_or_a_hook() {
    let munged = Munged::start();
    let hook_dir = shared_dir();
    let hook_out = hook_dir.path().join("hook.fds");
    // A fixed list (a glob would open the directory it reads): every descriptor the shell
    // holds besides its standard three.
    let numbers: Vec<String> = (3..=64).map(|n| n.to_string()).collect();
    let list_fds = format!(
        "for fd in {}; do [ -e /proc/$$/fd/$fd ] && echo \"$fd $(readlink /proc/$$/fd/$fd)\"; done; echo end",
        numbers.join(" ")
    );
    let list_fds = list_fds.as_str();
    // The listing runs as a program of its own (a shell saves descriptors of its own
    // around a redirection).
    let probe = script(hook_dir.path(), "probe", list_fds);
    let hook = script(
        hook_dir.path(),
        "hook",
        &format!(
            "{} > {}\necho '{{\"decision\": \"accept\"}}'",
            probe.display(),
            hook_out.display()
        ),
    );
    let mut args = vec![OsString::from("--allow-root")];
    args.extend(munge_args(&munged));
    args.extend(["--submit-hook".into(), hook.clone().into()]);
    let private = tempfile::tempdir().unwrap();
    let secret = private.path().join("root-only");
    std::fs::write(&secret, "root's\n").unwrap();
    let server = TestServer::start_program(
        vec![
            "sh".into(),
            "-c".into(),
            format!("exec 9<{}; exec \"$0\" \"$@\"", secret.display()).into(),
            env!("CARGO_BIN_EXE_cq_server").into(),
        ],
        tempfile::tempdir().unwrap(),
        &args,
        munge_args(&munged),
    )
    .await;
    let server_fd = std::fs::read_link(format!("/proc/{}/fd/9", server.pid())).unwrap();
    assert_eq!(server_fd, secret, "the server holds it");
    let out = output(
        server
            .client()
            .args(["--follow", "--", "sh", "-c", list_fds]),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "end\n",
        "descriptors beyond 2 reached the job"
    );
    // A shell running a script holds the script open: the probe's own file is all there is.
    let hook_fds = std::fs::read_to_string(&hook_out).unwrap();
    for line in hook_fds.lines().filter(|l| *l != "end") {
        assert!(
            line.ends_with(&format!(" {}", probe.display())),
            "the hook got {line}"
        );
    }
    assert!(hook_fds.ends_with("end\n"), "{hook_fds}");
}

/// Finding 6: the hook ran as root, with the server's environment, all at once, and failed
/// open under load (52 of 80 `rm` submissions passed a hook that rejects `rm`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_runs_unprivileged_clean_and_few_at_a_time_and_fails_closed() {
    let munged = Munged::start();
    let hook_dir = shared_dir();
    let seen = hook_dir.path().join("seen");
    let hook = script(
        hook_dir.path(),
        "hook",
        &format!(
            "input=$(cat)\necho \"$(id -u) ${{CQ_TEST_SECRET:-clean}}\" >> {}\nsleep 0.2\n\
             case \"$input\" in *'\"rm\"'*) echo '{{\"decision\": \"reject\", \"reason\": \"no rm\"}}';; \
             *) echo '{{\"decision\": \"accept\"}}';; esac",
            seen.display()
        ),
    );
    let mut args = vec![OsString::from("--allow-root")];
    args.extend(munge_args(&munged));
    args.extend([
        "--submit-hook".into(),
        hook.into(),
        "--submit-hook-timeout".into(),
        "1s".into(),
    ]);
    let server = TestServer::start_program(
        vec![
            "env".into(),
            "CQ_TEST_SECRET=leaked".into(),
            env!("CARGO_BIN_EXE_cq_server").into(),
        ],
        tempfile::tempdir().unwrap(),
        &args,
        munge_args(&munged),
    )
    .await;
    let dir = shared_dir();
    let victim = dir.path().join("keep-me");
    std::fs::write(&victim, "").unwrap();
    let floods: Vec<_> = (0..40)
        .map(|_| {
            let mut cmd = server.client();
            cmd.args(["--detach", "--", "rm", "-f"]).arg(&victim);
            tokio::spawn(async move { output(&mut cmd).await })
        })
        .collect();
    let mut refused = 0;
    for flood in floods {
        let out = tokio::time::timeout(LIMIT, flood).await.unwrap().unwrap();
        assert_ne!(
            out.status.code(),
            Some(0),
            "an rm got past the hook: {}",
            stdout(&out)
        );
        refused += 1;
    }
    assert_eq!(refused, 40);
    assert!(victim.exists());
    let nobody = User::from_name("nobody").unwrap().unwrap().uid.as_raw();
    let lines = std::fs::read_to_string(&seen).unwrap();
    assert!(!lines.is_empty());
    for line in lines.lines() {
        assert_eq!(
            line,
            format!("{nobody} clean"),
            "the hook ran as nobody, clean"
        );
    }
    assert!(
        lines.lines().count() < 40,
        "turns are limited: {} hooks ran",
        lines.lines().count()
    );
}

/// Finding 7: a hook's merge made a user a waiter of another user's job, with the owner's
/// rights. Merges across users are refused unless the policy allows them.
#[tokio::test]
async fn a_hook_cannot_merge_one_users_submission_into_anothers_job() {
    let munged = Munged::start();
    let bins = PublicBinaries::new();
    let hook_dir = shared_dir();
    let hook = script(
        hook_dir.path(),
        "hook",
        "id=$(cat | tr ',' '\\n' | grep -m1 '\"id\"' | tr -dc '0-9')\n\
         if [ -n \"$id\" ]; then echo \"{\\\"decision\\\": \\\"merge\\\", \\\"job\\\": $id}\"; else echo '{\"decision\": \"accept\"}'; fi",
    );
    let mut args = munge_args(&munged);
    args.extend(["--submit-hook".into(), hook.into()]);
    let server = TestServer::start_exact(&args, munge_args(&munged)).await;
    let gate_dir = shared_dir();
    let gate = Gate::new(gate_dir.path());
    let u = users();
    let first = output(server.client_as(&bins, &u.alice).args([
        "--detach",
        "--",
        "sh",
        "-c",
        &gate.wait(),
    ]))
    .await;
    assert!(first.status.success(), "{}", stderr(&first));
    let merged = output(server.client_as(&bins, &u.bob).args(["--", "true"])).await;
    assert_eq!(merged.status.code(), Some(255));
    assert!(
        stderr(&merged).contains("does not allow merges across users"),
        "{}",
        stderr(&merged)
    );
    gate.open().await;
}

fn run(program: &str, args: &[&str]) {
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "{program} {args:?}: {status}");
}

/// Finding 4: policy and accounts were checked only at submission. A queued job of a user
/// removed from the policy, of a uid given to another user, or of a locked or expired
/// account ran anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_is_checked_again_when_it_starts() {
    let bins = PublicBinaries::new();
    // The shared accounts first: this test is the only one that changes the account database
    // afterwards, and useradd refuses to run twice at once.
    let u = users();
    let munged = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cq.toml");
    let policy = |users: &[&str]| {
        format!(
            "[policy]\nallow_root = true\nusers = [{}]\n",
            users
                .iter()
                .map(|u| format!("{u:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let (gone, reborn, locked) = ("cq-test-gone", "cq-test-reborn", "cq-test-locked");
    for name in [gone, reborn, locked] {
        let _ = std::process::Command::new("userdel").arg(name).status();
    }
    run(
        "useradd",
        &[
            "--no-create-home",
            "--user-group",
            "--shell",
            "/bin/sh",
            gone,
        ],
    );
    run(
        "useradd",
        &[
            "--no-create-home",
            "--user-group",
            "--shell",
            "/bin/sh",
            locked,
        ],
    );
    run("usermod", &["-p", "$6$salt$0123456789abcdef", locked]);
    let gone_user = User::from_name(gone).unwrap().unwrap();
    let locked_user = User::from_name(locked).unwrap().unwrap();
    std::fs::write(&config, policy(&["root", ALICE, BOB, gone, locked])).unwrap();
    let mut args = munge_args(&munged);
    args.extend(["--config".into(), config.clone().into()]);
    let server = TestServer::start_exact(&args, munge_args(&munged)).await;

    let gate_dir = shared_dir();
    let gate = Gate::new(gate_dir.path());
    let blocker = output(
        server
            .client()
            .args(["--detach", "--", "sh", "-c", &gate.wait()]),
    )
    .await;
    assert!(blocker.status.success(), "{}", stderr(&blocker));
    let submit = |who: &User| {
        let mut cmd = server.client_as(&bins, who);
        cmd.args(["--detach", "--", "id", "-un"]);
        cmd
    };
    let removed_from_policy = stdout(&output(&mut submit(&u.alice)).await)
        .trim()
        .to_owned();
    let uid_reused = stdout(&output(&mut submit(&gone_user)).await)
        .trim()
        .to_owned();
    let was_locked = stdout(&output(&mut submit(&locked_user)).await)
        .trim()
        .to_owned();
    let still_fine = stdout(&output(&mut submit(&u.bob)).await).trim().to_owned();
    for id in [&removed_from_policy, &uid_reused, &was_locked, &still_fine] {
        assert!(id.parse::<u64>().is_ok(), "accepted: {id:?}");
    }

    // Meanwhile: alice leaves the policy, the uid of one user goes to another, one account
    // is locked.
    std::fs::write(&config, policy(&["root", BOB, gone, reborn, locked])).unwrap();
    server.hang_up();
    server.wait_for_log("policy reloaded").await;
    run("userdel", &[gone]);
    run(
        "useradd",
        &[
            "--no-create-home",
            "--user-group",
            "--shell",
            "/bin/sh",
            "--uid",
            &gone_user.uid.to_string(),
            reborn,
        ],
    );
    run("usermod", &["-L", locked]);
    gate.open().await;

    for (id, reason) in [
        (&removed_from_policy, "may not use this server".to_owned()),
        (
            &uid_reused,
            format!("belonged to {gone} when the job was submitted and to {reborn} now"),
        ),
        (&was_locked, "is locked on the server".to_owned()),
    ] {
        let job = format!("job={id} ");
        let line = server
            .wait_for_log_matching(|l| l.contains("refused at start") && l.contains(&job))
            .await;
        assert!(line.contains(&reason), "{line}");
    }
    let fine = output(
        server
            .client_as(&bins, &u.bob)
            .args(["--wait", &still_fine]),
    )
    .await;
    assert!(fine.status.success(), "{}", stderr(&fine));
    for name in [reborn, locked] {
        run("userdel", &[name]);
    }
}

/// Finding 4: system accounts (a certificate named `daemon`) were admitted by default.
#[tokio::test]
async fn service_accounts_are_admitted_only_when_named() {
    let pki = Pki::new();
    let daemon = pki.client("daemon");
    let server =
        TestServer::start_args(&pki.server_args(), pki.client_args(&daemon.0, &daemon.1)).await;
    let out = output(server.client().args(["--", "true"])).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("is a service account"),
        "{}",
        stderr(&out)
    );
}

/// Finding 3: no revocation. A revoked certificate is refused at once after SIGHUP, and so
/// are the jobs queued with it when they come to start.
#[tokio::test]
async fn a_revoked_certificate_and_its_queued_jobs_are_refused() {
    let pki = Pki::new();
    let _ = users();
    let alice = pki.client(ALICE);
    let root = pki.client("root");
    let crl = pki.path("crl.pem");
    let mut args = pki.server_args();
    args.extend(["--tls-crl".into(), crl.clone().into()]);
    // An empty list to start with: revoke root's scratch certificate.
    let scratch = pki.client("scratch");
    cq_transport_tls::revoke_client(&pki.path(""), &scratch.0).unwrap();
    let server = TestServer::start_args(&args, pki.client_args(&root.0, &root.1)).await;
    let as_alice = || {
        let mut cmd = crate::support::bare_client(server.addr);
        cmd.args(pki.client_args(&alice.0, &alice.1));
        cmd
    };
    let gate_dir = shared_dir();
    let gate = Gate::new(gate_dir.path());
    let blocker = output(
        server
            .client()
            .args(["--detach", "--", "sh", "-c", &gate.wait()]),
    )
    .await;
    assert!(blocker.status.success(), "{}", stderr(&blocker));
    let queued = output(as_alice().args(["--detach", "--", "true"])).await;
    assert!(queued.status.success(), "{}", stderr(&queued));
    let id = stdout(&queued).trim().to_owned();

    cq_transport_tls::revoke_client(&pki.path(""), &alice.0).unwrap();
    server.hang_up();
    server.wait_for_log("revocation list reloaded").await;
    let refused = output(as_alice().args(["--", "true"])).await;
    assert_eq!(refused.status.code(), Some(255), "{}", stderr(&refused));
    gate.open().await;
    let line = server.wait_for_log("refused at start").await;
    assert!(
        line.contains(&format!("job={id} ")) && line.contains("revoked"),
        "{line}"
    );
}

/// Finding 5: no per-user limits: one user filled the server's memory (and disk).
#[tokio::test]
async fn per_user_limits_refuse_with_a_reason() {
    let munged = Munged::start();
    let server = TestServer::start_with(
        &munged,
        &[
            "--max-queued-jobs",
            "3",
            "--max-log-bytes",
            "100",
            "--dedup",
            "off",
        ],
    )
    .await;
    let dir = shared_dir();
    let gate = Gate::new(dir.path());
    let blocker = output(
        server
            .client()
            .args(["--detach", "--", "sh", "-c", &gate.wait()]),
    )
    .await;
    assert!(blocker.status.success());
    for i in 0..2 {
        let out = output(
            server
                .client()
                .args(["--detach", "--", "echo", &i.to_string()]),
        )
        .await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let over = output(server.client().args(["--", "echo", "three"])).await;
    assert_eq!(over.status.code(), Some(255));
    assert!(
        stderr(&over).contains("3 jobs queued, running or waited for")
            && stderr(&over).contains("over-quota"),
        "{}",
        stderr(&over)
    );
    gate.open().await;
    let drained = output(server.client().args(["--wait", "3"])).await;
    assert!(drained.status.success(), "{}", stderr(&drained));
    let chatty = output(
        server
            .client()
            .args(["--", "sh", "-c", "yes log | head -c 300"]),
    )
    .await;
    assert!(chatty.status.success(), "{}", stderr(&chatty));
    let refused = output(server.client().args(["--", "true"])).await;
    assert!(
        stderr(&refused).contains("logs of your jobs kept here hold"),
        "{}",
        stderr(&refused)
    );
}

/// Finding 9: `--pid-file` and `--log file:` followed symlinks (root truncating any file);
/// the log was world-readable.
#[tokio::test]
async fn pid_and_log_files_are_never_written_through_a_symlink() {
    let munged = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious");
    std::fs::write(&precious, "keep\n").unwrap();
    for option in ["--pid-file", "--log"] {
        let link = dir.path().join(format!("planted{option}"));
        std::os::unix::fs::symlink(&precious, &link).unwrap();
        let value = if option == "--log" {
            format!("file:{}", link.display())
        } else {
            link.display().to_string()
        };
        let state = tempfile::tempdir().unwrap();
        let out = output(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_server"))
                .args(["-h", "127.0.0.1", "-p", "0", "--state-dir"])
                .arg(state.path())
                .args(munge_args(&munged))
                .args([option, &value]),
        )
        .await;
        assert_eq!(out.status.code(), Some(1), "{option}: {}", stderr(&out));
        assert_eq!(
            std::fs::read_to_string(&precious).unwrap(),
            "keep\n",
            "{option}"
        );
    }
    // A log file of its own is private: made before the start fails (on a state directory
    // that is a file), it stays for the admin to read.
    let log = dir.path().join("cq.log");
    let out = output(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_server"))
            .args(["-h", "127.0.0.1", "-p", "0", "--state-dir"])
            .arg(&precious)
            .args(munge_args(&munged))
            .arg("--log")
            .arg(format!("file:{}", log.display())),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(std::fs::read_to_string(&log).unwrap().contains("policy:"));
    assert_eq!(log.metadata().unwrap().permissions().mode() & 0o777, 0o600);
}

/// Finding 10: SIGHUP during start-up killed the server; its pid file stayed after a stop.
#[tokio::test]
async fn a_hang_up_during_start_up_is_harmless_and_a_stop_removes_the_pid_files() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let munged = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("cq.pid");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_server"))
        .args(["-h", "127.0.0.1", "-p", "0", "--allow-root", "--state-dir"])
        .arg(state.path())
        .args(munge_args(&munged))
        .arg("--pid-file")
        .arg(&pid_file)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut hung_up = false;
    let listening = tokio::time::timeout(LIMIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if !hung_up {
                // Its first words: it is still setting up (state, database, munged).
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
                hung_up = true;
            }
            if line.contains("listening on") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(listening, "the server died of a hang-up during start-up");
    assert!(pid_file.exists());
    let state_pid = state.path().join("cq_server.pid");
    assert!(state_pid.exists());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(LIMIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(!pid_file.exists(), "no stale pid for logrotate to signal");
    assert!(!state_pid.exists());
}

/// Finding 10: `-P install` checked `./install` and ran whatever `install` PATH found
/// (a post script that could not run, discovered only after the job).
#[tokio::test]
async fn the_post_script_that_runs_is_the_one_checked() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = shared_dir();
    let marker = dir.path().join("ran");
    let job_ran = dir.path().join("job-ran");
    script(
        dir.path(),
        "mytool",
        &format!("echo local > {}", marker.display()),
    );
    // A bare name is looked up in PATH, as a shell would: not there, refused before the job.
    let mut bare = server.client();
    bare.current_dir(dir.path())
        .env("PATH", "/usr/bin:/bin")
        .args(["-P", "mytool", "--", "touch"])
        .arg(&job_ran);
    let out = output(&mut bare).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("not found in PATH"),
        "{}",
        stderr(&out)
    );
    assert!(!job_ran.exists(), "the job was not submitted");
    // A path is a path, resolved once: what is checked is what runs.
    let mut local = server.client();
    local
        .current_dir(dir.path())
        .args(["-P", "./mytool", "--", "true"]);
    let out = output(&mut local).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "local\n");
}

/// What `cq_client ARGS` writes to a terminal (its standard output is a pseudo-terminal),
/// with the terminal's own newline translation undone.
async fn printed_to_a_terminal(client: tokio::process::Command) -> Vec<u8> {
    let (status, printed) =
        crate::support::on_a_terminal(client, crate::support::Terminal::Stdout).await;
    assert!(status.success());
    String::from_utf8_lossy(&printed)
        .replace("\r\n", "\n")
        .into_bytes()
}

/// Red team of Security III: a job's output went raw to the terminal of whoever read its
/// log (an admin's included): escape sequences could retitle the window, clear the screen
/// or rewrite lines. On a terminal it is shown escaped; `--raw` passes it as it is.
#[tokio::test]
async fn a_jobs_output_cannot_drive_the_terminal_of_whoever_reads_it() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let hostile = r"printf 'built\n\033]0;owned\007\033[2Jfine\rFAKE\n'";
    let out = output(
        server
            .client()
            .args(["--detach", "--", "sh", "-c", hostile]),
    )
    .await;
    let id = stdout(&out).trim().to_owned();
    let waited = output(server.client().args(["--wait", &id])).await;
    assert!(waited.status.success(), "{}", stderr(&waited));

    let mut log = server.client();
    log.args(["--log", &id]);
    let shown = printed_to_a_terminal(log).await;
    assert_eq!(
        String::from_utf8_lossy(&shown),
        r"built
\x1b]0;owned\x07\x1b[2Jfine\rFAKE
"
    );
    let mut follow = server.client();
    follow.args(["--follow", "--wait", &id]);
    let followed = printed_to_a_terminal(follow).await;
    assert!(
        String::from_utf8_lossy(&followed).contains(r"\x1b]0;owned\x07"),
        "{}",
        String::from_utf8_lossy(&followed)
    );

    let mut raw = server.client();
    raw.args(["--log", &id, "--raw"]);
    let passed = printed_to_a_terminal(raw).await;
    assert!(
        passed.windows(3).any(|w| w == b"\x1b]0"),
        "{}",
        String::from_utf8_lossy(&passed)
    );
}

/// Red team of the vfork change: until its exec, the child keeps root's capabilities in its
/// permitted set (so that its requester cannot trace it or read its memory, which is the
/// server's); the job itself must start with none.
#[tokio::test]
async fn a_requesters_job_starts_with_no_capabilities() {
    let munged = Munged::start();
    let bins = PublicBinaries::new();
    let server = TestServer::start(&munged).await;
    let out = output(server.client_as(&bins, &users().alice).args([
        "--follow",
        "--",
        "sh",
        "-c",
        "grep -E '^Cap(Inh|Prm|Eff|Amb):' /proc/self/status",
    ]))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let caps = stdout(&out);
    assert_eq!(caps.lines().count(), 4, "{caps}");
    for line in caps.lines() {
        assert!(line.ends_with("0000000000000000"), "{caps}");
    }
}
