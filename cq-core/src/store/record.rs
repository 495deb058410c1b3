//! The store boundary.

use std::time::SystemTime;

use crate::auth::Identity;
use crate::engine::JobResult;
use crate::job::{CommandJob, JobId, JobSummary};

use super::pending::Pending;

/// What the store keeps about an accepted job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredJob {
    /// The job's id.
    pub id: JobId,
    /// Who submitted it.
    pub owner: Identity,
    /// One line saying what it does.
    pub summary: String,
    /// The command; `None` for in-process jobs, which cannot be run again after a restart.
    pub command: Option<CommandJob>,
    /// When it was accepted.
    pub accepted_at: SystemTime,
    /// Submitters merged into it, who wait for it too (filled by recovery).
    pub waiters: Vec<Identity>,
}

/// What a store holds when the server starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Jobs still to run, in acceptance order.
    pub queued: Vec<StoredJob>,
    /// Jobs that were running when the server stopped; now recorded as lost.
    pub lost: Vec<JobId>,
    /// Jobs that were running and were put back in the queue instead (first in `queued`).
    pub requeued: Vec<JobId>,
    /// The smallest id never handed out.
    pub next_id: u64,
}

/// Durable record of jobs and outcomes. Operations are applied in the order they are called.
pub trait Store: Send + Sync + 'static {
    /// Reads the state left by the previous run. Jobs that were running are recorded as
    /// lost, or put back in the queue when `requeue_running` is set.
    fn recover(&self, requeue_running: bool) -> Pending<Recovered>;

    /// Records an accepted job.
    fn insert(&self, job: StoredJob) -> Pending<()>;

    /// Records that a job started.
    fn record_start(&self, id: JobId, at: SystemTime) -> Pending<()>;

    /// Records how a job ended.
    fn record_finish(&self, id: JobId, result: JobResult, at: SystemTime) -> Pending<()>;

    /// Records one more submitter waiting for job `id` (a merged duplicate).
    fn add_waiter(&self, id: JobId, waiter: Identity, at: SystemTime) -> Pending<()>;

    /// What the store knows about job `id`, if it still has it.
    fn describe(&self, id: JobId) -> Pending<Option<JobSummary>>;

    /// The `limit` most recently finished jobs, newest first.
    fn recent(&self, limit: usize) -> Pending<Vec<JobSummary>>;

    /// Forgets jobs that finished before `before`; returns their ids (to delete their logs).
    fn prune(&self, before: SystemTime) -> Pending<Vec<JobId>>;

    /// Resolves once everything enqueued before it is committed.
    fn flush(&self) -> Pending<()>;
}

/// Why the store failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store's worker has stopped.
    #[error("the job store has stopped")]
    Closed,
    /// The database could not be opened or set up.
    #[error("cannot open the job store {path}: {reason}")]
    Open {
        /// The database file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A read or write failed (disk full, I/O error, corruption).
    #[error("job store {what} failed: {reason}")]
    Database {
        /// The operation.
        what: &'static str,
        /// Why.
        reason: String,
    },
}
