//! The engine's public face: handles, tickets and job states.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::auth::Identity;
use crate::executor::{Executor, LogChunk};
use crate::job::{CommandJob, Job, JobId, JobSummary, SubmitKey, Work};
use crate::scheduler::{Decision, WorkerInfo};
use crate::store::StoreError;

pub use crate::outcome::JobResult;

/// Where a job is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for its turn.
    Queued,
    /// Running now.
    Running,
    /// Ended.
    Finished(JobResult),
}

/// What to do with the running job when the engine stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShutdownMode {
    /// Cancel it (its process group gets SIGTERM, then SIGKILL).
    CancelRunning,
    /// Let it finish.
    FinishRunning,
}

pub(super) enum Command {
    Submit {
        job: Work,
        owner: Identity,
        options: SubmitOptions,
        reply: oneshot::Sender<Result<JobTicket, SubmitError>>,
    },
    Watch {
        id: JobId,
        by: Caller,
        reply: oneshot::Sender<Result<JobTicket, SubmitError>>,
    },
    Shutdown {
        mode: ShutdownMode,
        done: oneshot::Sender<()>,
    },
    List {
        by: Caller,
        /// With the most recently finished jobs (from the store), or live ones only.
        finished: bool,
        reply: oneshot::Sender<Result<Vec<JobSummary>, SubmitError>>,
    },
    Status {
        id: JobId,
        by: Caller,
        reply: oneshot::Sender<Result<Vec<JobSummary>, SubmitError>>,
    },
    Cancel {
        id: JobId,
        by: Caller,
        reply: oneshot::Sender<Result<Cancelled, SubmitError>>,
    },
    OpenLog {
        id: JobId,
        by: Caller,
        reply: oneshot::Sender<Result<LogAccess, SubmitError>>,
    },
    RememberRequest {
        digest: [u8; 32],
        until: SystemTime,
        reply: oneshot::Sender<Result<(), SubmitError>>,
    },
    SetPaused {
        paused: bool,
        by: Caller,
        reply: oneshot::Sender<Result<QueueState, SubmitError>>,
    },
    QueueState {
        reply: oneshot::Sender<Result<QueueState, SubmitError>>,
    },
    Wake,
    Promote {
        id: JobId,
        by: Caller,
        reply: oneshot::Sender<Result<JobSummary, SubmitError>>,
    },
    AttachWorker {
        info: WorkerInfo,
        executor: Arc<dyn Executor>,
        reply: oneshot::Sender<Result<(), SubmitError>>,
    },
    DetachWorker {
        name: String,
        reply: oneshot::Sender<Result<(), SubmitError>>,
    },
    Reattach {
        uid: u32,
        key: SubmitKey,
        reply: oneshot::Sender<Result<Option<JobTicket>, SubmitError>>,
    },
    AwaitsWorker {
        name: String,
        reply: oneshot::Sender<Result<bool, SubmitError>>,
    },
}

/// The queue as a whole: whether it is paused, and how much is in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueState {
    /// Paused: running jobs finish, nothing new starts until it is resumed.
    pub paused: bool,
    /// Jobs running now.
    pub running: usize,
    /// Jobs waiting.
    pub queued: usize,
    /// Submissions merged into running and queued jobs (each one more waiter).
    pub waiters: usize,
}

/// Who asks the engine, and with which rights over others' jobs.
///
/// A job's owner (its submitter) may watch it, see it in full, read its log and cancel it
/// for everybody; a waiter merged into it may watch it (learn its outcome) and withdraw;
/// everybody else sees its owner, state and program name only. An admin is the owner of
/// every job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Who asks.
    pub identity: Identity,
    /// Whether they have an admin's rights.
    pub admin: bool,
}

impl Caller {
    /// A caller with a user's rights.
    pub fn user(identity: Identity) -> Self {
        Self {
            identity,
            admin: false,
        }
    }

    /// A caller with an admin's rights (e.g. the embedding daemon itself).
    pub fn admin(identity: Identity) -> Self {
        Self {
            identity,
            admin: true,
        }
    }
}

/// How a submission is to be treated besides the job itself.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SubmitOptions {
    /// The submission's idempotency key: a submission with a key the same uid used before
    /// re-attaches to that job instead of queueing another.
    pub key: Option<SubmitKey>,
    /// A decision made before the engine's own hooks (by an external hook program): `Reject`
    /// refuses the job, `Merge` merges it (if that job still waits), `Accept` leaves the
    /// decision to the engine's hooks.
    pub verdict: Option<Decision>,
    /// Whether a merge into another user's job is allowed (it is refused otherwise).
    pub merge_across_users: bool,
}

impl SubmitOptions {
    /// No key, no outside verdict, no merges across users.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the idempotency key.
    #[must_use]
    pub fn with_key(mut self, key: SubmitKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets a decision made outside the engine.
    #[must_use]
    pub fn with_verdict(mut self, verdict: Decision) -> Self {
        self.verdict = Some(verdict);
        self
    }

    /// Allows (or not) merging into another user's job.
    #[must_use]
    pub fn merging_across_users(mut self, allowed: bool) -> Self {
        self.merge_across_users = allowed;
        self
    }
}

/// What a cancel request did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cancelled {
    /// The job is cancelled for everybody (asked by its owner or an admin); it is shown as
    /// it is now (a running job until its processes are gone).
    Job(JobSummary),
    /// A merged waiter withdrew: it no longer waits for the job, which goes on for its owner.
    Withdrawn(JobSummary),
}

/// Access to a job's output, as the engine grants it ([`EngineHandle::output`] reads it).
#[derive(Debug)]
pub(super) struct LogAccess {
    /// The log file, if the engine keeps logs (it may not exist yet for a queued job).
    pub path: Option<PathBuf>,
    /// The live feed of a running job's output; `None` when it is queued or finished.
    pub live: Option<broadcast::Receiver<LogChunk>>,
    /// Follows the job while it has not ended; `None` when it has.
    pub ticket: Option<JobTicket>,
}

/// A cheap, cloneable way to talk to a running engine.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) admission: Arc<super::admission::Admission>,
    pub(super) events: tokio::sync::broadcast::Sender<super::EngineEvent>,
}

impl EngineHandle {
    /// The job a submission of `uid` with `key` made before, re-attached to, if there was one
    /// (the submission is a retry).
    pub(super) async fn reattach(
        &self,
        uid: u32,
        key: SubmitKey,
    ) -> Result<Option<JobTicket>, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.request(Command::Reattach { uid, key, reply }, answer)
            .await
    }

    /// Whether the engine checks who may submit what ([`Engine::with_access_check`](crate::Engine::with_access_check)).
    #[cfg(feature = "server")]
    pub(crate) fn checks_access(&self) -> bool {
        self.admission.access.is_some()
    }

    /// Follows what happens from now on: jobs accepted, merged, refused, started and
    /// finished ([`EngineEvent`](super::EngineEvent)), each once it is on record. A follower
    /// that falls more than a few thousand events behind misses the oldest, and its
    /// receiver says how many (`RecvError::Lagged`).
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<super::EngineEvent> {
        self.events.subscribe()
    }

    /// Submits a job on behalf of `owner`. Returns once the job is queued (or merged into an
    /// equal job) and on record, with a ticket to follow it.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Rejected`] when a submit hook refuses it, [`SubmitError::OverQuota`]
    /// when `owner` has too much queued or kept, [`SubmitError::ShuttingDown`] or
    /// [`SubmitError::Stopped`] when the engine no longer takes jobs.
    pub async fn submit(&self, job: impl Job, owner: Identity) -> Result<JobTicket, SubmitError> {
        self.submit_with(Box::new(job), owner, SubmitOptions::new())
            .await
    }

    /// [`submit`](Self::submit) for a boxed job, with [`SubmitOptions`].
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub async fn submit_with(
        &self,
        job: Box<dyn Job>,
        owner: Identity,
        options: SubmitOptions,
    ) -> Result<JobTicket, SubmitError> {
        self.submit_work(Work::Local(job), owner, options).await
    }

    /// Submits a command on behalf of `owner`: data the engine admits (validity, then the
    /// engine's [`AccessCheck`](crate::AccessCheck), which may name the owner anew, and its
    /// [`Reviewer`](crate::Reviewer)), stores, compares (submit hooks, duplicate
    /// elimination), restores after a restart, checks again when it comes to start, and
    /// runs with its executor ([`Engine::with_executor`](crate::Engine::with_executor)).
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit); also [`SubmitError::Invalid`] for a command exec cannot
    /// take and [`SubmitError::Refused`] when the access check refuses it.
    pub async fn submit_command(
        &self,
        command: CommandJob,
        owner: Identity,
        options: SubmitOptions,
    ) -> Result<JobTicket, SubmitError> {
        let command = Arc::new(command);
        match self.admission.admit(self, &command, owner, options).await? {
            super::admission::Admit::Queue(owner, options) => {
                self.submit_work(Work::Command(command), owner, options)
                    .await
            }
            super::admission::Admit::Reattached(ticket) => Ok(ticket),
        }
    }

    async fn submit_work(
        &self,
        job: Work,
        owner: Identity,
        options: SubmitOptions,
    ) -> Result<JobTicket, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.request(
            Command::Submit {
                job,
                owner,
                options,
                reply,
            },
            answer,
        )
        .await
    }

    /// Records that a request with `digest` is being served, so that the same request is
    /// refused until `until` (when its credential expires), across restarts. The record is
    /// written before anything the request changes.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Replayed`] when the digest was seen and has not expired.
    pub async fn remember_request(
        &self,
        digest: [u8; 32],
        until: SystemTime,
    ) -> Result<(), SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.request(
            Command::RememberRequest {
                digest,
                until,
                reply,
            },
            answer,
        )
        .await
    }

    /// A ticket for an existing job, queued, running or recently finished, for its owner, a
    /// waiter merged into it, or an admin.
    ///
    /// # Errors
    ///
    /// [`SubmitError::UnknownJob`] when the engine has no record of it,
    /// [`SubmitError::NotPermitted`] for someone else's job.
    pub async fn watch(&self, id: JobId, by: Caller) -> Result<JobTicket, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.request(Command::Watch { id, by, reply }, answer).await
    }

    /// Stops taking jobs, deals with the running job as `mode` says, and returns once the
    /// engine has stopped. Queued jobs are not started. Calling it again (e.g. with
    /// [`ShutdownMode::CancelRunning`] on a second signal) is allowed.
    pub async fn shutdown(&self, mode: ShutdownMode) {
        let (done, stopped) = oneshot::channel();
        if self
            .commands
            .send(Command::Shutdown { mode, done })
            .await
            .is_ok()
        {
            // An error here means the engine already stopped, which is what was asked.
            let _ = stopped.await;
        }
    }

    /// The running job, the queued ones in order, and the most recently finished ones, as
    /// `by` may see them (others' jobs limited to owner, state and program name).
    ///
    /// # Errors
    ///
    /// [`SubmitError::Stopped`] when the engine has stopped; [`SubmitError::Store`] when the
    /// store cannot be read.
    pub async fn list(&self, by: Caller) -> Result<Vec<JobSummary>, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.request(
            Command::List {
                by,
                finished: true,
                reply,
            },
            answer,
        )
        .await
    }

    /// The running jobs and the queued ones in order, as `by` may see them: what
    /// [`list`](Self::list) shows without the finished jobs, and without waiting for the
    /// store.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Stopped`] when the engine has stopped.
    pub async fn live(&self, by: Caller) -> Result<Vec<JobSummary>, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.request(
            Command::List {
                by,
                finished: false,
                reply,
            },
            answer,
        )
        .await
    }

    /// What the engine knows about job `id`, as `by` may see it.
    ///
    /// # Errors
    ///
    /// [`SubmitError::UnknownJob`] when it has no record of it.
    pub async fn status(&self, id: JobId, by: Caller) -> Result<JobSummary, SubmitError> {
        let (reply, answer) = oneshot::channel();
        let mut found = self
            .request(Command::Status { id, by, reply }, answer)
            .await?;
        found.pop().ok_or(SubmitError::UnknownJob(id))
    }

    /// Cancels job `id` on behalf of `by`. Its owner or an admin cancels it for everybody: a
    /// queued job leaves the queue and ends `cancelled` at once, a running one is stopped and
    /// ends `cancelled` when its processes are gone. A waiter merged into it withdraws
    /// instead: the job goes on for the others.
    ///
    /// # Errors
    ///
    /// [`SubmitError::NotPermitted`], [`SubmitError::UnknownJob`], or
    /// [`SubmitError::AlreadyFinished`].
    pub async fn cancel(&self, id: JobId, by: Caller) -> Result<Cancelled, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.request(Command::Cancel { id, by, reply }, answer)
            .await
    }

    /// Pauses the queue (`paused`: running jobs finish, nothing new starts, submissions are
    /// still taken) or resumes it, for `by`, who must be an admin.
    ///
    /// # Errors
    ///
    /// [`SubmitError::NotPermitted`] for anybody but an admin.
    pub async fn set_paused(&self, paused: bool, by: Caller) -> Result<QueueState, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.request(Command::SetPaused { paused, by, reply }, answer)
            .await
    }

    /// Moves queued job `id` ahead of every other queued job, for `by`, who must be an admin.
    /// (Not kept across a restart: the queue then runs in acceptance order again.)
    ///
    /// # Errors
    ///
    /// [`SubmitError::NotPermitted`] for anybody but an admin; [`SubmitError::NotQueued`]
    /// when the job is not waiting.
    pub async fn promote(&self, id: JobId, by: Caller) -> Result<JobSummary, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.request(Command::Promote { id, by, reply }, answer)
            .await
    }

    /// Asks the engine to offer its free workers to the scheduler again: for a custom
    /// [`Scheduler`](crate::Scheduler) whose answer changed by itself (a time window
    /// opened, an outside resource came free). The engine asks on its own whenever a job is
    /// queued or ends.
    pub async fn wake(&self) {
        let _ = self.commands.send(Command::Wake).await;
    }

    /// Adds a worker that runs the jobs it [can run](WorkerInfo::can_run) with `executor`,
    /// one at a time, from now on: a build host that joined. A worker of the same name (one
    /// that was [detached](Self::detach_worker), or is attached) has these tags and this
    /// executor from now on; a job it runs goes on.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Rejected`] for the name of the engine's own worker;
    /// [`SubmitError::Stopped`] when the engine is gone.
    pub async fn attach_worker(
        &self,
        info: WorkerInfo,
        executor: Arc<dyn Executor>,
    ) -> Result<(), SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.request(
            Command::AttachWorker {
                info,
                executor,
                reply,
            },
            answer,
        )
        .await
    }

    /// Takes worker `name` out of the queue's reach: it is given no new job. A job it runs
    /// goes on until its executor reports its end.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Rejected`] when no worker has that name (or it is the engine's own);
    /// [`SubmitError::Stopped`] when the engine is gone.
    pub async fn detach_worker(&self, name: &str) -> Result<(), SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.request(
            Command::DetachWorker {
                name: name.to_owned(),
                reply,
            },
            answer,
        )
        .await
    }

    /// Whether a job the engine found running on worker `name` when it started waits for
    /// that worker to come back ([`RunningJob::runner`](crate::store::RunningJob::runner)).
    ///
    /// # Errors
    ///
    /// [`SubmitError::Stopped`] when the engine is gone.
    pub async fn awaits_worker(&self, name: &str) -> Result<bool, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.request(
            Command::AwaitsWorker {
                name: name.to_owned(),
                reply,
            },
            answer,
        )
        .await
    }

    /// The queue as it is now (for metrics: no job is named).
    ///
    /// # Errors
    ///
    /// [`SubmitError::Stopped`] when the engine is gone.
    pub async fn queue_state(&self) -> Result<QueueState, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.request(Command::QueueState { reply }, answer).await
    }

    /// Where job `id`'s output is, for `by`, who must be its owner or an admin.
    pub(super) async fn open_log(&self, id: JobId, by: Caller) -> Result<LogAccess, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.request(Command::OpenLog { id, by, reply }, answer)
            .await
    }

    /// Resolves once the engine has stopped (after [`shutdown`](Self::shutdown), or when it
    /// failed).
    pub async fn stopped(&self) {
        self.commands.closed().await;
    }

    async fn request<T>(
        &self,
        command: Command,
        answer: oneshot::Receiver<Result<T, SubmitError>>,
    ) -> Result<T, SubmitError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| SubmitError::Stopped)?;
        answer.await.map_err(|_| SubmitError::Stopped)?
    }
}

/// Follows one job. Dropping it does not affect the job.
#[derive(Debug)]
pub struct JobTicket {
    /// The job (the existing job's id when merged).
    pub id: JobId,
    /// Jobs ahead of it when it was accepted, including the running one.
    pub ahead: usize,
    /// Whether the submission was merged into an existing equal job.
    pub merged: bool,
    pub(super) state: watch::Receiver<JobState>,
    /// For someone other than the owner (a waiter merged into another user's job): the
    /// outcome comes limited ([`Outcome::limited`]).
    pub(super) limited: bool,
}

impl JobTicket {
    /// The job's state now.
    pub fn state(&self) -> JobState {
        self.state.borrow().clone()
    }

    /// Waits until the job has started (returns at once if it already has, or has ended).
    ///
    /// # Errors
    ///
    /// [`EngineStopped`] when the engine stopped before the job started.
    pub async fn started(&mut self) -> Result<(), EngineStopped> {
        self.state
            .wait_for(|s| !matches!(s, JobState::Queued))
            .await
            .map_err(|_| EngineStopped)?;
        Ok(())
    }

    /// Waits until the job has ended.
    ///
    /// # Errors
    ///
    /// [`EngineStopped`] when the engine stopped before the job ended.
    pub async fn finished(&mut self) -> Result<JobResult, EngineStopped> {
        let state = self
            .state
            .wait_for(|s| matches!(s, JobState::Finished(_)))
            .await
            .map_err(|_| EngineStopped)?;
        match &*state {
            JobState::Finished(result) if self.limited => Ok(JobResult {
                outcome: result.outcome.clone().limited(),
                runtime: result.runtime,
                results: result.results.clone(),
            }),
            JobState::Finished(result) => Ok(result.clone()),
            _ => unreachable!("wait_for returned a state that fails its predicate"),
        }
    }
}

/// The engine stopped before the awaited event happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the queue engine stopped before the job ended")]
pub struct EngineStopped;

/// Why a submission or watch request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// A submit hook refused the job.
    #[error("job rejected: {reason}")]
    Rejected {
        /// The hook's reason.
        reason: String,
    },
    /// The engine is shutting down and takes no new jobs.
    #[error("the server is shutting down and takes no new jobs")]
    ShuttingDown,
    /// The engine has stopped.
    #[error("the queue engine has stopped")]
    Stopped,
    /// The job has already ended; there is nothing to cancel.
    #[error("job {0} has already finished")]
    AlreadyFinished(JobId),
    /// The requester may not do this to this job.
    #[error("not permitted: {reason}")]
    NotPermitted {
        /// Why.
        reason: String,
    },
    /// The job could not be recorded in the store, so it was not accepted.
    #[error("the job store failed: {0}")]
    Store(StoreError),
    /// The requester has too much queued or kept on this server.
    #[error("over quota: {reason}")]
    OverQuota {
        /// Which limit, and what to do.
        reason: String,
    },
    /// The same request (the same credential) was already served.
    #[error(
        "this exact request was already received once: a replayed request is never served twice"
    )]
    Replayed,
    /// No job with this id is queued, running or remembered.
    #[error("no job {0} on this server (it may have finished long ago)")]
    UnknownJob(JobId),
    /// The job is not waiting (it runs, or has ended): only queued jobs can be moved.
    #[error("job {0} is not waiting in the queue (it runs or has ended)")]
    NotQueued(JobId),
    /// The command cannot be run as given (empty, a NUL byte, a bad variable name...).
    #[error("{0}")]
    Invalid(crate::job::InvalidJob),
    /// The [`AccessCheck`](crate::AccessCheck) refused the requester or the job.
    #[error("{0}")]
    Refused(crate::policy::PolicyRefusal),
    /// The [`AccessCheck`](crate::AccessCheck) could not decide (it panicked; the details
    /// are logged).
    #[error("the server could not check its policy")]
    CheckFailed,
}
