//! Several build hosts: the same jobs on the coordinator's own worker, then on 1, 2 and 3
//! workers (cq_worker, MUNGE over loopback), each job a stamp and a fixed sleep, so that the
//! time should fall near 1/N and what remains is the per-job cost of dispatching a job to a
//! worker and hearing its end.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::measure::{STAMP_VAR, Work};
use crate::server::Server;

/// One row: how long the jobs took with this many workers.
#[derive(Debug, Serialize)]
pub(crate) struct Spread {
    /// 0: the coordinator's own worker; N: N remote workers and none of its own.
    pub(crate) workers: usize,
    pub(crate) jobs: usize,
    /// Jobs that ran, each exactly once (checked from their stamps).
    pub(crate) ran: usize,
    pub(crate) job_ms: u64,
    pub(crate) seconds: f64,
    /// The least it can take: jobs × job time / workers.
    pub(crate) ideal_seconds: f64,
    /// What each job cost beyond its own time, on its worker.
    pub(crate) overhead_ms_per_job: f64,
}

/// Runs `jobs` jobs of `job_ms` from as many clients at once, on the coordinator's own
/// worker and then on 1, 2 and 3 remote workers.
pub(crate) fn spread(
    bin_dir: &Path,
    work: &Path,
    jobs: usize,
    job_ms: u64,
) -> anyhow::Result<Vec<Spread>> {
    let mut rows = Vec::new();
    for workers in [0, 1, 2, 3] {
        let dir = work.join(format!("workers-{workers}"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("cq.toml");
        // The workers run as whoever runs the harness.
        let me = Command::new("id").arg("-un").output()?;
        let me = String::from_utf8(me.stdout)?.trim().to_owned();
        std::fs::write(
            &config,
            format!("[policy]\nworkers = [\"{me}@127.0.0.1\"]\n"),
        )?;
        let mut extra = vec!["--config", config.to_str().context("UTF-8 path")?];
        if workers > 0 {
            extra.push("--no-local-worker");
        }
        let server = Server::start_with(bin_dir, &dir, &extra)?;
        let mut children = Vec::new();
        for n in 0..workers {
            children.push(WorkerProcess(start_worker(bin_dir, &server, &dir, n)?));
        }
        for n in 0..workers {
            server.wait_for_log(&["a worker joined", &format!("worker=w{n} ")])?;
        }
        rows.push(run(&server, &dir, workers, jobs, job_ms)?);
        drop(children);
    }
    Ok(rows)
}

/// Stops its worker when the row is done.
struct WorkerProcess(Child);

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_worker(bin_dir: &Path, server: &Server, dir: &Path, n: usize) -> anyhow::Result<Child> {
    let program = bin_dir.join("cq_worker");
    Command::new(&program)
        .args(["-h", "127.0.0.1", "-p", &server.addr.port().to_string()])
        .arg("--munge-socket")
        .arg(&server.munge_socket)
        .args(["--name", &format!("w{n}")])
        .arg("--spool")
        .arg(dir.join(format!("spool-{n}")))
        // The harness may run as root, and then its jobs are root's.
        .arg("--allow-root-jobs")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", program.display()))
}

fn run(
    server: &Server,
    dir: &Path,
    workers: usize,
    jobs: usize,
    job_ms: u64,
) -> anyhow::Result<Spread> {
    let job = Work::new(dir, "spread")?;
    let script = format!("\"$0\" \"$1\" && sleep {}", job_ms as f64 / 1000.0);
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let (next, failed, job, script) = (next.clone(), failed.clone(), &job, &script);
            scope.spawn(move || {
                let tag = next.fetch_add(1, Ordering::Relaxed);
                let ok = server
                    .client()
                    .arg("-q")
                    .arg("-E")
                    .arg(format!("{STAMP_VAR}={}", job.file.display()))
                    .args(["--", "sh", "-c", script])
                    .arg(job.program())
                    .arg(tag.to_string())
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} of {jobs} jobs failed with {workers} workers");
    }
    let ran = job.verify(jobs)?;
    let per_worker = jobs as f64 / workers.max(1) as f64;
    let ideal = Duration::from_millis(job_ms).as_secs_f64() * per_worker;
    Ok(Spread {
        workers,
        jobs,
        ran,
        job_ms,
        seconds: elapsed.as_secs_f64(),
        ideal_seconds: ideal,
        overhead_ms_per_job: (elapsed.as_secs_f64() - ideal) * 1000.0 / per_worker,
    })
}
