//! cq-load: the end-to-end load harness.
//!
//! Starts a real cq_server (MUNGE with a private munged, durable SQLite store) on loopback and
//! measures, in one run: throughput of N distinct trivial jobs from C concurrent clients
//! against the floor of bare fork+exec+wait of the same job; submit latency; notification
//! latency; what duplicate elimination does with N identical submissions; enqueue cost and
//! memory as the queue grows; memory per waiting client; and the same N jobs through
//! task-spooler, nq and pueue when they are installed; and jobs of a fixed length on the
//! coordinator's own worker, then on 1, 2 and 3 workers (cq_worker). Every job is `cq-stamp TAG`: each run
//! checks from the stamps that each of its jobs ran exactly once, and fails rather than print
//! a figure when not. It never asserts timings.
//!
//! ```text
//! cargo build --release -p cq-bin -p cq-benches
//! target/release/cq-load [--jobs 1000] [--clients 50] [--scale 10000] [--waiting 10000] [--json FILE]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

mod cpu;
mod measure;
mod peers;
mod report;
mod server;
mod slurm;
mod workers;

use server::Transport;

/// Measures cq against the fork+exec floor and against task-spooler, nq and pueue.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Trivial jobs for the throughput runs.
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    /// Concurrent clients for the throughput run.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Sequential samples for the latency measurements.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Jobs enqueued behind a blocking job for the scale measurement.
    #[arg(long, default_value_t = 10_000)]
    scale: usize,
    /// Clients held waiting at once for the memory-per-client measurement (issue 13's
    /// goal: 10,000 held, none dropped).
    #[arg(long, default_value_t = 10_000)]
    waiting: usize,
    /// Jobs for pueue, whose daemon polls (about 0.35 s per job).
    #[arg(long, default_value_t = 20)]
    pueue_jobs: usize,
    /// Jobs of --spread-ms each for the run on 1, 2 and 3 workers (0: no such run).
    #[arg(long, default_value_t = 100)]
    spread_jobs: usize,
    /// How long each job of the workers run sleeps, in milliseconds.
    #[arg(long, default_value_t = 100)]
    spread_ms: u64,
    /// Sequential jobs for the Slurm executor's cost per job (0: no such run; needs root
    /// and Slurm's daemons installed).
    #[arg(long, default_value_t = 20)]
    slurm_jobs: usize,
    /// Directory with cq_server and cq_client [default: next to this program].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Install the peers first (apt-get task-spooler nq; cargo install pueue).
    #[arg(long)]
    install_peers: bool,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = match args.bin_dir.clone() {
        Some(dir) => dir,
        None => std::env::current_exe()?
            .parent()
            .context("no directory of cq-load")?
            .to_owned(),
    };
    if args.install_peers {
        peers::install()?;
    }
    let work = tempfile::tempdir()?;
    let mut report = report::Report::new(&args.jobs, &args.clients);

    report.floor = measure::floor(args.jobs, work.path())?;
    let server = server::Server::start(&bin_dir, work.path())?;
    report.cq = Some(measure::throughput(
        &server,
        Transport::Munge,
        args.jobs,
        args.clients,
        work.path(),
    )?);
    report.cq_unix = Some(measure::throughput(
        &server,
        Transport::Unix,
        args.jobs,
        args.clients,
        work.path(),
    )?);
    report.submit = Some(measure::submit_latency(
        &server,
        Transport::Munge,
        args.samples,
        work.path(),
    )?);
    report.submit_unix = Some(measure::submit_latency(
        &server,
        Transport::Unix,
        args.samples,
        work.path(),
    )?);
    report.notify = Some(measure::notify_latency(
        &server,
        args.samples.min(100),
        work.path(),
    )?);
    let runtime = tokio::runtime::Runtime::new()?;
    report.parts = Some(runtime.block_on(measure::parts(&server, args.samples, work.path()))?);
    report.merging = Some(measure::merging(
        &server,
        args.jobs.min(400),
        args.clients,
        work.path(),
    )?);
    drop(server);
    // A fresh server: memory freed by the runs above would hide the growth measured here.
    let scale_work = tempfile::tempdir()?;
    let server = server::Server::start(&bin_dir, scale_work.path())?;
    let scale = measure::scale(&server, args.scale, args.waiting, scale_work.path());
    report.scale = Some(runtime.block_on(scale)?);
    drop(server);
    if args.spread_jobs > 0 {
        let spread_work = tempfile::tempdir()?;
        report.spread = workers::spread(
            &bin_dir,
            spread_work.path(),
            args.spread_jobs,
            args.spread_ms,
        )?;
    }
    if args.slurm_jobs > 0 {
        let slurm_work = tempfile::tempdir()?;
        report.slurm = Some(slurm::cost(&bin_dir, slurm_work.path(), args.slurm_jobs)?);
    }

    report
        .peers
        .push(peers::task_spooler(args.jobs, work.path()));
    report.peers.push(peers::nq(args.jobs, work.path()));
    report
        .peers
        .push(peers::pueue(args.pueue_jobs, work.path()));
    report.machine = report::machine();

    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// Median and 99th percentile of samples.
fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    if samples.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}
