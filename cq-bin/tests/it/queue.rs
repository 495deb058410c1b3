//! Seeing and steering the queue: duplicates, list, status, cancel, time limits.

use crate::durable::Gate;
use crate::support::{LIMIT, Munged, TestServer, output, script, stderr};
use crate::tls::Pki;
use crate::users::{ALICE, BOB, shared_dir, users};

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_identical_submissions_run_once_and_all_ten_are_notified() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::new(dir.path());
    let record = dir.path().join("record");
    let notified = dir.path().join("notified");
    let post = script(
        dir.path(),
        "post",
        &format!("echo \"$CQ_JOB_ID $CQ_OUTCOME\" >> {}", notified.display()),
    );
    // Hold the queue so that the builds pile up behind the gate.
    let blocker = output(
        server
            .client()
            .args(["--detach", "--", "sh", "-c", &gate.wait()]),
    )
    .await;
    assert!(blocker.status.success());
    server.wait_for_log("started job=1").await;

    let build = format!("echo built >> {}", record.display());
    let mut clients = Vec::new();
    for n in 0..10 {
        let mut cmd = server.client();
        cmd.args(["-E", "USE=X", "-P"])
            .arg(&post)
            .args(["--", "sh", "-c", &build]);
        clients.push(tokio::spawn(async move { output(&mut cmd).await }));
        if n == 0 {
            server.wait_for_log("accepted job=2").await;
        }
    }
    let mut other_env = server.client();
    other_env.args(["-E", "USE=-X", "--", "sh", "-c", &build]);
    let other = tokio::spawn(async move { output(&mut other_env).await });
    // Nine merges are logged once each is on disk; then the gate opens.
    server
        .wait_for_log_count("merged into an equal job", 9)
        .await;
    let listed = json(&output(server.client().args(["--list", "--json"])).await);
    let job2 = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == 2)
        .expect("job 2 is listed")
        .clone();
    assert_eq!(
        (job2["state"].as_str(), job2["waiters"].as_u64()),
        (Some("queued"), Some(9))
    );
    gate.open().await;

    for client in clients {
        let out = tokio::time::timeout(LIMIT, client).await.unwrap().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert!(
        tokio::time::timeout(LIMIT, other)
            .await
            .unwrap()
            .unwrap()
            .status
            .success()
    );
    let lines = std::fs::read_to_string(&notified).unwrap();
    assert_eq!(
        lines.lines().filter(|l| *l == "2 exited").count(),
        10,
        "all ten post scripts ran: {lines}"
    );
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        "built\nbuilt\n",
        "once for USE=X, once for USE=-X"
    );
}

#[tokio::test]
async fn cancel_a_queued_and_a_running_job_with_its_whole_process_tree() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("tree");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // The job and its background grandchild hold the FIFO open: EOF means both are dead.
    let tree = format!(
        "exec 3>{}; sleep 300 & echo ready >&3; wait",
        fifo.display()
    );
    let mut running = server.client();
    running.args(["--", "sh", "-c", &tree]);
    let running = tokio::spawn(async move { output(&mut running).await });
    let reader = tokio::task::spawn_blocking({
        let fifo = fifo.clone();
        move || {
            use std::io::Read;
            let mut all = String::new();
            std::fs::File::open(fifo)
                .unwrap()
                .read_to_string(&mut all)
                .unwrap();
            all
        }
    });
    server.wait_for_log("started job=1").await;
    let mut queued = server.client();
    queued.args(["--", "sh", "-c", "echo never"]);
    let queued = tokio::spawn(async move { output(&mut queued).await });
    server.wait_for_log("accepted job=2").await;

    let cancelled = output(server.client().args(["--cancel", "2"])).await;
    assert!(cancelled.status.success(), "{}", stderr(&cancelled));
    assert!(
        stderr(&cancelled).contains("job 2 was cancelled"),
        "{}",
        stderr(&cancelled)
    );
    let out = tokio::time::timeout(LIMIT, queued).await.unwrap().unwrap();
    assert_eq!(
        out.status.code(),
        Some(125),
        "the waiter is told: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("job 2 cancelled"), "{}", stderr(&out));
    let status = json(&output(server.client().args(["--status", "2", "--json"])).await);
    assert_eq!(
        (status["state"].as_str(), status["outcome"].as_str()),
        (Some("finished"), Some("cancelled"))
    );

    let stopping = output(server.client().args(["--cancel", "1"])).await;
    assert!(
        stderr(&stopping).contains("is being stopped"),
        "{}",
        stderr(&stopping)
    );
    let out = tokio::time::timeout(LIMIT, running).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert_eq!(
        tokio::time::timeout(LIMIT, reader)
            .await
            .expect("the grandchild died too")
            .unwrap(),
        "ready\n"
    );

    let again = output(server.client().args(["--cancel", "1"])).await;
    assert_eq!(again.status.code(), Some(255));
    assert!(
        stderr(&again).contains("already finished"),
        "{}",
        stderr(&again)
    );
    let unknown = output(server.client().args(["--status", "77"])).await;
    assert!(
        stderr(&unknown).contains("no job 77"),
        "{}",
        stderr(&unknown)
    );
}

#[tokio::test]
async fn time_limits_kill_the_job_and_the_server_caps_them() {
    let munged = Munged::start();
    let server = TestServer::start_with(&munged, &["--max-timeout", "300ms"]).await;
    let dir = tempfile::tempdir().unwrap();
    let post_out = dir.path().join("post.out");
    let post = script(
        dir.path(),
        "post",
        &format!("echo \"$1 $2 $CQ_OUTCOME\" > {}", post_out.display()),
    );

    // The client asks for an hour; the server allows 300 ms.
    let out = output(
        server
            .client()
            .args(["--timeout", "1h", "-P"])
            .arg(&post)
            .args(["--", "sleep", "300"]),
    )
    .await;
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&post_out).unwrap(),
        "3 124 timed-out\n"
    );
    let bad = output(server.client().args(["--timeout", "soon", "--", "true"])).await;
    assert_eq!(bad.status.code(), Some(255));
}

/// The rule of SECURITY.md: a job's owner (and the admins the policy names) may see it in
/// full, read its log and cancel it; everybody else sees its owner, state and program name.
/// Root is no admin by uid alone: with MUNGE, root on any client host can claim uid 0.
#[tokio::test]
async fn only_the_owner_and_named_admins_may_read_or_cancel_a_job() {
    let pki = Pki::new();
    let alice = pki.client(ALICE);
    let bob = pki.client(BOB);
    let root = pki.client("root");
    let _ = users();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cq.toml");
    std::fs::write(&config, "[policy]\nallow_root = true\n").unwrap();
    let mut args = pki.server_args();
    args.extend(["--config".into(), config.clone().into()]);
    let server = TestServer::start_exact(&args, pki.client_args(&alice.0, &alice.1)).await;
    let gate = Gate::new(dir.path());
    let as_who = |files: &(std::path::PathBuf, std::path::PathBuf)| {
        let mut cmd = crate::support::bare_client(server.addr);
        cmd.args(pki.client_args(&files.0, &files.1));
        cmd
    };
    let secret = "SECRET_TOKEN=hunter2";
    let submitted = output(as_who(&alice).args([
        "--detach",
        "-E",
        secret,
        "--",
        "sh",
        "-c",
        &format!("echo $SECRET_TOKEN; {}", gate.wait()),
    ]))
    .await;
    assert!(submitted.status.success(), "{}", stderr(&submitted));

    for (who, files) in [("bob", &bob), ("root", &root)] {
        for query in [["--log", "1"], ["--cancel", "1"], ["--wait", "1"]] {
            let refused = output(as_who(files).args(query)).await;
            assert_eq!(refused.status.code(), Some(255), "{who} {query:?}");
            assert!(
                stderr(&refused).contains("only its owner and the server's admins may"),
                "{who} {query:?}: {}",
                stderr(&refused)
            );
        }
        let listed = output(as_who(files).args(["--list", "--json"])).await;
        let text = String::from_utf8_lossy(&listed.stdout);
        assert!(listed.status.success(), "{}", stderr(&listed));
        assert!(text.contains("\"sh\""), "{who} sees the program: {text}");
        assert!(
            !text.contains("echo") && !text.contains("hunter2"),
            "{who} sees no arguments or environment: {text}"
        );
    }
    let own = output(server.client().args(["--status", "1", "--json"])).await;
    assert!(String::from_utf8_lossy(&own.stdout).contains("SECRET_TOKEN"));

    // Named as an admin (SIGHUP reloads the policy), root may cancel anybody's job.
    std::fs::write(
        &config,
        "[policy]\nallow_root = true\nadmins = [\"root\"]\n",
    )
    .unwrap();
    server.hang_up();
    server.wait_for_log("policy reloaded").await;
    let by_admin = output(as_who(&root).args(["--cancel", "1"])).await;
    assert!(by_admin.status.success(), "{}", stderr(&by_admin));
    let waited = output(server.client().args(["--wait", "1"])).await;
    assert_eq!(waited.status.code(), Some(125), "{}", stderr(&waited));
}

#[tokio::test]
async fn follow_streams_the_output_live_and_log_shows_it_later() {
    use tokio::io::AsyncReadExt;
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::new(dir.path());
    let job = format!("echo one; {}; echo two; exit 3", gate.wait());
    let mut client = server
        .client()
        .args(["--follow", "--", "sh", "-c", &job])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = client.stdout.take().unwrap();
    let mut seen = Vec::new();
    // "one" arrives while the job still runs: it is blocked at the gate.
    tokio::time::timeout(LIMIT, async {
        let mut buf = [0; 64];
        while !seen.ends_with(b"one\n") {
            let n = stdout.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "the output ended early: {:?}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("live output");
    gate.open().await;
    tokio::time::timeout(LIMIT, stdout.read_to_end(&mut seen))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&seen), "one\ntwo\n");
    let status = tokio::time::timeout(LIMIT, client.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(3));

    let log = output(server.client().args(["--log", "1"])).await;
    assert!(log.status.success(), "{}", stderr(&log));
    assert_eq!(String::from_utf8_lossy(&log.stdout), "one\ntwo\n");
}

#[tokio::test]
async fn a_log_past_its_limit_is_cut_with_a_marker() {
    let munged = Munged::start();
    let server = TestServer::start_with(&munged, &["--log-limit", "100"]).await;
    let out = output(server.client().args([
        "-q",
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 1000 ]; do echo line $i; i=$((i+1)); done",
    ]))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let log = output(server.client().args(["--log", "1"])).await;
    let text = String::from_utf8_lossy(&log.stdout).into_owned();
    assert!(text.starts_with("line 0\nline 1\n"), "{text}");
    assert!(
        text.ends_with("[cq: log truncated: it reached its limit of 100 bytes]\n"),
        "{text}"
    );
    let on_disk = std::fs::metadata(server.state_dir.path().join("logs/1.log"))
        .unwrap()
        .len();
    assert!(on_disk < 200, "the file stays small: {on_disk} bytes");
}

/// Starts a server whose submit hook is the shell script `body` (in `dir`, which the hook's
/// user, nobody, must be able to reach: see [`shared_dir`]), with `extra` options.
async fn server_with_hook_and(
    munged: &Munged,
    dir: &std::path::Path,
    body: &str,
    extra: &[&str],
) -> TestServer {
    let hook = script(dir, "hook", body);
    let hook = hook.to_str().unwrap().to_owned();
    let mut args = vec!["--submit-hook", &hook, "--submit-hook-timeout", "500ms"];
    args.extend_from_slice(extra);
    TestServer::start_with(munged, &args).await
}

async fn server_with_hook(munged: &Munged, dir: &std::path::Path, body: &str) -> TestServer {
    server_with_hook_and(munged, dir, body, &[]).await
}

#[tokio::test]
async fn an_external_hook_rejects_with_its_reason_and_sees_the_job() {
    let munged = Munged::start();
    let dir = shared_dir();
    let seen = dir.path().join("seen.json");
    let body = format!(
        "cat > {}\nif grep -q forbidden {}; then echo '{{\"decision\": \"reject\", \"reason\": \"no forbidden builds\"}}'; else echo '{{\"decision\": \"accept\"}}'; fi",
        seen.display(),
        seen.display()
    );
    let server = server_with_hook(&munged, dir.path(), &body).await;
    let refused = output(
        server
            .client()
            .args(["-E", "USE=X", "--", "echo", "forbidden"]),
    )
    .await;
    assert_eq!(refused.status.code(), Some(255));
    assert!(
        stderr(&refused).contains("no forbidden builds") && stderr(&refused).contains("rejected"),
        "{}",
        stderr(&refused)
    );
    let input: serde_json::Value = serde_json::from_slice(&std::fs::read(&seen).unwrap()).unwrap();
    assert_eq!(
        input["job"]["command"],
        serde_json::json!(["echo", "forbidden"])
    );
    assert_eq!(input["job"]["env"]["USE"], "X");
    assert!(input["queue"].is_array());
    server.assert_serves().await;
}

#[tokio::test]
async fn an_external_hook_can_merge() {
    let munged = Munged::start();
    let dir = shared_dir();
    let gate = Gate::new(dir.path());
    // Merge everything into the first job in the queue, if there is one.
    let body = "id=$(cat | tr ',' '\\n' | grep -m1 '\"id\"' | tr -dc '0-9')\n\
                if [ -n \"$id\" ]; then echo \"{\\\"decision\\\": \\\"merge\\\", \\\"job\\\": $id}\"; else echo '{\"decision\": \"accept\"}'; fi";
    let server = server_with_hook(&munged, dir.path(), body).await;
    let first = output(
        server
            .client()
            .args(["--detach", "--", "sh", "-c", &gate.wait()]),
    )
    .await;
    assert!(first.status.success(), "{}", stderr(&first));
    let mut other = server.client();
    other.args(["--", "echo", "something else"]);
    let other = tokio::spawn(async move { output(&mut other).await });
    server.wait_for_log("merged into an equal job").await;
    gate.open().await;
    let out = tokio::time::timeout(LIMIT, other).await.unwrap().unwrap();
    assert!(
        stderr(&out).contains("merged into job 1"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn a_crashing_hanging_or_babbling_hook_fails_closed_and_is_logged() {
    let munged = Munged::start();
    for (body, reason) in [
        ("exit 3", "exit status: 3"),
        ("sleep 30", "no answer within"),
        ("echo hello", "unreadable answer"),
    ] {
        let dir = shared_dir();
        let server = server_with_hook(&munged, dir.path(), body).await;
        let out = output(server.client().args(["--", "true"])).await;
        assert_eq!(
            out.status.code(),
            Some(255),
            "a hook is a policy: it fails closed"
        );
        assert!(
            stderr(&out).contains("the submit hook failed"),
            "{}",
            stderr(&out)
        );
        let logged = server.wait_for_log("submit hook failed").await;
        assert!(logged.contains(reason), "{logged}");
    }
    let dir = shared_dir();
    let open = server_with_hook_and(
        &munged,
        dir.path(),
        "exit 3",
        &["--submit-hook-fallback", "accept"],
    )
    .await;
    let out = output(open.client().args(["--", "true"])).await;
    assert!(
        out.status.success(),
        "an admin may choose to fail open: {}",
        stderr(&out)
    );
}

/// An admin pauses the queue: the running job finishes, nothing new starts (submissions are
/// still taken), even across a restart with --paused, until an admin resumes it; and moves a
/// queued job to the front. Others may do neither.
#[tokio::test]
async fn admins_pause_resume_and_reorder_the_queue() {
    use crate::users::PublicBinaries;
    let munged = Munged::start();
    let dir = shared_dir();
    let config = dir.path().join("cq.toml");
    std::fs::write(
        &config,
        "[policy]\nallow_root = true\nadmins = [\"root\"]\n",
    )
    .unwrap();
    let mut server = TestServer::start_with(&munged, &["--config", config.to_str().unwrap()]).await;
    let bins = PublicBinaries::new();
    let gate = Gate::new(dir.path());

    let alice = output(server.client_as(&bins, &users().alice).arg("--pause")).await;
    assert_eq!(alice.status.code(), Some(255));
    assert!(
        stderr(&alice).contains("only the server's admins may pause"),
        "{}",
        stderr(&alice)
    );

    let running = output(
        server
            .client()
            .args(["--detach", "--", "sh", "-c", &gate.wait()]),
    )
    .await;
    assert!(running.status.success(), "{}", stderr(&running));
    server.wait_for_log("started").await;
    let paused = output(server.client().args(["--pause", "--json"])).await;
    assert!(paused.status.success(), "{}", stderr(&paused));
    assert_eq!(json(&paused)["paused"], true);
    assert_eq!(json(&paused)["running"], 1);
    let marker = dir.path().join("ran");
    let queued = output(
        server
            .client()
            .args(["--detach", "--", "touch"])
            .arg(&marker),
    )
    .await;
    assert!(queued.status.success(), "{}", stderr(&queued));
    let id = String::from_utf8_lossy(&queued.stdout).trim().to_owned();
    // The running job finishes; the queued one does not start.
    gate.open().await;
    let first = output(server.client().args(["--wait", "1"])).await;
    assert!(first.status.success(), "{}", stderr(&first));
    // The engine decides what starts before it serves the next request: this answer comes
    // after the decision that followed job 1's end.
    let status = output(server.client().args(["--status", &id, "--json"])).await;
    assert_eq!(json(&status)["state"], "queued");
    assert!(!marker.exists());
    // Anybody's listing says why queued jobs do not start.
    let listed = output(server.client_as(&bins, &users().alice).arg("--list")).await;
    assert!(
        stderr(&listed).contains("is paused: nothing new starts"),
        "{}",
        stderr(&listed)
    );

    // Still paused after a restart with --paused; it runs once resumed.
    server.terminate().await;
    let server = server
        .restart_with(vec![
            "--munge-socket".into(),
            munged.socket().into(),
            "--config".into(),
            config.clone().into(),
            "--paused".into(),
        ])
        .await;
    // As above: by the time it answers, the engine has decided about starting.
    let status = output(server.client().args(["--status", &id, "--json"])).await;
    assert_eq!(
        json(&status)["state"],
        "queued",
        "a job started in a queue that starts paused"
    );
    assert!(!marker.exists());
    // An admin moves a job to the front; others may not.
    let later = output(
        server
            .client()
            .args(["--detach", "--", "touch"])
            .arg(dir.path().join("later")),
    )
    .await;
    let later_id = String::from_utf8_lossy(&later.stdout).trim().to_owned();
    let bins = PublicBinaries::new();
    let refused = output(
        server
            .client_as(&bins, &users().alice)
            .args(["--first", &later_id]),
    )
    .await;
    assert_eq!(refused.status.code(), Some(255), "{}", stderr(&refused));
    let first = output(server.client().args(["--first", &later_id])).await;
    assert!(first.status.success(), "{}", stderr(&first));
    let list = output(server.client().args(["--list", "--json"])).await;
    let order: Vec<String> = json(&list)
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["state"] == "queued")
        .map(|j| j["id"].to_string())
        .collect();
    assert_eq!(
        order,
        [later_id.clone(), id.clone()],
        "the moved job comes first"
    );
    let running = output(server.client().args(["--first", "1"])).await;
    assert!(
        stderr(&running).contains("not waiting"),
        "{}",
        stderr(&running)
    );
    let resumed = output(server.client().arg("--resume")).await;
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(stderr(&resumed).contains("runs; "), "{}", stderr(&resumed));
    let done = output(server.client().args(["--wait", &id])).await;
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(marker.exists());
}

/// A failed job is submitted again with --retry: the same command, variables and working
/// directory, as a new job; only by its owner.
#[tokio::test]
async fn the_owner_retries_a_failed_job_as_a_new_one() {
    use crate::users::PublicBinaries;
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let bins = PublicBinaries::new();
    let dir = shared_dir();
    let flag = dir.path().join("fixed");
    let failing = output(
        server
            .client()
            .args(["-E", "WHAT=built", "--cwd", "/tmp", "--", "sh", "-c"])
            .arg(format!(
                "test -e {} && echo $WHAT in $(pwd)",
                flag.display()
            )),
    )
    .await;
    assert_eq!(failing.status.code(), Some(1), "{}", stderr(&failing));
    let bob = output(server.client_as(&bins, &users().bob).args(["--retry", "1"])).await;
    assert_eq!(bob.status.code(), Some(255));
    assert!(
        stderr(&bob).contains("only its owner may"),
        "{}",
        stderr(&bob)
    );
    std::fs::write(&flag, "").unwrap();
    let again = output(server.client().args(["--retry", "1", "--follow"])).await;
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        "built in /tmp"
    );
    assert!(
        stderr(&again).contains("job 2 queued"),
        "{}",
        stderr(&again)
    );
}

/// The admin's notice program runs once for every finished job, as nobody, with the job as
/// JSON (no `-E` values); one that hangs is killed at its time limit and the queue goes on.
#[tokio::test]
async fn a_notice_program_hears_of_every_finished_job() {
    let munged = Munged::start();
    let dir = shared_dir();
    let heard = dir.path().join("heard");
    let notice = script(
        dir.path(),
        "notice",
        &format!(
            "{{ id -un; cat; echo; }} >> {}\ngrep -q '\"id\":2' {} && sleep 60\nexit 0",
            heard.display(),
            heard.display()
        ),
    );
    let server = TestServer::start_with(
        &munged,
        &[
            "--notice-hook",
            notice.to_str().unwrap(),
            "--notice-hook-timeout",
            "1s",
        ],
    )
    .await;
    let ok = output(server.client().args([
        "-E",
        "TOKEN=s3cret",
        "--",
        "sh",
        "-c",
        "echo A=1 > \"$CQ_RESULT_FILE\"",
    ]))
    .await;
    assert!(ok.status.success(), "{}", stderr(&ok));
    let failed = output(server.client().args(["--", "false"])).await;
    assert_eq!(failed.status.code(), Some(1));
    let third = output(server.client().args(["--", "true"])).await;
    assert!(third.status.success());
    // Job 2's notice hangs and is killed after 1 s; job 3's still comes.
    server.wait_for_log("the notice program failed").await;
    let text = tokio::time::timeout(LIMIT, async {
        loop {
            let text = std::fs::read_to_string(&heard).unwrap_or_default();
            if text.contains("\"id\":3") {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the third notice");
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], "nobody", "{text}");
    let first: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(first["id"], 1);
    assert_eq!(first["outcome"], "exited");
    assert_eq!(first["results"]["A"], "1");
    assert!(
        !text.contains("s3cret"),
        "variables stay out of notices: {text}"
    );
    let second: serde_json::Value = serde_json::from_str(lines[3]).unwrap();
    assert_eq!(second["exit_status"], 1);
    server.assert_serves().await;
}

/// Scrapes `GET path` from the metrics endpoint in `line` (the server's log line naming it).
async fn scrape(line: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("an address in the log line");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(LIMIT, stream.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    text
}

/// The metrics endpoint counts what the queue did (jobs that ran, merges, outcomes) and
/// shows the queue now, naming no job or user.
#[tokio::test]
async fn metrics_count_what_ran_and_show_the_queue() {
    let munged = Munged::start();
    let server = TestServer::start_with(&munged, &["--metrics", "127.0.0.1:0"]).await;
    let line = server.wait_for_log("metrics on http://").await;
    let dir = shared_dir();
    let gate = Gate::new(dir.path());
    let held = output(
        server
            .client()
            .args(["--detach", "--", "sh", "-c", &gate.wait()]),
    )
    .await;
    assert!(held.status.success(), "{}", stderr(&held));
    for _ in 0..2 {
        let queued = output(
            server
                .client()
                .args(["--detach", "--", "echo", "secret-arg"]),
        )
        .await;
        assert!(queued.status.success(), "{}", stderr(&queued));
    }
    // Counting follows the engine's events, a moment behind: scrape until it caught up.
    let scrape_until = |want: &'static str| {
        let line = line.clone();
        async move {
            tokio::time::timeout(LIMIT, async {
                loop {
                    let text = scrape(&line, "/metrics").await;
                    if text.contains(want) {
                        return text;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{want} never showed"))
        }
    };
    let during = scrape_until("cq_jobs_merged_total 1\n").await;
    assert!(during.starts_with("HTTP/1.1 200 OK"), "{during}");
    assert!(during.contains("cq_queue_running 1\n"), "{during}");
    assert!(during.contains("cq_queue_queued 1\n"), "{during}");
    assert!(during.contains("cq_queue_waiters 1\n"), "{during}");
    assert!(during.contains("cq_jobs_merged_total 1\n"), "{during}");
    gate.open().await;
    let failing = output(server.client().args(["--", "false"])).await;
    assert_eq!(failing.status.code(), Some(1));
    let after = scrape_until("cq_job_runtime_seconds_count 3\n").await;
    for expected in [
        "cq_jobs_accepted_total 3\n",
        "cq_jobs_started_total 3\n",
        "cq_jobs_finished_total{outcome=\"exited\"} 3\n",
        "cq_job_runtime_seconds_count 3\n",
        "cq_queue_queued 0\n",
        "cq_queue_running 0\n",
        "cq_store_commits_total ",
        "cq_store_commit_seconds_total ",
    ] {
        assert!(after.contains(expected), "{expected} in {after}");
    }
    assert!(
        !after.contains("secret-arg") && !after.contains("root"),
        "{after}"
    );
    assert!(scrape(&line, "/").await.starts_with("HTTP/1.1 404"));
}
