//! Running commands: the [`Executor`] trait, the [`ProcessExecutor`] (a cgroup or process
//! group per job, switched to the requester before `exec`), the [`SlurmExecutor`] (a Slurm
//! batch job per job, submitted with the requester's rights), and the job's log.

#[cfg(feature = "process")]
mod cgroup;
#[cfg(feature = "process")]
pub(crate) mod child;
mod command;
mod log;
#[cfg(feature = "process")]
mod process;
#[cfg(feature = "process")]
mod results;
#[cfg(feature = "process")]
mod slurm;

#[cfg(feature = "process")]
pub use cgroup::CgroupTree;
pub use command::Executor;
pub use log::{DEFAULT_LOG_LIMIT, LogChunk, LogSink};
#[cfg(feature = "process")]
pub use process::{Containment, DEFAULT_JOB_UMASK, DEFAULT_PATH, ProcessExecutor};
#[cfg(feature = "process")]
pub use slurm::{PrivateSlurm, SlurmError, SlurmExecutor, SlurmOptions};
