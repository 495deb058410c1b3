//! What happens in the engine, as a stream anyone may follow ([`EngineHandle::events`]):
//! for dashboards, metrics exporters and notices beyond a job's own waiters.
//!
//! [`EngineHandle::events`]: super::EngineHandle::events

use crate::auth::Identity;
use crate::job::{JobId, JobSummary};

use super::JobResult;

/// Events kept for followers that fall behind; a follower further behind misses the oldest
/// (its receiver says how many).
pub(super) const EVENT_BACKLOG: usize = 4096;

/// Something that happened to a job, sent in the order the engine decided it. A job's
/// acceptance, merges and start are sent as the engine decides them (it acknowledges and
/// starts a job only once its record is on disk); its end only once that is on record, so
/// that nobody acts on an outcome a crash could still turn into `lost`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum EngineEvent {
    /// A job was accepted into the queue.
    Accepted {
        /// The job.
        job: JobId,
        /// Who submitted it.
        owner: Identity,
        /// What it does, in one line.
        summary: String,
    },
    /// A submission became one more waiter of an equal job.
    Merged {
        /// The job it waits for.
        into: JobId,
        /// Who submitted it.
        owner: Identity,
    },
    /// A submission was refused: by the access check, a reviewer or a hook, by a quota, or
    /// because the policy does not allow the merge a hook asked for.
    Refused {
        /// Who submitted it.
        owner: Identity,
        /// Why, as the submitter was told.
        reason: String,
    },
    /// A job started on a worker.
    Started {
        /// The job.
        job: JobId,
        /// The worker's name.
        worker: String,
    },
    /// A job ended, and that is on record; its waiters are being told.
    Finished {
        /// The job as the store now has it (in full: with its environment).
        job: Box<JobSummary>,
        /// How it ended.
        result: JobResult,
    },
}
