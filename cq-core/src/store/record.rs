//! The store boundary.

use std::time::SystemTime;

use crate::auth::Identity;
use crate::job::{CommandJob, JobId, JobSummary, SubmitKey};
use crate::outcome::JobResult;

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
    /// The submission's idempotency key: a retry with the same key (by the same uid)
    /// re-attaches to this job instead of queueing another.
    pub key: Option<SubmitKey>,
    /// When it was accepted.
    pub accepted_at: SystemTime,
    /// Submitters merged into it, who wait for it too (filled by recovery).
    pub waiters: Vec<Identity>,
}

/// A job as the store describes it: its summary, and who besides its owner waits for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    /// The job as listings show it.
    pub summary: JobSummary,
    /// The uids of the submitters merged into it.
    pub waiter_uids: Vec<u32>,
}

/// A submission's idempotency key as the store recovers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownKey {
    /// The submitter.
    pub uid: u32,
    /// Its key.
    pub key: SubmitKey,
    /// The job it created or was merged into.
    pub job: JobId,
    /// Whether it was merged into another submission's job.
    pub merged: bool,
}

/// A finished job the store forgot (see [`Store::prune`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrunedJob {
    /// The job.
    pub id: JobId,
    /// Its owner.
    pub owner_uid: u32,
    /// The size of the log it kept.
    pub log_bytes: u64,
}

/// A job that was running when the store was last written. The store does not decide what
/// becomes of it: the engine finds it again where it runs, queues it again or records it
/// lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningJob {
    /// The job (without a command if it was an in-process job, or its command cannot be
    /// read).
    pub job: StoredJob,
    /// When it started.
    pub started_at: SystemTime,
    /// Where it runs, if its executor recorded that ([`Store::record_runner`]).
    pub runner: Option<RecordedRunner>,
}

/// Where a running job runs, as its executor recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRunner {
    /// The worker it runs on.
    pub worker: String,
    /// Its executor's reference to the run.
    pub reference: String,
}

/// What a store holds when the server starts, as it was left.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Jobs still to run, in acceptance order.
    pub queued: Vec<StoredJob>,
    /// Jobs that were running when the server stopped, in id order.
    pub running: Vec<RunningJob>,
    /// The smallest id never handed out (ids are never reused, even after pruning).
    pub next_id: u64,
    /// The idempotency keys of the jobs it holds.
    pub keys: Vec<KnownKey>,
    /// Digests of requests seen whose credentials have not expired, and until when.
    pub requests: Vec<([u8; 32], SystemTime)>,
    /// Bytes of kept logs per owner uid.
    pub log_bytes: Vec<(u32, u64)>,
}

/// Durable record of jobs and outcomes. Changes are applied in the order they are called;
/// queries ([`describe`](Self::describe), [`recent`](Self::recent)) see what is committed.
pub trait Store: Send + Sync + 'static {
    /// Reads the state left by the previous run, changing nothing: what becomes of the jobs
    /// that were running is the engine's decision ([`record_requeue`](Self::record_requeue),
    /// [`record_finish`](Self::record_finish)).
    fn load(&self) -> Pending<Recovered>;

    /// Records an accepted job (and that its id is used, for good).
    fn insert(&self, job: StoredJob) -> Pending<()>;

    /// Records that a job started.
    fn record_start(&self, id: JobId, at: SystemTime) -> Pending<()>;

    /// Records that a job that was started is queued again: it never ran (its worker went
    /// away before taking it), or it was running when the server stopped and the engine runs
    /// it again ([`EngineConfig::requeue_running`](crate::EngineConfig::requeue_running)).
    fn record_requeue(&self, id: JobId) -> Pending<()>;

    /// Records that running job `id` runs elsewhere, on `worker`, where its executor can find
    /// it again by `reference` after a restart ([`RunningJob::runner`]).
    fn record_runner(&self, id: JobId, worker: String, reference: String) -> Pending<()>;

    /// Records how a job ended and how much log it left.
    fn record_finish(
        &self,
        id: JobId,
        result: JobResult,
        log_bytes: u64,
        at: SystemTime,
    ) -> Pending<()>;

    /// Records one more submitter waiting for job `id` (a merged duplicate), with the key of
    /// its submission.
    fn add_waiter(
        &self,
        id: JobId,
        waiter: Identity,
        key: Option<SubmitKey>,
        at: SystemTime,
    ) -> Pending<()>;

    /// Forgets the waiters of job `id` with uid `uid` (they withdrew).
    fn remove_waiter(&self, id: JobId, uid: u32) -> Pending<()>;

    /// What the store knows about job `id`, if it still has it, as last committed (a query
    /// need not wait for operations still being written).
    fn describe(&self, id: JobId) -> Pending<Option<JobRecord>>;

    /// The `limit` most recently finished jobs, newest first, as last committed.
    fn recent(&self, limit: usize) -> Pending<Vec<JobRecord>>;

    /// Forgets jobs that finished before `before`; says which (to delete their logs).
    fn prune(&self, before: SystemTime) -> Pending<Vec<PrunedJob>>;

    /// Records that a request with this digest was served; it is refused as a replay until
    /// `until` (when its credential expires), across restarts.
    fn remember_request(&self, digest: [u8; 32], until: SystemTime) -> Pending<()>;

    /// Forgets request digests that expired before `before`.
    fn forget_requests(&self, before: SystemTime) -> Pending<()>;

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
