//! Where a run's CPU time goes, from the kernel's accounts (`/proc/PID/stat`): the clients
//! (children this harness waited for), the server itself, the jobs (children the server
//! waited for), munged, and the whole machine. On a machine that is busy through a run, the
//! CPU time per job divided by the cores bounds the time per job from below; which part is
//! whose says what a change could still win.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

/// One process's CPU time: its own, and that of the children it waited for.
#[derive(Clone, Copy, Debug, Default)]
struct ProcessCpu {
    own: Duration,
    children: Duration,
}

fn clock_tick() -> Duration {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|hz| *hz > 0)
        .unwrap_or(100);
    Duration::from_secs(1) / u32::try_from(hz).unwrap_or(100)
}

/// `utime + stime` and `cutime + cstime` of `pid` (`self` for this process).
fn process_cpu(pid: &str) -> anyhow::Result<ProcessCpu> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: the fields follow its last ')'.
    let fields: Vec<u64> = text
        .rsplit_once(')')
        .context("no ')' in /proc/PID/stat")?
        .1
        .split_whitespace()
        .skip(11) // state .. cmajflt: utime is field 14 of the line, the 12th after ')'
        .take(4)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [utime, stime, cutime, cstime] = fields[..] else {
        anyhow::bail!("short /proc/{pid}/stat");
    };
    let tick = clock_tick();
    Ok(ProcessCpu {
        own: tick * u32::try_from(utime + stime)?,
        children: tick * u32::try_from(cutime + cstime)?,
    })
}

/// Busy time of all cores together and the number of cores, from `/proc/stat`.
fn machine_busy() -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let line = text.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal: all but idle and iowait are work.
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Ok(clock_tick() * u32::try_from(busy)?)
}

/// What the harness's own children are in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Children {
    /// `cq_client` processes.
    Clients,
    /// The jobs themselves (the floor).
    Jobs,
}

/// The accounts at one moment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CpuMark {
    harness: ProcessCpu,
    server: ProcessCpu,
    munged: ProcessCpu,
    machine: Duration,
}

impl CpuMark {
    /// Reads the accounts of this harness, the server and munged (when given).
    pub(crate) fn now(server: Option<u32>, munged: Option<u32>) -> anyhow::Result<Self> {
        Ok(Self {
            harness: process_cpu("self")?,
            server: match server {
                Some(pid) => process_cpu(&pid.to_string())?,
                None => ProcessCpu::default(),
            },
            munged: match munged {
                Some(pid) => process_cpu(&pid.to_string())?,
                None => ProcessCpu::default(),
            },
            machine: machine_busy()?,
        })
    }

    /// The CPU time spent since `self`, per job, over `jobs` jobs that took `elapsed`; the
    /// harness's own children are `whose` (the clients, or for the floor the jobs).
    pub(crate) fn per_job_since(
        &self,
        later: &CpuMark,
        run: (&str, usize, Duration),
        whose: Children,
    ) -> CpuPerJob {
        let (name, jobs, elapsed) = run;
        let own_children_are_jobs = whose == Children::Jobs;
        let per_job = |d: Duration| d.as_secs_f64() * 1000.0 / jobs.max(1) as f64;
        let mut clients = per_job(later.harness.children.saturating_sub(self.harness.children));
        let server = per_job(later.server.own.saturating_sub(self.server.own));
        let mut jobs_ms = per_job(later.server.children.saturating_sub(self.server.children));
        if own_children_are_jobs {
            jobs_ms += clients;
            clients = 0.0;
        }
        let munged = per_job(later.munged.own.saturating_sub(self.munged.own));
        let machine = per_job(later.machine.saturating_sub(self.machine));
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let total = clients + server + jobs_ms + munged;
        CpuPerJob {
            name: name.to_owned(),
            cores,
            clients_ms: clients,
            server_ms: server,
            jobs_ms,
            munged_ms: munged,
            total_ms: total,
            machine_busy_ms: machine,
            machine_busy_share: machine / (per_job(elapsed) * cores as f64).max(f64::MIN_POSITIVE),
            // The floor runs its jobs one after the other.
            bound_ms_per_job: if own_children_are_jobs {
                total
            } else {
                total / cores as f64
            },
        }
    }
}

/// CPU milliseconds per job of a run, by whose they were.
#[derive(Debug, Serialize)]
pub(crate) struct CpuPerJob {
    pub(crate) name: String,
    pub(crate) cores: usize,
    /// The `cq_client` processes (for the floor: the jobs themselves).
    pub(crate) clients_ms: f64,
    pub(crate) server_ms: f64,
    /// The jobs the server ran (`cq-stamp`).
    pub(crate) jobs_ms: f64,
    pub(crate) munged_ms: f64,
    pub(crate) total_ms: f64,
    /// All the machine's cores were busy this long per job (anything else running included).
    pub(crate) machine_busy_ms: f64,
    /// How much of the cores' time the run kept busy.
    pub(crate) machine_busy_share: f64,
    /// `total_ms` spread over all cores (for the floor, which runs one job at a time: all
    /// of it): no run of these processes can take less per job.
    pub(crate) bound_ms_per_job: f64,
}
