//! Results: one table on stdout, the same as JSON.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::cpu::CpuPerJob;
use crate::percentiles;

#[derive(Debug, Serialize)]
pub(crate) struct Rate {
    pub(crate) name: String,
    pub(crate) jobs: usize,
    /// Jobs that ran, each exactly once (checked from their stamps).
    pub(crate) ran: usize,
    pub(crate) seconds: f64,
    pub(crate) jobs_per_second: f64,
    pub(crate) ms_per_job: f64,
    /// Whose CPU time the run took, where the harness can tell.
    pub(crate) cpu: Option<CpuPerJob>,
}

impl Rate {
    pub(crate) fn new(name: &str, jobs: usize, ran: usize, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64();
        Self {
            name: name.to_owned(),
            jobs,
            ran,
            seconds,
            jobs_per_second: jobs as f64 / seconds.max(f64::MIN_POSITIVE),
            ms_per_job: seconds * 1000.0 / jobs.max(1) as f64,
            cpu: None,
        }
    }

    pub(crate) fn with_cpu(mut self, cpu: CpuPerJob) -> Self {
        self.cpu = Some(cpu);
        self
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    pub(crate) name: String,
    pub(crate) samples: usize,
    pub(crate) median_ms: f64,
    pub(crate) p99_ms: f64,
}

impl Latency {
    pub(crate) fn new(name: &str, samples: Vec<Duration>) -> Self {
        let count = samples.len();
        let (median, p99) = percentiles(samples);
        Self {
            name: name.to_owned(),
            samples: count,
            median_ms: ms(median),
            p99_ms: ms(p99),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[derive(Debug, Serialize)]
pub(crate) struct Scale {
    pub(crate) queued: usize,
    pub(crate) batch: usize,
    pub(crate) enqueue_first_ms: f64,
    pub(crate) enqueue_last_ms: f64,
    pub(crate) server_bytes_per_queued_job: f64,
    pub(crate) waiting: usize,
    pub(crate) waiting_dropped: usize,
    pub(crate) server_bytes_per_waiting_client: f64,
    pub(crate) waiting_client_pss_kib: u64,
}

/// What the latencies are made of, at the least, each part measured alone in the same run.
#[derive(Debug, Serialize)]
pub(crate) struct Parts {
    pub(crate) start: Latency,
    pub(crate) end: Latency,
    pub(crate) commit: Latency,
    pub(crate) munge: Latency,
}

/// Which path a latency measures, for its parts.
#[derive(Clone, Copy)]
enum Path {
    /// A submit with MUNGE: a client's start and end, its request's credential, the commit.
    SubmitMunge,
    /// A submit over the Unix socket: no credential.
    SubmitLocal,
    /// The job's end, the commit of its outcome, the post script's start.
    Notification,
}

impl Parts {
    /// What a latency on `path` cannot go below, in ms (from the parts' medians), and which
    /// parts that is.
    fn bound(&self, path: Path) -> (f64, &'static str) {
        let (start, end, commit, munge) = (
            self.start.median_ms,
            self.end.median_ms,
            self.commit.median_ms,
            self.munge.median_ms,
        );
        match path {
            Path::SubmitMunge => (start + end + munge + commit, "start + end + MUNGE + commit"),
            Path::SubmitLocal => (start + end + commit, "start + end + commit"),
            Path::Notification => (end + commit + start, "end + commit + start"),
        }
    }
}

/// Identical submissions on purpose: how many ran, how many were merged.
#[derive(Debug, Serialize)]
pub(crate) struct Merging {
    pub(crate) submissions: usize,
    pub(crate) ran: usize,
    pub(crate) merged: usize,
    pub(crate) seconds: f64,
}

/// A peer's run, or why there is none.
#[derive(Debug, Serialize)]
pub(crate) struct Peer {
    pub(crate) name: String,
    pub(crate) rate: Option<Rate>,
    pub(crate) note: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) date: String,
    pub(crate) machine: String,
    pub(crate) jobs: usize,
    pub(crate) clients: usize,
    pub(crate) floor: Rate,
    pub(crate) cq: Option<Rate>,
    /// The same run over the Unix socket (no munged).
    pub(crate) cq_unix: Option<Rate>,
    pub(crate) submit: Option<Latency>,
    pub(crate) submit_unix: Option<Latency>,
    pub(crate) notify: Option<Latency>,
    pub(crate) parts: Option<Parts>,
    pub(crate) scale: Option<Scale>,
    pub(crate) merging: Option<Merging>,
    pub(crate) peers: Vec<Peer>,
    /// The same jobs on the coordinator's own worker and on 1, 2, 3 workers.
    pub(crate) spread: Vec<crate::workers::Spread>,
    pub(crate) slurm: Option<crate::slurm::SlurmCost>,
}

impl Report {
    pub(crate) fn new(jobs: &usize, clients: &usize) -> Self {
        Self {
            date: run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            machine: String::new(),
            jobs: *jobs,
            clients: *clients,
            floor: Rate::new("", 0, 0, Duration::ZERO),
            cq: None,
            cq_unix: None,
            submit: None,
            submit_unix: None,
            notify: None,
            parts: None,
            scale: None,
            merging: None,
            peers: Vec::new(),
            spread: Vec::new(),
            slurm: None,
        }
    }

    /// `ms` in units of one fork+exec+wait of the floor.
    fn in_floor_jobs(&self, ms: f64) -> String {
        if self.floor.ms_per_job > 0.0 {
            format!("{:.2}", ms / self.floor.ms_per_job)
        } else {
            "-".to_owned()
        }
    }

    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "cq-load, {} on {}", self.date, self.machine);
        let _ = writeln!(
            out,
            "\n| run (distinct jobs, each checked to run once) | jobs | ran | jobs/s | ms/job | vs floor | cq vs it |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
        let cq_rate = self.cq.as_ref().map_or(0.0, |r| r.jobs_per_second);
        let floor = self.floor.jobs_per_second.max(f64::MIN_POSITIVE);
        let row = |out: &mut String, rate: &Rate| {
            let vs_floor = rate.jobs_per_second / floor;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.2} | {:.2}x | {:.2}x |",
                rate.name,
                rate.jobs,
                rate.ran,
                rate.jobs_per_second,
                rate.ms_per_job,
                vs_floor,
                cq_rate / rate.jobs_per_second.max(f64::MIN_POSITIVE)
            );
        };
        row(&mut out, &self.floor);
        if let Some(cq) = &self.cq {
            row(&mut out, cq);
        }
        if let Some(cq) = &self.cq_unix {
            row(&mut out, cq);
        }
        for peer in &self.peers {
            match (&peer.rate, &peer.note) {
                (Some(rate), _) => row(&mut out, rate),
                (None, note) => {
                    let _ = writeln!(
                        out,
                        "| {} | skipped: {} | | | | | |",
                        peer.name,
                        note.as_deref().unwrap_or("?")
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "\n| CPU ms per job, by whose | clients | server | jobs | munged | total | bound ms/job (total / cores) | cores busy |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for cpu in [Some(&self.floor), self.cq.as_ref(), self.cq_unix.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|r| r.cpu.as_ref())
        {
            let _ = writeln!(
                out,
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0}% |",
                cpu.name,
                cpu.clients_ms,
                cpu.server_ms,
                cpu.jobs_ms,
                cpu.munged_ms,
                cpu.total_ms,
                cpu.bound_ms_per_job,
                cpu.machine_busy_share * 100.0
            );
        }
        // One fork+exec+wait of the floor is the unit: both latencies contain at least one
        // process start (cq_client, or the post script), and the unit moves with the machine.
        let _ = writeln!(
            out,
            "\n| latency | samples | median ms | p99 ms | median in floor jobs |\n|---|---:|---:|---:|---:|"
        );
        for latency in [&self.submit, &self.submit_unix, &self.notify]
            .into_iter()
            .flatten()
        {
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} | {:.2} | {} |",
                latency.name,
                latency.samples,
                latency.median_ms,
                latency.p99_ms,
                self.in_floor_jobs(latency.median_ms)
            );
        }
        if let Some(parts) = &self.parts {
            let _ = writeln!(
                out,
                "\n| part of a latency, measured alone | samples | median ms | p99 ms | median in floor jobs |\n|---|---:|---:|---:|---:|"
            );
            for part in [&parts.start, &parts.end, &parts.commit, &parts.munge] {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.2} | {:.2} | {} |",
                    part.name,
                    part.samples,
                    part.median_ms,
                    part.p99_ms,
                    self.in_floor_jobs(part.median_ms)
                );
            }
            let _ = writeln!(
                out,
                "\n| latency | median ms | its parts (sum of medians) | ms | in floor jobs | the rest: cq's own ms |\n|---|---:|---|---:|---:|---:|"
            );
            let paths = [
                (&self.submit, Path::SubmitMunge),
                (&self.submit_unix, Path::SubmitLocal),
                (&self.notify, Path::Notification),
            ];
            for (latency, path) in paths
                .into_iter()
                .filter_map(|(latency, path)| Some((latency.as_ref()?, path)))
            {
                let (bound, what) = parts.bound(path);
                let _ = writeln!(
                    out,
                    "| {} | {:.2} | {what} | {bound:.2} | {} | {:.2} |",
                    latency.name,
                    latency.median_ms,
                    self.in_floor_jobs(bound),
                    latency.median_ms - bound
                );
            }
        }
        if let Some(m) = &self.merging {
            let _ = writeln!(
                out,
                "\n| duplicate elimination (identical submissions at once) | value |\n|---|---:|\n| submissions | {} |\n| ran | {} |\n| merged into an equal queued job | {} |",
                m.submissions, m.ran, m.merged
            );
        }
        if let Some(s) = &self.scale {
            let _ = writeln!(out, "\n| scale | value |\n|---|---:|");
            let _ = writeln!(
                out,
                "| enqueue, first {} of {} (ms each) | {:.3} |",
                s.batch, s.queued, s.enqueue_first_ms
            );
            let _ = writeln!(
                out,
                "| enqueue, last {} of {} (ms each) | {:.3} |",
                s.batch, s.queued, s.enqueue_last_ms
            );
            let _ = writeln!(
                out,
                "| server memory per queued job (bytes) | {:.0} |",
                s.server_bytes_per_queued_job
            );
            let _ = writeln!(
                out,
                "| waiting clients held / dropped | {} / {} |",
                s.waiting - s.waiting_dropped,
                s.waiting_dropped
            );
            let _ = writeln!(
                out,
                "| server memory per waiting client (bytes) | {:.0} |",
                s.server_bytes_per_waiting_client
            );
            let _ = writeln!(
                out,
                "| PSS of one waiting cq_client (KiB) | {} |",
                s.waiting_client_pss_kib
            );
        }
        if !self.spread.is_empty() {
            let _ = writeln!(
                out,
                "\n| several build hosts (jobs of {} ms, as many clients) | jobs | ran | seconds | ideal | overhead ms/job |\n|---|---:|---:|---:|---:|---:|",
                self.spread[0].job_ms
            );
            for row in &self.spread {
                let who = match row.workers {
                    0 => "the coordinator's own worker".to_owned(),
                    1 => "1 worker (cq_worker)".to_owned(),
                    n => format!("{n} workers (cq_worker)"),
                };
                let _ = writeln!(
                    out,
                    "| {who} | {} | {} | {:.2} | {:.2} | {:.1} |",
                    row.jobs, row.ran, row.seconds, row.ideal_seconds, row.overhead_ms_per_job
                );
            }
        }
        if let Some(s) = &self.slurm {
            let _ = writeln!(
                out,
                "\n| one job at a time, {} jobs ({} ran once each through Slurm) | ms per job | × process executor |\n|---|---:|---:|",
                s.jobs, s.ran
            );
            let _ = writeln!(
                out,
                "| cq, process executor (submit, run, notice) | {:.1} | 1.00 |",
                s.process_ms
            );
            let _ = writeln!(
                out,
                "| cq, Slurm executor (poll {} ms) | {:.1} | {:.2} |",
                s.poll_ms,
                s.slurm_ms,
                s.slurm_ms / s.process_ms
            );
            let _ = writeln!(
                out,
                "| sbatch, then scontrol every 5 ms (a batch job alone: the floor) | {:.1} | {:.2} |",
                s.sbatch_ms,
                s.sbatch_ms / s.process_ms
            );
            let _ = writeln!(
                out,
                "| srun true (an interactive Slurm job alone) | {:.1} | {:.2} |",
                s.srun_ms,
                s.srun_ms / s.process_ms
            );
        }
        out
    }
}

fn run(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Kernel, core count and CPU model, for the report.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{}, {cores} cores, {cpu}", run("uname", &["-srm"]))
}
