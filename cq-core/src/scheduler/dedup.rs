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
    use crate::scheduler::{Scheduler, SerialScheduler, WorkerInfo};

    fn info(id: u64, command: CommandJob) -> JobInfo {
        JobInfo {
            id: JobId(id),
            owner: Identity::local(),
            summary: command.summary(),
            command: Some(std::sync::Arc::new(command)),
            tags: Vec::new(),
            lane: None,
        }
    }

    fn emerge() -> CommandJob {
        CommandJob::new(["emerge", "--buildpkgonly", "app-misc/foo"])
            .with_env("USE", "X")
            .with_env("FEATURES", "a")
    }

    /// What the engine does: the hook decides, an accepted job is queued.
    fn offer(s: &mut SerialScheduler, job: JobInfo, hook: &dyn SubmitHook) -> Decision {
        let decision = hook.review(&job, &s.view());
        if decision == Decision::Accept {
            s.enqueue(std::sync::Arc::new(job));
        }
        decision
    }

    #[test]
    fn equal_work_merges_and_different_environments_do_not() {
        let hook = DuplicateJobs::new(DedupScope::Queued);
        let mut s = SerialScheduler::new();
        assert_eq!(offer(&mut s, info(1, emerge()), &hook), Decision::Accept);
        // Same variables in another order: the same environment.
        let reordered = CommandJob::new(["emerge", "--buildpkgonly", "app-misc/foo"])
            .with_env("FEATURES", "a")
            .with_env("USE", "X");
        assert_eq!(
            offer(&mut s, info(2, reordered), &hook),
            Decision::Merge(JobId(1))
        );
        let other_use = emerge().with_env("USE", "-X");
        assert_eq!(offer(&mut s, info(3, other_use), &hook), Decision::Accept);
        let mut other_user = info(4, emerge());
        other_user.owner.uid += 1;
        assert_eq!(offer(&mut s, other_user, &hook), Decision::Accept);
        // Red team: a build for another kind of worker (or lane) is other work, or the
        // arm64 build would be merged into the amd64 one and never run.
        let mut amd = info(5, emerge());
        amd.tags = vec!["arch=amd64".into()];
        assert_eq!(offer(&mut s, amd, &hook), Decision::Accept);
        let mut arm = info(6, emerge());
        arm.tags = vec!["arch=arm64".into()];
        assert_eq!(offer(&mut s, arm, &hook), Decision::Accept);
        let mut amd_again = info(7, emerge());
        amd_again.tags = vec!["arch=amd64".into()];
        assert_eq!(offer(&mut s, amd_again, &hook), Decision::Merge(JobId(5)));
        let mut laned = info(8, emerge());
        laned.lane = Some("pkgdir".into());
        assert_eq!(offer(&mut s, laned, &hook), Decision::Accept);
    }

    #[test]
    fn the_scope_decides_about_the_running_job() {
        let local = WorkerInfo::new("local", Vec::<String>::new());
        let mut s = SerialScheduler::new();
        offer(
            &mut s,
            info(1, emerge()),
            &DuplicateJobs::new(DedupScope::Queued),
        );
        assert_eq!(s.next_for(&local), Some(JobId(1)));
        assert_eq!(
            offer(
                &mut s,
                info(2, emerge()),
                &DuplicateJobs::new(DedupScope::QueuedOrRunning)
            ),
            Decision::Merge(JobId(1))
        );
        assert_eq!(
            offer(
                &mut s,
                info(3, emerge()),
                &DuplicateJobs::new(DedupScope::Queued)
            ),
            Decision::Accept
        );
        // Once job 3 has left the queue, nothing is left to merge into.
        s.finished(JobId(1), &Outcome::Exited { code: 0 });
        assert!(s.remove(JobId(3)));
        assert_eq!(
            offer(
                &mut s,
                info(4, emerge()),
                &DuplicateJobs::new(DedupScope::Queued)
            ),
            Decision::Accept
        );
    }
}
