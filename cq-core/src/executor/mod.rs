//! Running commands: the [`Executor`] trait, the process-group [`ProcessExecutor`], and the
//! job's log.

mod command;
mod log;
mod process;

pub use command::{CommandRun, Executor};
pub use log::{DEFAULT_LOG_LIMIT, LogChunk, LogSink};
pub use process::{DEFAULT_PATH, ProcessExecutor, RunAs};
