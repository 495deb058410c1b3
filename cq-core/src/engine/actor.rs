//! The engine task.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::handle::{
    Command, EngineHandle, JobResult, JobState, JobTicket, ShutdownMode, SubmitError,
};
use crate::auth::Identity;
use crate::executor::LogSink;
use crate::job::{Job, JobContext, JobId};
use crate::outcome::{Outcome, SpawnFailure};
use crate::scheduler::{AcceptAll, Admission, JobInfo, Scheduler, SerialScheduler, SubmitHook};

/// How many submissions may wait for the engine's attention before submitters wait too.
const COMMAND_QUEUE: usize = 1024;

/// Settings of an [`Engine`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Directory for per-job log files (`<id>.log`); output is discarded when `None`.
    pub log_dir: Option<PathBuf>,
    /// How many finished jobs are remembered so that late watchers still get the outcome.
    pub finished_retention: usize,
    /// The first job id to hand out.
    pub first_id: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            log_dir: None,
            finished_retention: 10_000,
            first_id: 1,
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
}

impl Engine<SerialScheduler> {
    /// An engine with the serial FIFO scheduler and no submit hook.
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
        }
    }

    /// Sets the hook that reviews every submission (use a
    /// [`HookChain`](crate::scheduler::HookChain) for several).
    #[must_use]
    pub fn with_hook(mut self, hook: impl SubmitHook) -> Self {
        self.hook = Box::new(hook);
        self
    }

    /// Starts the engine on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn spawn(self) -> EngineHandle {
        let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
        let actor = Actor {
            next_id: self.config.first_id,
            scheduler: self.scheduler,
            hook: self.hook,
            config: self.config,
            jobs: HashMap::new(),
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            running: None,
            stopping: None,
        };
        tokio::spawn(actor.run(inbox));
        EngineHandle { commands }
    }
}

impl<S> std::fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A job that has been accepted and has not ended.
struct Live {
    job: Option<Box<dyn Job>>,
    info: JobInfo,
    state: watch::Sender<JobState>,
}

struct Running {
    id: JobId,
    started: Instant,
    cancel: CancellationToken,
    task: JoinHandle<Outcome>,
}

struct Actor<S> {
    scheduler: S,
    hook: Box<dyn SubmitHook>,
    config: EngineConfig,
    next_id: u64,
    jobs: HashMap<JobId, Live>,
    finished: HashMap<JobId, JobResult>,
    finished_order: VecDeque<JobId>,
    running: Option<Running>,
    /// Set once shutdown was asked for: who waits for the engine to stop.
    stopping: Option<Vec<oneshot::Sender<()>>>,
}

impl<S: Scheduler> Actor<S> {
    async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
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
            }
        }
        for done in self.stopping.take().unwrap_or_default() {
            let _ = done.send(());
        }
        tracing::debug!(queued = self.jobs.len(), "engine stopped");
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit { job, owner, reply } => {
                let _ = reply.send(self.submit(job, owner));
            }
            Command::Watch { id, reply } => {
                let _ = reply.send(self.watch(id));
            }
            Command::Shutdown { mode, done } => self.begin_shutdown(mode, Some(done)),
        }
    }

    fn submit(&mut self, job: Box<dyn Job>, owner: Identity) -> Result<JobTicket, SubmitError> {
        if self.stopping.is_some() {
            return Err(SubmitError::ShuttingDown);
        }
        let id = JobId(self.next_id);
        let info = JobInfo {
            id,
            owner,
            summary: job.summary(),
            command: job.command().cloned(),
        };
        match self.scheduler.submit(info.clone(), self.hook.as_ref()) {
            Admission::Accepted { ahead } => {
                self.next_id += 1;
                tracing::info!(job = %id, owner = %info.owner, ahead, command = %info.summary, "accepted");
                let (state, receiver) = watch::channel(JobState::Queued);
                self.jobs.insert(
                    id,
                    Live {
                        job: Some(job),
                        info,
                        state,
                    },
                );
                Ok(JobTicket {
                    id,
                    ahead,
                    merged: false,
                    state: receiver,
                })
            }
            Admission::Merged { into } => {
                tracing::info!(job = %into, owner = %info.owner, command = %info.summary, "merged into an equal job");
                let mut ticket = self.watch(into)?;
                ticket.merged = true;
                Ok(ticket)
            }
            Admission::Rejected { reason } => {
                tracing::info!(owner = %info.owner, command = %info.summary, %reason, "rejected");
                Err(SubmitError::Rejected { reason })
            }
        }
    }

    fn watch(&self, id: JobId) -> Result<JobTicket, SubmitError> {
        if let Some(live) = self.jobs.get(&id) {
            let ahead = self
                .scheduler
                .view()
                .all()
                .position(|j| j.id == id)
                .unwrap_or(0);
            return Ok(JobTicket {
                id,
                ahead,
                merged: false,
                state: live.state.subscribe(),
            });
        }
        let result = self.finished.get(&id).ok_or(SubmitError::UnknownJob(id))?;
        // The sender may go at once: a closed watch channel still yields its last value.
        let (_, state) = watch::channel(JobState::Finished(result.clone()));
        Ok(JobTicket {
            id,
            ahead: 0,
            merged: false,
            state,
        })
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
        let cancel = CancellationToken::new();
        let log_path = self
            .config
            .log_dir
            .as_ref()
            .map(|dir| dir.join(format!("{id}.log")));
        let ctx_cancel = cancel.clone();
        let task = tokio::spawn(async move {
            let log = match &log_path {
                Some(path) => LogSink::create(path).map_err(|e| (path.display().to_string(), e)),
                None => LogSink::discard().map_err(|e| ("/dev/null".to_owned(), e)),
            };
            match log {
                Ok(log) => {
                    job.run(JobContext {
                        id,
                        log,
                        cancel: ctx_cancel,
                    })
                    .await
                }
                Err((path, e)) => Outcome::SpawnFailed {
                    reason: SpawnFailure::Other,
                    message: format!("cannot create the job's log file {path}: {e}"),
                },
            }
        });
        self.running = Some(Running {
            id,
            started: Instant::now(),
            cancel,
            task,
        });
    }

    fn finish(&mut self, id: JobId, outcome: Outcome) {
        let runtime = self
            .running
            .take()
            .map(|r| r.started.elapsed())
            .unwrap_or_default();
        self.scheduler.finish(id, &outcome);
        let result = JobResult { outcome, runtime };
        if let Some(live) = self.jobs.remove(&id) {
            tracing::info!(
                job = %id,
                owner = %live.info.owner,
                command = %live.info.summary,
                outcome = %result.outcome,
                runtime_ms = runtime.as_millis() as u64,
                "finished"
            );
            live.state.send_replace(JobState::Finished(result.clone()));
        }
        self.remember(id, result);
    }

    fn remember(&mut self, id: JobId, result: JobResult) {
        self.finished.insert(id, result);
        self.finished_order.push_back(id);
        while self.finished_order.len() > self.config.finished_retention {
            if let Some(old) = self.finished_order.pop_front() {
                self.finished.remove(&old);
            }
        }
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
