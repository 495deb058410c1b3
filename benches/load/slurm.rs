//! The Slurm executor's cost per job: the same sequential jobs (each a stamp, each waited
//! for by its client) on cq_server's own process executor and on a single-node Slurm
//! cluster through `--executor slurm`, beside the floor of Slurm itself in the same run
//! (`srun true`, one at a time).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use cq_auth::munge::PrivateMunged;
use cq_core::executor::PrivateSlurm;
use serde::Serialize;

use crate::measure::{STAMP_VAR, Work};
use crate::server::Server;

/// One run's figures, per job (milliseconds, means over the jobs).
#[derive(Debug, Serialize)]
pub(crate) struct SlurmCost {
    pub(crate) jobs: usize,
    /// Jobs that ran through Slurm, each exactly once (checked from their stamps).
    pub(crate) ran: usize,
    /// `srun true`: what Slurm itself takes to run one job here, interactively.
    pub(crate) srun_ms: f64,
    /// `sbatch --wrap true`, then `scontrol show job` every 5 ms until it completed: the
    /// floor of a batch job, which the Slurm executor submits.
    pub(crate) sbatch_ms: f64,
    /// A job submitted, run and waited for with cq's own process executor.
    pub(crate) process_ms: f64,
    /// The same with `--executor slurm`.
    pub(crate) slurm_ms: f64,
    /// The executor's poll (its longest pause between looks at a job).
    pub(crate) poll_ms: u64,
}

/// Measures `jobs` sequential jobs each way; `None` (and why) when this machine cannot run
/// a Slurm cluster (not root, Slurm not installed).
pub(crate) fn cost(bin_dir: &Path, work: &Path, jobs: usize) -> anyhow::Result<SlurmCost> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the Slurm run needs root (slurmd runs jobs as their users)");
    }
    let munge_dir = work.join("slurm-munge");
    std::fs::create_dir_all(&munge_dir)?;
    let munged = PrivateMunged::start_in(&munge_dir).context("start munged for Slurm")?;
    let cluster_dir = work.join("slurm");
    std::fs::create_dir_all(&cluster_dir)?;
    let cluster = PrivateSlurm::start(&cluster_dir, &munged.socket_path())
        .context("start a single-node Slurm (slurmctld, slurmd)")?;

    let srun_ms = per_job(jobs, |_| {
        Command::new("srun")
            .args(["--partition", cluster.partition(), "true"])
            .env("SLURM_CONF", cluster.conf())
            .status()
            .is_ok_and(|s| s.success())
    })?;

    // A batch job as cq makes one, followed as closely as polling allows: the floor of the
    // executor's way (sbatch), apart from what cq adds.
    let sbatch_ms = per_job(jobs, |_| {
        let submitted = Command::new("sbatch")
            .args(["--parsable", "--output=/dev/null", "--partition"])
            .arg(cluster.partition())
            .args(["--wrap", "true"])
            .env("SLURM_CONF", cluster.conf())
            .output();
        let Ok(submitted) = submitted else {
            return false;
        };
        let id = String::from_utf8_lossy(&submitted.stdout).trim().to_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let shown = Command::new("scontrol")
                .args(["--oneliner", "show", "job", &id])
                .env("SLURM_CONF", cluster.conf())
                .output();
            if let Ok(shown) = shown
                && String::from_utf8_lossy(&shown.stdout).contains("JobState=COMPLETED")
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    })?;

    let process_dir = work.join("slurm-process");
    std::fs::create_dir_all(&process_dir)?;
    let process = Server::start_with(bin_dir, &process_dir, &[])?;
    let process_ms = sequential(&process, &process_dir, "process", jobs)?.0;
    drop(process);

    let slurm_dir = work.join("slurm-executor");
    let output = slurm_dir.join("output");
    std::fs::create_dir_all(&output)?;
    let poll = Duration::from_millis(500);
    let conf = cluster.conf().display().to_string();
    let output_arg = output.display().to_string();
    let poll_arg = format!("{}ms", poll.as_millis());
    let slurm = Server::start_with(
        bin_dir,
        &slurm_dir,
        &[
            "--executor",
            "slurm",
            "--slurm-conf",
            &conf,
            "--partition",
            cluster.partition(),
            "--slurm-output-dir",
            &output_arg,
            "--slurm-poll",
            &poll_arg,
        ],
    )?;
    let (slurm_ms, ran) = sequential(&slurm, &slurm_dir, "slurm", jobs)?;
    drop(slurm);
    Ok(SlurmCost {
        jobs,
        ran,
        srun_ms,
        sbatch_ms,
        process_ms,
        slurm_ms,
        poll_ms: poll.as_millis() as u64,
    })
}

/// Mean milliseconds of `run`, `jobs` times one after the other; fails if one fails.
fn per_job(jobs: usize, mut run: impl FnMut(usize) -> bool) -> anyhow::Result<f64> {
    let start = Instant::now();
    for n in 0..jobs {
        if !run(n) {
            bail!("run {n} of {jobs} failed");
        }
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0 / jobs.max(1) as f64)
}

/// `jobs` distinct stamp jobs through `server`, each waited for before the next; the mean
/// milliseconds per job and how many ran (each exactly once, or an error).
fn sequential(
    server: &Server,
    dir: &Path,
    name: &str,
    jobs: usize,
) -> anyhow::Result<(f64, usize)> {
    let job = Work::new(dir, name)?;
    let ms = per_job(jobs, |tag| {
        server
            .client()
            .arg("-q")
            .arg("-E")
            .arg(format!("{STAMP_VAR}={}", job.file.display()))
            .arg("--")
            .arg(job.program())
            .arg(tag.to_string())
            .status()
            .is_ok_and(|s| s.success())
    })?;
    let ran = job.verify(jobs)?;
    Ok((ms, ran))
}
