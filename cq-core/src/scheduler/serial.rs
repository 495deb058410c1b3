//! The default scheduler: one job at a time, in acceptance order.

use std::collections::{BTreeMap, HashMap};

use crate::job::JobId;
use crate::outcome::Outcome;

use super::hook::{Decision, SubmitHook};
use super::traits::{Admission, JobInfo, QueueSource, QueueView, Scheduler};

/// Runs jobs strictly one at a time, first accepted first run.
///
/// Jobs run in id order, which is acceptance order because the engine hands out ids in that
/// order. Submit, next, finish and remove cost O(log n); finding a queued duplicate is a hash
/// lookup, so none of them grows with the queue.
#[derive(Debug, Default)]
pub struct SerialScheduler {
    running: Option<JobInfo>,
    queued: BTreeMap<JobId, JobInfo>,
    /// Queued jobs by [`JobInfo::work_hash`].
    by_work: HashMap<u64, Vec<JobId>>,
}

impl SerialScheduler {
    /// An empty scheduler.
    pub fn new() -> Self {
        Self::default()
    }

    fn holds(&self, id: JobId) -> bool {
        self.running.as_ref().is_some_and(|r| r.id == id) || self.queued.contains_key(&id)
    }

    fn unindex(&mut self, job: &JobInfo) {
        if let Some(hash) = job.work_hash()
            && let Some(ids) = self.by_work.get_mut(&hash)
        {
            ids.retain(|id| *id != job.id);
            if ids.is_empty() {
                self.by_work.remove(&hash);
            }
        }
    }
}

impl QueueSource for SerialScheduler {
    fn running(&self) -> Option<&JobInfo> {
        self.running.as_ref()
    }

    fn queued(&self) -> Box<dyn Iterator<Item = &JobInfo> + '_> {
        Box::new(self.queued.values())
    }

    fn queued_len(&self) -> usize {
        self.queued.len()
    }

    fn find_same_work(&self, job: &JobInfo) -> Option<&JobInfo> {
        let ids = self.by_work.get(&job.work_hash()?)?;
        ids.iter()
            .filter_map(|id| self.queued.get(id))
            .find(|queued| queued.same_work(job))
    }
}

impl Scheduler for SerialScheduler {
    fn submit(&mut self, job: JobInfo, hook: &dyn SubmitHook) -> Admission {
        match hook.review(&job, &self.view()) {
            Decision::Merge(into) if self.holds(into) => Admission::Merged { into },
            // A hook naming a job that has already ended (or never existed) cannot merge into
            // it; queueing the newcomer is the answer that loses nothing.
            Decision::Accept | Decision::Merge(_) => {
                let ahead = self.queued.len() + usize::from(self.running.is_some());
                if let Some(hash) = job.work_hash() {
                    self.by_work.entry(hash).or_default().push(job.id);
                }
                self.queued.insert(job.id, job);
                Admission::Accepted { ahead }
            }
            Decision::Reject(reason) => Admission::Rejected { reason },
        }
    }

    fn next(&mut self) -> Option<JobId> {
        if self.running.is_some() {
            return None;
        }
        let (id, job) = self.queued.pop_first()?;
        self.unindex(&job);
        self.running = Some(job);
        Some(id)
    }

    fn remove(&mut self, id: JobId) -> bool {
        match self.queued.remove(&id) {
            Some(job) => {
                self.unindex(&job);
                true
            }
            None => false,
        }
    }

    fn finish(&mut self, id: JobId, _outcome: &Outcome) {
        if self.running.as_ref().is_some_and(|r| r.id == id) {
            self.running = None;
        }
    }

    fn view(&self) -> QueueView<'_> {
        QueueView::new(self)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::auth::Identity;
    use crate::job::CommandJob;
    use crate::scheduler::AcceptAll;

    fn info(id: u64, argv: &str) -> JobInfo {
        let command = CommandJob::new([argv]);
        JobInfo {
            id: JobId(id),
            owner: Identity::local(),
            summary: command.summary(),
            command: Some(std::sync::Arc::new(command)),
        }
    }

    /// Merges a job into a queued or running one with the same command.
    struct Dedup;

    impl SubmitHook for Dedup {
        fn review(&self, job: &JobInfo, queue: &QueueView<'_>) -> Decision {
            queue
                .all()
                .find(|q| q.command == job.command)
                .map_or(Decision::Accept, |q| Decision::Merge(q.id))
        }
    }

    #[test]
    fn runs_one_at_a_time_in_order() {
        let mut s = SerialScheduler::new();
        assert_eq!(
            s.submit(info(1, "a"), &AcceptAll),
            Admission::Accepted { ahead: 0 }
        );
        assert_eq!(
            s.submit(info(2, "b"), &AcceptAll),
            Admission::Accepted { ahead: 1 }
        );
        assert_eq!(s.next(), Some(JobId(1)));
        assert_eq!(s.next(), None, "nothing starts while a job runs");
        assert_eq!(
            s.submit(info(3, "c"), &AcceptAll),
            Admission::Accepted { ahead: 2 }
        );
        s.finish(JobId(1), &Outcome::Exited { code: 0 });
        assert_eq!(s.next(), Some(JobId(2)));
        s.finish(JobId(2), &Outcome::Exited { code: 0 });
        assert_eq!(s.next(), Some(JobId(3)));
        s.finish(JobId(3), &Outcome::Exited { code: 0 });
        assert_eq!(s.next(), None);
    }

    #[test]
    fn removed_jobs_never_start() {
        let mut s = SerialScheduler::new();
        for id in 1..=3 {
            s.submit(info(id, "a"), &AcceptAll);
        }
        assert!(s.remove(JobId(2)));
        assert!(!s.remove(JobId(2)), "already gone");
        assert_eq!(s.next(), Some(JobId(1)));
        assert!(!s.remove(JobId(1)), "a running job is not in the queue");
        s.finish(JobId(1), &Outcome::Exited { code: 0 });
        assert_eq!(s.next(), Some(JobId(3)));
    }

    #[test]
    fn hooks_merge_and_reject() {
        struct No;
        impl SubmitHook for No {
            fn review(&self, _: &JobInfo, _: &QueueView<'_>) -> Decision {
                Decision::Reject("closed".into())
            }
        }
        let mut s = SerialScheduler::new();
        s.submit(info(1, "a"), &Dedup);
        assert_eq!(
            s.submit(info(2, "a"), &Dedup),
            Admission::Merged { into: JobId(1) }
        );
        assert_eq!(s.next(), Some(JobId(1)));
        assert_eq!(
            s.submit(info(3, "a"), &Dedup),
            Admission::Merged { into: JobId(1) },
            "running jobs merge too"
        );
        assert_eq!(
            s.submit(info(4, "b"), &No),
            Admission::Rejected {
                reason: "closed".into()
            }
        );
        assert_eq!(s.view().queued_len(), 0);
    }

    #[test]
    fn merge_into_a_finished_job_queues_instead() {
        struct Stale;
        impl SubmitHook for Stale {
            fn review(&self, _: &JobInfo, _: &QueueView<'_>) -> Decision {
                Decision::Merge(JobId(99))
            }
        }
        let mut s = SerialScheduler::new();
        assert_eq!(
            s.submit(info(1, "a"), &Stale),
            Admission::Accepted { ahead: 0 }
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Submit(u8),
        Next,
        Finish,
    }

    proptest! {
        /// Whatever the interleaving: at most one job runs, jobs start in acceptance order,
        /// and every submitter ends up attached to exactly one job that runs.
        #[test]
        fn fifo_and_exactly_one_job_per_submitter(ops in proptest::collection::vec(
            prop_oneof![(0u8..4).prop_map(Op::Submit), Just(Op::Next), Just(Op::Finish)], 0..200)
        ) {
            let mut s = SerialScheduler::new();
            let mut next_id = 1;
            let mut accepted = Vec::new();
            let mut started = Vec::new();
            let mut waiting_on: Vec<JobId> = Vec::new();
            let mut running: Option<JobId> = None;
            for op in ops {
                match op {
                    Op::Submit(cmd) => {
                        let id = JobId(next_id);
                        next_id += 1;
                        match s.submit(info(id.0, &cmd.to_string()), &Dedup) {
                            Admission::Accepted { .. } => { accepted.push(id); waiting_on.push(id); }
                            Admission::Merged { into } => {
                                prop_assert!(accepted.contains(&into) && !started[..started.len().saturating_sub(usize::from(running.is_some()))].contains(&into));
                                waiting_on.push(into);
                            }
                            Admission::Rejected { .. } => prop_assert!(false, "dedup never rejects"),
                        }
                    }
                    Op::Next => {
                        if let Some(id) = s.next() {
                            prop_assert!(running.is_none(), "two jobs running");
                            running = Some(id);
                            started.push(id);
                        }
                    }
                    Op::Finish => {
                        if let Some(id) = running.take() {
                            s.finish(id, &Outcome::Exited { code: 0 });
                        }
                    }
                }
            }
            prop_assert_eq!(&started[..], &accepted[..started.len()]);
            for id in waiting_on {
                prop_assert!(accepted.contains(&id));
            }
        }
    }
}
