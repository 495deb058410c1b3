//! What users and admins meet every day (issue "The experience of waiting, operating and
//! failing"): interrupted waits, messages, listings.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::durable::Gate;
use crate::support::{LIMIT, Munged, TestServer, output, stderr};
use crate::users::shared_dir;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Ctrl-C on a waiting client printed nothing: the job went on, its post script never ran,
/// and nobody said how to wait again.
#[tokio::test]
async fn ctrl_c_stops_the_wait_says_the_job_goes_on_and_how_to_wait_again() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = shared_dir();
    let gate = Gate::new(dir.path());
    let mut waiting = server
        .client()
        .args(["-P", "true", "--", "sh", "-c", &gate.wait()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = BufReader::new(waiting.stderr.take().unwrap()).lines();
    let queued = tokio::time::timeout(LIMIT, said.next_line()).await.unwrap();
    assert!(queued.unwrap().unwrap().contains("job 1 queued"));
    let pid = nix::unistd::Pid::from_raw(waiting.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(LIMIT, waiting.wait())
        .await
        .expect("the client stops at once")
        .unwrap();
    let mut rest = String::new();
    while let Ok(Some(line)) = said.next_line().await {
        rest.push_str(&line);
    }
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(
        rest.contains("job 1 goes on")
            && rest.contains("cq_client --wait 1 -P /")
            && rest.ends_with("/true"),
        "{rest}"
    );
    let status = output(server.client().args(["--status", "1"])).await;
    assert!(stdout(&status).contains("running"), "{}", stdout(&status));
    gate.open().await;
    let again = output(server.client().args(["--wait", "1"])).await;
    assert!(again.status.success(), "{}", stderr(&again));
}

/// Root's jobs got no HOME, USER or LOGNAME (other users' did).
#[tokio::test]
async fn roots_jobs_get_home_user_and_logname_like_everyone_s() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let out = output(server.client().args([
        "--follow",
        "--",
        "sh",
        "-c",
        "echo \"$HOME $USER $LOGNAME\"",
    ]))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "/root root root\n");
}

async fn run(program: &str, args: &[&str]) -> std::process::Output {
    output(
        tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null()),
    )
    .await
}

/// CLI traps: `tls --help` failed, a command without `--` got no hint, `--follow --list` was
/// accepted, and the client's help named the server's certificate as its default.
#[tokio::test]
async fn help_works_everywhere_and_misuse_gets_a_hint() {
    let server = env!("CARGO_BIN_EXE_cq_server");
    let client = env!("CARGO_BIN_EXE_cq_client");
    for args in [&["tls", "--help"][..], &["tls", "init", "--help"]] {
        let out = run(server, args).await;
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(
            stdout(&out).contains("Usage: cq_server tls"),
            "{}",
            stdout(&out)
        );
    }
    let out = run(client, &["emerge", "foo"]).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out)
            .contains("hint: put the command after --, as in: cq_client [OPTIONS] -- emerge"),
        "{}",
        stderr(&out)
    );
    let out = run(client, &["--follow", "--list"]).await;
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    let help = stdout(&run(client, &["--help"]).await);
    assert!(
        help.contains("/etc/cq/tls/client.pem") && !help.contains("server.pem"),
        "{help}"
    );
}

/// `--log ID --follow` printed what there was and returned; it follows now, to the job's end.
#[tokio::test]
async fn log_with_follow_prints_until_the_job_ends() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = shared_dir();
    let gate = Gate::new(dir.path());
    let script = format!("echo before; {}; echo after", gate.wait());
    let out = output(
        server
            .client()
            .args(["--detach", "--", "sh", "-c", &script]),
    )
    .await;
    let id = stdout(&out).trim().to_owned();
    server.wait_for_log("started").await;
    let mut follow = server.client();
    follow.args(["--log", &id, "--follow"]);
    let following = tokio::spawn(async move { output(&mut follow).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!following.is_finished(), "it returned before the job ended");
    gate.open().await;
    let out = tokio::time::timeout(LIMIT, following)
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "before\nafter\n");
}

/// A failed job showed nothing of why: its last lines are shown (on a terminal, or with
/// `--tail N`), with the command that shows all of it.
#[tokio::test]
async fn a_failed_job_shows_its_last_lines_and_where_the_rest_is() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let script = "for i in $(seq 1 15); do echo line$i; done; exit 3";
    let out = output(
        server
            .client()
            .args(["--tail", "5", "--", "sh", "-c", script]),
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    let said = stderr(&out);
    assert!(
        said.contains("  line11\n") && said.contains("  line15\n"),
        "{said}"
    );
    assert!(!said.contains("line10"), "{said}");
    assert!(said.contains("cq_client --log 1"), "{said}");
    // Not on a terminal and not asked for: nothing.
    let out = output(server.client().args(["--", "sh", "-c", script])).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(!stderr(&out).contains("line"), "{}", stderr(&out));
}

/// When the server's munged was down, the client's message blamed this host's munged (and
/// said its reason twice). Now the server says it is its own, and the client says it is the
/// server's word.
#[tokio::test]
async fn a_servers_munged_down_is_named_as_the_servers() {
    let key = [7u8; 1024];
    let servers_munged = Munged::with_key(&key);
    let clients_munged = Munged::with_key(&key);
    let server = TestServer::start(&servers_munged).await;
    drop(servers_munged);
    let out = output(
        crate::support::client_for(server.addr, &clients_munged.socket()).args([
            "--reconnect-timeout",
            "1",
            "--",
            "true",
        ]),
    )
    .await;
    assert_eq!(out.status.code(), Some(255));
    let said = stderr(&out);
    assert!(
        said.contains("the server says (unverified): this server cannot check credentials now")
            && said.contains("its admin must start its munged"),
        "{said}"
    );
}

/// Connection errors that misled: an unknown host blamed a server that was not running, a
/// silent peer took 30 s and retried for an hour.
#[tokio::test]
async fn connection_errors_say_what_to_check() {
    // The lookup runs on a host of its own (a network namespace), so that no query leaves.
    let hosts = crate::netns::HostPair::new();
    let out = output(
        tokio::process::Command::new("ip")
            .args(["netns", "exec", &hosts.a, env!("CARGO_BIN_EXE_cq_client")])
            .args([
                "-h",
                "no-such-host.invalid",
                "--reconnect-timeout",
                "60",
                "--",
                "true",
            ])
            .stdin(Stdio::null()),
    )
    .await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("cannot find the address of no-such-host.invalid")
            && stderr(&out).contains("check the host name"),
        "{}",
        stderr(&out)
    );

    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let holding = tokio::spawn(async move {
        let (stream, _) = silent.accept().await.unwrap();
        tokio::time::sleep(LIMIT).await;
        drop(stream);
    });
    let started = std::time::Instant::now();
    let out =
        output(crate::support::bare_client(addr).args(["--reconnect-timeout", "60", "--", "true"]))
            .await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("says nothing: check host and port"),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "no hour of retries"
    );
    holding.abort();
}

/// Past `--reconnect-timeout`, the client gave up with no word of the job: it says how to
/// wait for it again.
#[tokio::test]
async fn a_wait_given_up_says_how_to_wait_again() {
    let munged = Munged::start();
    let mut server = TestServer::start(&munged).await;
    let dir = shared_dir();
    let gate = Gate::new(dir.path());
    let mut waiting = server
        .client()
        .args(["--reconnect-timeout", "1", "--", "sh", "-c", &gate.wait()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = BufReader::new(waiting.stderr.take().unwrap()).lines();
    let queued = tokio::time::timeout(LIMIT, said.next_line()).await.unwrap();
    assert!(queued.unwrap().unwrap().contains("job 1 queued"));
    server.kill9().await;
    let status = tokio::time::timeout(LIMIT, waiting.wait())
        .await
        .unwrap()
        .unwrap();
    let mut rest = String::new();
    while let Ok(Some(line)) = said.next_line().await {
        rest.push_str(&line);
        rest.push('\n');
    }
    assert_eq!(status.code(), Some(255), "{rest}");
    assert!(
        rest.contains("wait for it again with cq_client --wait 1"),
        "{rest}"
    );
}

/// A server that could authenticate nobody created its state directory and database before
/// it failed on munged.
#[tokio::test]
async fn a_server_without_munged_fails_before_creating_anything() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = output(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_server"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                "0",
                "--allow-root",
                "--munge-socket",
            ])
            .arg(dir.path().join("no-munged.socket"))
            .arg("--state-dir")
            .arg(&state)
            .stdin(Stdio::null()),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("munged"), "{}", stderr(&out));
    assert!(!state.exists(), "the state directory was created");
}

/// Listings: two USE variants of one package looked identical (no environment shown), and
/// there was no way to see only some jobs.
#[tokio::test]
async fn listings_show_variables_and_filter_by_user_and_state() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = shared_dir();
    let gate = Gate::new(dir.path());
    let blocker = output(
        server
            .client()
            .args(["--detach", "--", "sh", "-c", &gate.wait()]),
    )
    .await;
    assert!(blocker.status.success(), "{}", stderr(&blocker));
    for flags in ["-X", "X gtk"] {
        let out = output(server.client().args([
            "--detach",
            "-E",
            &format!("USE={flags}"),
            "--",
            "emerge",
            "--buildpkgonly",
            "app-misc/foo",
        ]))
        .await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let list = stdout(&output(server.client().arg("--list")).await);
    assert!(
        list.contains("USE=-X emerge --buildpkgonly app-misc/foo"),
        "{list}"
    );
    assert!(
        list.contains("'USE=X gtk' emerge --buildpkgonly app-misc/foo"),
        "{list}"
    );

    let queued = stdout(&output(server.client().args(["--list", "--state", "queued"])).await);
    assert_eq!(queued.lines().count(), 3, "a header and two jobs: {queued}");
    let running = stdout(&output(server.client().args(["--list", "--state", "running"])).await);
    assert_eq!(running.lines().count(), 2, "{running}");
    let nobodys = stdout(&output(server.client().args(["--list", "--user", "nobody"])).await);
    assert_eq!(nobodys.lines().count(), 1, "only the header: {nobodys}");
    let mine = stdout(&output(server.client().args(["--list", "--mine"])).await);
    assert_eq!(mine.lines().count(), 4, "{mine}");

    let json = stdout(
        &output(
            server
                .client()
                .args(["--list", "--json", "--state", "queued"]),
        )
        .await,
    );
    let jobs: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(jobs[1]["env"]["USE"], "X gtk", "{json}");
    gate.open().await;
}

/// An error's cause printed twice (`...: No such file or directory: No such file or
/// directory`), with a hint about certificates for a missing user map.
#[tokio::test]
async fn an_error_says_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let made = run(
        env!("CARGO_BIN_EXE_cq_server"),
        &["tls", "init", tls.to_str().unwrap(), "--host", "127.0.0.1"],
    )
    .await;
    assert!(made.status.success(), "{}", stderr(&made));
    let file = |name: &str| tls.join(name).to_str().unwrap().to_owned();
    let out = run(
        env!("CARGO_BIN_EXE_cq_server"),
        &[
            "-h",
            "127.0.0.1",
            "-p",
            "0",
            "--auth",
            "tls",
            "--tls-ca",
            &file("ca.pem"),
            "--tls-cert",
            &file("server.pem"),
            "--tls-key",
            &file("server.key"),
            "--tls-user-map",
            "/nonexistent",
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let said = stderr(&out);
    let last = said.lines().last().unwrap_or_default();
    assert!(
        last.contains("cannot read the TLS user map /nonexistent"),
        "{said}"
    );
    assert_eq!(
        last.matches("No such file or directory").count(),
        1,
        "{last}"
    );
}

/// Issue "The Portage workflow", item 1: a post script got two numbers, not what ran. It
/// is told the command, its arguments, the `-E` variables and whether it was merged, also
/// when it waits for a job it did not submit itself (`--wait`).
#[tokio::test]
async fn a_post_script_is_told_what_ran() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = shared_dir();
    let seen = dir.path().join("seen");
    let post = crate::support::script(
        dir.path(),
        "post",
        &format!("env | grep '^CQ_' | sort >> {}", seen.display()),
    );
    let post = post.to_str().unwrap();
    let out =
        output(
            server
                .client()
                .args(["-P", post, "-E", "USE=-X gtk", "--", "printf", "%s", "a b"]),
        )
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let vars = std::fs::read_to_string(&seen).unwrap();
    for expected in [
        "CQ_COMMAND=printf %s 'a b'",
        "CQ_ARGC=3",
        "CQ_ARGV_0=printf",
        "CQ_ARGV_2=a b",
        "CQ_JOB_ENV_USE=-X gtk",
        "CQ_MERGED=0",
        "CQ_OUTCOME=exited",
    ] {
        assert!(
            vars.lines().any(|l| l == expected),
            "{expected} in:\n{vars}"
        );
    }
    std::fs::remove_file(&seen).unwrap();
    let again = output(server.client().args(["-P", post, "--wait", "1"])).await;
    assert!(again.status.success(), "{}", stderr(&again));
    let vars = std::fs::read_to_string(&seen).unwrap();
    assert!(vars.lines().any(|l| l == "CQ_JOB_ENV_USE=-X gtk"), "{vars}");
    assert!(vars.lines().any(|l| l == "CQ_ARGV_2=a b"), "{vars}");
}

/// `[client]` defaults for what every job gets: a post script and variables passed through
/// when set; what is typed wins, and a default that a typed option rules out (a post script
/// with --detach) is left out instead of failing.
#[tokio::test]
async fn client_defaults_give_every_job_a_post_script_and_variables() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = shared_dir();
    let seen = dir.path().join("seen");
    let post = crate::support::script(
        dir.path(),
        "post",
        &format!("env | grep '^CQ_JOB_ENV_' | sort > {}", seen.display()),
    );
    let config = dir.path().join("client.toml");
    std::fs::write(
        &config,
        format!(
            "[client]\npost_script = {:?}\npass_env = [\"USE\", \"CQ_TEST_UNSET\"]\n",
            post.display().to_string()
        ),
    )
    .unwrap();
    let with_config = || {
        let mut cmd = server.client();
        cmd.arg("--config")
            .arg(&config)
            .env("USE", "X gtk")
            .env_remove("CQ_TEST_UNSET");
        cmd
    };
    let out = output(with_config().args(["--", "true"])).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        "CQ_JOB_ENV_USE=X gtk\n"
    );
    let out = output(with_config().args(["-E", "USE=-X", "--", "true"])).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        "CQ_JOB_ENV_USE=-X\n"
    );
    std::fs::remove_file(&seen).unwrap();
    let detached = output(with_config().args(["--detach", "--", "true"])).await;
    assert!(detached.status.success(), "{}", stderr(&detached));
    let id = stdout(&detached).trim().to_owned();
    let status = output(server.client().args(["--status", &id, "--json"])).await;
    let job: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(job["env"]["USE"], "X gtk");
    assert!(!seen.exists(), "no post script runs for a detached job");
}

/// What `client` writes to standard error when that is a terminal, and its exit status.
async fn stderr_on_a_terminal(
    client: tokio::process::Command,
) -> (std::process::ExitStatus, String) {
    let (status, printed) =
        crate::support::on_a_terminal(client, crate::support::Terminal::Stderr).await;
    (status, String::from_utf8_lossy(&printed).into_owned())
}

/// Waiting on a terminal shows one live line: the jobs ahead, then the running time; it is
/// cleared when the job ends. Not on a pipe, not with -q.
#[tokio::test]
async fn waiting_on_a_terminal_shows_a_live_line() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = shared_dir();
    let gate = Gate::new(dir.path());
    let blocker = output(
        server
            .client()
            .args(["--detach", "--", "sh", "-c", &gate.wait()]),
    )
    .await;
    assert!(blocker.status.success(), "{}", stderr(&blocker));
    let mut waiting = server.client();
    waiting.args(["--", "sh", "-c", "echo compiling foo.c; sleep 1.5"]);
    let shown = tokio::spawn(stderr_on_a_terminal(waiting));
    server.wait_for_log("job=2").await;
    // The line is drawn by indicatif at its own pace (at most 20 times a second, and on its
    // one-second tick): nothing to wait for but time. Bounded, and generous.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    gate.open().await;
    let (status, shown) = shown.await.unwrap();
    assert!(status.success(), "{shown}");
    assert!(shown.contains("job 2 waits: 1 job ahead"), "{shown:?}");
    assert!(shown.contains("job 2 runs"), "{shown:?}");
    assert!(shown.contains("job 2 runs: compiling foo.c"), "{shown:?}");
    // Cleared at the end: the last thing written is an erase of the line.
    assert!(shown.ends_with("\r\u{1b}[2K"), "the line stays: {shown:?}");

    let piped = output(server.client().args(["--", "true"])).await;
    assert!(
        !stderr(&piped).contains("waits") && !stderr(&piped).contains(" runs"),
        "{}",
        stderr(&piped)
    );
    let mut quiet = server.client();
    quiet.args(["-q", "--", "true"]);
    let (_, shown) = stderr_on_a_terminal(quiet).await;
    assert!(!shown.contains("waits"), "{shown:?}");
}

/// `cq_client` runs once per job. Loading `libgcc_s.so.1` (for nothing but the unwinder) ran
/// its CPU-probing constructor in every client, a tenth of the client's start-up in a VM;
/// the build links the unwinder in instead (cq-bin's build.rs).
#[test]
fn cq_client_starts_without_libgcc_s() {
    let client = env!("CARGO_BIN_EXE_cq_client");
    if option_env!("CQ_CLIENT_STATIC_UNWINDER").is_none() {
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            panic!("build.rs found no libgcc_eh.a on this GNU/Linux build host");
        }
        return;
    }
    let out = std::process::Command::new("ldd")
        .arg(client)
        .output()
        .unwrap();
    let loads = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ldd {client}: {}", stderr(&out));
    assert!(loads.contains("libc.so"), "{loads}");
    assert!(
        !loads.contains("libgcc_s"),
        "cq_client loads libgcc_s: {loads}"
    );
}
