//! The scheduler trait and the view of the queue that hooks get.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::auth::Identity;
use crate::job::{CommandJob, JobId};
use crate::outcome::Outcome;

use super::hook::SubmitHook;

/// What the scheduler and hooks know about a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    /// The job's id.
    pub id: JobId,
    /// Who submitted it.
    pub owner: Identity,
    /// One line saying what it does.
    pub summary: String,
    /// The command, for jobs that are one (hooks compare these to find duplicates).
    pub command: Option<Arc<CommandJob>>,
}

impl JobInfo {
    /// Whether `other` does the same work: the same command line, working directory and
    /// environment (as a set: order and repeated names do not matter, the last value wins),
    /// for the same user (its groups come from the account database, so the uid decides).
    /// In-process jobs never do the same work as anything.
    pub fn same_work(&self, other: &JobInfo) -> bool {
        match (&self.command, &other.command) {
            (Some(a), Some(b)) => {
                self.owner.uid == other.owner.uid
                    && a.argv == b.argv
                    && a.cwd == b.cwd
                    && environment(a) == environment(b)
            }
            _ => false,
        }
    }

    /// A hash that equal work (see [`same_work`](Self::same_work)) shares, for indexes.
    pub fn work_hash(&self) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let command = self.command.as_ref()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (
            self.owner.uid,
            &command.argv,
            &command.cwd,
            environment(command),
        )
            .hash(&mut hasher);
        Some(hasher.finish())
    }
}

fn environment(command: &CommandJob) -> BTreeMap<&str, &str> {
    command
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// What a scheduler shows hooks of its queue.
pub trait QueueSource {
    /// The job running now, if any.
    fn running(&self) -> Option<&JobInfo>;

    /// The queued jobs, next first.
    fn queued(&self) -> Box<dyn Iterator<Item = &JobInfo> + '_>;

    /// How many jobs are queued.
    fn queued_len(&self) -> usize;

    /// A queued job that does the same work as `job`. Schedulers with long queues should
    /// answer from an index; the default scans the queue.
    fn find_same_work(&self, job: &JobInfo) -> Option<&JobInfo> {
        self.queued().find(|queued| queued.same_work(job))
    }
}

/// A read-only view of the queue: the running job and the queued ones in order.
#[derive(Clone, Copy)]
pub struct QueueView<'a> {
    source: &'a dyn QueueSource,
}

impl std::fmt::Debug for QueueView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueView")
            .field("queued", &self.source.queued_len())
            .finish_non_exhaustive()
    }
}

impl<'a> QueueView<'a> {
    /// A view of `source`.
    pub fn new(source: &'a dyn QueueSource) -> Self {
        Self { source }
    }

    /// The job running now, if any.
    pub fn running(&self) -> Option<&'a JobInfo> {
        self.source.running()
    }

    /// The queued jobs, next first.
    pub fn queued(&self) -> impl Iterator<Item = &'a JobInfo> + 'a {
        self.source.queued()
    }

    /// How many jobs are queued.
    pub fn queued_len(&self) -> usize {
        self.source.queued_len()
    }

    /// The running job (if any), then the queued ones.
    pub fn all(&self) -> impl Iterator<Item = &'a JobInfo> + 'a {
        self.source
            .running()
            .into_iter()
            .chain(self.source.queued())
    }

    /// A queued job doing the same work as `job` (see [`JobInfo::same_work`]), or with
    /// `include_running` the running one.
    pub fn find_same_work(&self, job: &JobInfo, include_running: bool) -> Option<&'a JobInfo> {
        self.source.find_same_work(job).or_else(|| {
            self.source
                .running()
                .filter(|running| include_running && running.same_work(job))
        })
    }
}

/// What a scheduler did with a submitted job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Queued; `ahead` jobs (including the running one) come before it.
    Accepted {
        /// Jobs ahead of it.
        ahead: usize,
    },
    /// Not queued: the submitter becomes one more waiter of job `into`.
    Merged {
        /// The existing job.
        into: JobId,
    },
    /// Not queued, for this reason (shown to the client).
    Rejected {
        /// Why.
        reason: String,
    },
}

/// Decides the order in which jobs run. Implementations must be deterministic.
pub trait Scheduler: Send + 'static {
    /// Offers a job with a fresh id; `hook` reviews it first.
    fn submit(&mut self, job: JobInfo, hook: &dyn SubmitHook) -> Admission;

    /// The job to start now, if one may start. Returns `None` while a job is running.
    fn next(&mut self) -> Option<JobId>;

    /// Takes queued job `id` out of the queue (it was cancelled); `false` if it is not queued.
    fn remove(&mut self, id: JobId) -> bool;

    /// Records that job `id` ended, so that the next one may start.
    fn finish(&mut self, id: JobId, outcome: &Outcome);

    /// The job running now and the queued ones.
    fn view(&self) -> QueueView<'_>;
}
