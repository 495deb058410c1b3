//! The measurements against cq.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use cq_auth::munge::{MungeAuthenticator, MungeCredentialSource, MungeSocket};
use cq_core::{Client, CommandJob, SubmitKey};
use cq_transport_tcp::TcpConnector;

use crate::cpu::{Children, CpuMark};
use crate::report::{Latency, Merging, Parts, Rate, Scale};
use crate::server::{Server, Transport, memory_kib};

/// Waiting clients submitting at the same moment in the memory measurement.
const SUBMITTING_AT_ONCE: usize = 256;

/// The variable naming the file cq-stamp appends the time to.
pub(crate) const STAMP_VAR: &str = "CQ_LOAD_STAMP";

/// The job of a measured run: `cq-stamp TAG`, a distinct tag per job, stamping into a file of
/// the run's own. Every run checks from the stamps that each job ran exactly once: a figure
/// that counted merged or lost submissions would not be printed.
pub(crate) struct Work {
    program: PathBuf,
    pub(crate) file: PathBuf,
}

impl Work {
    /// A run's job, stamping into `work/NAME.stamps`.
    pub(crate) fn new(work: &Path, name: &str) -> anyhow::Result<Self> {
        let program = std::env::current_exe()?.with_file_name("cq-stamp");
        if !program.is_file() {
            bail!(
                "{} is missing: build it with `cargo build --release -p cq-benches --bins`",
                program.display()
            );
        }
        Ok(Self {
            program,
            file: work.join(format!("{name}.stamps")),
        })
    }

    /// The job's program.
    pub(crate) fn program(&self) -> &Path {
        &self.program
    }

    /// A command that runs job `tag` directly.
    pub(crate) fn command(&self, tag: usize) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg(tag.to_string()).env(STAMP_VAR, &self.file);
        cmd
    }

    /// Each tag's stamp (the time it ran, ns since the epoch); for tags that ran once.
    fn stamps(&self) -> anyhow::Result<BTreeMap<usize, u64>> {
        let text = std::fs::read_to_string(&self.file)?;
        text.lines()
            .map(|line| {
                let mut words = line.split_whitespace();
                let tag = words.next().and_then(|t| t.parse().ok());
                let time = words.next().and_then(|t| t.parse().ok());
                tag.zip(time)
                    .with_context(|| format!("not a stamp: {line:?}"))
            })
            .collect()
    }

    /// How many times each tag ran.
    fn tally(&self) -> anyhow::Result<BTreeMap<usize, usize>> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let mut runs = BTreeMap::new();
        for line in text.lines() {
            let tag = line
                .split_whitespace()
                .next()
                .and_then(|t| t.parse().ok())
                .with_context(|| format!("a stamp without a tag: {line:?}"))?;
            *runs.entry(tag).or_default() += 1;
        }
        Ok(runs)
    }

    /// Checks that jobs `0..jobs` each ran exactly once; returns how many ran.
    pub(crate) fn verify(&self, jobs: usize) -> anyhow::Result<usize> {
        let runs = self.tally()?;
        if let Some((tag, n)) = runs.iter().find(|(_, n)| **n != 1) {
            bail!("job {tag} ran {n} times");
        }
        if let Some(missing) = (0..jobs).find(|t| !runs.contains_key(t)) {
            bail!("job {missing} never ran ({} of {jobs} ran)", runs.len());
        }
        if runs.len() != jobs {
            bail!("{} jobs ran, {jobs} were submitted", runs.len());
        }
        Ok(runs.len())
    }

    /// How many runs there were in all.
    pub(crate) fn runs(&self) -> anyhow::Result<usize> {
        Ok(self.tally()?.values().sum())
    }
}

/// N × fork+exec+wait of the job from one process: the least any queue can cost.
pub(crate) fn floor(jobs: usize, work: &Path) -> anyhow::Result<Rate> {
    let job = Work::new(work, "floor")?;
    let name = "fork+exec of the job (floor)";
    let before = CpuMark::now(None, None)?;
    let start = Instant::now();
    for tag in 0..jobs {
        let _ = job.command(tag).status();
    }
    let elapsed = start.elapsed();
    let cpu = before.per_job_since(
        &CpuMark::now(None, None)?,
        (name, jobs, elapsed),
        Children::Jobs,
    );
    let ran = job.verify(jobs)?;
    Ok(Rate::new(name, jobs, ran, elapsed).with_cpu(cpu))
}

/// N distinct jobs through cq from C concurrent `cq_client` processes, first submit to last
/// notification.
pub(crate) fn throughput(
    server: &Server,
    transport: Transport,
    jobs: usize,
    clients: usize,
    work: &Path,
) -> anyhow::Result<Rate> {
    let job = Work::new(work, &format!("throughput-{transport:?}"))?;
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let munged = match transport {
        Transport::Munge => Some(server.munged_pid()?),
        Transport::Unix => None,
    };
    let before = CpuMark::now(Some(server.pid()), munged)?;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..clients {
            let (next, failed, job) = (next.clone(), failed.clone(), &job);
            scope.spawn(move || {
                loop {
                    let tag = next.fetch_add(1, Ordering::Relaxed);
                    if tag >= jobs {
                        break;
                    }
                    let ok = server
                        .client_over(transport)
                        .arg("-q")
                        .arg("-E")
                        .arg(format!("{STAMP_VAR}={}", job.file.display()))
                        .arg("--")
                        .arg(job.program())
                        .arg(tag.to_string())
                        .status()
                        .is_ok_and(|s| s.success());
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let after = CpuMark::now(Some(server.pid()), munged)?;
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} of {jobs} cq_client runs failed");
    }
    let ran = job.verify(jobs)?;
    let name = format!(
        "cq, {clients} concurrent clients ({})",
        transport.describe()
    );
    let cpu = before.per_job_since(&after, (&name, jobs, elapsed), Children::Clients);
    Ok(Rate::new(&name, jobs, ran, elapsed).with_cpu(cpu))
}

/// N identical submissions at once: duplicate elimination merges those that find an equal
/// job still queued. Counts what ran.
pub(crate) fn merging(
    server: &Server,
    submissions: usize,
    clients: usize,
    work: &Path,
) -> anyhow::Result<Merging> {
    let job = Work::new(work, "merging")?;
    let next = Arc::new(AtomicUsize::new(0));
    let merged = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..clients.min(submissions) {
            let (next, merged, failed, job) = (next.clone(), merged.clone(), failed.clone(), &job);
            scope.spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < submissions {
                    let out = server
                        .client()
                        .arg("-E")
                        .arg(format!("{STAMP_VAR}={}", job.file.display()))
                        .arg("--")
                        .arg(job.program())
                        .arg("0")
                        .stderr(Stdio::piped())
                        .output();
                    match out {
                        Ok(out) if out.status.success() => {
                            if String::from_utf8_lossy(&out.stderr).contains("merged into job") {
                                merged.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let elapsed = start.elapsed();
    if failed.load(Ordering::Relaxed) > 0 {
        bail!(
            "{} identical submissions failed",
            failed.load(Ordering::Relaxed)
        );
    }
    let ran = job.runs()?;
    let merged = merged.load(Ordering::Relaxed);
    if ran + merged != submissions {
        bail!("{submissions} identical submissions: {ran} ran and {merged} merged");
    }
    Ok(Merging {
        submissions,
        ran,
        merged,
        seconds: elapsed.as_secs_f64(),
    })
}

/// `cq_client --detach` of one job on an idle server: client start to durable acknowledgement.
pub(crate) fn submit_latency(
    server: &Server,
    transport: Transport,
    samples: usize,
    work: &Path,
) -> anyhow::Result<Latency> {
    let job = Work::new(work, &format!("submit-{transport:?}"))?;
    let mut times = Vec::with_capacity(samples);
    for tag in 0..samples {
        let start = Instant::now();
        let out = server
            .client_over(transport)
            .args(["-q", "--detach", "-E"])
            .arg(format!("{STAMP_VAR}={}", job.file.display()))
            .arg("--")
            .arg(job.program())
            .arg(tag.to_string())
            .stdout(Stdio::null())
            .status()?;
        times.push(start.elapsed());
        if !out.success() {
            bail!("cq_client --detach failed");
        }
    }
    Ok(Latency::new(
        &format!(
            "submit (cq_client --detach, start to durable ack; {})",
            transport.describe()
        ),
        times,
    ))
}

/// From the job's exit to the client's post script starting: both are cq-stamp (next to
/// cq-load), stamping the time into a file.
pub(crate) fn notify_latency(
    server: &Server,
    samples: usize,
    work: &Path,
) -> anyhow::Result<Latency> {
    let me = std::env::current_exe()?.with_file_name("cq-stamp");
    if !me.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release -p cq-benches --bins`",
            me.display()
        );
    }
    let (job_file, post_file) = (work.join("job.stamps"), work.join("post.stamps"));
    for _ in 0..samples {
        let status = server
            .client()
            .arg("-q")
            .arg("-E")
            .arg(format!("{STAMP_VAR}={}", job_file.display()))
            .arg("-P")
            .arg(&me)
            .env(STAMP_VAR, &post_file)
            .arg("--")
            .arg(&me)
            .status()?;
        if !status.success() {
            bail!("a notification latency run failed");
        }
    }
    // The time is a stamp's last word (the post script is given arguments, which it writes
    // before it).
    let read = |file: &Path| -> anyhow::Result<Vec<u128>> {
        std::fs::read_to_string(file)?
            .lines()
            .map(|l| Ok(l.split_whitespace().last().unwrap_or_default().parse()?))
            .collect()
    };
    let (jobs, posts) = (read(&job_file)?, read(&post_file)?);
    let times = jobs
        .iter()
        .zip(&posts)
        .map(|(job, post)| Duration::from_nanos(post.saturating_sub(*job) as u64))
        .collect();
    Ok(Latency::new(
        "notification (job exit to post script start)",
        times,
    ))
}

/// The parts of the two latencies that no change to cq's own code removes, each measured
/// alone: a lean program's start and end (`cq-stamp`, spawned and waited for as cq and the
/// floor do), one durable commit of cq's store (its SQLite file in the same file system as
/// the server's), one MUNGE credential made and checked against the server's munged.
pub(crate) async fn parts(server: &Server, samples: usize, work: &Path) -> anyhow::Result<Parts> {
    use cq_core::store::{SqliteStore, Store, StoredJob};
    use cq_core::{Authenticator, CredentialSource, Identity, JobId, JobResult, Outcome, PeerInfo};

    let job = Work::new(work, "parts")?;
    let (mut start, mut end) = (Vec::new(), Vec::new());
    let mut before = Vec::new();
    for tag in 0..samples {
        let spawned = SystemTime::now();
        let status = job.command(tag).status()?;
        let reaped = SystemTime::now();
        if !status.success() {
            bail!("cq-stamp failed: {status}");
        }
        before.push((spawned, reaped));
    }
    job.verify(samples)?;
    for (tag, stamp) in job.stamps()? {
        let (spawned, reaped) = before[tag];
        let stamp = UNIX_EPOCH + Duration::from_nanos(stamp);
        start.push(stamp.duration_since(spawned).unwrap_or_default());
        end.push(reaped.duration_since(stamp).unwrap_or_default());
    }

    let store_dir = work.join("parts-store");
    std::fs::create_dir_all(&store_dir)?;
    let store = SqliteStore::open(&store_dir.join("cq.db"))?;
    let mut commits = Vec::with_capacity(2 * samples);
    for i in 0..samples {
        let id = JobId(i as u64 + 1);
        // A submission's commit, then an outcome's: one fsync each, as in the server.
        let began = Instant::now();
        store
            .insert(StoredJob {
                id,
                owner: Identity::local(),
                summary: format!("{} {i}", job.program().display()),
                command: Some(CommandJob::new([
                    job.program().display().to_string(),
                    i.to_string(),
                ])),
                key: Some(SubmitKey::random()),
                accepted_at: SystemTime::now(),
                waiters: Vec::new(),
            })
            .await?;
        commits.push(began.elapsed());
        let began = Instant::now();
        let result = JobResult {
            outcome: Outcome::Exited { code: 0 },
            runtime: Duration::from_millis(1),
            results: Vec::new(),
        };
        store
            .record_finish(id, result, 0, SystemTime::now())
            .await?;
        commits.push(began.elapsed());
    }

    let socket = MungeSocket::at(&server.munge_socket);
    let (source, verifier) = (
        MungeCredentialSource::new(socket.clone()),
        MungeAuthenticator::new(socket),
    );
    let mut munge = Vec::with_capacity(samples);
    for i in 0..samples {
        let request = format!("request {i}");
        let began = Instant::now();
        let credential = source.credential_for(request.as_bytes()).await?;
        verifier
            .verify(request.as_bytes(), &credential, &PeerInfo::default())
            .await?;
        munge.push(began.elapsed());
    }
    Ok(Parts {
        start: Latency::new("a lean program's start (spawn to its first stamp)", start),
        end: Latency::new("a program's end (its stamp to its parent's wait)", end),
        commit: Latency::new(
            "one durable commit of cq's store alone (SQLite, fsync; same file system)",
            commits,
        ),
        munge: Latency::new("a MUNGE credential made and checked (munged, twice)", munge),
    })
}

/// Enqueue cost at the start and end of a long queue, server memory per queued job and per
/// waiting client, and the PSS of one waiting cq_client.
pub(crate) async fn scale(
    server: &Server,
    count: usize,
    waiting: usize,
    work: &Path,
) -> anyhow::Result<Scale> {
    let socket = MungeSocket::at(&server.munge_socket);
    let me = nix::unistd::getuid().as_raw();
    let client = Arc::new(Client::new(
        TcpConnector::new("127.0.0.1", server.addr.port()),
        // As cq_client does: replies are then tagged, not signed one by one.
        MungeCredentialSource::new(socket.clone()).seal_keys_for(vec![0, me]),
        MungeAuthenticator::new(socket).allow_only_uids(vec![0, me]),
    ));
    // Block the queue: nothing below runs until the measurement is over.
    let gate = work.join("gate");
    Command::new("mkfifo").arg(&gate).status()?;
    client
        .submit(
            CommandJob::new(["cat", gate.to_str().context("path")?]),
            SubmitKey::random(),
        )
        .await?
        .close()
        .await;

    let batch = 1000.min(count.max(1));
    let rss_before = memory_kib(server.pid(), "status", "VmRSS:")?;
    let mut first = Duration::ZERO;
    let start = Instant::now();
    let mut last_start = start;
    for i in 0..count {
        if i + batch == count {
            last_start = Instant::now();
        }
        // Distinct jobs: equal ones would be merged, and a merge costs no queue space.
        let submission = client
            .submit(
                CommandJob::new(["/bin/true", &i.to_string()]),
                SubmitKey::random(),
            )
            .await?;
        if submission.merged {
            bail!("queued job {i} was merged into job {}", submission.job);
        }
        submission.close().await;
        if i + 1 == batch {
            first = start.elapsed();
        }
    }
    let last = last_start.elapsed();
    let rss_queued = memory_kib(server.pid(), "status", "VmRSS:")?;

    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::channel(waiting.max(1));
    // Clients arrive a few hundred at a time, as from many hosts: 10,000 credentials asked
    // of one munged at once overflow its socket's backlog (EAGAIN), a failure of this
    // harness's side, not of the server. Each one keeps waiting once its job is accepted.
    let arriving = Arc::new(tokio::sync::Semaphore::new(SUBMITTING_AT_ONCE));
    let mut holders = Vec::new();
    for i in 0..waiting {
        let (client, accepted) = (client.clone(), accepted_tx.clone());
        let arriving = arriving.clone();
        holders.push(tokio::spawn(async move {
            let job = CommandJob::new(["/bin/true", "waiting", &i.to_string()]);
            let permit = arriving.acquire_owned().await;
            let submitted = client.submit(job, SubmitKey::random()).await;
            drop(permit);
            match submitted {
                Ok(submission) => {
                    let _ = accepted.send(true).await;
                    // Waits until the task is aborted: the queue is blocked.
                    let _ = submission.wait().await;
                }
                Err(e) => {
                    eprintln!("cq-load: a waiting client was refused: {e}");
                    let _ = accepted.send(false).await;
                }
            }
        }));
    }
    let mut dropped = 0;
    for _ in 0..waiting {
        if !accepted_rx.recv().await.unwrap_or(false) {
            dropped += 1;
        }
    }
    let rss_waiting = memory_kib(server.pid(), "status", "VmRSS:")?;

    // One real cq_client waiting: measured once it says its job is queued.
    let mut one = server
        .client()
        .args(["--", "/bin/true"])
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = one.stderr.take().context("client stderr")?;
    tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr).lines().next()
    })
    .await?;
    let client_pss = memory_kib(one.id(), "smaps_rollup", "Pss:")?;
    let _ = one.kill();
    let _ = one.wait();
    for holder in holders {
        holder.abort();
    }
    Ok(Scale {
        queued: count,
        batch,
        enqueue_first_ms: first.as_secs_f64() * 1000.0 / batch as f64,
        enqueue_last_ms: last.as_secs_f64() * 1000.0 / batch as f64,
        server_bytes_per_queued_job: (rss_queued.saturating_sub(rss_before) * 1024) as f64
            / count.max(1) as f64,
        waiting,
        waiting_dropped: dropped,
        server_bytes_per_waiting_client: (rss_waiting.saturating_sub(rss_queued) * 1024) as f64
            / waiting.saturating_sub(dropped).max(1) as f64,
        waiting_client_pss_kib: client_pss,
    })
}
