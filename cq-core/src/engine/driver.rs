//! The engine's thin async driver: it starts the [core](super::core) on what the store
//! holds, feeds it commands, commits, jobs' ends and timers, and carries out the effects it
//! asks for (the store's writes and reads, replies, jobs launched on their workers' executors,
//! logs deleted, events sent).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::config::EngineConfig;
use super::core::{
    Core, Effect, Input, LaunchSpec, Lookup, Now, RECENT_IN_LISTS, Record, Reply, Worker,
};
use super::handle::{Command, EngineHandle, JobResult, LogAccess};
use crate::executor::{Executor, LogChunk, LogSink};
use crate::job::{Clearance, GiveBack, JobContext, JobId, ResultSink, RunnerRecord, Work};
use crate::outcome::{Outcome, SpawnFailure};
use crate::policy::AccessCheck;
use crate::scheduler::{AcceptAll, Scheduler, SerialScheduler, SubmitHook, WorkerInfo};
use crate::store::{MemoryStore, Pending, Store, StoreError};

/// How many submissions may wait for the engine's attention before submitters wait too.
const COMMAND_QUEUE: usize = 1024;

/// How often finished jobs past their retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How often expired request digests are forgotten.
const FORGET_REQUESTS_EVERY: Duration = Duration::from_secs(60);

/// How long the driver tries to record an outcome before it gives up on it (each attempt may
/// wait up to the store's own 5 s for a locked database): short enough that a stopping
/// server still ends within its service manager's patience.
const OUTCOME_PATIENCE: Duration = Duration::from_secs(20);

/// Builds and starts the engine task.
pub struct Engine<S = SerialScheduler> {
    scheduler: S,
    hook: Box<dyn SubmitHook>,
    config: EngineConfig,
    store: Arc<dyn Store>,
    executor: Option<Arc<dyn Executor>>,
    /// Workers besides the engine's own, each with its executor.
    workers: Vec<(WorkerInfo, Arc<dyn Executor>)>,
    admission: super::admission::Admission,
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
        self.workers.push((info, executor));
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
    /// [`StoreError`] when the store cannot be read, or what it decided about the jobs it
    /// held cannot be recorded.
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
        if self.config.paused {
            tracing::warn!("the queue starts paused: nothing starts until an admin resumes it");
        }
        let mut executors = HashMap::new();
        let mut workers = vec![Worker {
            info: self.config.worker.clone(),
            runs_commands: self.executor.is_some(),
            attached: self.config.local_worker,
            local: true,
        }];
        if let Some(executor) = self.executor {
            executors.insert(self.config.worker.name.clone(), executor);
        }
        for (info, executor) in self.workers {
            executors.insert(info.name.clone(), executor);
            workers.push(Worker {
                info,
                runs_commands: true,
                attached: true,
                local: true,
            });
        }
        let core = Core::new(
            self.scheduler,
            self.hook,
            self.config.clone(),
            workers,
            recovered.next_id.max(past_logs),
        );
        let mut driver = Driver {
            core,
            store: self.store,
            log_dir: self.config.log_dir.clone(),
            log_limit: self.config.log_limit,
            executors,
            start_check: self.admission.access.clone(),
            runs: HashMap::new(),
            internal,
            events: events.clone(),
        };
        driver.core.recover(recovered, Now::read());
        // What the engine decided about the jobs the store gave back (lost, queued again)
        // is committed before anybody is served.
        driver.settle().await?;
        tokio::spawn(driver.run(inbox, internal_inbox));
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

/// How old a start check begun during the start's commit may be when the job launches: a
/// commit that took longer (a slow or stuck disk) leaves time for the policy or the account
/// to change, and the job is checked again.
const START_CHECK_FRESH: Duration = Duration::from_secs(1);

/// A start check under way on the blocking pool ([`AccessCheck::clear`] reads the account
/// database).
type StartCheck = tokio::task::JoinHandle<Result<Clearance, crate::policy::PolicyRefusal>>;

fn start_check(
    check: Arc<dyn AccessCheck>,
    owner: crate::auth::Identity,
    command: Arc<crate::job::CommandJob>,
) -> StartCheck {
    tokio::task::spawn_blocking(move || check.clear(&owner, &command))
}

/// What the driver keeps for a running job: what its executor is handed.
struct Run {
    cancel: CancellationToken,
    /// The start check, begun while the job's start was being recorded, and when.
    start_check: Option<(std::time::Instant, StartCheck)>,
    /// The live feed of its log, for followers.
    live: broadcast::Sender<LogChunk>,
    results: ResultSink,
    give_back: GiveBack,
}

impl Default for Run {
    fn default() -> Self {
        Self {
            cancel: CancellationToken::new(),
            start_check: None,
            live: LogSink::discard().live(),
            results: ResultSink::default(),
            give_back: GiveBack::default(),
        }
    }
}

struct Driver<S> {
    core: Core<S>,
    store: Arc<dyn Store>,
    log_dir: Option<PathBuf>,
    log_limit: u64,
    /// Each worker's executor, by the worker's name.
    executors: HashMap<String, Arc<dyn Executor>>,
    start_check: Option<Arc<dyn AccessCheck>>,
    runs: HashMap<JobId, Run>,
    internal: mpsc::UnboundedSender<Input>,
    /// What happens, for whoever follows ([`EngineHandle::events`]).
    events: broadcast::Sender<super::EngineEvent>,
}

impl<S: Scheduler> Driver<S> {
    /// Carries out what the core decided at start, waiting for every record it made.
    async fn settle(&mut self) -> Result<(), StoreError> {
        loop {
            let mut pending = Vec::new();
            while let Some(effect) = self.core.poll_effect() {
                match effect {
                    Effect::Persist {
                        record,
                        commit: Some(commit),
                    } => pending.push((commit, self.write(record))),
                    other => self.execute(other),
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            for (commit, written) in pending {
                let result = written.await;
                self.core.committed(commit, result.clone(), Now::read());
                result?;
            }
        }
    }

    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Command>,
        mut internal: mpsc::UnboundedReceiver<Input>,
    ) {
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        let mut forget = tokio::time::interval(FORGET_REQUESTS_EVERY);
        let mut inbox_open = true;
        self.core.start_next(Now::read());
        self.carry_out();
        while !self.core.is_stopped() {
            let input = tokio::select! {
                command = inbox.recv(), if inbox_open => match command {
                    Some(command) => Input::Command(command),
                    None => {
                        inbox_open = false;
                        Input::InboxClosed
                    }
                },
                Some(input) = internal.recv() => input,
                _ = prune.tick() => Input::PruneDue,
                _ = forget.tick() => Input::ForgetDue,
            };
            self.core.handle(input, Now::read());
            self.carry_out();
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "the job store could not record everything before stopping");
        }
        for done in self.core.take_stop_waiters() {
            let _ = done.send(());
        }
        tracing::debug!(queued = self.core.live_jobs(), "engine stopped");
    }

    /// Carries out what the core asks for.
    fn carry_out(&mut self) {
        while let Some(effect) = self.core.poll_effect() {
            self.execute(effect);
        }
    }

    /// Hands `record` to the store (which writes in call order).
    fn write(&self, record: Record) -> Pending<()> {
        let store = &self.store;
        match record {
            Record::Insert(job) => store.insert(job),
            Record::AddWaiter {
                job,
                waiter,
                key,
                at,
            } => store.add_waiter(job, waiter, key, at),
            Record::RemoveWaiter { job, uid } => store.remove_waiter(job, uid),
            Record::Start { job, at } => store.record_start(job, at),
            Record::Finish {
                job,
                result,
                log_bytes,
                at,
            } => store.record_finish(job, result, log_bytes, at),
            Record::Requeue(job) => store.record_requeue(job),
            Record::RememberRequest { digest, until } => store.remember_request(digest, until),
            Record::ForgetRequests(before) => store.forget_requests(before),
        }
    }

    fn execute(&mut self, effect: Effect) {
        match effect {
            Effect::Persist { record, commit } => self.persist(record, commit),
            Effect::Reply(reply) => self.send_reply(reply),
            Effect::Launch(spec) => self.launch(spec),
            Effect::CheckStart { id, owner, command } => {
                if let Some(check) = self.start_check.clone() {
                    let started = start_check(check, owner, command);
                    self.runs.entry(id).or_default().start_check =
                        Some((std::time::Instant::now(), started));
                }
            }
            Effect::Cancel(id) => self.runs.entry(id).or_default().cancel.cancel(),
            Effect::Event(event) => {
                let _ = self.events.send(event);
            }
            Effect::RemoveLog(id) => {
                if let Some(path) = self.log_path(id) {
                    let _ = std::fs::remove_file(path);
                }
            }
            Effect::Released(id) => {
                self.runs.remove(&id);
            }
            Effect::Equip { worker, executor } => {
                self.executors.insert(worker, executor);
            }
            Effect::WorkerGone(name) => {
                self.executors.remove(&name);
            }
            Effect::WakeAfter { after, input } => {
                let internal = self.internal.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = internal.send(*input);
                });
            }
            Effect::Prune { before } => self.prune(before),
            Effect::Lookup { id, lookup } => self.look_up(id, lookup),
            Effect::Recent { live, by, to } => {
                let recent = self.store.recent(RECENT_IN_LISTS);
                tokio::spawn(async move {
                    super::core::answer_recent(live, &by, recent.await, to);
                });
            }
        }
    }

    fn log_path(&self, id: JobId) -> Option<PathBuf> {
        self.log_dir
            .as_ref()
            .map(|dir| dir.join(format!("{id}.log")))
    }

    /// Writes `record`; reports its commit when the core waits for it. An outcome is tried
    /// again while the store fails (a full disk, the database locked by another process
    /// beyond the store's patience): its waiters hear it only once it is on record, and a job
    /// whose end was never recorded would be found running, or queued, after a restart.
    fn persist(&self, record: Record, commit: Option<super::core::CommitId>) {
        let what = match &record {
            Record::Insert(_) => "record a job",
            Record::AddWaiter { .. } => "record a waiter",
            Record::RemoveWaiter { .. } => "forget a waiter",
            Record::Start { .. } => "record a job's start",
            Record::Finish { .. } => "record a job's end",
            Record::Requeue(_) => "record a job queued again",
            Record::RememberRequest { .. } => "remember a request",
            Record::ForgetRequests(_) => "forget expired requests",
        };
        let retry = match &record {
            Record::Finish {
                job,
                result,
                log_bytes,
                at,
            } => Some((*job, result.clone(), *log_bytes, *at)),
            _ => None,
        };
        let written = self.write(record);
        let Some(commit) = commit else {
            return written.log_failure(what);
        };
        let internal = self.internal.clone();
        let store = self.store.clone();
        tokio::spawn(async move {
            let result = match retry {
                Some((id, result, log_bytes, at)) => {
                    commit_outcome(store, written, id, result, log_bytes, at).await
                }
                None => written.await,
            };
            let _ = internal.send(Input::Committed { commit, result });
        });
    }

    fn send_reply(&mut self, reply: Reply) {
        match reply {
            Reply::Ticket(to, ticket) => to.send(ticket),
            Reply::Summaries(answer) => answer.send(),
            Reply::Summary(answer) => answer.send(),
            Reply::Retry(answer) => answer.send(),
            Reply::Cancelled(answer) => answer.send(),
            Reply::Done(answer) => answer.send(),
            Reply::Queue(answer) => answer.send(),
            Reply::Flag(answer) => answer.send(),
            Reply::Log(to, grant) => {
                let access = grant.map(|grant| LogAccess {
                    path: self.log_path(grant.id),
                    live: grant
                        .running
                        .then(|| self.runs.entry(grant.id).or_default().live.subscribe()),
                    ticket: grant.ticket,
                });
                let _ = to.send(access);
            }
        }
    }

    fn look_up(&self, id: JobId, lookup: Lookup) {
        let found = self.store.describe(id);
        let log = self.log_path(id);
        tokio::spawn(async move { lookup.answer(id, found.await, log) });
    }

    /// Forgets finished jobs that ended before `before`, and deletes their logs.
    fn prune(&self, before: SystemTime) {
        let pruned = self.store.prune(before);
        let log_dir = self.log_dir.clone();
        let internal = self.internal.clone();
        tokio::spawn(async move {
            match pruned.await {
                Ok(jobs) if !jobs.is_empty() => {
                    tracing::info!(
                        jobs = jobs.len(),
                        "pruned finished jobs past their retention"
                    );
                    if let Some(dir) = log_dir {
                        let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
                        let _ = tokio::task::spawn_blocking(move || {
                            for id in ids {
                                let _ = std::fs::remove_file(dir.join(format!("{id}.log")));
                            }
                        })
                        .await;
                    }
                    let _ = internal.send(Input::Pruned(jobs));
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "cannot prune old jobs"),
            }
        });
    }

    /// Runs a job on its worker's executor (its start is on record), or finds it again where
    /// it already runs (after a restart); its end is reported as [`Input::Ended`].
    fn launch(&mut self, spec: LaunchSpec) {
        let LaunchSpec {
            id,
            worker,
            job,
            owner,
            command,
            resume,
            shown,
        } = spec;
        let log_path = self.log_path(id);
        let runner = RunnerRecord::new(self.store.clone(), id, worker.clone()).showing_in(shown);
        let run = self.runs.entry(id).or_default();
        let log = match (&log_path, &resume) {
            (Some(path), None) => LogSink::create(path, self.log_limit),
            // Its output so far is there, and the rest goes on after it.
            (Some(path), Some(_)) => LogSink::reopen(path, self.log_limit),
            (None, _) => LogSink::discard(),
        }
        .feeding(run.live.clone());
        let cancel = run.cancel.clone();
        let results = run.results.clone();
        let give_back = run.give_back.clone();
        // A job found again was cleared when it started.
        let check = match (run.start_check.take(), &self.start_check, command) {
            _ if resume.is_some() => None,
            (Some((at, started)), _, _) if at.elapsed() <= START_CHECK_FRESH => Some(started),
            (_, Some(check), Some(command)) => {
                Some(start_check(check.clone(), owner.clone(), command))
            }
            (_, _, _) => None,
        };
        let executor = self.executors.get(&worker).cloned();
        let ctx_results = results.clone();
        let ctx_give_back = give_back.clone();
        let task = tokio::spawn(async move {
            let clearance = match check {
                Some(check) => match check.await {
                    Ok(Ok(clearance)) => clearance,
                    Ok(Err(refusal)) => {
                        tracing::info!(job = %id, %owner, reason = %refusal, "refused at start");
                        return (
                            spawn_failure(SpawnFailure::NotPermitted, refusal.to_string()),
                            0,
                        );
                    }
                    Err(e) => {
                        return (
                            spawn_failure(
                                SpawnFailure::Other,
                                format!("the start check failed: {e}"),
                            ),
                            0,
                        );
                    }
                },
                None => Clearance::default(),
            };
            let ctx = JobContext {
                id,
                owner,
                clearance,
                log,
                cancel,
                results: ctx_results,
                give_back: ctx_give_back,
                runner,
                resume,
            };
            // Cancelled while the start check ran: it never runs.
            if ctx.cancel.is_cancelled() {
                return (Outcome::Cancelled, 0);
            }
            let outcome = match (job, executor) {
                (Work::Command(command), Some(executor)) => executor.run(&command, ctx).await,
                (Work::Command(_), None) => spawn_failure(
                    SpawnFailure::Other,
                    "this engine runs no commands (it has no executor)".to_owned(),
                ),
                (Work::Local(job), _) => job.run(ctx).await,
            };
            let log_bytes = match log_path {
                Some(path) => std::fs::metadata(path).map_or(0, |m| m.len()),
                None => 0,
            };
            (outcome, log_bytes)
        });
        let internal = self.internal.clone();
        tokio::spawn(async move {
            let (outcome, log_bytes) = task.await.unwrap_or_else(|e| {
                tracing::error!(job = %id, error = %e, "the job's task failed");
                let message = if e.is_panic() {
                    let panic = e.into_panic();
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".to_owned());
                    format!("the job panicked: {what}")
                } else {
                    "the job's task was stopped".to_owned()
                };
                (Outcome::Failed { message }, 0)
            });
            let _ = internal.send(Input::Ended {
                id,
                outcome,
                log_bytes,
                given_back: give_back.given_back(),
                results: results.get(),
            });
        });
    }
}

fn spawn_failure(reason: SpawnFailure, message: String) -> Outcome {
    Outcome::SpawnFailed { reason, message }
}

/// Records job `id`'s outcome (`first`: the attempt already made), trying again while the
/// store fails, until [`OUTCOME_PATIENCE`] is over.
async fn commit_outcome(
    store: Arc<dyn Store>,
    first: Pending<()>,
    id: JobId,
    result: JobResult,
    log_bytes: u64,
    at: SystemTime,
) -> Result<(), StoreError> {
    let until = tokio::time::Instant::now() + OUTCOME_PATIENCE;
    let mut pause = Duration::from_millis(100);
    let mut attempt = first;
    loop {
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() + pause < until => {
                tracing::warn!(job = %id, error = %e, retry_in_ms = pause.as_millis() as u64, "the outcome could not be recorded yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                attempt = store.record_finish(id, result.clone(), log_bytes, at);
            }
            Err(e) => return Err(e),
        }
    }
}
