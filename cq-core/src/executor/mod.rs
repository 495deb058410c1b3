//! Running commands: the [`Executor`] trait, the [`ProcessExecutor`] (a cgroup or process
//! group per job, switched to the requester before `exec`), and the job's log.

mod cgroup;
pub(crate) mod child;
mod command;
mod log;
mod process;
mod results;

pub use cgroup::CgroupTree;
pub use command::Executor;
pub use log::{DEFAULT_LOG_LIMIT, LogChunk, LogSink};
pub use process::{Containment, DEFAULT_JOB_UMASK, DEFAULT_PATH, ProcessExecutor};
