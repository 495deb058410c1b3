//! Deciding what runs next.
//!
//! A [`Scheduler`] only orders: it is synchronous and deterministic, does no I/O and never
//! reads the clock, so it can be tested (and property-tested) without a runtime. The
//! [`Engine`](crate::Engine) admits each job (limits, then its [`SubmitHook`]s, which see the
//! job and the queue and may accept, reject or merge it into an existing job), queues it
//! with the scheduler, and asks the scheduler what a free worker ([`WorkerInfo`]) runs next.

mod dedup;
mod hook;
mod serial;
mod traits;

pub use dedup::{DedupScope, DuplicateJobs};
pub use hook::{AcceptAll, Decision, HookChain, SubmitHook};
pub use serial::SerialScheduler;
pub use traits::{JobInfo, QueueSource, QueueView, Scheduler, WorkerInfo};
