//! The executor boundary: what runs a [`CommandJob`] when the engine starts it.

use std::sync::Arc;

use async_trait::async_trait;

use crate::job::{CommandJob, JobContext};
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
