//! The scheduler trait and the view of the queue that hooks get.

use std::collections::vec_deque;

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
    pub command: Option<CommandJob>,
}

/// A read-only view of the queue: the running job and the queued ones in order.
#[derive(Clone, Debug)]
pub struct QueueView<'a> {
    running: Option<&'a JobInfo>,
    queued: vec_deque::Iter<'a, JobInfo>,
}

impl<'a> QueueView<'a> {
    /// A view over a running job and an ordered queue.
    pub fn new(running: Option<&'a JobInfo>, queued: vec_deque::Iter<'a, JobInfo>) -> Self {
        Self { running, queued }
    }

    /// The job running now, if any.
    pub fn running(&self) -> Option<&'a JobInfo> {
        self.running
    }

    /// The queued jobs, next first.
    pub fn queued(&self) -> impl ExactSizeIterator<Item = &'a JobInfo> + 'a {
        self.queued.clone()
    }

    /// The running job (if any), then the queued ones.
    pub fn all(&self) -> impl Iterator<Item = &'a JobInfo> + 'a {
        self.running.into_iter().chain(self.queued.clone())
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
