//! An engine's settings.

use std::path::PathBuf;
use std::time::Duration;

use crate::executor::DEFAULT_LOG_LIMIT;
use crate::scheduler::WorkerInfo;

/// What one user may have on the server at once, so that nobody starves the others (or the
/// disk). `None` is no limit.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserLimits {
    /// Jobs queued or running.
    pub queued_jobs: Option<usize>,
    /// Bytes of those jobs (arguments, environment, working directory).
    pub queued_bytes: Option<u64>,
    /// Bytes of output kept in the logs of its jobs (until they are pruned).
    pub log_bytes: Option<u64>,
}

impl Default for UserLimits {
    /// 1000 jobs, 64 MiB of jobs, 4 GiB of logs per user.
    fn default() -> Self {
        Self {
            queued_jobs: Some(1000),
            queued_bytes: Some(64 << 20),
            log_bytes: Some(4 << 30),
        }
    }
}

impl UserLimits {
    /// No limits at all.
    pub fn unlimited() -> Self {
        Self {
            queued_jobs: None,
            queued_bytes: None,
            log_bytes: None,
        }
    }
}

/// Settings of an [`Engine`](super::Engine).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Directory for per-job log files (`<id>.log`); output is discarded when `None`.
    pub log_dir: Option<PathBuf>,
    /// How long finished jobs (outcome and log) are kept for late watchers.
    pub retention: Duration,
    /// Put jobs that were running when the server stopped back in the queue instead of
    /// reporting them lost, unless their executor recorded where they run (those may run
    /// on, and are found again there or recorded lost).
    pub requeue_running: bool,
    /// Bytes of output kept per job; the rest is dropped after a marker.
    pub log_limit: u64,
    /// What one user may have at once.
    pub limits: UserLimits,
    /// The engine's own worker, which runs jobs with its executor one at a time: it runs
    /// the jobs whose tags it has (untagged jobs by default).
    pub worker: WorkerInfo,
    /// Whether the engine's own worker takes jobs; off for a pure coordinator whose jobs
    /// all run on workers that join ([`EngineHandle::attach_worker`](super::EngineHandle::attach_worker)).
    pub local_worker: bool,
    /// Start with the queue paused (see [`EngineHandle::set_paused`](super::EngineHandle::set_paused)): what was queued waits
    /// until an admin resumes it.
    pub paused: bool,
    /// Time limit of commands that ask for none.
    pub default_time_limit: Option<Duration>,
    /// Longest time limit a command may have; longer requests (and commands without one,
    /// when there is no default) get this.
    pub max_time_limit: Option<Duration>,
    /// How long a job that was running on another host's worker when the server stopped
    /// ([`RunningJob::runner`](crate::store::RunningJob::runner)) waits for its worker to
    /// come back before it is recorded lost.
    pub worker_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            log_dir: None,
            retention: Duration::from_secs(7 * 24 * 3600),
            requeue_running: false,
            log_limit: DEFAULT_LOG_LIMIT,
            limits: UserLimits::default(),
            worker: WorkerInfo::new("local", Vec::<String>::new()),
            local_worker: true,
            paused: false,
            default_time_limit: None,
            max_time_limit: None,
            worker_timeout: Duration::from_secs(300),
        }
    }
}

impl EngineConfig {
    /// The time limit a command gets when it asks for `requested`.
    pub fn time_limit(&self, requested: Option<Duration>) -> Option<Duration> {
        match (requested.or(self.default_time_limit), self.max_time_limit) {
            (Some(limit), Some(max)) => Some(limit.min(max)),
            (None, max) => max,
            (limit, None) => limit,
        }
    }
}

impl EngineConfig {
    /// Writes job logs to `dir`.
    #[must_use]
    pub fn with_log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }
}
