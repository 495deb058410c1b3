//! The default scheduler: each worker runs one job at a time, the oldest it can run.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::job::JobId;
use crate::outcome::Outcome;

use super::traits::{JobInfo, QueueSource, QueueView, Scheduler, WorkerInfo};

/// Runs jobs strictly one at a time on each worker, first accepted first run: a free worker
/// gets the oldest queued job it can run ([`WorkerInfo::can_run`]) whose lane is not in use.
/// With one worker and untagged jobs, that is one job at a time in acceptance order.
///
/// Jobs are ordered by id, which is acceptance order because the engine hands out ids in
/// that order. Enqueue, remove and finished cost O(log n), and so does `next_for` when the
/// oldest job is eligible; finding a queued duplicate is a hash lookup.
#[derive(Debug, Default)]
pub struct SerialScheduler {
    /// Queued jobs by (rank, id): ids are acceptance order; a promoted job gets a rank
    /// below every other.
    queued: BTreeMap<(i64, JobId), Arc<JobInfo>>,
    /// The rank of every job queued or running that is not 0 (a requeued job keeps it).
    ranks: HashMap<JobId, i64>,
    /// The rank of the latest promotion: each one goes ahead of all before it.
    front: i64,
    /// Running jobs and the worker each runs on.
    running: BTreeMap<JobId, (Arc<JobInfo>, String)>,
    busy_workers: HashSet<String>,
    busy_lanes: HashSet<String>,
    /// Queued jobs by [`JobInfo::work_hash`] (a set of pairs: no allocation per job).
    by_work: BTreeSet<(u64, JobId)>,
}

impl SerialScheduler {
    /// An empty scheduler.
    pub fn new() -> Self {
        Self::default()
    }

    fn index(&mut self, job: &JobInfo) {
        if let Some(hash) = job.work_hash() {
            self.by_work.insert((hash, job.id));
        }
    }

    fn unindex(&mut self, job: &JobInfo) {
        if let Some(hash) = job.work_hash() {
            self.by_work.remove(&(hash, job.id));
        }
    }

    fn key(&self, id: JobId) -> (i64, JobId) {
        (self.ranks.get(&id).copied().unwrap_or(0), id)
    }

    /// Takes running job `id` off its worker and lane.
    fn release(&mut self, id: JobId) -> Option<Arc<JobInfo>> {
        let (job, worker) = self.running.remove(&id)?;
        self.busy_workers.remove(&worker);
        if let Some(lane) = &job.lane {
            self.busy_lanes.remove(lane);
        }
        Some(job)
    }
}

impl QueueSource for SerialScheduler {
    fn running(&self) -> Box<dyn Iterator<Item = &JobInfo> + '_> {
        Box::new(self.running.values().map(|(job, _)| &**job))
    }

    fn queued(&self) -> Box<dyn Iterator<Item = &JobInfo> + '_> {
        Box::new(self.queued.values().map(|job| &**job))
    }

    fn queued_len(&self) -> usize {
        self.queued.len()
    }

    fn find_same_work(&self, job: &JobInfo) -> Option<&JobInfo> {
        let hash = job.work_hash()?;
        self.by_work
            .range((hash, JobId(0))..=(hash, JobId(u64::MAX)))
            .filter_map(|(_, id)| self.queued.get(&self.key(*id)))
            .find(|queued| queued.same_work(job))
            .map(|queued| &**queued)
    }
}

impl Scheduler for SerialScheduler {
    fn enqueue(&mut self, job: Arc<JobInfo>) {
        self.index(&job);
        self.queued.insert(self.key(job.id), job);
    }

    fn next_for(&mut self, worker: &WorkerInfo) -> Option<JobId> {
        if self.busy_workers.contains(&worker.name) {
            return None;
        }
        let id = self
            .queued
            .values()
            .find(|job| {
                worker.can_run(job)
                    && job
                        .lane
                        .as_ref()
                        .is_none_or(|lane| !self.busy_lanes.contains(lane))
            })?
            .id;
        let job = self.queued.remove(&self.key(id))?;
        self.unindex(&job);
        self.busy_workers.insert(worker.name.clone());
        if let Some(lane) = &job.lane {
            self.busy_lanes.insert(lane.clone());
        }
        self.running.insert(id, (job, worker.name.clone()));
        Some(id)
    }

    fn adopt(&mut self, job: Arc<JobInfo>, worker: &WorkerInfo) -> bool {
        let lane_busy = job
            .lane
            .as_ref()
            .is_some_and(|lane| self.busy_lanes.contains(lane));
        if lane_busy
            || self.busy_workers.contains(&worker.name)
            || self.running.contains_key(&job.id)
        {
            return false;
        }
        self.busy_workers.insert(worker.name.clone());
        if let Some(lane) = &job.lane {
            self.busy_lanes.insert(lane.clone());
        }
        self.running.insert(job.id, (job, worker.name.clone()));
        true
    }

    fn finished(&mut self, id: JobId, _outcome: &Outcome) {
        self.release(id);
        self.ranks.remove(&id);
    }

    fn requeue(&mut self, id: JobId) -> bool {
        match self.release(id) {
            Some(job) => {
                self.enqueue(job);
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, id: JobId) -> bool {
        match self.queued.remove(&self.key(id)) {
            Some(job) => {
                self.unindex(&job);
                self.ranks.remove(&id);
                true
            }
            None => false,
        }
    }

    fn promote(&mut self, id: JobId) -> bool {
        let Some(job) = self.queued.remove(&self.key(id)) else {
            return false;
        };
        self.front -= 1;
        self.ranks.insert(id, self.front);
        self.queued.insert((self.front, id), job);
        true
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

    fn info(id: u64, argv: &str) -> JobInfo {
        tagged(id, argv, &[], None)
    }

    fn tagged(id: u64, argv: &str, tags: &[&str], lane: Option<&str>) -> JobInfo {
        let command = CommandJob::new([argv]);
        JobInfo {
            id: JobId(id),
            owner: Identity::local(),
            summary: command.summary(),
            command: Some(std::sync::Arc::new(command)),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            lane: lane.map(str::to_owned),
        }
    }

    fn ok() -> Outcome {
        Outcome::Exited { code: 0 }
    }

    #[test]
    fn one_worker_runs_one_at_a_time_in_order() {
        let local = WorkerInfo::new("local", Vec::<String>::new());
        let mut s = SerialScheduler::new();
        s.enqueue(std::sync::Arc::new(info(1, "a")));
        s.enqueue(std::sync::Arc::new(info(2, "b")));
        assert_eq!(s.next_for(&local), Some(JobId(1)));
        assert_eq!(s.next_for(&local), None, "nothing starts while a job runs");
        s.enqueue(std::sync::Arc::new(info(3, "c")));
        s.finished(JobId(1), &ok());
        assert_eq!(s.next_for(&local), Some(JobId(2)));
        s.finished(JobId(2), &ok());
        assert_eq!(s.next_for(&local), Some(JobId(3)));
        s.finished(JobId(3), &ok());
        assert_eq!(s.next_for(&local), None);
    }

    #[test]
    fn removed_jobs_never_start_and_requeued_ones_keep_their_place() {
        let local = WorkerInfo::new("local", Vec::<String>::new());
        let mut s = SerialScheduler::new();
        for id in 1..=3 {
            s.enqueue(std::sync::Arc::new(info(id, "a")));
        }
        assert!(s.remove(JobId(2)));
        assert!(!s.remove(JobId(2)), "already gone");
        assert_eq!(s.next_for(&local), Some(JobId(1)));
        assert!(!s.remove(JobId(1)), "a running job is not in the queue");
        assert!(s.requeue(JobId(1)));
        assert!(!s.requeue(JobId(1)), "no longer running");
        assert_eq!(
            s.next_for(&local),
            Some(JobId(1)),
            "back in its place, first"
        );
        s.finished(JobId(1), &ok());
        assert_eq!(s.next_for(&local), Some(JobId(3)));
    }

    #[test]
    fn workers_take_the_oldest_job_they_can_run_and_lanes_are_exclusive() {
        let desktop = WorkerInfo::new("b1", ["profile=desktop"]);
        let server = WorkerInfo::new("b2", ["profile=server"]);
        let mut s = SerialScheduler::new();
        s.enqueue(std::sync::Arc::new(tagged(
            1,
            "a",
            &["profile=server"],
            None,
        )));
        s.enqueue(std::sync::Arc::new(tagged(
            2,
            "b",
            &["profile=desktop"],
            Some("pkgdir"),
        )));
        s.enqueue(std::sync::Arc::new(tagged(3, "c", &[], Some("pkgdir"))));
        s.enqueue(std::sync::Arc::new(tagged(4, "d", &[], None)));
        assert_eq!(s.next_for(&desktop), Some(JobId(2)));
        assert_eq!(
            s.next_for(&server),
            Some(JobId(1)),
            "server-only job goes to b2"
        );
        assert_eq!(s.view().running().count(), 2);
        s.finished(JobId(1), &ok());
        assert_eq!(
            s.next_for(&server),
            Some(JobId(4)),
            "job 3 waits: its lane is in use by job 2"
        );
        s.finished(JobId(2), &ok());
        assert_eq!(s.next_for(&desktop), Some(JobId(3)));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Enqueue { tag: Option<u8>, lane: Option<u8> },
        Next(u8),
        Finish(u8),
        Requeue(u8),
        Remove(u8),
        Promote(u8),
        Adopt { worker: u8, lane: Option<u8> },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (proptest::option::of(0u8..3), proptest::option::of(0u8..2))
                .prop_map(|(tag, lane)| Op::Enqueue { tag, lane }),
            (0u8..3).prop_map(Op::Next),
            any::<u8>().prop_map(Op::Finish),
            any::<u8>().prop_map(Op::Requeue),
            any::<u8>().prop_map(Op::Remove),
            any::<u8>().prop_map(Op::Promote),
            (0u8..3, proptest::option::of(0u8..2))
                .prop_map(|(worker, lane)| Op::Adopt { worker, lane }),
        ]
    }

    proptest! {
        /// Whatever happens: no worker runs two jobs, no two running jobs share a lane, a
        /// worker only gets jobs it can run, and it gets the oldest queued job it could run.
        #[test]
        fn workers_lanes_and_order_hold(ops in proptest::collection::vec(op(), 0..300)) {
            // Worker w has tag t<w> (w2 has none and takes only untagged jobs).
            let workers = [
                WorkerInfo::new("w0", ["t0"]),
                WorkerInfo::new("w1", ["t1", "t0"]),
                WorkerInfo::new("w2", Vec::<String>::new()),
            ];
            let mut s = SerialScheduler::new();
            let mut next_id = 1;
            // Our model: queued jobs in order (a promoted job first: the latest promotion
            // ahead of earlier ones), and what runs where.
            let mut queued: BTreeMap<(i64, JobId), JobInfo> = BTreeMap::new();
            let mut ranks: std::collections::HashMap<JobId, i64> = std::collections::HashMap::new();
            let mut front = 0;
            let mut running: BTreeMap<JobId, (JobInfo, usize)> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Enqueue { tag, lane } => {
                        let tags: Vec<String> = tag.map(|t| format!("t{t}")).into_iter().collect();
                        let lane = lane.map(|l| format!("l{l}"));
                        let job = JobInfo { tags, lane, ..info(next_id, "x") };
                        next_id += 1;
                        queued.insert((0, job.id), job.clone());
                        s.enqueue(std::sync::Arc::new(job));
                    }
                    Op::Next(w) => {
                        let worker = &workers[usize::from(w)];
                        let busy = running.values().any(|(_, on)| *on == usize::from(w));
                        let lanes: HashSet<&String> =
                            running.values().filter_map(|(j, _)| j.lane.as_ref()).collect();
                        let expected = if busy {
                            None
                        } else {
                            queued.values().find(|j| worker.can_run(j)
                                && j.lane.as_ref().is_none_or(|l| !lanes.contains(l))).map(|j| j.id)
                        };
                        let got = s.next_for(worker);
                        prop_assert_eq!(got, expected);
                        if let Some(id) = got {
                            let rank = ranks.get(&id).copied().unwrap_or(0);
                            let job = queued.remove(&(rank, id)).unwrap();
                            prop_assert!(worker.can_run(&job));
                            running.insert(id, (job, usize::from(w)));
                        }
                    }
                    Op::Finish(n) => {
                        if let Some(&id) = running.keys().nth(usize::from(n) % running.len().max(1)) {
                            running.remove(&id);
                            ranks.remove(&id);
                            s.finished(id, &ok());
                        }
                    }
                    Op::Requeue(n) => {
                        if let Some(&id) = running.keys().nth(usize::from(n) % running.len().max(1)) {
                            let (job, _) = running.remove(&id).unwrap();
                            queued.insert((ranks.get(&id).copied().unwrap_or(0), id), job);
                            prop_assert!(s.requeue(id));
                        }
                    }
                    Op::Remove(n) => {
                        if let Some(&key) = queued.keys().nth(usize::from(n) % queued.len().max(1)) {
                            queued.remove(&key);
                            ranks.remove(&key.1);
                            prop_assert!(s.remove(key.1));
                        }
                    }
                    Op::Adopt { worker: w, lane } => {
                        // A job found running on worker w after a restart: taken back only
                        // if that keeps every rule.
                        let lane = lane.map(|l| format!("l{l}"));
                        let job = JobInfo { lane, ..info(next_id, "x") };
                        next_id += 1;
                        let busy = running.values().any(|(_, on)| *on == usize::from(w));
                        let lane_busy = running
                            .values()
                            .any(|(j, _)| j.lane.is_some() && j.lane == job.lane);
                        let taken = s.adopt(std::sync::Arc::new(job.clone()), &workers[usize::from(w)]);
                        prop_assert_eq!(taken, !busy && !lane_busy);
                        if taken {
                            running.insert(job.id, (job, usize::from(w)));
                        }
                    }
                    Op::Promote(n) => {
                        if let Some(&key) = queued.keys().nth(usize::from(n) % queued.len().max(1)) {
                            let job = queued.remove(&key).unwrap();
                            front -= 1;
                            ranks.insert(key.1, front);
                            queued.insert((front, key.1), job);
                            prop_assert!(s.promote(key.1));
                            prop_assert_eq!(s.view().queued().next().map(|j| j.id), Some(key.1));
                        } else {
                            prop_assert!(!s.promote(JobId(u64::from(n) + 10_000)));
                        }
                    }
                }
                // The invariants, checked on the scheduler's own view.
                let view = s.view();
                let on_view: Vec<JobId> = view.running().map(|j| j.id).collect();
                prop_assert_eq!(on_view, running.keys().copied().collect::<Vec<_>>());
                let mut lanes = HashSet::new();
                for (job, _) in running.values() {
                    if let Some(lane) = &job.lane {
                        prop_assert!(lanes.insert(lane), "two running jobs in lane {}", lane);
                    }
                }
                let mut busy = HashSet::new();
                for (_, w) in running.values() {
                    prop_assert!(busy.insert(*w), "worker {} runs two jobs", w);
                }
                let in_queue: Vec<JobId> = view.queued().map(|j| j.id).collect();
                prop_assert_eq!(in_queue, queued.keys().map(|k| k.1).collect::<Vec<_>>());
            }
        }
    }
}
