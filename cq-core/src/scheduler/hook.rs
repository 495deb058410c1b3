//! Submit hooks: review each incoming job against the queue.

use crate::job::JobId;

use super::traits::{JobInfo, QueueView};

/// A hook's answer about one incoming job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Queue it.
    Accept,
    /// Do not queue it; its submitter waits for this existing job instead.
    Merge(JobId),
    /// Refuse it; the reason is shown to the submitter.
    Reject(String),
}

/// Reviews incoming jobs (duplicate elimination, policy, quotas).
///
/// Hooks run on the engine's task for every submission, so they must be quick and must not
/// block. The engine runs the hooks once per submission, before it queues the job; a merge
/// into a job that is no longer queued or running queues the newcomer instead. A hook that
/// keeps an index of its own learns when jobs start and end from
/// [`EngineHandle::events`](crate::EngineHandle::events).
pub trait SubmitHook: Send + Sync + 'static {
    /// Decides about `job`, seeing the queue as it is now.
    fn review(&self, job: &JobInfo, queue: &QueueView<'_>) -> Decision;
}

/// Accepts everything: the default.
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptAll;

impl SubmitHook for AcceptAll {
    fn review(&self, _job: &JobInfo, _queue: &QueueView<'_>) -> Decision {
        Decision::Accept
    }
}

/// Runs hooks in order; the first answer other than [`Decision::Accept`] wins.
#[derive(Default)]
pub struct HookChain {
    hooks: Vec<Box<dyn SubmitHook>>,
}

impl HookChain {
    /// An empty chain, which accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a hook.
    #[must_use]
    pub fn with(mut self, hook: impl SubmitHook) -> Self {
        self.hooks.push(Box::new(hook));
        self
    }
}

impl std::fmt::Debug for HookChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookChain")
            .field("hooks", &self.hooks.len())
            .finish()
    }
}

impl SubmitHook for HookChain {
    fn review(&self, job: &JobInfo, queue: &QueueView<'_>) -> Decision {
        self.hooks
            .iter()
            .map(|hook| hook.review(job, queue))
            .find(|decision| *decision != Decision::Accept)
            .unwrap_or(Decision::Accept)
    }
}
