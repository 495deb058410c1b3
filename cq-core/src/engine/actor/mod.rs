//! The engine task: the builder, the state it owns, and its loop.
//!
//! - `submit.rs`: admission of a submission (idempotency keys, hooks, merges, quotas);
//! - `lifecycle.rs`: starting, finishing, cancelling and pruning jobs;
//! - `queries.rs`: what it answers without changing anything.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use futures_util::future::Shared;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handle::{Caller, Command, EngineHandle, JobState, ShutdownMode};
use crate::auth::Identity;
use crate::executor::{DEFAULT_LOG_LIMIT, Executor, LogChunk};
use crate::job::{CommandJob, JobId, JobPhase, JobSummary, SubmitKey, Work, epoch_ms};
use crate::outcome::Outcome;
use crate::policy::AccessCheck;
use crate::scheduler::{AcceptAll, JobInfo, Scheduler, SerialScheduler, SubmitHook, WorkerInfo};
use crate::store::{MemoryStore, Pending, PrunedJob, Store, StoreError, StoredJob};

mod lifecycle;
mod queries;
mod submit;

/// How many submissions may wait for the engine's attention before submitters wait too.
const COMMAND_QUEUE: usize = 1024;

/// How often finished jobs past their retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How often expired request digests are forgotten.
const FORGET_REQUESTS_EVERY: Duration = Duration::from_secs(60);

/// What one user may have on the server at once, so that nobody starves the others (or the
/// disk). `None` is no limit.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserLimits {
    /// Jobs queued or running.
    pub queued_jobs: Option<usize>,
    /// Bytes of those jobs (arguments, environment, working directory).
    pub queued_bytes: Option<u64>,
    /// Bytes of output kept in the logs of its jobs (until they are pruned).
    pub log_bytes: Option<u64>,
}

impl Default for UserLimits {
    /// 1000 jobs, 64 MiB of jobs, 4 GiB of logs per user.
    fn default() -> Self {
        Self {
            queued_jobs: Some(1000),
            queued_bytes: Some(64 << 20),
            log_bytes: Some(4 << 30),
        }
    }
}

impl UserLimits {
    /// No limits at all.
    pub fn unlimited() -> Self {
        Self {
            queued_jobs: None,
            queued_bytes: None,
            log_bytes: None,
        }
    }
}

/// Settings of an [`Engine`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Directory for per-job log files (`<id>.log`); output is discarded when `None`.
    pub log_dir: Option<PathBuf>,
    /// How long finished jobs (outcome and log) are kept for late watchers.
    pub retention: Duration,
    /// Put jobs that were running when the server stopped back in the queue instead of
    /// reporting them lost, unless their executor recorded where they run (those may run
    /// on, and are found again there or recorded lost).
    pub requeue_running: bool,
    /// Bytes of output kept per job; the rest is dropped after a marker.
    pub log_limit: u64,
    /// What one user may have at once.
    pub limits: UserLimits,
    /// The engine's own worker, which runs jobs with its executor one at a time: it runs
    /// the jobs whose tags it has (untagged jobs by default).
    pub worker: WorkerInfo,
    /// Whether the engine's own worker takes jobs; off for a pure coordinator whose jobs
    /// all run on workers that join ([`EngineHandle::attach_worker`]).
    pub local_worker: bool,
    /// Start with the queue paused (see [`EngineHandle::set_paused`]): what was queued waits
    /// until an admin resumes it.
    pub paused: bool,
    /// Time limit of commands that ask for none.
    pub default_time_limit: Option<Duration>,
    /// Longest time limit a command may have; longer requests (and commands without one,
    /// when there is no default) get this.
    pub max_time_limit: Option<Duration>,
    /// How long a job that was running on another host's worker when the server stopped
    /// ([`RunningJob::runner`](crate::store::RunningJob::runner)) waits for its worker to
    /// come back before it is recorded lost.
    pub worker_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            log_dir: None,
            retention: Duration::from_secs(7 * 24 * 3600),
            requeue_running: false,
            log_limit: DEFAULT_LOG_LIMIT,
            limits: UserLimits::default(),
            worker: WorkerInfo::new("local", Vec::<String>::new()),
            local_worker: true,
            paused: false,
            default_time_limit: None,
            max_time_limit: None,
            worker_timeout: Duration::from_secs(300),
        }
    }
}

impl EngineConfig {
    /// The time limit a command gets when it asks for `requested`.
    pub fn time_limit(&self, requested: Option<Duration>) -> Option<Duration> {
        match (requested.or(self.default_time_limit), self.max_time_limit) {
            (Some(limit), Some(max)) => Some(limit.min(max)),
            (None, max) => max,
            (limit, None) => limit,
        }
    }
}

impl EngineConfig {
    /// Writes job logs to `dir`.
    #[must_use]
    pub fn with_log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }
}

/// Builds and starts the engine task.
pub struct Engine<S = SerialScheduler> {
    scheduler: S,
    hook: Box<dyn SubmitHook>,
    config: EngineConfig,
    store: Arc<dyn Store>,
    executor: Option<Arc<dyn Executor>>,
    /// Workers besides the engine's own, each with its executor.
    workers: Vec<Worker>,
    admission: super::admission::Admission,
}

/// Where jobs run: a worker with the executor that runs its jobs, one at a time.
struct Worker {
    info: WorkerInfo,
    executor: Option<Arc<dyn Executor>>,
    /// Whether it takes new jobs: a worker that left is detached, and keeps its place (jobs
    /// running name workers by place) until one of its name comes back.
    attached: bool,
    /// Whether it is the engine's own (given when the engine was built): its name is never
    /// a joining worker's, and its jobs found running after a restart are resumed at once.
    local: bool,
}

impl Engine<SerialScheduler> {
    /// An engine with the serial FIFO scheduler, no submit hook, and an in-memory store.
    pub fn new(config: EngineConfig) -> Self {
        Self::with_scheduler(SerialScheduler::new(), config)
    }
}

impl<S: Scheduler> Engine<S> {
    /// An engine with another scheduler.
    pub fn with_scheduler(scheduler: S, config: EngineConfig) -> Self {
        Self {
            scheduler,
            hook: Box::new(AcceptAll),
            config,
            store: Arc::new(MemoryStore::new()),
            executor: None,
            workers: Vec::new(),
            admission: super::admission::Admission::default(),
        }
    }

    /// Sets the hook that reviews every submission (use a
    /// [`HookChain`](crate::scheduler::HookChain) for several).
    #[must_use]
    pub fn with_hook(mut self, hook: impl SubmitHook) -> Self {
        self.hook = Box::new(hook);
        self
    }

    /// Records jobs in `store`; at start, the commands queued there are queued again. (An
    /// in-process job cannot be run again after a restart: it is reported lost.)
    #[must_use]
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = store;
        self
    }

    /// Runs command jobs ([`EngineHandle::submit_command`]) with `executor` on the engine's
    /// own worker ([`EngineConfig::worker`]). Without one, they end as
    /// [`SpawnFailed`](crate::Outcome::SpawnFailed) when they start there.
    #[must_use]
    pub fn with_executor(mut self, executor: Arc<dyn Executor>) -> Self {
        self.executor = Some(executor);
        self
    }

    /// Adds a worker that runs the jobs it [can run](WorkerInfo::can_run) with `executor`,
    /// one at a time, beside the engine's own worker and the others: jobs then run at the
    /// same time on different workers (never two of one lane). Worker names must differ.
    #[must_use]
    pub fn with_worker(mut self, info: WorkerInfo, executor: Arc<dyn Executor>) -> Self {
        self.workers.push(Worker {
            info,
            executor: Some(executor),
            attached: true,
            local: true,
        });
        self
    }

    /// Checks every command when it is submitted ([`AccessCheck::admit`]: who the owner
    /// is, whether they may queue it) and again when it comes to start
    /// ([`AccessCheck::clear`]: the policy and accounts may have changed since), and runs it
    /// with the [`Clearance`](crate::Clearance) the check gives. Without one, anybody may
    /// queue any valid command, and it runs as this process, with any program.
    #[must_use]
    pub fn with_access_check(mut self, check: Arc<dyn AccessCheck>) -> Self {
        self.admission.access = Some(check);
        self
    }

    /// Has `reviewer` decide about every command once the [`AccessCheck`] admitted it,
    /// before the engine's own [hook](Self::with_hook).
    #[must_use]
    pub fn with_reviewer(mut self, reviewer: Arc<dyn super::Reviewer>) -> Self {
        self.admission.reviewer = Some(reviewer);
        self
    }

    /// Recovers the queue from the store and starts the engine on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub async fn start(self) -> Result<EngineHandle, StoreError> {
        let recovered = self.store.load().await?;
        let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
        // A log left by a job the store forgot (a damaged or replaced database) must never
        // be served as a new job's: ids start past every log there is.
        let past_logs = self
            .config
            .log_dir
            .as_deref()
            .map_or(0, highest_log_id)
            .saturating_add(1);
        let (internal, internal_inbox) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(super::events::EVENT_BACKLOG);
        let own_worker = Worker {
            info: self.config.worker.clone(),
            executor: self.executor,
            attached: self.config.local_worker,
            local: true,
        };
        let paused = self.config.paused;
        if paused {
            tracing::warn!("the queue starts paused: nothing starts until an admin resumes it");
        }
        let mut actor = Actor {
            next_id: recovered.next_id.max(past_logs).max(1),
            scheduler: self.scheduler,
            hook: self.hook,
            config: self.config,
            store: self.store,
            workers: std::iter::once(own_worker).chain(self.workers).collect(),
            start_check: self.admission.access.clone(),
            jobs: HashMap::new(),
            finishing: HashMap::new(),
            running: HashMap::new(),
            paused,
            stopping: None,
            keys: recovered
                .keys
                .iter()
                .map(|k| ((k.uid, k.key), (k.job, k.merged)))
                .collect(),
            seen: recovered.requests.iter().copied().collect(),
            usage: HashMap::new(),
            awaiting: HashMap::new(),
            restart_records: Vec::new(),
            publishing: TaskTracker::new(),
            internal,
            events: events.clone(),
        };
        for (uid, bytes) in &recovered.log_bytes {
            actor.usage.entry(*uid).or_default().log_bytes = *bytes;
        }
        // What becomes of the jobs that were running: found again where their executor
        // recorded they run, queued again, or lost. Decided before anybody is served.
        let mut queued = recovered.queued;
        let mut found = Vec::new();
        let mut requeued = Vec::new();
        for running in recovered.running {
            let id = running.job.id;
            let has_command = running.job.command.is_some();
            match running.runner {
                Some(runner) if has_command => {
                    found.push((running.job, runner, running.started_at))
                }
                _ if has_command && actor.config.requeue_running => {
                    tracing::warn!(job = %id, "the job was running when the server stopped: queued again");
                    let recorded = actor.store.record_requeue(id);
                    actor.restart_records.push(recorded);
                    requeued.push(id);
                    queued.push(running.job);
                }
                _ => {
                    tracing::warn!(job = %id, "the job was running when the server stopped: recorded as lost");
                    actor.record_lost(id);
                }
            }
        }
        queued.sort_by_key(|job| job.id);
        for stored in queued {
            actor.restore(stored);
        }
        for (stored, runner, started_at) in found {
            actor.adopt(stored, runner, started_at);
        }
        for recorded in std::mem::take(&mut actor.restart_records) {
            recorded.await?;
        }
        // A job queued again writes a new log when it runs; the old one goes once the
        // requeue is on record (a job recorded lost keeps its log).
        if let Some(dir) = &actor.config.log_dir {
            for id in requeued {
                let _ = std::fs::remove_file(dir.join(format!("{id}.log")));
            }
        }
        tokio::spawn(actor.run(inbox, internal_inbox));
        Ok(EngineHandle {
            commands,
            admission: Arc::new(self.admission),
            events,
        })
    }
}

impl<S> std::fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The highest `<id>.log` in `dir` (0 when there is none).
fn highest_log_id(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

/// Resolves when the job's record is committed.
type Durable = Shared<Pending<()>>;

/// An outcome being recorded (tried again while the store fails).
type Committing = Shared<futures_util::future::BoxFuture<'static, Result<(), StoreError>>>;

/// A job that has been accepted and has not ended.
struct Live {
    job: Option<Work>,
    info: JobInfo,
    state: watch::Sender<JobState>,
    durable: Durable,
    accepted_at: SystemTime,
    started_at: Option<SystemTime>,
    /// Submitters merged into this job.
    waiters: Vec<Identity>,
    /// What it counts against its owner's queued bytes.
    size: u64,
}

/// What a caller is to a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relation {
    /// Its submitter, or an admin.
    Owner,
    /// A submitter merged into it.
    Waiter,
    /// Anybody else.
    Other,
}

impl Relation {
    fn of(by: &Caller, owner_uid: u32, waiter_uids: impl IntoIterator<Item = u32>) -> Self {
        if by.admin || by.identity.uid == owner_uid {
            Self::Owner
        } else if waiter_uids.into_iter().any(|uid| uid == by.identity.uid) {
            Self::Waiter
        } else {
            Self::Other
        }
    }

    /// The summary as this caller may see it.
    fn view(self, summary: JobSummary) -> JobSummary {
        match self {
            Self::Owner => summary,
            Self::Waiter | Self::Other => summary.limited(),
        }
    }
}

impl Live {
    fn summary(&self) -> JobSummary {
        JobSummary {
            id: self.info.id,
            owner: self.info.owner.to_string(),
            owner_uid: self.info.owner.uid,
            command: self
                .info
                .command
                .as_ref()
                .map_or_else(|| vec![self.info.summary.clone()], |c| c.argv.clone()),
            env: self
                .info
                .command
                .as_ref()
                .map(|c| c.env.clone())
                .unwrap_or_default(),
            cwd: self.info.command.as_ref().and_then(|c| c.cwd.clone()),
            tags: self.info.tags.clone(),
            lane: self.info.lane.clone(),
            worker: None,
            waiting: None,
            runner: None,
            phase: if self.started_at.is_some() {
                JobPhase::Running
            } else {
                JobPhase::Queued
            },
            accepted_ms: epoch_ms(self.accepted_at),
            started_ms: self.started_at.map(epoch_ms),
            finished_ms: None,
            outcome: None,
            runtime_ms: None,
            waiters: u32::try_from(self.waiters.len()).unwrap_or(u32::MAX),
            results: Vec::new(),
        }
    }

    fn relation(&self, by: &Caller) -> Relation {
        Relation::of(by, self.info.owner.uid, self.waiters.iter().map(|w| w.uid))
    }
}

struct Running {
    id: JobId,
    /// The worker it runs on (its index in `Actor::workers`).
    worker: usize,
    /// The live feed of its log, for followers.
    live: broadcast::Sender<LogChunk>,
    started: Instant,
    cancel: CancellationToken,
    /// What the job reports back.
    results: crate::job::ResultSink,
    /// Set when its executor gives it back unstarted.
    give_back: crate::job::GiveBack,
    /// Where its executor says it runs.
    runner: Option<crate::job::RunnerRecord>,
}

/// What one user has on the server now.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    live_jobs: usize,
    live_bytes: u64,
    log_bytes: u64,
}

/// What the engine's own background work reports back.
enum Internal {
    Pruned(Vec<PrunedJob>),
    /// A job's start is on record (it runs).
    Started(JobId),
    /// A running job's task ended: its outcome and the size of its log, or why the task
    /// failed.
    Ended {
        id: JobId,
        ended: Result<(Outcome, u64), tokio::task::JoinError>,
    },
    /// The worker a job found running elsewhere at start waits for had time enough to come
    /// back.
    Unclaimed(JobId),
}

struct Actor<S> {
    scheduler: S,
    hook: Box<dyn SubmitHook>,
    config: EngineConfig,
    store: Arc<dyn Store>,
    /// The engine's own worker first, then the others.
    workers: Vec<Worker>,
    start_check: Option<Arc<dyn AccessCheck>>,
    /// Jobs whose outcome is being committed: gone from `jobs`, not yet in the store's
    /// queries.
    finishing: HashMap<JobId, Committing>,
    next_id: u64,
    jobs: HashMap<JobId, Live>,
    running: HashMap<JobId, Running>,
    /// Nothing new starts while set.
    paused: bool,
    /// Set once shutdown was asked for: who waits for the engine to stop.
    stopping: Option<Vec<oneshot::Sender<()>>>,
    /// Idempotency keys of the jobs the store holds: (uid, key) → (job, merged).
    keys: HashMap<(u32, SubmitKey), (JobId, bool)>,
    /// Digests of requests served, until their credentials expire.
    seen: HashMap<[u8; 32], SystemTime>,
    usage: HashMap<u32, Usage>,
    /// Jobs that were running elsewhere when the server stopped, by the worker they wait
    /// for: the job, and its executor's reference to the run.
    awaiting: HashMap<String, (JobId, Work, String)>,
    /// At start: what the engine records about the jobs the store gave back (lost, queued
    /// again), committed before anybody is served.
    restart_records: Vec<Pending<()>>,
    /// Outcomes waiting for their commit before waiters hear of them.
    publishing: TaskTracker,
    internal: mpsc::UnboundedSender<Internal>,
    /// What happens, for whoever follows ([`EngineHandle::events`]).
    events: broadcast::Sender<super::EngineEvent>,
}

impl<S: Scheduler> Actor<S> {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Command>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
    ) {
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        let mut forget = tokio::time::interval(FORGET_REQUESTS_EVERY);
        let mut inbox_open = true;
        loop {
            // A job still waiting for its worker to come back (found running elsewhere at
            // start) has no task here: it stays recorded as running elsewhere for the next
            // start.
            if self.stopping.is_some() && self.running.len() == self.awaiting.len() {
                break;
            }
            self.start_next();
            tokio::select! {
                command = inbox.recv(), if inbox_open => match command {
                    Some(command) => self.handle(command),
                    // Nobody can submit or watch any more: finish the running job and stop.
                    None => {
                        inbox_open = false;
                        self.begin_shutdown(ShutdownMode::FinishRunning, None);
                    }
                },
                Some(message) = internal.recv() => match message {
                    Internal::Pruned(jobs) => self.forget_pruned(&jobs),
                    Internal::Started(id) => self.start_recorded(id),
                    Internal::Ended { id, ended } => self.ended(id, ended),
                    Internal::Unclaimed(id) => self.unclaimed(id),
                },
                _ = prune.tick() => self.prune(),
                _ = forget.tick() => self.forget_requests(),
            }
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "the job store could not record everything before stopping");
        }
        // Every outcome reaches its waiters before the engine says it stopped.
        self.publishing.close();
        self.publishing.wait().await;
        for done in self.stopping.take().unwrap_or_default() {
            let _ = done.send(());
        }
        tracing::debug!(queued = self.jobs.len(), "engine stopped");
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit {
                job,
                owner,
                options,
                reply,
            } => self.submit(job, owner, options, reply),
            Command::Watch { id, by, reply } => self.watch(id, &by, reply),
            Command::Shutdown { mode, done } => self.begin_shutdown(mode, Some(done)),
            Command::List {
                by,
                finished,
                reply,
            } => self.list(&by, finished, reply),
            Command::Status { id, by, reply } => self.status(id, &by, reply),
            Command::Cancel { id, by, reply } => self.cancel(id, &by, reply),
            Command::OpenLog { id, by, reply } => self.open_log(id, &by, reply),
            Command::RememberRequest {
                digest,
                until,
                reply,
            } => {
                let _ = reply.send(self.remember_request(digest, until));
            }
            Command::SetPaused { paused, by, reply } => {
                let _ = reply.send(self.set_paused(paused, &by));
            }
            // The loop offers free workers to the scheduler after every command.
            Command::Wake => {}
            Command::QueueState { reply } => {
                let _ = reply.send(Ok(self.queue_state()));
            }
            Command::Promote { id, by, reply } => {
                let _ = reply.send(self.promote(id, &by));
            }
            Command::AttachWorker {
                info,
                executor,
                reply,
            } => {
                let _ = reply.send(self.attach_worker(info, executor));
            }
            Command::DetachWorker { name, reply } => {
                let _ = reply.send(self.detach_worker(&name));
            }
            Command::Reattach { uid, key, reply } => self.reattach_by_key(uid, key, reply),
            Command::AwaitsWorker { name, reply } => {
                let _ = reply.send(Ok(self.awaiting.contains_key(&name)));
            }
        }
    }

    /// Takes back a job that was running elsewhere when the server stopped: it runs on,
    /// and its worker, when it comes back, reports its end.
    fn adopt(
        &mut self,
        stored: StoredJob,
        runner: crate::store::RecordedRunner,
        started_at: SystemTime,
    ) {
        let crate::store::RecordedRunner {
            worker: name,
            reference,
        } = runner;
        let id = stored.id;
        let lost = |actor: &mut Self, why: &str| {
            tracing::warn!(job = %id, worker = %name, "the job was running elsewhere when the server stopped, and {why}: recorded as lost");
            actor.record_lost(id);
        };
        let Some(command) = stored.command.map(Arc::new) else {
            return lost(self, "its command cannot be read");
        };
        let worker = match self.workers.iter().position(|w| w.info.name == name) {
            Some(index) => index,
            None => {
                self.workers.push(Worker {
                    info: WorkerInfo::new(name.clone(), Vec::<String>::new()),
                    executor: None,
                    attached: false,
                    local: false,
                });
                self.workers.len() - 1
            }
        };
        let info = command_info(id, stored.owner, stored.summary, &command);
        // The engine's own worker, when it does not run jobs, cannot find one again.
        let own_idle = worker == 0 && !self.workers[0].attached;
        if own_idle
            || !self
                .scheduler
                .adopt(info.clone(), &self.workers[worker].info)
        {
            return lost(self, "cannot be taken back");
        }
        let local = self.workers[worker].local && self.workers[worker].executor.is_some();
        if local {
            tracing::info!(job = %id, worker = %name, "the job was running when the server stopped: finding it again");
        } else {
            tracing::info!(job = %id, worker = %name, "the job was running on a worker when the server stopped: waiting for the worker to report");
        }
        let size = command.byte_size();
        self.count_live(&info, size, &stored.waiters);
        let (state, _) = watch::channel(JobState::Running);
        let ran_for = SystemTime::now()
            .duration_since(started_at)
            .unwrap_or_default();
        self.jobs.insert(
            id,
            Live {
                job: None,
                info,
                state,
                durable: Pending::ready(Ok(())).shared(),
                accepted_at: stored.accepted_at,
                started_at: Some(started_at),
                waiters: stored.waiters,
                size,
            },
        );
        self.running.insert(
            id,
            Running {
                id,
                worker,
                live: crate::executor::LogSink::discard().live(),
                started: Instant::now()
                    .checked_sub(ran_for)
                    .unwrap_or_else(Instant::now),
                cancel: CancellationToken::new(),
                results: crate::job::ResultSink::default(),
                give_back: crate::job::GiveBack::default(),
                runner: None,
            },
        );
        if local {
            // Its executor recorded where it runs, and is here to find it.
            self.launch(
                id,
                Work::Command(command),
                lifecycle::Launch::Resume(reference),
            );
            return;
        }
        self.awaiting
            .insert(name, (id, Work::Command(command), reference));
        let internal = self.internal.clone();
        let wait = self.config.worker_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = internal.send(Internal::Unclaimed(id));
        });
    }

    /// Records job `id`, taken back from the store, as lost (committed before the engine
    /// serves anybody).
    fn record_lost(&mut self, id: JobId) {
        let recorded = self.store.record_finish(id, lost(), 0, SystemTime::now());
        self.restart_records.push(recorded);
    }

    /// Counts a job taken back from the store (and its waiters) against its users' limits.
    fn count_live(&mut self, info: &JobInfo, size: u64, waiters: &[Identity]) {
        let usage = self.usage.entry(info.owner.uid).or_default();
        usage.live_jobs += 1;
        usage.live_bytes += size;
        for waiter in waiters {
            self.usage.entry(waiter.uid).or_default().live_jobs += 1;
        }
    }

    /// Takes the restored job back into the queue.
    fn restore(&mut self, stored: StoredJob) {
        let id = stored.id;
        let Some(command) = stored.command.map(Arc::new) else {
            tracing::warn!(job = %id, "an in-process job cannot run again after a restart: recorded as lost");
            return self.record_lost(id);
        };
        let size = command.byte_size();
        let info = command_info(id, stored.owner, stored.summary, &command);
        self.scheduler.enqueue(info.clone());
        self.count_live(&info, size, &stored.waiters);
        let (state, _) = watch::channel(JobState::Queued);
        let live = Live {
            job: Some(Work::Command(command)),
            info,
            state,
            durable: Pending::ready(Ok(())).shared(),
            accepted_at: stored.accepted_at,
            started_at: None,
            waiters: stored.waiters,
            size,
        };
        self.jobs.insert(id, live);
    }
}

/// What the scheduler and hooks know of a command job taken back from the store.
fn command_info(id: JobId, owner: Identity, summary: String, command: &Arc<CommandJob>) -> JobInfo {
    JobInfo {
        id,
        owner,
        summary,
        tags: command.tags.clone(),
        lane: command.lane.clone(),
        command: Some(command.clone()),
    }
}

/// The result of a job whose end nobody saw.
fn lost() -> super::JobResult {
    super::JobResult {
        outcome: Outcome::Lost,
        runtime: Duration::ZERO,
        results: Vec::new(),
    }
}
