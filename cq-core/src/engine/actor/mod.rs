//! The engine task.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use futures_util::future::Shared;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::handle::{
    Command, EngineHandle, JobResult, JobState, JobTicket, ShutdownMode, SubmitError,
};
use crate::auth::Identity;
use crate::executor::{DEFAULT_LOG_LIMIT, LogChunk, LogSink};
use crate::job::{CommandJob, Job, JobContext, JobId, JobPhase, JobSummary, epoch_ms};
use crate::outcome::{Outcome, SpawnFailure};
use crate::scheduler::{
    AcceptAll, Admission, Decision, JobInfo, Scheduler, SerialScheduler, SubmitHook,
};
use crate::store::{MemoryStore, Pending, Store, StoreError, StoredJob};

mod queries;

/// How many submissions may wait for the engine's attention before submitters wait too.
const COMMAND_QUEUE: usize = 1024;

/// How often finished jobs past their retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Turns a recovered command back into a runnable job (binds it to an executor).
pub type Reviver = Arc<dyn Fn(CommandJob) -> Box<dyn Job> + Send + Sync>;

/// Settings of an [`Engine`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Directory for per-job log files (`<id>.log`); output is discarded when `None`.
    pub log_dir: Option<PathBuf>,
    /// How long finished jobs (outcome and log) are kept for late watchers.
    pub retention: Duration,
    /// Put jobs that were running when the server stopped back in the queue instead of
    /// reporting them lost.
    pub requeue_running: bool,
    /// Bytes of output kept per job; the rest is dropped after a marker.
    pub log_limit: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            log_dir: None,
            retention: Duration::from_secs(7 * 24 * 3600),
            requeue_running: false,
            log_limit: DEFAULT_LOG_LIMIT,
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
    reviver: Option<Reviver>,
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
            reviver: None,
        }
    }

    /// Sets the hook that reviews every submission (use a
    /// [`HookChain`](crate::scheduler::HookChain) for several).
    #[must_use]
    pub fn with_hook(mut self, hook: impl SubmitHook) -> Self {
        self.hook = Box::new(hook);
        self
    }

    /// Records jobs in `store`; at start, queued commands found there are turned back into
    /// jobs with `reviver` and run. In-process jobs cannot be revived and are reported lost.
    #[must_use]
    pub fn with_store(mut self, store: Arc<dyn Store>, reviver: Reviver) -> Self {
        self.store = store;
        self.reviver = Some(reviver);
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
        let recovered = self.store.recover(self.config.requeue_running).await?;
        let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
        let mut actor = Actor {
            next_id: recovered.next_id.max(1),
            scheduler: self.scheduler,
            hook: self.hook,
            config: self.config,
            store: self.store,
            jobs: HashMap::new(),
            running: None,
            stopping: None,
        };
        for id in &recovered.lost {
            tracing::warn!(job = %id, "the job was running when the server stopped: recorded as lost");
        }
        for id in &recovered.requeued {
            tracing::warn!(job = %id, "the job was running when the server stopped: queued again");
        }
        for stored in recovered.queued {
            actor.restore(stored, self.reviver.as_ref());
        }
        tokio::spawn(actor.run(inbox));
        Ok(EngineHandle { commands })
    }
}

impl<S> std::fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Resolves when the job's record is committed.
type Durable = Shared<Pending<()>>;

/// A job that has been accepted and has not ended.
struct Live {
    job: Option<Box<dyn Job>>,
    info: JobInfo,
    state: watch::Sender<JobState>,
    durable: Durable,
    accepted_at: SystemTime,
    started_at: Option<SystemTime>,
    /// Submitters merged into this job.
    waiters: Vec<Identity>,
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
        }
    }

    /// Owners (the submitter and merged waiters) and root may act on a job.
    fn permits(&self, who: &Identity) -> bool {
        who.uid == 0
            || who.uid == self.info.owner.uid
            || self.waiters.iter().any(|w| w.uid == who.uid)
    }
}

struct Running {
    id: JobId,
    /// The live feed of its log, for followers.
    live: broadcast::Sender<LogChunk>,
    started: Instant,
    cancel: CancellationToken,
    task: JoinHandle<Outcome>,
}

struct Actor<S> {
    scheduler: S,
    hook: Box<dyn SubmitHook>,
    config: EngineConfig,
    store: Arc<dyn Store>,
    next_id: u64,
    jobs: HashMap<JobId, Live>,
    running: Option<Running>,
    /// Set once shutdown was asked for: who waits for the engine to stop.
    stopping: Option<Vec<oneshot::Sender<()>>>,
}

impl<S: Scheduler> Actor<S> {
    async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        loop {
            if self.stopping.is_some() && self.running.is_none() {
                break;
            }
            self.start_next();
            tokio::select! {
                command = inbox.recv() => match command {
                    Some(command) => self.handle(command),
                    // Nobody can submit or watch any more: finish the running job and stop.
                    None => self.begin_shutdown(ShutdownMode::FinishRunning, None),
                },
                (id, outcome) = wait_running(&mut self.running) => self.finish(id, outcome),
                _ = prune.tick() => self.prune(),
            }
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "the job store could not record everything before stopping");
        }
        for done in self.stopping.take().unwrap_or_default() {
            let _ = done.send(());
        }
        tracing::debug!(queued = self.jobs.len(), "engine stopped");
    }

    fn restore(&mut self, stored: StoredJob, reviver: Option<&Reviver>) {
        let id = stored.id;
        let Some(job) = stored
            .command
            .clone()
            .and_then(|command| reviver.map(|revive| revive(command)))
        else {
            tracing::warn!(job = %id, "an in-process job cannot run again after a restart: recorded as lost");
            let lost = JobResult {
                outcome: Outcome::Lost,
                runtime: Duration::ZERO,
            };
            self.store
                .record_finish(id, lost, SystemTime::now())
                .log_failure("record a lost job");
            return;
        };
        let info = JobInfo {
            id,
            owner: stored.owner,
            summary: stored.summary,
            command: stored.command,
        };
        self.scheduler.submit(info.clone(), &AcceptAll);
        let (state, _) = watch::channel(JobState::Queued);
        let durable = Pending::ready(Ok(())).shared();
        let live = Live {
            job: Some(job),
            info,
            state,
            durable,
            accepted_at: stored.accepted_at,
            started_at: None,
            waiters: stored.waiters,
        };
        self.jobs.insert(id, live);
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit {
                job,
                owner,
                verdict,
                reply,
            } => self.submit(job, owner, verdict, reply),
            Command::Watch { id, reply } => self.watch(id, reply),
            Command::Shutdown { mode, done } => self.begin_shutdown(mode, Some(done)),
            Command::List { reply } => self.list(reply),
            Command::Status { id, reply } => self.status(id, reply),
            Command::Cancel { id, by, reply } if self.jobs.contains_key(&id) => {
                let _ = reply.send(self.cancel(id, &by));
            }
            Command::OpenLog { id, by, reply } => self.open_log(id, &by, reply),
            Command::Cancel { id, reply, .. } => {
                // Finished long ago, or never existed: the store says which.
                let described = self.store.describe(id);
                tokio::spawn(async move {
                    let answer = match described.await {
                        Ok(Some(_)) => Err(SubmitError::AlreadyFinished(id)),
                        Ok(None) => Err(SubmitError::UnknownJob(id)),
                        Err(e) => Err(SubmitError::Store(e)),
                    };
                    let _ = reply.send(answer);
                });
            }
        }
    }

    fn submit(
        &mut self,
        job: Box<dyn Job>,
        owner: Identity,
        verdict: Option<Decision>,
        reply: oneshot::Sender<Result<JobTicket, SubmitError>>,
    ) {
        if self.stopping.is_some() {
            let _ = reply.send(Err(SubmitError::ShuttingDown));
            return;
        }
        let id = JobId(self.next_id);
        let info = JobInfo {
            id,
            owner,
            summary: job.summary(),
            command: job.command().cloned(),
        };
        let admission = match verdict {
            Some(Decision::Accept) | None => {
                self.scheduler.submit(info.clone(), self.hook.as_ref())
            }
            Some(decided) => self.scheduler.submit(info.clone(), &Decided(decided)),
        };
        match admission {
            Admission::Accepted { ahead } => {
                self.next_id += 1;
                let accepted_at = SystemTime::now();
                let stored = StoredJob {
                    id,
                    owner: info.owner.clone(),
                    summary: info.summary.clone(),
                    command: info.command.clone(),
                    accepted_at,
                    waiters: Vec::new(),
                };
                let durable = self.store.insert(stored).shared();
                let (state, receiver) = watch::channel(JobState::Queued);
                let ticket = JobTicket {
                    id,
                    ahead,
                    merged: false,
                    state: receiver,
                };
                tracing::info!(job = %id, owner = %info.owner, ahead, command = %info.summary, "accepted");
                let live = Live {
                    job: Some(job),
                    info,
                    state,
                    durable: durable.clone(),
                    accepted_at,
                    started_at: None,
                    waiters: Vec::new(),
                };
                self.jobs.insert(id, live);
                // Acknowledge only once the job is on disk; meanwhile keep serving others.
                tokio::spawn(async move {
                    let _ = reply.send(durable.await.map(|()| ticket).map_err(SubmitError::Store));
                });
            }
            Admission::Merged { into } => {
                let Some(live) = self.jobs.get_mut(&into) else {
                    let _ = reply.send(Err(SubmitError::UnknownJob(into)));
                    return;
                };
                tracing::info!(job = %into, owner = %info.owner, command = %info.summary, "merged into an equal job");
                live.waiters.push(info.owner.clone());
                let added = self.store.add_waiter(into, info.owner, SystemTime::now());
                let durable = live.durable.clone();
                let mut ticket = self.ticket(into, &self.jobs[&into]);
                ticket.merged = true;
                // The waiter is acknowledged once it is on disk too: it survives a restart.
                tokio::spawn(async move {
                    let recorded = match durable.await {
                        Ok(()) => added.await,
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(recorded.map(|()| ticket).map_err(SubmitError::Store));
                });
            }
            Admission::Rejected { reason } => {
                tracing::info!(owner = %info.owner, command = %info.summary, %reason, "rejected");
                let _ = reply.send(Err(SubmitError::Rejected { reason }));
            }
        }
    }

    /// A ticket for live job `id`.
    fn ticket(&self, id: JobId, live: &Live) -> JobTicket {
        let ahead = self
            .scheduler
            .view()
            .all()
            .position(|j| j.id == id)
            .unwrap_or(0);
        JobTicket {
            id,
            ahead,
            merged: false,
            state: live.state.subscribe(),
        }
    }

    fn cancel(&mut self, id: JobId, by: &Identity) -> Result<Vec<JobSummary>, SubmitError> {
        let Some(live) = self.jobs.get(&id) else {
            return Err(SubmitError::AlreadyFinished(id));
        };
        if !live.permits(by) {
            return Err(not_permitted(id, &live.info.owner, "cancel"));
        }
        tracing::info!(job = %id, by = %by, "cancel requested");
        if self.running.as_ref().is_some_and(|r| r.id == id) {
            if let Some(running) = &self.running {
                running.cancel.cancel();
            }
            return Ok(vec![live.summary()]);
        }
        self.scheduler.remove(id);
        let mut summary = live.summary();
        self.finish(id, Outcome::Cancelled);
        summary.phase = JobPhase::Finished;
        summary.outcome = Some(Outcome::Cancelled);
        summary.finished_ms = Some(epoch_ms(SystemTime::now()));
        Ok(vec![summary])
    }

    fn begin_shutdown(&mut self, mode: ShutdownMode, done: Option<oneshot::Sender<()>>) {
        let waiters = self.stopping.get_or_insert_with(Vec::new);
        waiters.extend(done);
        if mode == ShutdownMode::CancelRunning
            && let Some(running) = &self.running
        {
            tracing::info!(job = %running.id, "cancelling the running job for shutdown");
            running.cancel.cancel();
        }
    }

    fn start_next(&mut self) {
        if self.running.is_some() || self.stopping.is_some() {
            return;
        }
        let Some(id) = self.scheduler.next() else {
            return;
        };
        let Some(live) = self.jobs.get_mut(&id) else {
            tracing::error!(job = %id, "scheduler chose a job the engine does not hold");
            self.scheduler.finish(id, &Outcome::Lost);
            return;
        };
        let Some(job) = live.job.take() else { return };
        tracing::info!(job = %id, owner = %live.info.owner, command = %live.info.summary, "started");
        live.state.send_replace(JobState::Running);
        live.started_at = Some(SystemTime::now());
        self.store
            .record_start(id, SystemTime::now())
            .log_failure("record a start");
        let cancel = CancellationToken::new();
        let durable = live.durable.clone();
        let log = match &self.config.log_dir {
            Some(dir) => LogSink::create(&dir.join(format!("{id}.log")), self.config.log_limit),
            None => LogSink::discard(),
        };
        let feed = log.live();
        let ctx_cancel = cancel.clone();
        let owner = live.info.owner.clone();
        let task = tokio::spawn(async move {
            // A job runs only once it is on disk: usually long done, since it waited its turn.
            if let Err(e) = durable.await {
                return spawn_failure(format!("the job could not be recorded: {e}"));
            }
            job.run(JobContext {
                id,
                owner,
                log,
                cancel: ctx_cancel,
            })
            .await
        });
        self.running = Some(Running {
            id,
            live: feed,
            started: Instant::now(),
            cancel,
            task,
        });
    }

    fn finish(&mut self, id: JobId, outcome: Outcome) {
        // Only the running job has a run time (a cancelled queued job has none); whole
        // milliseconds, as the store and the wire keep it, so every reader sees the same.
        let runtime = match self.running.take_if(|r| r.id == id) {
            Some(running) => Duration::from_millis(
                u64::try_from(running.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            ),
            None => Duration::ZERO,
        };
        self.scheduler.finish(id, &outcome);
        let result = JobResult { outcome, runtime };
        self.store
            .record_finish(id, result.clone(), SystemTime::now())
            .log_failure("record an outcome");
        if let Some(live) = self.jobs.remove(&id) {
            tracing::info!(
                job = %id,
                owner = %live.info.owner,
                command = %live.info.summary,
                outcome = %result.outcome,
                runtime_ms = runtime.as_millis() as u64,
                "finished"
            );
            live.state.send_replace(JobState::Finished(result));
        }
    }

    /// Forgets finished jobs past their retention, and deletes their logs.
    fn prune(&self) {
        let Some(before) = SystemTime::now().checked_sub(self.config.retention) else {
            return;
        };
        let pruned = self.store.prune(before);
        let log_dir = self.config.log_dir.clone();
        tokio::spawn(async move {
            match pruned.await {
                Ok(ids) if !ids.is_empty() => {
                    tracing::info!(
                        jobs = ids.len(),
                        "pruned finished jobs past their retention"
                    );
                    if let Some(dir) = log_dir {
                        let _ = tokio::task::spawn_blocking(move || {
                            for id in ids {
                                let _ = std::fs::remove_file(dir.join(format!("{id}.log")));
                            }
                        })
                        .await;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "cannot prune old jobs"),
            }
        });
    }
}

/// A decision made outside the engine, standing in for its hooks.
struct Decided(Decision);

impl SubmitHook for Decided {
    fn review(&self, _job: &JobInfo, _queue: &crate::scheduler::QueueView<'_>) -> Decision {
        self.0.clone()
    }
}

fn not_permitted(id: JobId, owner: &Identity, what: &str) -> SubmitError {
    SubmitError::NotPermitted {
        reason: format!("job {id} belongs to {owner}; only its owners and root may {what} it"),
    }
}

fn spawn_failure(message: String) -> Outcome {
    Outcome::SpawnFailed {
        reason: SpawnFailure::Other,
        message,
    }
}

/// Resolves when the running job ends; never while nothing runs.
async fn wait_running(running: &mut Option<Running>) -> (JobId, Outcome) {
    let Some(run) = running else {
        return std::future::pending().await;
    };
    let outcome = match (&mut run.task).await {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::error!(job = %run.id, error = %e, "the job's task failed");
            Outcome::Lost
        }
    };
    (run.id, outcome)
}
