//! A worker on another host (`cq_worker`): asks a coordinator for jobs, runs each with its
//! own executor as the requester the coordinator names, streams the output back and reports
//! how it ended.
//!
//! The worker keeps a job's output in a spool file and sends it from there by offset, so
//! that a lost connection loses nothing: the job goes on, and the worker sends what it has
//! not yet delivered, then the outcome, once the coordinator answers again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::sync::CancellationToken;

use crate::account::Account;
use crate::auth::{Authenticator, CredentialSource};
use crate::client::{Client, ClientError, Dispatch};
use crate::executor::{DEFAULT_LOG_LIMIT, Executor, LogSink};
use crate::job::{Clearance, JobContext, ResultSink};
use crate::outcome::{Outcome, SpawnFailure};
use crate::protocol::{ErrorCode, WorkReport};
use crate::transport::Connector;

/// Most output bytes sent in one report.
const OUTPUT_PIECE: usize = 128 * 1024;

/// How a worker behaves.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// Its name, unique among the coordinator's workers.
    pub name: String,
    /// What it offers (`arch=amd64`, `profile=desktop`): it gets only jobs whose tags it has.
    pub tags: Vec<String>,
    /// Where running jobs' output is kept until the coordinator has it.
    pub spool: PathBuf,
    /// How often a running job's output is sent; with no output, a sign of life is sent every
    /// `heartbeat`.
    pub flush_every: Duration,
    /// Longest time without a report while a job runs (keep well under the coordinator's
    /// worker timeout). A cancelled job learns it with the answer to a report: this is also
    /// how long a cancel may take to reach a quiet job.
    pub heartbeat: Duration,
    /// Runs jobs the coordinator gives no requester for, or whose requester is root, even
    /// when this worker runs as root.
    pub allow_root_jobs: bool,
    /// Longest pause between attempts to reach an unreachable coordinator.
    pub max_retry_delay: Duration,
    /// Bytes of output kept per job (the coordinator keeps its own limit too).
    pub log_limit: u64,
}

impl WorkerOptions {
    /// A worker called `name` offering `tags`, spooling output in `spool`.
    pub fn new(name: impl Into<String>, tags: Vec<String>, spool: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            tags,
            spool: spool.into(),
            flush_every: Duration::from_millis(200),
            heartbeat: Duration::from_secs(2),
            allow_root_jobs: false,
            max_retry_delay: Duration::from_secs(5),
            log_limit: DEFAULT_LOG_LIMIT,
        }
    }
}

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The coordinator will not have this worker (its policy, or a name another holds).
    #[error("the coordinator refuses this worker: {0}")]
    Refused(#[source] ClientError),
    /// The spool directory cannot be used.
    #[error("cannot use the spool directory {path}: {source}")]
    Spool {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A worker: a client of the coordinator that runs what it is given.
pub struct Worker<C, S, A> {
    client: Arc<Client<C, S, A>>,
    executor: Arc<dyn Executor>,
    options: WorkerOptions,
    /// Random, for the life of this worker: tells the coordinator this process from a
    /// restarted one.
    instance: u64,
    /// Counts its requests for work.
    sequence: std::sync::atomic::AtomicU64,
}

impl<C, S, A> std::fmt::Debug for Worker<C, S, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<C: Connector, S: CredentialSource, A: Authenticator> Worker<C, S, A> {
    /// A worker that reaches the coordinator with `client` and runs jobs with `executor`.
    /// Several workers (under other names) may share one client: `Arc<Client>`.
    pub fn new(
        client: impl Into<Arc<Client<C, S, A>>>,
        executor: Arc<dyn Executor>,
        options: WorkerOptions,
    ) -> Self {
        let mut instance = [0; 8];
        getrandom::fill(&mut instance).expect("the OS random source works");
        Self {
            client: client.into(),
            executor,
            options,
            instance: u64::from_ne_bytes(instance),
            sequence: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Asks for jobs and runs them, one at a time, until `shutdown` fires (a job running
    /// then is stopped, and its end reported) or the coordinator refuses the worker.
    ///
    /// # Errors
    ///
    /// [`WorkerError`] when the coordinator refuses this worker or the spool is unusable.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        std::fs::create_dir_all(&self.options.spool).map_err(|source| WorkerError::Spool {
            path: self.options.spool.clone(),
            source,
        })?;
        // A job this worker ran when it stopped, whose executor recorded where it runs (a
        // Slurm job): found again, followed to its end and reported, before any new work
        // (asking for work would tell the coordinator that this worker lost it).
        if let Some((dispatch, reference)) = self.running_before() {
            tracing::info!(job = %dispatch.job, "finding the job this worker ran before it stopped");
            self.run_job(dispatch, Some(reference), &shutdown).await?;
        }
        let mut retry = Backoff::new(self.options.max_retry_delay);
        // Until the coordinator has taken this worker once, its refusal is a configuration
        // to fix; after, one is waited out (an account lookup that failed there, a request
        // that reached it from an unexpected address, a coordinator that is stopping).
        let mut admitted = false;
        while !shutdown.is_cancelled() {
            let asked = tokio::select! {
                asked = self.client.work(
                    &self.options.name,
                    &self.options.tags,
                    self.instance,
                    self.sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                ) => asked,
                () = shutdown.cancelled() => break,
            };
            match asked {
                Ok(None) => {
                    admitted = true;
                    retry.reset();
                }
                Ok(Some(dispatch)) => {
                    admitted = true;
                    retry.reset();
                    self.run_job(dispatch, None, &shutdown).await?;
                }
                Err(e) if !admitted && refused(&e) => return Err(WorkerError::Refused(e)),
                Err(e) => {
                    tracing::warn!(error = %e, "no work from the coordinator; trying again");
                    tokio::select! {
                        () = retry.wait() => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
        Ok(())
    }

    /// Where this worker keeps the job it runs (to find it again after a restart).
    fn running_file(&self) -> PathBuf {
        self.options
            .spool
            .join(format!("{}.running", self.options.name))
    }

    /// Where this worker's executor records where the job runs.
    fn runner_file(&self) -> PathBuf {
        self.options
            .spool
            .join(format!("{}.runner", self.options.name))
    }

    /// The job this worker ran when it stopped, and where its executor said it runs; `None`
    /// when there is none, or nothing to find it by (the files then go: the coordinator
    /// hears the job is lost when this worker next asks for work).
    fn running_before(&self) -> Option<(Dispatch, String)> {
        let dispatch = std::fs::read(self.running_file()).ok()?;
        let reference = std::fs::read_to_string(self.runner_file()).ok();
        let found = postcard::from_bytes::<Dispatch>(&dispatch)
            .ok()
            .zip(reference);
        if found.is_none() {
            self.forget_running();
        }
        found
    }

    fn forget_running(&self) {
        let _ = std::fs::remove_file(self.running_file());
        let _ = std::fs::remove_file(self.runner_file());
    }

    /// Takes the job, runs it, and delivers its output and its end; with `resume`, finds it
    /// again where it runs (this worker ran it before a restart).
    async fn run_job(
        &self,
        dispatch: Dispatch,
        resume: Option<String>,
        shutdown: &CancellationToken,
    ) -> Result<(), WorkerError> {
        let id = dispatch.job;
        let lease = dispatch.lease;
        // Taken first: from here on the coordinator knows this worker runs it. (Found again:
        // the coordinator must still count it this worker's; if not, it is stopped.)
        let first = if resume.is_some() {
            WorkReport::Alive
        } else {
            WorkReport::Started
        };
        let (cancelled_already, ours) = match self.deliver(id, lease, first, shutdown).await {
            Delivered::Noted(cancel) => (cancel, true),
            Delivered::NotOurs if resume.is_some() => (true, false),
            Delivered::NotOurs | Delivered::Stopped => return Ok(()),
        };
        let spool = self.options.spool.join(format!("{id}.log"));
        if resume.is_none() {
            let _ = std::fs::remove_file(&spool);
            let _ = std::fs::remove_file(self.runner_file());
            let kept = postcard::to_allocvec(&dispatch)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    crate::job::write_synced(&self.running_file(), &bytes)
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = kept {
                // A job this worker could not find again after a restart would run unseen.
                tracing::warn!(job = %id, error = %e, "cannot keep the job for a restart: not running it");
                let failed = WorkReport::Ended {
                    outcome: Outcome::SpawnFailed {
                        reason: SpawnFailure::Other,
                        message: format!("the worker cannot keep the job in its spool: {e}"),
                    },
                    results: Vec::new(),
                };
                let _ = self.deliver(id, lease, failed, shutdown).await;
                return Ok(());
            }
        }
        tracing::info!(job = %id, command = ?dispatch.command.argv, run_as = ?dispatch.run_as.as_ref().map(|r| &r.user), "running a job");
        let cancel = CancellationToken::new();
        let results = ResultSink::default();
        let mut cancel_refused = false;
        // A job found again runs already: whatever the check says now, the executor is
        // the one to stop it (a refusal cancels it there).
        let checked = match (self.clearance(&dispatch), &resume) {
            (Err(refusal), Some(_)) => {
                tracing::warn!(job = %id, reason = %refusal, "the job found again is refused now: stopping it");
                cancel_refused = true;
                Ok(Clearance::default())
            }
            (checked, _) => checked,
        };
        let outcome = match checked {
            _ if cancelled_already && resume.is_none() => Outcome::Cancelled,
            Err(refusal) => {
                tracing::warn!(job = %id, reason = %refusal, "refused the job");
                Outcome::SpawnFailed {
                    reason: SpawnFailure::NotPermitted,
                    message: refusal,
                }
            }
            Ok(clearance) => {
                // Where the executor says it runs the job (a Slurm job id), for the
                // coordinator's listings.
                let runner = crate::job::RunnerRecord::to_file(self.runner_file());
                let mut shown: Option<(String, tokio::time::Instant)> = None;
                if cancelled_already || cancel_refused {
                    // Found again, but no longer this worker's (or cancelled meanwhile):
                    // stopped where it runs.
                    cancel.cancel();
                }
                let log = match &resume {
                    Some(_) => LogSink::reopen(&spool, self.options.log_limit),
                    None => LogSink::create(&spool, self.options.log_limit),
                };
                let ctx = JobContext {
                    id,
                    owner: crate::auth::Identity::local(),
                    clearance,
                    log,
                    cancel: cancel.clone(),
                    results: results.clone(),
                    give_back: crate::job::GiveBack::default(),
                    runner: runner.clone(),
                    resume: resume.clone(),
                };
                let executor = self.executor.clone();
                let command = dispatch.command.clone();
                let mut job = tokio::spawn(async move { executor.run(&command, ctx).await });
                let mut sent = 0;
                let mut flush = tokio::time::interval(self.options.flush_every);
                let mut last_report = tokio::time::Instant::now();
                let outcome = loop {
                    tokio::select! {
                        ended = &mut job => break ended.unwrap_or_else(|e| Outcome::Failed {
                            message: format!("the job's task failed: {e}"),
                        }),
                        () = shutdown.cancelled(), if !cancel.is_cancelled() => cancel.cancel(),
                        _ = flush.tick() => {
                            // Sent when it changes, and again every heartbeat: a coordinator
                            // that restarted has forgotten it.
                            if let Some(now) = runner.shown()
                                && shown.as_ref().is_none_or(|(sent, at)| {
                                    *sent != now || at.elapsed() >= self.options.heartbeat
                                })
                            {
                                let report = WorkReport::Runner { shown: now.clone() };
                                // Lost on the way, it is sent again with the next tick.
                                if self
                                    .client
                                    .report(&self.options.name, id, lease, report)
                                    .await
                                    .is_ok()
                                {
                                    shown = Some((now, tokio::time::Instant::now()));
                                }
                            }
                            let alive_due = last_report.elapsed() >= self.options.heartbeat;
                            match self.send_output(id, lease, &spool, &mut sent, alive_due).await {
                                Sent::Noted { cancel: stop } => {
                                    last_report = tokio::time::Instant::now();
                                    if stop {
                                        cancel.cancel();
                                    }
                                }
                                Sent::Nothing => {}
                                // The coordinator gave the job up: stop it, say nothing more.
                                Sent::NotOurs => {
                                    cancel.cancel();
                                    let _ = job.await;
                                    self.forget_running();
                                    let _ = std::fs::remove_file(&spool);
                                    return Ok(());
                                }
                            }
                        }
                    }
                };
                // Everything it wrote, before its end (a coordinator that is away gets it
                // once it is back).
                loop {
                    let before = sent;
                    match self.send_output(id, lease, &spool, &mut sent, false).await {
                        Sent::NotOurs => {
                            self.forget_running();
                            let _ = std::fs::remove_file(&spool);
                            return Ok(());
                        }
                        Sent::Nothing if read_from(&spool, sent).await.is_empty() => break,
                        Sent::Nothing => {
                            tokio::select! {
                                () = tokio::time::sleep(self.options.flush_every) => {}
                                () = shutdown.cancelled() => break,
                            }
                        }
                        Sent::Noted { .. } if sent == before => break,
                        Sent::Noted { .. } => {}
                    }
                }
                outcome
            }
        };
        tracing::info!(job = %id, %outcome, "the job ended");
        if !ours {
            self.forget_running();
            let _ = std::fs::remove_file(&spool);
            return Ok(());
        }
        let ended = WorkReport::Ended {
            outcome,
            results: results.get(),
        };
        // The end must reach the coordinator, however long it is away; a shutdown of the
        // worker gives up on it (the coordinator then counts the job lost).
        let _ = self.deliver(id, lease, ended, shutdown).await;
        self.forget_running();
        let _ = std::fs::remove_file(&spool);
        Ok(())
    }

    /// Sends output the coordinator does not have yet (one piece), or a sign of life when
    /// there is none and `alive_due`.
    async fn send_output(
        &self,
        id: crate::job::JobId,
        lease: u64,
        spool: &std::path::Path,
        sent: &mut u64,
        alive_due: bool,
    ) -> Sent {
        let data = read_from(spool, *sent).await;
        let len = data.len() as u64;
        let report = if !data.is_empty() {
            WorkReport::Output {
                offset: *sent,
                data,
            }
        } else if alive_due {
            WorkReport::Alive
        } else {
            return Sent::Nothing;
        };
        match self
            .client
            .report(&self.options.name, id, lease, report)
            .await
        {
            Ok(cancel) => {
                *sent += len;
                Sent::Noted { cancel }
            }
            Err(e) if not_assigned(&e) => {
                tracing::warn!(job = %id, error = %e, "the coordinator no longer counts the job as this worker's");
                Sent::NotOurs
            }
            Err(e) => {
                tracing::debug!(job = %id, error = %e, "cannot report yet");
                Sent::Nothing
            }
        }
    }

    /// Sends `report` until the coordinator answers it.
    async fn deliver(
        &self,
        id: crate::job::JobId,
        lease: u64,
        report: WorkReport,
        shutdown: &CancellationToken,
    ) -> Delivered {
        let mut retry = Backoff::new(self.options.max_retry_delay);
        loop {
            match self
                .client
                .report(&self.options.name, id, lease, report.clone())
                .await
            {
                Ok(cancel) => return Delivered::Noted(cancel),
                Err(e) if not_assigned(&e) => {
                    tracing::warn!(job = %id, error = %e, "the coordinator refused a report");
                    return Delivered::NotOurs;
                }
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "cannot reach the coordinator; trying again");
                    tokio::select! {
                        () = retry.wait() => {}
                        () = shutdown.cancelled() => return Delivered::Stopped,
                    }
                }
            }
        }
    }

    /// What the job may do here: the coordinator's account, if this host agrees who that is.
    fn clearance(&self, dispatch: &Dispatch) -> Result<Clearance, String> {
        let root_here = nix::unistd::geteuid().is_root();
        let run_as = match &dispatch.run_as {
            None if root_here && !self.options.allow_root_jobs => {
                return Err("the coordinator names nobody to run the job as (it runs jobs as its own user), and this worker runs as root: it runs such jobs only with --allow-root-jobs".to_owned());
            }
            None => None,
            Some(run_as) => {
                let account =
                    Account::lookup(run_as.uid).map_err(|e| format!("{e} (this worker's host)"))?;
                if account.name != run_as.user {
                    return Err(format!(
                        "uid {} is {} on the coordinator and {} on this worker: the job is not run as someone else",
                        run_as.uid, run_as.user, account.name
                    ));
                }
                if account.locked || account.expired {
                    return Err(format!(
                        "the account {} is locked or expired on this worker",
                        account.name
                    ));
                }
                if account.uid == 0 && !self.options.allow_root_jobs {
                    return Err("the job would run as root: this worker runs root's jobs only with --allow-root-jobs".to_owned());
                }
                Some(account)
            }
        };
        Ok(Clearance {
            run_as,
            commands: dispatch
                .commands
                .as_ref()
                .map(|c| c.iter().map(PathBuf::from).collect()),
        })
    }
}

/// How a report that must arrive went.
enum Delivered {
    /// Answered: whether the job is to be stopped.
    Noted(bool),
    /// The coordinator does not count the job as this worker's (any more).
    NotOurs,
    /// The worker is shutting down.
    Stopped,
}

/// How one report of output (or sign of life) went.
enum Sent {
    /// Answered: whether the job is to be stopped.
    Noted { cancel: bool },
    /// Nothing to send, or it could not be sent now (it is sent again).
    Nothing,
    /// The coordinator does not count the job as this worker's (any more).
    NotOurs,
}

/// Whether the coordinator says that the job is not this worker's (it gave the job up, or
/// another dispatch of it runs): then the job is stopped. Only an authenticated answer counts.
fn not_assigned(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Server { code, verified: true, .. } if *code == ErrorCode::NOT_ASSIGNED
    )
}

/// Whether the coordinator refused (rather than could not be reached). Only an answer
/// authenticated as the coordinator's counts: an unauthenticated error could come from
/// anybody who answers the worker's connection, and must not stop the worker or its job.
fn refused(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Server { code, verified: true, .. }
            if *code == ErrorCode::NOT_PERMITTED || *code == ErrorCode::MALFORMED
    )
}

/// Up to [`OUTPUT_PIECE`] bytes of `path` from `offset` (nothing when there is no file yet).
async fn read_from(path: &std::path::Path, offset: u64) -> Vec<u8> {
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return Vec::new();
    };
    if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return Vec::new();
    }
    let mut data = Vec::new();
    let _ = file.take(OUTPUT_PIECE as u64).read_to_end(&mut data).await;
    data
}

/// Doubling pauses between attempts, up to a limit.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);

    fn new(max: Duration) -> Self {
        Self {
            next: Self::FIRST,
            max,
        }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }
}
