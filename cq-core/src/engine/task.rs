//! Typed tasks: an async closure queued like any job, whose value comes back to the submitter
//! ([`EngineHandle::submit_task`]).

use std::future::Future;

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::handle::{EngineHandle, JobTicket, SubmitError};
use crate::auth::Identity;
use crate::job::{Job, JobContext};
use crate::outcome::Outcome;

/// Why a task gave no value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskFailed {
    /// It returned an error (its text), or panicked.
    #[error("the task failed: {0}")]
    Failed(String),
    /// It did not get to its end: cancelled, timed out, or lost when the engine stopped.
    #[error("the task did not finish: {0}")]
    Ended(Outcome),
    /// The engine stopped before the task ended.
    #[error("the queue engine stopped before the task ended")]
    EngineStopped,
}

/// A queued task: follow it as a job ([`ticket`](Self::ticket)), or wait for its value.
#[derive(Debug)]
pub struct TaskTicket<T> {
    /// The task as a job (its id, state, outcome).
    pub ticket: JobTicket,
    value: oneshot::Receiver<T>,
}

impl<T> TaskTicket<T> {
    /// Waits for the task's value.
    ///
    /// # Errors
    ///
    /// [`TaskFailed`] when it returned an error, panicked, was cancelled or lost.
    pub async fn value(mut self) -> Result<T, TaskFailed> {
        let result = self
            .ticket
            .finished()
            .await
            .map_err(|_| TaskFailed::EngineStopped)?;
        match result.outcome {
            Outcome::Exited { code: 0 } => self
                .value
                .await
                .map_err(|_| TaskFailed::Failed("the task gave no value".into())),
            Outcome::Failed { message } => Err(TaskFailed::Failed(message)),
            other => Err(TaskFailed::Ended(other)),
        }
    }
}

/// The job a task runs as.
struct Task<F, T> {
    summary: String,
    work: F,
    value: oneshot::Sender<T>,
}

#[async_trait]
impl<F, Fut, T, E> Job for Task<F, T>
where
    F: FnOnce(JobContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    fn summary(&self) -> String {
        self.summary.clone()
    }

    async fn run(self: Box<Self>, ctx: JobContext) -> Outcome {
        let Self { work, value, .. } = *self;
        let cancel = ctx.cancel.clone();
        tokio::select! {
            done = work(ctx) => match done {
                Ok(done) => {
                    let _ = value.send(done);
                    Outcome::Exited { code: 0 }
                }
                Err(e) => Outcome::Failed {
                    message: e.to_string(),
                },
            },
            () = cancel.cancelled() => Outcome::Cancelled,
        }
    }
}

impl EngineHandle {
    /// Queues `work` (an async closure given the job's context) as an in-process job, one at
    /// a time with every other job, and hands back its value when it has run: the typed way
    /// to serialise a daemon's own work. An `Err` it returns ends the job as
    /// [`Outcome::Failed`] with the error's text, as does a panic; cancelling the job stops
    /// `work` where it waits. Tasks live in memory: a restart reports them lost.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub async fn submit_task<F, Fut, T, E>(
        &self,
        summary: impl Into<String>,
        owner: Identity,
        work: F,
    ) -> Result<TaskTicket<T>, SubmitError>
    where
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let (value, receiver) = oneshot::channel();
        let task = Task {
            summary: summary.into(),
            work,
            value,
        };
        let ticket = self.submit(task, owner).await?;
        Ok(TaskTicket {
            ticket,
            value: receiver,
        })
    }
}
