//! cq_server with `--executor slurm` against a real single-node Slurm cluster (slurmctld and
//! slurmd of the test's own, on the test's private munged): jobs run as Slurm batch jobs of
//! their requesters, lanes, exit codes, signals, time limits, cancels, a coordinator killed
//! while a Slurm job runs, Slurm down, and a job that sets traps for the executor.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use cq_core::executor::PrivateSlurm;
use tempfile::TempDir;
use tokio::process::Command;

use crate::support::{LIMIT, Munged, TestServer, output, stderr};
use crate::users::{PublicBinaries, shared_dir, users};

/// A Slurm cluster of the test's own, with the munged it authenticates with, and an output
/// directory for the executor.
struct Cluster {
    // Dropped first: Slurm stops before munged and the directories go.
    slurm: PrivateSlurm,
    munged: Munged,
    output: TempDir,
    _dir: TempDir,
}

impl Cluster {
    fn start() -> Self {
        let munged = Munged::start();
        let dir = tempfile::tempdir().unwrap();
        let slurm = PrivateSlurm::start(dir.path(), &munged.socket()).expect("start Slurm");
        let output = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(output.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        Self {
            slurm,
            munged,
            output,
            _dir: dir,
        }
    }

    /// The options that make cq_server run its jobs on this cluster.
    fn options(&self) -> Vec<String> {
        self.options_in(self.slurm.partition())
    }

    /// The same, with jobs going to `partition`.
    fn options_in(&self, partition: &str) -> Vec<String> {
        vec![
            "--executor".into(),
            "slurm".into(),
            "--slurm-conf".into(),
            self.slurm.conf().display().to_string(),
            "--partition".into(),
            partition.into(),
            "--slurm-output-dir".into(),
            self.output.path().display().to_string(),
            "--slurm-poll".into(),
            "100ms".into(),
        ]
    }

    async fn server(&self, extra: &[&str]) -> TestServer {
        let mut args = self.options();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        TestServer::start_with(&self.munged, &args).await
    }

    /// What `scontrol show job` says of Slurm job `id`.
    async fn scontrol(&self, id: &str) -> String {
        let out = output(
            Command::new("scontrol")
                .args(["--oneliner", "show", "job", id])
                .env("SLURM_CONF", self.slurm.conf()),
        )
        .await;
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("--json prints JSON ({e}): {}", stderr(out)))
}

/// Submits `script` (sh -c) as alice, detached; its id.
async fn submit(
    server: &TestServer,
    bins: &PublicBinaries,
    extra: &[&str],
    script: &str,
) -> String {
    let out = output(
        server
            .client_as(bins, &users().alice)
            .arg("--detach")
            .args(extra)
            .args(["--", "sh", "-c", script]),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Waits for job `id` as alice: its `--wait --json` answer.
async fn wait(server: &TestServer, bins: &PublicBinaries, id: &str) -> serde_json::Value {
    let out = tokio::time::timeout(
        LIMIT,
        output(
            server
                .client_as(bins, &users().alice)
                .args(["--wait", id, "--json"]),
        ),
    )
    .await
    .expect("the job ends in time");
    json(&out)
}

async fn status(server: &TestServer, bins: &PublicBinaries, id: &str) -> serde_json::Value {
    json(
        &output(
            server
                .client_as(bins, &users().alice)
                .args(["--status", id, "--json"]),
        )
        .await,
    )
}

async fn log(server: &TestServer, bins: &PublicBinaries, id: &str) -> String {
    let out = output(server.client_as(bins, &users().alice).args(["--log", id])).await;
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (bounded) until a job made `path`: the tests' jobs say they got somewhere with a
/// file, which only the job itself can make.
async fn made(path: &Path) {
    let waited = tokio::time::timeout(LIMIT, async {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{} never appeared", path.display());
}

/// The Slurm job a running cq job is, from `--status` (`runner` is `slurm:ID`).
async fn slurm_job(server: &TestServer, bins: &PublicBinaries, id: &str) -> String {
    let status = status(server, bins, id).await;
    let runner = status["runner"]
        .as_str()
        .unwrap_or_else(|| panic!("a running Slurm job shows its Slurm id: {status}"));
    runner
        .strip_prefix("slurm:")
        .unwrap_or_else(|| panic!("runner {runner}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_as_slurm_batch_jobs_of_their_requester_with_their_environment() {
    let cluster = Cluster::start();
    let server = cluster.server(&[]).await;
    let bins = PublicBinaries::new();
    let shared = shared_dir();
    let d = shared.path().display().to_string();

    let id = submit(
        &server,
        &bins,
        &["-E", "GREETING=hello there", "--cwd", &d],
        &format!(
            "id -un > {d}/who; echo \"$GREETING\"; pwd; echo BUILD_ID=7 >> \"$CQ_RESULT_FILE\"; \
             while [ ! -e {d}/go ]; do sleep 0.05; done; echo late >&2; exit 3"
        ),
    )
    .await;
    made(&shared.path().join("who")).await;
    // While it runs, cq says which Slurm job it is, and Slurm says whose.
    let slurm_id = slurm_job(&server, &bins, &id).await;
    let running = status(&server, &bins, &id).await;
    assert_eq!(running["state"], "running", "{running}");
    assert_eq!(running["worker"], "local", "{running}");
    let shown = cluster.scontrol(&slurm_id).await;
    assert!(
        shown.contains("UserId=cq-test-user(") && shown.contains(&format!("WorkDir={d} ")),
        "{shown}"
    );
    assert_eq!(
        std::fs::read_to_string(shared.path().join("who")).unwrap(),
        "cq-test-user\n"
    );

    std::fs::write(shared.path().join("go"), "").unwrap();
    let ended = wait(&server, &bins, &id).await;
    assert_eq!(ended["outcome"], "exited", "{ended}");
    assert_eq!(ended["exit_status"], 3, "{ended}");
    assert_eq!(ended["results"]["BUILD_ID"], "7", "{ended}");
    // Standard output and error, in the order written, in the job's log.
    assert_eq!(
        log(&server, &bins, &id).await,
        format!("hello there\n{d}\nlate\n")
    );
    // The job's files are gone; the batch script stays for the next job.
    let left: Vec<_> = std::fs::read_dir(cluster.output.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["cq-run.sh"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_time_limits_and_cancels_are_reported_as_such_and_reach_slurm() {
    let cluster = Cluster::start();
    let server = cluster.server(&["--lanes", "3"]).await;
    let bins = PublicBinaries::new();
    let shared = shared_dir();
    let d = shared.path().display().to_string();

    // A signal is a signal (srun and sbatch --wait would say 139 or 1).
    let segv = submit(&server, &bins, &[], "kill -SEGV $$").await;
    // Past its time limit: stopped through Slurm.
    let slow = submit(
        &server,
        &bins,
        &["--timeout", "4s"],
        &format!("touch {d}/slow; sleep 120"),
    )
    .await;
    let doomed = submit(&server, &bins, &[], &format!("touch {d}/doomed; sleep 120")).await;
    made(&shared.path().join("slow")).await;
    let slow_slurm = slurm_job(&server, &bins, &slow).await;

    let ended = wait(&server, &bins, &segv).await;
    assert_eq!(ended["outcome"], "signaled", "{ended}");
    assert_eq!(ended["signal"], 11, "{ended}");

    made(&shared.path().join("doomed")).await;
    let doomed_slurm = slurm_job(&server, &bins, &doomed).await;
    let cancel = output(
        server
            .client_as(&bins, &users().alice)
            .args(["--cancel", &doomed]),
    )
    .await;
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    let ended = wait(&server, &bins, &doomed).await;
    assert_eq!(ended["outcome"], "cancelled", "{ended}");
    // cq reports the end only once Slurm has it: the lane is free for real.
    assert!(
        cluster
            .scontrol(&doomed_slurm)
            .await
            .contains("JobState=CANCELLED"),
    );

    let ended = wait(&server, &bins, &slow).await;
    assert_eq!(ended["outcome"], "timed-out", "{ended}");
    let shown = cluster.scontrol(&slow_slurm).await;
    assert!(shown.contains("JobState=CANCELLED"), "{shown}");
    // Slurm got the limit too, in its whole minutes.
    assert!(shown.contains("TimeLimit=00:01:00"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_one_lane_never_overlap_while_two_lanes_run_side_by_side() {
    let cluster = Cluster::start();
    let server = cluster.server(&["--lanes", "2"]).await;
    let bins = PublicBinaries::new();
    let shared = shared_dir();
    let d = shared.path().display().to_string();

    // The first job of lane a ends only once the job of lane b has started (so they
    // overlapped: two Slurm jobs at once); the second of lane a checks the first had ended.
    let first = submit(
        &server,
        &bins,
        &["--lane", "a"],
        &format!(
            "i=0; while [ ! -e {d}/b ]; do i=$((i+1)); [ $i -gt 1000 ] && exit 9; sleep 0.05; done; \
             sleep 0.5; touch {d}/a1-ended"
        ),
    )
    .await;
    let second = submit(
        &server,
        &bins,
        &["--lane", "a"],
        &format!("test -e {d}/a1-ended"),
    )
    .await;
    let other = submit(&server, &bins, &["--lane", "b"], &format!("touch {d}/b")).await;
    for (id, what) in [
        (&first, "overlapped with lane b"),
        (&second, "started after the first of its lane ended"),
        (&other, "ran"),
    ] {
        let ended = wait(&server, &bins, id).await;
        assert_eq!(ended["exit_status"], 0, "job {id} {what}: {ended}");
    }
}

/// Submits a job that says `before`, waits for `DIR/go`, says `after` and exits 7; returns
/// once its first output is in the coordinator's log (polled, bounded: nothing tells a
/// client when output arrives short of following to the end).
async fn gated_job(server: &TestServer, bins: &PublicBinaries, dir: &Path) -> String {
    let d = dir.display();
    let id = submit(
        server,
        bins,
        &[],
        &format!(
            "echo ran >> {d}/runs; echo before; while [ ! -e {d}/go ]; do sleep 0.05; done; \
             echo after; exit 7"
        ),
    )
    .await;
    made(&dir.join("runs")).await;
    let waited = tokio::time::timeout(LIMIT, async {
        while !log(server, bins, &id).await.contains("before") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the job's output reaches the coordinator");
    id
}

/// The [`gated_job`] `id` ended as it does, with all of its output, having run once.
async fn gated_job_ended_once(server: &TestServer, bins: &PublicBinaries, dir: &Path, id: &str) {
    let ended = wait(server, bins, id).await;
    assert_eq!(ended["outcome"], "exited", "{ended}");
    assert_eq!(ended["exit_status"], 7, "{ended}");
    assert_eq!(log(server, bins, id).await, "before\nafter\n");
    assert_eq!(
        std::fs::read_to_string(dir.join("runs")).unwrap(),
        "ran\n",
        "the job ran once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_while_a_slurm_job_runs_reports_its_real_end_after_a_restart() {
    let cluster = Cluster::start();
    let mut server = cluster.server(&[]).await;
    let bins = PublicBinaries::new();
    let shared = shared_dir();

    let id = gated_job(&server, &bins, shared.path()).await;
    server.kill9().await;
    // The job ends while no coordinator runs.
    std::fs::write(shared.path().join("go"), "").unwrap();
    let server = server.restart().await;
    gated_job_ended_once(&server, &bins, shared.path(), &id).await;
}

/// What cq_server says when it cannot start with jobs going to `partition`.
async fn refuses_to_start(cluster: &Cluster, partition: &str) -> String {
    let state = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cq_server"));
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        "0",
        "--allow-root",
        "--munge-socket",
    ])
    .arg(cluster.munged.socket())
    .arg("--state-dir")
    .arg(state.path())
    .args(cluster.options_in(partition))
    .stdin(Stdio::null());
    let out = tokio::time::timeout(LIMIT, output(&mut cmd))
        .await
        .expect("cq_server gives up in time");
    assert!(
        !out.status.success(),
        "cq_server started with partition {partition}"
    );
    stderr(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slurm_down_or_a_wrong_partition_is_a_clear_error() {
    let mut cluster = Cluster::start();
    let unknown = refuses_to_start(&cluster, "nosuch").await;
    assert!(
        unknown.contains("Slurm has no partition nosuch") && unknown.contains("main"),
        "{unknown}"
    );

    let server = cluster.server(&[]).await;
    let bins = PublicBinaries::new();
    cluster.slurm.stop_controller();
    let id = submit(&server, &bins, &[], "true").await;
    let out = tokio::time::timeout(
        LIMIT,
        output(
            server
                .client_as(&bins, &users().alice)
                .args(["--wait", &id]),
        ),
    )
    .await
    .expect("the job ends in time");
    let said = stderr(&out);
    assert!(
        said.contains("could not be started: Slurm did not take the job")
            && said.contains("Unable to contact slurm controller"),
        "{said}"
    );
    let down = refuses_to_start(&cluster, "main").await;
    assert!(down.contains("Slurm does not answer"), "{down}");

    // Back up: jobs run again.
    cluster.slurm.start_controller().unwrap();
    let id = submit(&server, &bins, &[], "exit 5").await;
    assert_eq!(wait(&server, &bins, &id).await["exit_status"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cannot_make_the_executor_read_files_it_could_not_read_itself() {
    let cluster = Cluster::start();
    let server = cluster.server(&[]).await;
    let bins = PublicBinaries::new();
    // The job's directory is the requester's: it swaps its output and results files for
    // links to /etc/shadow (and a FIFO, which would block a careless reader).
    let id = submit(
        &server,
        &bins,
        &[],
        "d=$(dirname \"$CQ_RESULT_FILE\"); echo first; \
         rm -f \"$d/output\"; ln -s /etc/shadow \"$d/output\"; \
         ln -s /etc/shadow \"$CQ_RESULT_FILE\"; mkfifo \"$d/other\"; sleep 1",
    )
    .await;
    let ended = wait(&server, &bins, &id).await;
    assert_eq!(ended["exit_status"], 0, "{ended}");
    assert_eq!(ended["results"], serde_json::json!({}), "{ended}");
    let text = log(&server, &bins, &id).await;
    assert!(!text.contains("root:"), "{text}");
    // The next job still runs: nothing blocked.
    let id = submit(&server, &bins, &[], "exit 4").await;
    assert_eq!(wait(&server, &bins, &id).await["exit_status"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allowed_commands_hold_for_jobs_on_slurm() {
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cq.toml");
    let id_program = std::fs::canonicalize("/usr/bin/id").unwrap();
    std::fs::write(
        &config,
        format!("[policy]\ncommands = [\"{}\"]\n", id_program.display()),
    )
    .unwrap();
    let server = cluster
        .server(&["--config", config.to_str().unwrap()])
        .await;
    let bins = PublicBinaries::new();
    let alice = &users().alice;

    let allowed = output(server.client_as(&bins, alice).args(["--", "id", "-un"])).await;
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    let refused = output(
        server
            .client_as(&bins, alice)
            .args(["--", "sh", "-c", "id"]),
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("not among the commands"),
        "{}",
        stderr(&refused)
    );
}

/// The `runner` the coordinator shows for job `id` once its worker has reported it. The
/// worker reports it with its next report (and repeats it every heartbeat); nothing tells
/// a client when that arrives: polled, bounded.
async fn runner_once_reported(server: &TestServer, bins: &PublicBinaries, id: &str) -> String {
    tokio::time::timeout(LIMIT, async {
        loop {
            if let Some(runner) = status(server, bins, id).await["runner"].as_str() {
                return runner.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the worker tells the coordinator where the job runs")
}

/// cq_worker `hpc` running its jobs on `cluster` in `lanes` lanes, spooling in `dir`.
fn slurm_worker(
    cluster: &Cluster,
    server: &TestServer,
    bins: &PublicBinaries,
    dir: &Path,
    lanes: u16,
) -> tokio::process::Child {
    let mut worker = Command::new(bins.worker());
    worker
        .args(["-h", "127.0.0.1", "-p", &server.addr.port().to_string()])
        .arg("--munge-socket")
        .arg(cluster.munged.socket())
        .args(["--name", "hpc", "--heartbeat", "1s"])
        .args(["--lanes", &lanes.to_string()])
        .arg("--spool")
        .arg(dir.join("spool"))
        .args(cluster.options())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    worker.spawn().expect("start cq_worker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_its_slurm_job_runs_finds_it_again_after_a_restart() {
    use crate::workers::{coordinator, joined};
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let server = coordinator(&cluster.munged, dir.path(), "60").await;
    let bins = PublicBinaries::new();
    let mut worker = slurm_worker(&cluster, &server, &bins, dir.path(), 1);
    joined(&server, "hpc").await;
    let shared = shared_dir();
    let id = gated_job(&server, &bins, shared.path()).await;
    worker.kill().await.unwrap();
    // The job ends while its worker is away; the worker comes back.
    std::fs::write(shared.path().join("go"), "").unwrap();
    let _worker = slurm_worker(&cluster, &server, &bins, dir.path(), 1);
    gated_job_ended_once(&server, &bins, shared.path(), &id).await;
    // And the worker takes new work.
    let next = submit(&server, &bins, &[], "exit 4").await;
    assert_eq!(wait(&server, &bins, &next).await["exit_status"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_another_host_runs_its_jobs_on_slurm_in_as_many_lanes_as_it_offers() {
    use crate::workers::{coordinator, joined};
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let server = coordinator(&cluster.munged, dir.path(), "60").await;
    let bins = PublicBinaries::new();
    let _worker = slurm_worker(&cluster, &server, &bins, dir.path(), 2);
    joined(&server, "hpc").await;
    joined(&server, "hpc-2").await;
    let shared = shared_dir();
    let d = shared.path().display().to_string();

    // Two jobs at once, each a Slurm job of its requester: each waits for the other.
    let one = submit(
        &server,
        &bins,
        &[],
        &format!(
            "id -un > {d}/one; i=0; while [ ! -e {d}/two ]; do i=$((i+1)); [ $i -gt 1000 ] && exit 9; sleep 0.05; done; echo one"
        ),
    )
    .await;
    let two = submit(
        &server,
        &bins,
        &[],
        &format!(
            "id -un > {d}/two; i=0; while [ ! -e {d}/one ]; do i=$((i+1)); [ $i -gt 1000 ] && exit 9; sleep 0.05; done; exit 6"
        ),
    )
    .await;
    let ended = wait(&server, &bins, &one).await;
    assert_eq!(ended["exit_status"], 0, "{ended}");
    assert_eq!(wait(&server, &bins, &two).await["exit_status"], 6);
    assert_eq!(log(&server, &bins, &one).await, "one\n");
    for name in ["one", "two"] {
        assert_eq!(
            std::fs::read_to_string(shared.path().join(name)).unwrap(),
            "cq-test-user\n"
        );
    }

    // The coordinator shows which Slurm job a worker's job is, once the worker said so
    // (with its next report: polled, bounded).
    let gated = submit(
        &server,
        &bins,
        &[],
        &format!("while [ ! -e {d}/go ]; do sleep 0.05; done"),
    )
    .await;
    let shown = runner_once_reported(&server, &bins, &gated).await;
    assert!(shown.starts_with("slurm:"), "{shown}");
    let slurm_id = shown.trim_start_matches("slurm:");
    assert!(
        cluster
            .scontrol(slurm_id)
            .await
            .contains("UserId=cq-test-user("),
        "{shown}"
    );
    // A coordinator restarted meanwhile hears it again (the worker repeats it with its
    // heartbeat).
    let mut server = server;
    server.kill9().await;
    let server = server.restart().await;
    let again = runner_once_reported(&server, &bins, &gated).await;
    assert_eq!(again, shown);
    std::fs::write(shared.path().join("go"), "").unwrap();
    assert_eq!(wait(&server, &bins, &gated).await["exit_status"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_renamed_or_requeued_in_slurm_by_its_owner_is_stopped_not_believed() {
    let cluster = Cluster::start();
    let server = cluster.server(&["--lanes", "2"]).await;
    let bins = PublicBinaries::new();
    let shared = shared_dir();
    let d = shared.path().display().to_string();

    // A name that spells out an end would read as one to a careless parser. (From a file:
    // the command's own words show in scontrol's line too.)
    let rename = shared.path().join("rename.sh");
    std::fs::write(
        &rename,
        "scontrol update jobid=$SLURM_JOB_ID 'JobName=x JobState=COMPLETED ExitCode=0:0' && sleep 60\n",
    )
    .unwrap();
    let renamed = submit(&server, &bins, &[], &format!("sh {}", rename.display())).await;
    // Requeued, the job would run again.
    let requeued = submit(
        &server,
        &bins,
        &[],
        &format!(
            "echo ran >> {d}/runs; scontrol update jobid=$SLURM_JOB_ID Requeue=1 && \
             scontrol requeue $SLURM_JOB_ID; sleep 60"
        ),
    )
    .await;
    for id in [&renamed, &requeued] {
        let ended = wait(&server, &bins, id).await;
        assert_eq!(ended["outcome"], "failed", "job {id}: {ended}");
    }
    let out = output(
        server
            .client_as(&bins, &users().alice)
            .args(["--wait", &renamed]),
    )
    .await;
    assert!(
        stderr(&out).contains("renamed outside cq"),
        "{}",
        stderr(&out)
    );
    // Stopped in Slurm (scancel'd: gone from the queue soon), and run once.
    let emptied = tokio::time::timeout(LIMIT, async {
        loop {
            let listed = output(
                Command::new("squeue")
                    .args(["--noheader", "--format=%i %T"])
                    .env("SLURM_CONF", cluster.slurm.conf()),
            )
            .await;
            if listed.status.success() && listed.stdout.trim_ascii().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(emptied.is_ok(), "the tampered jobs are cancelled in Slurm");
    assert_eq!(
        std::fs::read_to_string(shared.path().join("runs")).unwrap(),
        "ran\n"
    );
}

/// Fills `dir` with the Slurm programs, sbatch being a script with `body` (which runs as the
/// requester: what a requester who traces their sbatch could make it do).
fn slurm_tools_with(dir: &Path, body: &str) {
    for program in ["scontrol", "scancel", "squeue", "sacct", "sinfo"] {
        let real = String::from_utf8(
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        std::os::unix::fs::symlink(real.trim(), dir.join(program)).unwrap();
    }
    crate::support::script(dir, "sbatch", body);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sbatch_that_names_another_users_job_cannot_make_cq_follow_or_cancel_it() {
    let cluster = Cluster::start();
    // sbatch runs with the requester's rights, so the requester may trace it and make it
    // print any id: here a wrapper does so, printing the id of bob's job.
    let tools = tempfile::tempdir().unwrap();
    let victim_id = tools.path().join("victim");
    slurm_tools_with(
        tools.path(),
        &format!(
            "sbatch \"$@\" >/dev/null || exit 1\ncat {}",
            victim_id.display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    let bob = &users().bob;
    let victim = output(
        Command::new("setpriv")
            .arg(format!("--reuid={}", bob.uid))
            .arg(format!("--regid={}", bob.gid))
            .args([
                "--clear-groups",
                "sbatch",
                "--parsable",
                "--output=/dev/null",
            ])
            .args(["--wrap", "sleep 120"])
            .env("SLURM_CONF", cluster.slurm.conf())
            .current_dir("/"),
    )
    .await;
    assert!(victim.status.success(), "{}", stderr(&victim));
    let victim = String::from_utf8_lossy(&victim.stdout).trim().to_owned();
    std::fs::write(&victim_id, format!("{victim}\n")).unwrap();
    std::fs::set_permissions(&victim_id, std::fs::Permissions::from_mode(0o644)).unwrap();

    let server = cluster
        .server(&["--slurm-bin-dir", tools.path().to_str().unwrap()])
        .await;
    let bins = PublicBinaries::new();
    let shared = shared_dir();
    let d = shared.path().display().to_string();
    let id = submit(&server, &bins, &[], &format!("touch {d}/mine; sleep 120")).await;
    made(&shared.path().join("mine")).await;
    let followed = slurm_job(&server, &bins, &id).await;
    assert_ne!(followed, victim, "cq follows the requester's own job");
    let cancel = output(
        server
            .client_as(&bins, &users().alice)
            .args(["--cancel", &id]),
    )
    .await;
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    assert_eq!(wait(&server, &bins, &id).await["outcome"], "cancelled");
    assert!(
        cluster.scontrol(&victim).await.contains("JobState=RUNNING"),
        "bob's job runs on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_job_leaves_in_its_directory_cannot_bring_the_server_down() {
    let cluster = Cluster::start();
    let server = cluster.server(&[]).await;
    let bins = PublicBinaries::new();
    // Deep enough to overflow a recursive walk on a runtime thread's stack.
    let id = submit(
        &server,
        &bins,
        &[],
        "cd \"$(dirname \"$CQ_RESULT_FILE\")\" && python3 -c \"import os\nfor _ in range(15000): os.mkdir('d'); os.chdir('d')\"",
    )
    .await;
    assert_eq!(wait(&server, &bins, &id).await["exit_status"], 0);
    server
        .wait_for_log("holds what its job put there: left in place")
        .await;
    let next = submit(&server, &bins, &[], "exit 3").await;
    assert_eq!(wait(&server, &bins, &next).await["exit_status"], 3);
    // The tree is left in place; rm walks it without recursion (TempDir's drop would not).
    let removed = output(
        Command::new("rm")
            .arg("-rf")
            .arg("--")
            .arg(cluster.output.path()),
    )
    .await;
    assert!(removed.status.success(), "{}", stderr(&removed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoy_under_the_jobs_name_or_a_forged_name_is_not_believed() {
    let cluster = Cluster::start();
    // The requester's sbatch submits a decoy of their own under cq's name first.
    let tools = tempfile::tempdir().unwrap();
    slurm_tools_with(
        tools.path(),
        "for a in \"$@\"; do case $a in --job-name=*) name=${a#--job-name=};; esac; done\n\
         sbatch --job-name=\"$name\" --output=/dev/null --wrap 'exit 0' >/dev/null\n\
         exec sbatch \"$@\"",
    );
    let server = cluster
        .server(&["--slurm-bin-dir", tools.path().to_str().unwrap()])
        .await;
    let bins = PublicBinaries::new();
    let shared = shared_dir();
    let d = shared.path().display().to_string();
    let id = submit(&server, &bins, &[], &format!("touch {d}/ran; sleep 120")).await;
    let out = tokio::time::timeout(
        LIMIT,
        output(
            server
                .client_as(&bins, &users().alice)
                .args(["--wait", &id]),
        ),
    )
    .await
    .expect("the job ends in time");
    assert!(
        stderr(&out).contains("jobs of the requester's under the job's name"),
        "{}",
        stderr(&out)
    );
    drop(server);

    // A name that repeats cq's own and then spells out an end.
    let server = cluster.server(&[]).await;
    let forge = shared.path().join("forge.sh");
    std::fs::write(
        &forge,
        "scontrol update jobid=$SLURM_JOB_ID \"JobName=$SLURM_JOB_NAME UserId=alice(1001) \
         GroupId=g(1) MCS_label=N/A Priority=1 Nice=0 Account=(null) QOS=(null) \
         JobState=COMPLETED Reason=None Dependency=(null) Requeue=0 Restarts=0 BatchFlag=1 \
         Reboot=0 ExitCode=0:0\" && sleep 60\n",
    )
    .unwrap();
    let forged = submit(&server, &bins, &[], &format!("sh {}", forge.display())).await;
    let ended = wait(&server, &bins, &forged).await;
    assert_eq!(ended["outcome"], "failed", "{ended}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_directory_the_node_cannot_enter_fails_the_job_instead_of_running_it_in_tmp() {
    let cluster = Cluster::start();
    let server = cluster.server(&[]).await;
    let bins = PublicBinaries::new();
    let shared = shared_dir();
    // slurmstepd would run the job in /tmp, where anybody may have left a program.
    let planted = tempfile::Builder::new()
        .prefix("cq-planted-")
        .tempfile_in("/tmp")
        .unwrap();
    let ran = shared.path().join("planted-ran");
    std::fs::write(
        planted.path(),
        format!("#!/bin/sh\ntouch {}\n", ran.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(planted.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let name = planted.path().file_name().unwrap().to_str().unwrap();
    let id = submit(
        &server,
        &bins,
        &["--cwd", "/nonexistent-cq-test/work"],
        &format!("./{name}"),
    )
    .await;
    let ended = wait(&server, &bins, &id).await;
    assert_eq!(ended["outcome"], "spawn-failed", "{ended}");
    assert!(!ran.exists(), "the planted program ran");
    let out = output(
        server
            .client_as(&bins, &users().alice)
            .args(["--wait", &id]),
    )
    .await;
    assert!(
        stderr(&out).contains("cannot enter the working directory /nonexistent-cq-test/work"),
        "{}",
        stderr(&out)
    );
}
