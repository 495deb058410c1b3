//! Deciding what runs next.
//!
//! A [`Scheduler`] is synchronous and deterministic: it does no I/O and never reads the
//! clock, so it can be tested (and property-tested) without a runtime. The
//! [`Engine`](crate::Engine) owns one and asks it what to run whenever the previous job has
//! been reaped. [`SubmitHook`]s see every incoming job and the queue, and may accept, reject
//! or merge it into an existing job.

mod dedup;
mod hook;
mod serial;
mod traits;

pub use dedup::{DedupScope, DuplicateJobs};
pub use hook::{AcceptAll, Decision, HookChain, SubmitHook};
pub use serial::SerialScheduler;
pub use traits::{Admission, JobInfo, QueueSource, QueueView, Scheduler};
