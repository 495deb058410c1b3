//! The engine: an actor that alone owns the scheduler and the running job.
//!
//! Everything that changes queue state goes through one task, so there are no locks around
//! the queue and no polling: submitters send a command with a reply channel, and each job's
//! state is published on a `watch` channel that any number of waiters can follow at the cost
//! of a little memory each. The next job starts the moment the previous one is reaped.

mod actor;
mod handle;

pub use actor::{Engine, EngineConfig, UserLimits};
pub use handle::{
    Caller, Cancelled, EngineHandle, EngineStopped, JobResult, JobState, JobTicket, LogAccess,
    ShutdownMode, SubmitError, SubmitOptions,
};
