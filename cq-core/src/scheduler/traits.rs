//! The scheduler trait and the view of the queue that hooks get.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::auth::Identity;
use crate::job::{CommandJob, JobId};
use crate::outcome::Outcome;

/// What the scheduler and hooks know about a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    /// The job's id.
    pub id: JobId,
    /// Who submitted it.
    pub owner: Identity,
    /// One line saying what it does.
    pub summary: String,
    /// The command, for jobs that are one (hooks compare these to find duplicates).
    pub command: Option<Arc<CommandJob>>,
    /// What a worker must offer to run it ([`WorkerInfo::can_run`]).
    pub tags: Vec<String>,
    /// Jobs of one lane never run at the same time, on any worker (e.g. all builds that
    /// write one shared PKGDIR).
    pub lane: Option<String>,
}

impl JobInfo {
    /// Whether `other` does the same work: the same command line, working directory and
    /// environment (as a set: order and repeated names do not matter, the last value wins),
    /// for the same user (its groups come from the account database, so the uid decides),
    /// on the same kind of worker (the same tags, as a set) in the same lane. In-process jobs
    /// never do the same work as anything.
    pub fn same_work(&self, other: &JobInfo) -> bool {
        match (&self.command, &other.command) {
            (Some(a), Some(b)) => {
                self.owner.uid == other.owner.uid
                    && a.argv == b.argv
                    && a.cwd == b.cwd
                    && environment(a) == environment(b)
                    && tag_set(&self.tags) == tag_set(&other.tags)
                    && self.lane == other.lane
            }
            _ => false,
        }
    }

    /// A hash that equal work (see [`same_work`](Self::same_work)) shares, for indexes.
    pub fn work_hash(&self) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let command = self.command.as_ref()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (
            self.owner.uid,
            &command.argv,
            &command.cwd,
            environment(command),
            tag_set(&self.tags),
            &self.lane,
        )
            .hash(&mut hasher);
        Some(hasher.finish())
    }
}

fn tag_set(tags: &[String]) -> std::collections::BTreeSet<&str> {
    tags.iter().map(String::as_str).collect()
}

fn environment(command: &CommandJob) -> BTreeMap<&str, &str> {
    command
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Where jobs run: a worker runs one job at a time, and only jobs whose tags it has.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct WorkerInfo {
    /// Its name, unique among the workers.
    pub name: String,
    /// What it offers (e.g. `arch=amd64`, `profile=desktop`).
    pub tags: Vec<String>,
}

impl WorkerInfo {
    /// A worker called `name` with `tags`.
    pub fn new<I, T>(name: impl Into<String>, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Self {
            name: name.into(),
            tags: tags.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether it may run `job`: it has every tag of the job.
    pub fn can_run(&self, job: &JobInfo) -> bool {
        job.tags.iter().all(|tag| self.tags.contains(tag))
    }
}

/// What a scheduler shows hooks of its queue.
pub trait QueueSource {
    /// The jobs running now, in the order they started.
    fn running(&self) -> Box<dyn Iterator<Item = &JobInfo> + '_>;

    /// The queued jobs, next first.
    fn queued(&self) -> Box<dyn Iterator<Item = &JobInfo> + '_>;

    /// How many jobs are queued.
    fn queued_len(&self) -> usize;

    /// A queued job that does the same work as `job`. Schedulers with long queues should
    /// answer from an index; the default scans the queue.
    fn find_same_work(&self, job: &JobInfo) -> Option<&JobInfo> {
        self.queued().find(|queued| queued.same_work(job))
    }
}

/// A read-only view of the queue: the running jobs and the queued ones in order.
#[derive(Clone, Copy)]
pub struct QueueView<'a> {
    source: &'a dyn QueueSource,
}

impl std::fmt::Debug for QueueView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueView")
            .field("queued", &self.source.queued_len())
            .finish_non_exhaustive()
    }
}

impl<'a> QueueView<'a> {
    /// A view of `source`.
    pub fn new(source: &'a dyn QueueSource) -> Self {
        Self { source }
    }

    /// The jobs running now.
    pub fn running(&self) -> impl Iterator<Item = &'a JobInfo> + 'a {
        self.source.running()
    }

    /// The queued jobs, next first.
    pub fn queued(&self) -> impl Iterator<Item = &'a JobInfo> + 'a {
        self.source.queued()
    }

    /// How many jobs are queued.
    pub fn queued_len(&self) -> usize {
        self.source.queued_len()
    }

    /// The running jobs, then the queued ones.
    pub fn all(&self) -> impl Iterator<Item = &'a JobInfo> + 'a {
        self.source.running().chain(self.source.queued())
    }

    /// Whether job `id` is running or queued.
    pub fn holds(&self, id: JobId) -> bool {
        self.all().any(|job| job.id == id)
    }

    /// A queued job doing the same work as `job` (see [`JobInfo::same_work`]), or with
    /// `include_running` a running one.
    pub fn find_same_work(&self, job: &JobInfo, include_running: bool) -> Option<&'a JobInfo> {
        self.source.find_same_work(job).or_else(|| {
            self.running()
                .find(|running| include_running && running.same_work(job))
        })
    }
}

/// Decides the order in which admitted jobs run, and where.
///
/// The engine admits jobs (limits, hooks, merges) and then only tells the scheduler: a job
/// was queued ([`enqueue`](Self::enqueue)), a worker is free ([`next_for`](Self::next_for)),
/// a job ended ([`finished`](Self::finished)), a job must run again
/// ([`requeue`](Self::requeue)), a queued job was cancelled ([`remove`](Self::remove)) or
/// moved to the front ([`promote`](Self::promote)).
///
/// Contract: a worker runs at most one job at a time (`next_for` answers `None` for a worker
/// whose job has not finished); `next_for` only gives a job the worker
/// [can run](WorkerInfo::can_run); a job given out is running until `finished` or `requeue`.
/// Implementations must be deterministic and do no I/O, so that these can be property-tested.
pub trait Scheduler: Send + 'static {
    /// Queues an admitted job (its id is fresh and larger than every earlier one). The
    /// engine shares the job's description with the scheduler instead of keeping a copy.
    fn enqueue(&mut self, job: Arc<JobInfo>);

    /// The job `worker` should start now, if any; it is running on `worker` from then on.
    fn next_for(&mut self, worker: &WorkerInfo) -> Option<JobId>;

    /// Records that running job `id` ended, so that its worker (and lane) is free again.
    fn finished(&mut self, id: JobId, outcome: &Outcome);

    /// Puts running job `id` back in the queue, in its old place (its worker was lost);
    /// `false` if it is not running.
    fn requeue(&mut self, id: JobId) -> bool;

    /// Takes queued job `id` out of the queue (it was cancelled); `false` if it is not queued.
    fn remove(&mut self, id: JobId) -> bool;

    /// Moves queued job `id` ahead of every other queued job (an admin's decision); `false`
    /// if it is not queued.
    fn promote(&mut self, id: JobId) -> bool;

    /// Takes back a job that was running on `worker` (elsewhere: on another host) when the
    /// server stopped, and may still run: it is running on `worker` from now on, as if
    /// [`next_for`](Self::next_for) had given it. `false` (the default) if this scheduler
    /// cannot: the engine then records the job lost.
    fn adopt(&mut self, job: Arc<JobInfo>, worker: &WorkerInfo) -> bool {
        let _ = (job, worker);
        false
    }

    /// The running jobs and the queued ones.
    fn view(&self) -> QueueView<'_>;
}
