//! The engine's public face: handles, tickets and job states.

use std::time::Duration;

use std::path::PathBuf;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::auth::Identity;
use crate::executor::LogChunk;
use crate::job::{Job, JobId, JobSummary};
use crate::outcome::Outcome;
use crate::scheduler::Decision;
use crate::store::StoreError;

/// How a job ended and how long it ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobResult {
    /// How it ended.
    pub outcome: Outcome,
    /// Time from start to reaping (zero if it never started).
    pub runtime: Duration,
}

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
        job: Box<dyn Job>,
        owner: Identity,
        /// A decision made before the engine's own hooks (by an external hook program).
        verdict: Option<Decision>,
        reply: oneshot::Sender<Result<JobTicket, SubmitError>>,
    },
    Watch {
        id: JobId,
        reply: oneshot::Sender<Result<JobTicket, SubmitError>>,
    },
    Shutdown {
        mode: ShutdownMode,
        done: oneshot::Sender<()>,
    },
    List {
        reply: oneshot::Sender<Result<Vec<JobSummary>, SubmitError>>,
    },
    Status {
        id: JobId,
        reply: oneshot::Sender<Result<Vec<JobSummary>, SubmitError>>,
    },
    Cancel {
        id: JobId,
        by: Identity,
        reply: oneshot::Sender<Result<Vec<JobSummary>, SubmitError>>,
    },
    OpenLog {
        id: JobId,
        by: Identity,
        reply: oneshot::Sender<Result<LogAccess, SubmitError>>,
    },
}

/// Access to a job's output, as [`EngineHandle::open_log`] grants it.
#[derive(Debug)]
pub struct LogAccess {
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
}

impl EngineHandle {
    /// Submits a job on behalf of `owner`. Returns once the job is queued (or merged into an
    /// equal job), with a ticket to follow it.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Rejected`] when a submit hook refuses it, [`SubmitError::ShuttingDown`]
    /// or [`SubmitError::Stopped`] when the engine no longer takes jobs.
    pub async fn submit(&self, job: impl Job, owner: Identity) -> Result<JobTicket, SubmitError> {
        self.submit_boxed(Box::new(job), owner).await
    }

    /// [`submit`](Self::submit) for a job that is already boxed.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub async fn submit_boxed(
        &self,
        job: Box<dyn Job>,
        owner: Identity,
    ) -> Result<JobTicket, SubmitError> {
        self.submit_reviewed(job, owner, None).await
    }

    /// [`submit_boxed`](Self::submit_boxed) with a decision already made about the job by a
    /// reviewer outside the engine: `Reject` refuses it, `Merge` merges it (if that job still
    /// waits), `Accept` leaves the decision to the engine's own hooks.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub async fn submit_reviewed(
        &self,
        job: Box<dyn Job>,
        owner: Identity,
        verdict: Option<Decision>,
    ) -> Result<JobTicket, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.request(
            Command::Submit {
                job,
                owner,
                verdict,
                reply,
            },
            answer,
        )
        .await
    }

    /// A ticket for an existing job, queued, running or recently finished.
    ///
    /// # Errors
    ///
    /// [`SubmitError::UnknownJob`] when the engine has no record of it.
    pub async fn watch(&self, id: JobId) -> Result<JobTicket, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.request(Command::Watch { id, reply }, answer).await
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

    /// The running job, the queued ones in order, and the most recently finished ones.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Stopped`] when the engine has stopped; [`SubmitError::Store`] when the
    /// store cannot be read.
    pub async fn list(&self) -> Result<Vec<JobSummary>, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.request(Command::List { reply }, answer).await
    }

    /// What the engine knows about job `id`.
    ///
    /// # Errors
    ///
    /// [`SubmitError::UnknownJob`] when it has no record of it.
    pub async fn status(&self, id: JobId) -> Result<JobSummary, SubmitError> {
        let (reply, answer) = oneshot::channel();
        let mut found = self.request(Command::Status { id, reply }, answer).await?;
        found.pop().ok_or(SubmitError::UnknownJob(id))
    }

    /// Cancels job `id` on behalf of `by`, who must be one of its owners (the submitter or a
    /// merged waiter) or root. A queued job is taken out of the queue and ends `cancelled` at
    /// once; a running one is stopped and ends `cancelled` when its processes are gone.
    /// Returns the job as it is after the request.
    ///
    /// # Errors
    ///
    /// [`SubmitError::NotPermitted`], [`SubmitError::UnknownJob`], or
    /// [`SubmitError::AlreadyFinished`].
    pub async fn cancel(&self, id: JobId, by: Identity) -> Result<JobSummary, SubmitError> {
        let (reply, answer) = oneshot::channel();
        let mut found = self
            .request(Command::Cancel { id, by, reply }, answer)
            .await?;
        found.pop().ok_or(SubmitError::UnknownJob(id))
    }

    /// Opens job `id`'s output for `by`, who must be one of its owners or root.
    ///
    /// # Errors
    ///
    /// [`SubmitError::NotPermitted`] or [`SubmitError::UnknownJob`].
    pub async fn open_log(&self, id: JobId, by: Identity) -> Result<LogAccess, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.request(Command::OpenLog { id, by, reply }, answer)
            .await
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
    #[error("the job could not be recorded: {0}")]
    Store(#[source] StoreError),
    /// No job with this id is queued, running or remembered.
    #[error("no job {0} on this server (it may have finished long ago)")]
    UnknownJob(JobId),
}
