//! Duplicate elimination: a job equal to one already waiting is not queued again.

use super::hook::{Decision, SubmitHook};
use super::traits::{JobInfo, QueueView};

/// Which jobs a newcomer may be merged into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DedupScope {
    /// Only jobs still queued: a job that already runs may have read its inputs, so an
    /// identical request made now still runs once more.
    Queued,
    /// Queued jobs and the one running now.
    QueuedOrRunning,
}

/// Merges a submission into a queued (or running) job that does the same work (see
/// [`JobInfo::same_work`]): the newcomer becomes one more waiter of that job, and every
/// waiter is notified when it ends.
#[derive(Clone, Copy, Debug)]
pub struct DuplicateJobs {
    scope: DedupScope,
}

impl DuplicateJobs {
    /// Merges into jobs within `scope`.
    pub fn new(scope: DedupScope) -> Self {
        Self { scope }
    }
}

impl SubmitHook for DuplicateJobs {
    fn review(&self, job: &JobInfo, queue: &QueueView<'_>) -> Decision {
        let include_running = self.scope == DedupScope::QueuedOrRunning;
        queue
            .find_same_work(job, include_running)
            .map_or(Decision::Accept, |same| Decision::Merge(same.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;
    use crate::job::{CommandJob, JobId};
    use crate::outcome::Outcome;
    use crate::scheduler::{Admission, Scheduler, SerialScheduler};

    fn info(id: u64, command: CommandJob) -> JobInfo {
        JobInfo {
            id: JobId(id),
            owner: Identity::local(),
            summary: command.summary(),
            command: Some(std::sync::Arc::new(command)),
        }
    }

    fn emerge() -> CommandJob {
        CommandJob::new(["emerge", "--buildpkgonly", "app-misc/foo"])
            .with_env("USE", "X")
            .with_env("FEATURES", "a")
    }

    #[test]
    fn equal_work_merges_and_different_environments_do_not() {
        let hook = DuplicateJobs::new(DedupScope::Queued);
        let mut s = SerialScheduler::new();
        assert_eq!(
            s.submit(info(1, emerge()), &hook),
            Admission::Accepted { ahead: 0 }
        );
        // Same variables in another order: the same environment.
        let reordered = CommandJob::new(["emerge", "--buildpkgonly", "app-misc/foo"])
            .with_env("FEATURES", "a")
            .with_env("USE", "X");
        assert_eq!(
            s.submit(info(2, reordered), &hook),
            Admission::Merged { into: JobId(1) }
        );
        let other_use = emerge().with_env("USE", "-X");
        assert_eq!(
            s.submit(info(3, other_use), &hook),
            Admission::Accepted { ahead: 1 }
        );
        let mut other_user = info(4, emerge());
        other_user.owner.uid += 1;
        assert_eq!(
            s.submit(other_user, &hook),
            Admission::Accepted { ahead: 2 }
        );
    }

    #[test]
    fn the_scope_decides_about_the_running_job() {
        let mut s = SerialScheduler::new();
        s.submit(info(1, emerge()), &DuplicateJobs::new(DedupScope::Queued));
        assert_eq!(s.next(), Some(JobId(1)));
        assert_eq!(
            s.submit(
                info(2, emerge()),
                &DuplicateJobs::new(DedupScope::QueuedOrRunning)
            ),
            Admission::Merged { into: JobId(1) }
        );
        assert!(matches!(
            s.submit(info(3, emerge()), &DuplicateJobs::new(DedupScope::Queued)),
            Admission::Accepted { .. }
        ));
        // Once job 3 has left the queue, nothing is left to merge into.
        s.finish(JobId(1), &Outcome::Exited { code: 0 });
        assert!(s.remove(JobId(3)));
        assert!(matches!(
            s.submit(info(4, emerge()), &DuplicateJobs::new(DedupScope::Queued)),
            Admission::Accepted { .. }
        ));
    }
}
