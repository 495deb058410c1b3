//! The engine: an actor that alone owns the scheduler, the workers and the running jobs.
//!
//! Everything that changes queue state goes through one task, so there are no locks around
//! the queue and no polling: submitters send a command with a reply channel, and each job's
//! state is published on a `watch` channel that any number of waiters can follow at the cost
//! of a little memory each. A worker's next job starts the moment its previous one is reaped.

mod actor;
mod admission;
mod events;
mod handle;
mod task;

pub use actor::{Engine, EngineConfig, UserLimits};
pub use admission::Reviewer;
pub use events::EngineEvent;
pub use handle::{
    Caller, Cancelled, EngineHandle, EngineStopped, JobResult, JobState, JobTicket, LogAccess,
    QueueState, ShutdownMode, SubmitError, SubmitOptions,
};
pub use task::{TaskFailed, TaskTicket};
