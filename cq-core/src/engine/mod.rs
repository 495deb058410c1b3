//! The engine: one task alone owns the scheduler, the workers and the running jobs.
//!
//! Everything that changes queue state goes through that task, so there are no locks around
//! the queue and no polling: submitters send a command with a reply channel, and each job's
//! state is published on a `watch` channel that any number of waiters can follow at the cost
//! of a little memory each. A worker's next job starts the moment its previous one is reaped.
//!
//! The task is split in two: `core/` is the state machine, free of I/O (inputs and the time
//! in, effects out: persist, reply, launch, cancel, publish), and `driver.rs` the thin async
//! loop that feeds it and carries its effects out against the store and the executors.

mod admission;
mod config;
mod core;
mod driver;
mod events;
mod handle;
mod output;
mod task;

pub use admission::Reviewer;
pub use config::{EngineConfig, UserLimits};
pub use driver::Engine;
pub use events::EngineEvent;
pub use handle::{
    Caller, Cancelled, EngineHandle, EngineStopped, JobResult, JobState, JobTicket, QueueState,
    ShutdownMode, SubmitError, SubmitOptions,
};
pub use output::{JobOutput, OUTPUT_PIECE, OutputPiece};
pub use task::{TaskFailed, TaskTicket};
