//! Nothing accepted is lost: restarts, crashes, re-attaching, detached and background waits.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::{LIMIT, Munged, TestServer, output, script, stderr};

/// A FIFO that jobs block on until the test opens it (an event, not a sleep).
pub(crate) struct Gate(PathBuf);

impl Gate {
    /// A gate in `dir`, usable by jobs that run as another user (the directory is opened up).
    pub(crate) fn new(dir: &Path) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("gate");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        Self(path)
    }

    /// A shell command that waits for the gate.
    pub(crate) fn wait(&self) -> String {
        format!("cat {} > /dev/null", self.0.display())
    }

    /// Opens the gate: every job blocked on it goes on.
    pub(crate) async fn open(&self) {
        let path = self.0.clone();
        let opened = tokio::task::spawn_blocking(move || {
            drop(std::fs::OpenOptions::new().write(true).open(path))
        });
        tokio::time::timeout(LIMIT, opened)
            .await
            .expect("a job waits at the gate")
            .unwrap();
    }
}

fn detach(server: &TestServer, command: &str) -> tokio::process::Command {
    let mut cmd = server.client();
    cmd.args(["--detach", "--", "sh", "-c", command]);
    cmd
}

fn job_id(out: &Output) -> u64 {
    assert!(out.status.success(), "{}", stderr(out));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("--detach prints the job id")
}

#[tokio::test]
async fn detach_then_wait_before_and_after_the_end() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::new(dir.path());
    let post_out = dir.path().join("post.out");
    let post = script(
        dir.path(),
        "post",
        &format!("echo \"$1 $2 $CQ_JOB_ID\" >> {}", post_out.display()),
    );

    let id = job_id(&output(&mut detach(&server, &format!("{}; exit 4", gate.wait()))).await);
    assert_eq!(id, 1);

    let mut waiter = server.client();
    waiter.args(["--wait", "1", "-P"]).arg(&post);
    let waiting = tokio::spawn(async move { output(&mut waiter).await });
    server.wait_for_log("watching job=1").await;
    gate.open().await;
    let out = waiting.await.unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));

    // After the end, --wait answers at once, as if the job had been submitted here.
    let late = output(server.client().args(["--wait", "1", "-P"]).arg(&post)).await;
    assert_eq!(late.status.code(), Some(4));
    assert_eq!(
        std::fs::read_to_string(&post_out).unwrap(),
        "0 4 1\n0 4 1\n"
    );

    let unknown = output(server.client().args(["--wait", "99"])).await;
    assert_eq!(unknown.status.code(), Some(255));
    assert!(
        stderr(&unknown).contains("no job 99"),
        "{}",
        stderr(&unknown)
    );
}

#[tokio::test]
async fn background_waits_after_the_client_returned() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    nix::unistd::mkfifo(&done, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let post = script(
        dir.path(),
        "post",
        &format!(
            "echo \"$1 $2 $CQ_JOB_ID $CQ_OUTCOME $(cut -d' ' -f6 /proc/$$/stat)\" > {}",
            done.display()
        ),
    );
    let log = dir.path().join("waiter.log");

    let out = output(
        server
            .client()
            .arg("--background")
            .arg("--background-log")
            .arg(&log)
            .arg("-P")
            .arg(&post)
            .args(["--", "sh", "-c", "exit 3"]),
    )
    .await;
    assert!(
        out.status.success(),
        "the client returns at once: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("in the background"),
        "{}",
        stderr(&out)
    );

    let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(done).unwrap());
    let line = tokio::time::timeout(LIMIT, read)
        .await
        .expect("the background waiter runs the post script")
        .unwrap();
    let (fields, session) = line.trim().rsplit_once(' ').unwrap();
    assert_eq!(fields, "0 3 1 exited");
    let ours = nix::unistd::getsid(None).unwrap().as_raw();
    assert_ne!(
        session.trim().parse::<i32>().unwrap(),
        ours,
        "the waiter left the terminal's session"
    );
    assert!(
        log.exists(),
        "the background waiter logs to --background-log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_hundred_queued_jobs_loses_nothing() {
    let munged = Munged::start();
    let mut server = TestServer::start(&munged).await;
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::new(dir.path());
    let record = dir.path().join("record");
    let notified = dir.path().join("notified");
    let post = script(
        dir.path(),
        "post",
        &format!("echo \"$CQ_JOB_ID $CQ_OUTCOME\" >> {}", notified.display()),
    );

    assert_eq!(job_id(&output(&mut detach(&server, &gate.wait())).await), 1);
    server.wait_for_log("started job=1").await;
    for expected in 2..=101 {
        let id = job_id(
            &output(&mut detach(
                &server,
                // Distinct commands: equal ones would be merged (--dedup).
                &format!("echo $CQ_JOB_ID >> {}; : {expected}", record.display()),
            ))
            .await,
        );
        assert_eq!(id, expected);
    }
    // Twenty clients wait: on the running job and on queued ones.
    let waited: Vec<u64> = std::iter::once(1).chain((6..=101).step_by(5)).collect();
    assert_eq!((waited.len(), waited.last()), (21, Some(&101)));
    let mut waiters = Vec::new();
    for id in &waited {
        let mut cmd = server.client();
        cmd.args(["-q", "--wait", &id.to_string(), "-P"]).arg(&post);
        waiters.push((*id, tokio::spawn(async move { output(&mut cmd).await })));
        server.wait_for_log(&format!("watching job={id} ")).await;
    }

    server.kill9().await;
    // The crashed server's job lives on as an orphan; let it end.
    gate.open().await;
    let server = server.restart().await;
    server.wait_for_log("job=1").await;

    for (id, waiter) in waiters {
        let out = tokio::time::timeout(LIMIT, waiter)
            .await
            .expect("every waiter is notified")
            .unwrap();
        let expected = if id == 1 { 125 } else { 0 };
        assert_eq!(
            out.status.code(),
            Some(expected),
            "job {id}: {}",
            stderr(&out)
        );
    }
    let ran: Vec<u64> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(
        ran,
        (2..=101).collect::<Vec<_>>(),
        "every queued job ran exactly once, in order"
    );
    let lines: Vec<String> = std::fs::read_to_string(&notified)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let expected: BTreeSet<String> = waited
        .iter()
        .map(|id| format!("{id} {}", if *id == 1 { "lost" } else { "exited" }))
        .collect();
    assert_eq!(
        lines.len(),
        waited.len(),
        "each post script ran exactly once: {lines:?}"
    );
    assert_eq!(lines.into_iter().collect::<BTreeSet<_>>(), expected);
    assert!(
        server.log_text().contains("recorded as lost"),
        "{}",
        server.log_text()
    );
}

#[tokio::test]
async fn sigterm_waits_out_the_grace_then_cancels_and_queued_jobs_survive() {
    let munged = Munged::start();
    let mut server = TestServer::start_with(&munged, &["--shutdown-grace", "0.2"]).await;
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record");
    assert_eq!(job_id(&output(&mut detach(&server, "sleep 300")).await), 1);
    server.wait_for_log("started job=1").await;
    let queued = format!("echo ran >> {}", record.display());
    assert_eq!(job_id(&output(&mut detach(&server, &queued)).await), 2);

    assert!(
        server.terminate().await.success(),
        "a graceful stop exits 0"
    );
    assert!(
        server.log_text().contains("grace period over"),
        "{}",
        server.log_text()
    );
    assert!(
        !record.exists(),
        "the queued job did not start during shutdown"
    );

    let server = server.restart().await;
    let cancelled = output(server.client().args(["--wait", "1"])).await;
    assert_eq!(cancelled.status.code(), Some(125), "{}", stderr(&cancelled));
    assert!(
        stderr(&cancelled).contains("cancelled"),
        "{}",
        stderr(&cancelled)
    );
    let survived = output(server.client().args(["--wait", "2"])).await;
    assert!(survived.status.success(), "{}", stderr(&survived));
    assert_eq!(std::fs::read_to_string(&record).unwrap(), "ran\n");
}

/// A 12 KiB tmpfs, unmounted on drop.
struct TinyFileSystem(std::path::PathBuf);

impl TinyFileSystem {
    fn mount(at: &std::path::Path) -> Self {
        std::fs::create_dir(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=40k,mode=0700", "cq-test-full"])
            .arg(at)
            .status()
            .expect("run mount (the tests run as root)");
        assert!(status.success(), "mount a tmpfs: {status}");
        Self(at.to_owned())
    }
}

impl Drop for TinyFileSystem {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn an_unusable_state_directory_stops_the_start_with_a_clear_error() {
    let munged = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    let a_file = dir.path().join("file");
    std::fs::write(&a_file, "").unwrap();
    // A full disk: a tiny file system of its own.
    let full = TinyFileSystem::mount(&dir.path().join("full"));
    // A database planted as a symlink (here to /dev/full) is never written through.
    let planted = dir.path().join("planted");
    std::fs::create_dir(&planted).unwrap();
    std::os::unix::fs::symlink("/dev/full", planted.join("cq.db")).unwrap();

    for (state_dir, expected) in [
        (&a_file, "is not a directory"),
        (&full.0, "database or disk is full"),
        (&planted, "not a regular file (a symlink?)"),
    ] {
        let out = output(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_server"))
                .args(["-h", "127.0.0.1", "-p", "0", "--state-dir"])
                .arg(state_dir)
                .arg("--munge-socket")
                .arg(munged.socket()),
        )
        .await;
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(
            err.contains(expected) && err.contains("--state-dir"),
            "{err}"
        );
        assert!(
            !err.contains("listening on"),
            "no half-started server: {err}"
        );
    }
}

#[tokio::test]
async fn a_second_server_on_the_same_state_directory_refuses_to_start() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let second = output(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_server"))
            .args(["-h", "127.0.0.1", "-p", "0", "--state-dir"])
            .arg(server.state_dir.path())
            .arg("--munge-socket")
            .arg(munged.socket()),
    )
    .await;
    assert_eq!(second.status.code(), Some(1));
    let err = stderr(&second);
    assert!(
        err.contains("another cq_server (pid ") && err.contains("uses the state directory"),
        "{err}"
    );
    assert!(!err.contains("listening on"), "{err}");
    server.assert_serves().await;
}

/// Red team: after `kill -9` of the server, its running job lived on in its cgroup; the
/// restarted server then started the next job (or, with --requeue-lost, the same one again)
/// beside it. Now the orphan is killed before anything starts.
#[tokio::test]
async fn a_job_of_a_killed_server_does_not_run_beside_the_next() {
    let munged = Munged::start();
    let mut server = TestServer::start_with(&munged, &["--requeue-lost"]).await;
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let out = output(&mut detach(
        &server,
        &format!("echo $$ >> {}; exec sleep 60", pids.display()),
    ))
    .await;
    assert_eq!(job_id(&out), 1);
    server.wait_for_log("started job=1").await;
    let first: i32 = tokio::time::timeout(LIMIT, async {
        loop {
            if let Some(pid) = std::fs::read_to_string(&pids)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.parse().ok()))
            {
                return pid;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the job wrote its pid");
    server.kill9().await;
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
    };
    assert!(alive(first), "the orphan runs on after kill -9");
    let server = server.restart().await;
    assert!(
        !alive(first),
        "the orphan was killed before anything started"
    );
    // Requeued, it runs again: once.
    tokio::time::timeout(LIMIT, async {
        while std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .lines()
            .count()
            < 2
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the requeued job runs");
    let cancelled = output(server.client().args(["--cancel", "1"])).await;
    assert!(cancelled.status.success(), "{}", stderr(&cancelled));
}
