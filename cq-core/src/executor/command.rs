//! The executor boundary, and the job that runs a [`CommandJob`] through an executor.

use std::sync::Arc;

use async_trait::async_trait;

use crate::job::{CommandJob, Job, JobContext};
use crate::outcome::Outcome;

/// Runs one command to its end.
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Runs `job`, writing its output to `ctx.log`, stopping it when `ctx.cancel` fires.
    /// Never returns before everything it started is reaped.
    async fn run(&self, job: &CommandJob, ctx: JobContext) -> Outcome;
}

#[async_trait]
impl<T: Executor + ?Sized> Executor for Arc<T> {
    async fn run(&self, job: &CommandJob, ctx: JobContext) -> Outcome {
        (**self).run(job, ctx).await
    }
}

/// A [`CommandJob`] bound to the executor that will run it: how network jobs enter the
/// engine, as just one more kind of [`Job`].
#[derive(Debug)]
pub struct CommandRun<E> {
    command: CommandJob,
    executor: Arc<E>,
}

impl<E: Executor> CommandRun<E> {
    /// Binds `command` to `executor`.
    pub fn new(command: CommandJob, executor: Arc<E>) -> Self {
        Self { command, executor }
    }
}

#[async_trait]
impl<E: Executor> Job for CommandRun<E> {
    fn summary(&self) -> String {
        self.command.summary()
    }

    fn command(&self) -> Option<&CommandJob> {
        Some(&self.command)
    }

    async fn run(self: Box<Self>, ctx: JobContext) -> Outcome {
        self.executor.run(&self.command, ctx).await
    }
}
