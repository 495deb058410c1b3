//! The engine's state machine, free of I/O: what the queue holds, who waits for what, which
//! worker runs which job, and what must happen next.
//!
//! The [driver](super::driver) feeds it [`Input`]s (commands from handles, commits reported
//! by the store, jobs' ends, timers), each with the time it happened ([`Now`]), and carries
//! out the [`Effect`]s it asks for (persist a record, reply, launch or cancel a job, publish
//! an event, delete a log, read the store). It never awaits, spawns, reads a clock or
//! touches a file; what must wait for a commit waits here ([`commits`]), so that "a job
//! starts only once its start is on record" and "every waiter hears one outcome, the same
//! one, only once it is committed" are properties of this code alone, tested as such.
//!
//! Each job's state is published on a `watch` channel the core owns (an in-memory cell any
//! number of waiters follow); setting it is the core's output for waiters, not I/O.
//!
//! - `submit.rs`: admission of a submission (idempotency keys, hooks, merges, quotas);
//! - `lifecycle.rs`: starting, finishing, cancelling and pruning jobs, workers;
//! - `queries.rs`: what it answers without changing anything.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, watch};

use super::config::EngineConfig;
use super::events::EngineEvent;
use super::handle::{
    Caller, Cancelled, Command, JobResult, JobState, JobTicket, QueueState, ShutdownMode,
    SubmitError,
};
use crate::auth::Identity;
use crate::job::{CommandJob, JobId, JobPhase, JobSummary, SubmitKey, Work, epoch_ms};
use crate::outcome::Outcome;
use crate::scheduler::{JobInfo, Scheduler, SubmitHook, WorkerInfo};
use crate::store::{JobRecord, PrunedJob, RecordedRunner, Recovered, StoreError, StoredJob};

mod commits;
mod lifecycle;
mod queries;
mod submit;
#[cfg(test)]
mod tests;

pub(super) use commits::CommitId;
use commits::Commits;
pub(super) use queries::answer_recent;

/// How many finished jobs a listing shows after the live ones.
pub(super) const RECENT_IN_LISTS: usize = 20;

/// When an input happened, as the driver read the clocks.
#[derive(Clone, Copy, Debug)]
pub(super) struct Now {
    pub(super) wall: SystemTime,
    pub(super) mono: Instant,
}

impl Now {
    /// The clocks now.
    pub(super) fn read() -> Self {
        Self {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }
}

/// What happens to the core.
pub(super) enum Input {
    /// A handle asks something.
    Command(Command),
    /// A record handed out under `commit` is committed (or could not be).
    Committed {
        commit: CommitId,
        result: Result<(), StoreError>,
    },
    /// A launched job ended: its outcome and the size of its log; whether its executor gave
    /// it back unstarted, and what it reported.
    Ended {
        id: JobId,
        outcome: Outcome,
        log_bytes: u64,
        given_back: bool,
        results: Vec<(String, String)>,
    },
    /// The worker a job found running elsewhere at start waits for had time enough to come
    /// back ([`Effect::WakeAfter`]).
    Unclaimed(JobId),
    /// Finished jobs past their retention were pruned from the store.
    Pruned(Vec<PrunedJob>),
    /// Time to prune finished jobs past their retention.
    PruneDue,
    /// Time to forget request digests that have expired.
    ForgetDue,
    /// Every handle is gone: nobody can submit or watch any more.
    InboxClosed,
}

/// What the driver writes to the store.
#[derive(Debug)]
pub(super) enum Record {
    Insert(StoredJob),
    AddWaiter {
        job: JobId,
        waiter: Identity,
        key: Option<SubmitKey>,
        at: SystemTime,
    },
    RemoveWaiter {
        job: JobId,
        uid: u32,
    },
    Start {
        job: JobId,
        at: SystemTime,
    },
    /// A job's end: the driver tries again for a while when it cannot be committed.
    Finish {
        job: JobId,
        result: JobResult,
        log_bytes: u64,
        at: SystemTime,
    },
    Requeue(JobId),
    RememberRequest {
        digest: [u8; 32],
        until: SystemTime,
    },
    ForgetRequests(SystemTime),
}

/// What the core asks the driver to do, in order.
pub(super) enum Effect {
    /// Write `record`; report its commit as [`Input::Committed`] when it has an id.
    Persist {
        record: Record,
        commit: Option<CommitId>,
    },
    Reply(Reply),
    /// Run a job on a worker, or find it again where it runs; report its end as
    /// [`Input::Ended`].
    Launch(LaunchSpec),
    /// Check job `id` against the start policy ([`AccessCheck::clear`]) now, while its start
    /// is being recorded, so that its [`Launch`](Self::Launch) does not wait for the check
    /// after the commit; the launch uses the answer.
    ///
    /// [`AccessCheck::clear`]: crate::policy::AccessCheck::clear
    CheckStart {
        id: JobId,
        owner: Identity,
        command: Arc<CommandJob>,
    },
    /// Stop a launched job (its end is reported as usual).
    Cancel(JobId),
    Event(EngineEvent),
    /// Delete job `id`'s log.
    RemoveLog(JobId),
    /// Job `id` no longer runs: what the driver keeps for it can go.
    Released(JobId),
    /// Worker `worker` runs its jobs with `executor` from now on (the core only passes it
    /// on).
    Equip {
        worker: String,
        executor: Arc<dyn crate::executor::Executor>,
    },
    /// A worker the engine forgot: its executor can go.
    WorkerGone(String),
    /// Report `input` after `after`.
    WakeAfter {
        after: Duration,
        input: Box<Input>,
    },
    /// Prune finished jobs that ended before `before` (and their logs); report them as
    /// [`Input::Pruned`].
    Prune {
        before: SystemTime,
    },
    /// Read what the store holds about finished job `id`, and answer with it.
    Lookup {
        id: JobId,
        lookup: Lookup,
    },
    /// Read the most recently finished jobs, and answer a listing with them after `live`.
    Recent {
        live: Vec<JobSummary>,
        by: Caller,
        to: oneshot::Sender<Result<Vec<JobSummary>, SubmitError>>,
    },
}

/// A reply to a handle, and where it goes.
pub(super) struct Answer<T> {
    pub(super) to: oneshot::Sender<Result<T, SubmitError>>,
    pub(super) value: Result<T, SubmitError>,
}

impl<T> Answer<T> {
    pub(super) fn send(self) {
        let _ = self.to.send(self.value);
    }
}

/// A reply, by what it answers.
pub(super) enum Reply {
    Ticket(TicketTo, Result<JobTicket, SubmitError>),
    /// A retry whose key made no job.
    Retry(Answer<Option<JobTicket>>),
    Summaries(Answer<Vec<JobSummary>>),
    Summary(Answer<JobSummary>),
    Cancelled(Answer<Cancelled>),
    /// Access to a log: the driver adds where it is and the live feed.
    Log(
        oneshot::Sender<Result<super::handle::LogAccess, SubmitError>>,
        Result<LogGrant, SubmitError>,
    ),
    Done(Answer<()>),
    Queue(Answer<QueueState>),
    Flag(Answer<bool>),
}

/// Where a ticket goes: a submission, or a retry re-attached by its key.
pub(super) enum TicketTo {
    Submit(oneshot::Sender<Result<JobTicket, SubmitError>>),
    Retry(oneshot::Sender<Result<Option<JobTicket>, SubmitError>>),
}

impl TicketTo {
    pub(super) fn send(self, ticket: Result<JobTicket, SubmitError>) {
        match self {
            Self::Submit(to) => {
                let _ = to.send(ticket);
            }
            Self::Retry(to) => {
                let _ = to.send(ticket.map(Some));
            }
        }
    }
}

/// Access to a job's log as the core grants it.
#[derive(Debug)]
pub(super) struct LogGrant {
    pub(super) id: JobId,
    /// Follows the job while it has not ended.
    pub(super) ticket: Option<JobTicket>,
    /// Whether it runs (has a live feed).
    pub(super) running: bool,
}

/// A question about a finished job, answered from the store.
pub(super) enum Lookup {
    Watch {
        by: Caller,
        to: TicketTo,
    },
    Retry {
        merged: bool,
        uid: u32,
        to: TicketTo,
    },
    Status {
        by: Caller,
        to: oneshot::Sender<Result<Vec<JobSummary>, SubmitError>>,
    },
    Cancel {
        to: oneshot::Sender<Result<Cancelled, SubmitError>>,
    },
    OpenLog {
        by: Caller,
        to: oneshot::Sender<Result<super::handle::LogAccess, SubmitError>>,
    },
}

/// A job to run on a worker.
pub(super) struct LaunchSpec {
    pub(super) id: JobId,
    /// The worker's name.
    pub(super) worker: String,
    pub(super) job: Work,
    pub(super) owner: Identity,
    pub(super) command: Option<Arc<CommandJob>>,
    /// Found again by its executor's reference (after a restart), or run anew (checked
    /// again by the access check first).
    pub(super) resume: Option<String>,
    /// Where the executor tells users the job runs ([`RunnerRecord::show`](crate::job::RunnerRecord::show)).
    pub(super) shown: crate::job::RunnerShown,
}

/// What waits for commits.
pub(super) enum Deferred {
    /// A job's record: it is durable (or not).
    Durable(JobId),
    /// A ticket, once the job (and its waiter) is on record.
    Ticket { to: TicketTo, ticket: JobTicket },
    /// A waiter withdrew, once that is on record.
    Withdrawn {
        to: oneshot::Sender<Result<Cancelled, SubmitError>>,
        summary: Box<JobSummary>,
    },
    /// A job's start, once it and its start are on record.
    Start(JobId),
    /// An outcome, once it is on record: waiters and followers hear of it.
    Publish {
        result: JobResult,
        summary: Box<JobSummary>,
        state: Option<watch::Sender<JobState>>,
    },
    /// A log to delete, once what makes it useless is on record.
    RemoveLog(JobId),
    /// A question the store answers, once the outcomes being recorded are.
    Lookup { id: JobId, lookup: Lookup },
    Recent {
        live: Vec<JobSummary>,
        by: Caller,
        to: oneshot::Sender<Result<Vec<JobSummary>, SubmitError>>,
    },
}

/// Whether a job's record is committed.
#[derive(Clone, Debug)]
enum Durability {
    Pending(CommitId),
    Committed,
    /// (Boxed: rare, and every queued job holds a `Durability`.)
    Failed(Box<StoreError>),
}

/// A job that has been accepted and has not ended.
struct Live {
    job: Option<Work>,
    /// Shared with the scheduler, which holds every live job.
    info: Arc<JobInfo>,
    /// Its state for those who watch it; made when somebody does (see
    /// [`Core::ticket`]), dropped when nobody does any more.
    state: Option<watch::Sender<JobState>>,
    durable: Durability,
    /// When it was accepted and started, in milliseconds since the epoch, as summaries
    /// show them (8 bytes each: every queued job holds them).
    accepted_ms: u64,
    started_ms: Option<NonZeroU64>,
    /// Submitters merged into this job (a boxed slice: most jobs have none, and it changes
    /// only when one merges or withdraws).
    waiters: Box<[Identity]>,
    /// What it counts against its owner's queued bytes.
    size: u64,
}

/// A start time as `Live` keeps it: never 0, so that "not started" costs no room.
fn started_ms(at: SystemTime) -> NonZeroU64 {
    NonZeroU64::new(epoch_ms(at)).unwrap_or(NonZeroU64::MIN)
}

/// Requests served, each until its credential expires: a replayed credential is refused.
///
/// Each is kept as the first 16 bytes of its SHA-256 digest and the second it expires in,
/// 20 bytes instead of 40, for every request of the last credential lifetime
/// (5 minutes for MUNGE). Times compare by whole seconds, so a request is held until the
/// end of the second its credential expires in, never less. A replay has the very digest it
/// replays, so it is always found; two
/// different requests sharing the first 128 bits (by chance, 2^-128 per pair, or by search,
/// 2^128 work) would refuse the second, never admit anything.
#[derive(Default)]
struct SeenRequests(HashMap<[u8; 16], u32>);

impl SeenRequests {
    fn from_records(records: &[([u8; 32], SystemTime)]) -> Self {
        let mut seen = Self::default();
        for (digest, until) in records {
            seen.insert(digest, *until);
        }
        seen
    }

    fn key(digest: &[u8; 32]) -> [u8; 16] {
        let mut key = [0; 16];
        key.copy_from_slice(&digest[..16]);
        key
    }

    /// Whole seconds since the epoch.
    fn second(at: SystemTime) -> u32 {
        let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        u32::try_from(since.as_secs()).unwrap_or(u32::MAX)
    }

    /// Whether a request with this digest was served and its credential has not expired.
    fn holds(&self, digest: &[u8; 32], now: SystemTime) -> bool {
        self.0
            .get(&Self::key(digest))
            .is_some_and(|until| *until >= Self::second(now))
    }

    fn insert(&mut self, digest: &[u8; 32], until: SystemTime) {
        self.0.insert(Self::key(digest), Self::second(until));
    }

    /// Forgets the requests whose credentials expired before `now`.
    fn forget_expired(&mut self, now: SystemTime) {
        let now = Self::second(now);
        self.0.retain(|_, until| *until >= now);
    }
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
    /// Follows its state from now on; and whether that made its channel.
    fn subscribe(&mut self) -> (watch::Receiver<JobState>, bool) {
        if let Some(state) = &self.state {
            return (state.subscribe(), false);
        }
        // Running once launched (its start on record) or found running after a restart:
        // then it is no longer here to start. (A job whose start is being recorded is
        // still queued to its waiters.)
        let now = if self.job.is_none() {
            JobState::Running
        } else {
            JobState::Queued
        };
        let (state, receiver) = watch::channel(now);
        self.state = Some(state);
        (receiver, true)
    }

    /// Tells those who watch it its new state.
    fn publish(&self, state: JobState) {
        if let Some(sender) = &self.state {
            sender.send_replace(state);
        }
    }

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
            phase: if self.started_ms.is_some() {
                JobPhase::Running
            } else {
                JobPhase::Queued
            },
            accepted_ms: self.accepted_ms,
            started_ms: self.started_ms.map(NonZeroU64::get),
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

/// A job a worker runs (or is about to: its start waits for its record).
struct Running {
    /// The worker it runs on (its index in `Core::workers`).
    worker: usize,
    started: Instant,
    /// Whether it was launched (its start is on record), so that a cancel reaches it.
    launched: bool,
    /// Whether it was asked to stop (by its owner, or a shutdown).
    cancelled: bool,
    /// Where its executor says it runs, as users see it.
    shown: crate::job::RunnerShown,
}

/// Where jobs run, as the core knows it (its executor is the driver's).
pub(super) struct Worker {
    pub(super) info: WorkerInfo,
    /// Whether it has an executor for commands.
    pub(super) runs_commands: bool,
    /// Whether it takes new jobs: a worker that left is detached, and keeps its place (jobs
    /// running name workers by place) until one of its name comes back.
    pub(super) attached: bool,
    /// Whether it is the engine's own (given when the engine was built): its name is never
    /// a joining worker's, and its jobs found running after a restart are resumed at once.
    pub(super) local: bool,
}

/// What one user has on the server now.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    live_jobs: usize,
    live_bytes: u64,
    log_bytes: u64,
}

/// The engine's state; see the module's text.
pub(super) struct Core<S> {
    scheduler: S,
    hook: Box<dyn SubmitHook>,
    config: EngineConfig,
    /// The engine's own worker first, then the others.
    workers: Vec<Worker>,
    /// Jobs whose outcome is being committed (gone from `jobs`, not yet in the store's
    /// queries), by the commit of their outcome.
    finishing: HashMap<JobId, CommitId>,
    next_id: u64,
    /// (Boxed: a hash table keeps room for a third to a half more entries than it holds, and
    /// that room then costs a pointer per slot instead of a whole `Live`: about 60 bytes per
    /// queued job at 10,000.)
    jobs: HashMap<JobId, Box<Live>>,
    running: HashMap<JobId, Running>,
    /// Nothing new starts while set.
    paused: bool,
    /// Set once shutdown was asked for: who waits for the engine to stop.
    stopping: Option<Vec<oneshot::Sender<()>>>,
    /// Idempotency keys of the jobs the store holds: (uid, key) → (job, merged).
    keys: HashMap<(u32, SubmitKey), (JobId, bool)>,
    /// Requests served, until their credentials expire.
    seen: SeenRequests,
    usage: HashMap<u32, Usage>,
    /// Jobs that were running elsewhere when the server stopped, by the worker they wait
    /// for: the job, and its executor's reference to the run.
    awaiting: HashMap<String, (JobId, Work, String)>,
    /// Jobs whose tickets were handed out, to forget their channels once nobody holds them.
    handed_out: VecDeque<JobId>,
    commits: Commits,
    effects: VecDeque<Effect>,
}

impl<S: Scheduler> Core<S> {
    /// A core whose next job gets id `next_id`, with `workers` (the engine's own first).
    pub(super) fn new(
        scheduler: S,
        hook: Box<dyn SubmitHook>,
        config: EngineConfig,
        workers: Vec<Worker>,
        next_id: u64,
    ) -> Self {
        Self {
            paused: config.paused,
            scheduler,
            hook,
            config,
            workers,
            finishing: HashMap::new(),
            next_id: next_id.max(1),
            jobs: HashMap::new(),
            running: HashMap::new(),
            stopping: None,
            keys: HashMap::new(),
            seen: SeenRequests::default(),
            usage: HashMap::new(),
            awaiting: HashMap::new(),
            handed_out: VecDeque::new(),
            commits: Commits::default(),
            effects: VecDeque::new(),
        }
    }

    /// The next thing to do, if any.
    pub(super) fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Whether the core has stopped: shutdown was asked for, no job it can follow runs any
    /// more, and nothing waits for a commit.
    pub(super) fn is_stopped(&self) -> bool {
        // A job still waiting for its worker to come back (found running elsewhere at
        // start) has no task here: it stays recorded as running elsewhere for the next
        // start.
        self.stopping.is_some()
            && self.running.len() == self.awaiting.len()
            && self.commits.is_idle()
    }

    /// Who asked the engine to stop (to be told once it has).
    pub(super) fn take_stop_waiters(&mut self) -> Vec<oneshot::Sender<()>> {
        self.stopping.take().unwrap_or_default()
    }

    /// How many jobs are queued or running.
    pub(super) fn live_jobs(&self) -> usize {
        self.jobs.len()
    }

    fn emit(&mut self, effect: Effect) {
        self.effects.push_back(effect);
    }

    fn event(&mut self, event: EngineEvent) {
        self.emit(Effect::Event(event));
    }

    fn reply(&mut self, reply: Reply) {
        self.emit(Effect::Reply(reply));
    }

    /// Hands `record` to the driver; its commit is reported back.
    fn persist(&mut self, record: Record) -> CommitId {
        let commit = self.commits.open();
        self.emit(Effect::Persist {
            record,
            commit: Some(commit),
        });
        commit
    }

    /// Hands `record` to the driver, which logs a failure (nothing waits for it: it is
    /// written in order before whatever follows).
    fn persist_unwatched(&mut self, record: Record) {
        self.emit(Effect::Persist {
            record,
            commit: None,
        });
    }

    /// Does `action` once every commit in `commits` is reported (at once when none is
    /// open), knowing the first failure among them and `failed`.
    fn after(
        &mut self,
        commits: impl IntoIterator<Item = CommitId>,
        failed: Option<StoreError>,
        action: Deferred,
        now: Now,
    ) {
        if let Some((action, failed)) = self.commits.after(commits, failed, action) {
            self.complete(action, failed, now);
        }
    }

    /// What a job's own record still waits for, or how it failed.
    fn durability(&self, id: JobId) -> (Option<CommitId>, Option<StoreError>) {
        match self.jobs.get(&id).map(|live| &live.durable) {
            Some(Durability::Pending(commit)) => (Some(*commit), None),
            Some(Durability::Failed(e)) => (None, Some(StoreError::clone(e))),
            Some(Durability::Committed) | None => (None, None),
        }
    }

    /// Handles one input.
    pub(super) fn handle(&mut self, input: Input, now: Now) {
        match input {
            Input::Command(command) => self.command(command, now),
            Input::Committed { commit, result } => self.committed(commit, result, now),
            Input::Ended {
                id,
                outcome,
                log_bytes,
                given_back,
                results,
            } => self.ended(id, outcome, log_bytes, given_back, results, now),
            Input::Unclaimed(id) => self.unclaimed(id, now),
            Input::Pruned(jobs) => self.forget_pruned(&jobs),
            Input::PruneDue => self.prune(now),
            Input::ForgetDue => self.forget_requests(now),
            // Nobody can submit or watch any more: finish the running jobs and stop.
            Input::InboxClosed => self.begin_shutdown(ShutdownMode::FinishRunning, None),
        }
        self.start_next(now);
    }

    /// A record handed out under `commit` is committed (or could not be): what waited for
    /// it happens.
    pub(super) fn committed(&mut self, commit: CommitId, result: Result<(), StoreError>, now: Now) {
        for (action, failed) in self.commits.committed(commit, result) {
            self.complete(action, failed, now);
        }
    }

    fn command(&mut self, command: Command, now: Now) {
        match command {
            Command::Submit {
                job,
                owner,
                options,
                reply,
            } => self.submit(job, owner, options, TicketTo::Submit(reply), now),
            Command::Watch { id, by, reply } => self.watch(id, &by, TicketTo::Submit(reply), now),
            Command::Shutdown { mode, done } => self.begin_shutdown(mode, Some(done)),
            Command::List {
                by,
                finished,
                reply,
            } => self.list(&by, finished, reply, now),
            Command::Status { id, by, reply } => self.status(id, &by, reply, now),
            Command::Cancel { id, by, reply } => self.cancel(id, &by, reply, now),
            Command::OpenLog { id, by, reply } => self.open_log(id, &by, reply, now),
            Command::RememberRequest {
                digest,
                until,
                reply,
            } => {
                let value = self.remember_request(digest, until, now);
                self.reply(Reply::Done(Answer { to: reply, value }));
            }
            Command::SetPaused { paused, by, reply } => {
                let value = self.set_paused(paused, &by);
                self.reply(Reply::Queue(Answer { to: reply, value }));
            }
            // Free workers are offered to the scheduler after every input.
            Command::Wake => {}
            Command::QueueState { reply } => {
                let value = Ok(self.queue_state());
                self.reply(Reply::Queue(Answer { to: reply, value }));
            }
            Command::Promote { id, by, reply } => {
                let value = self.promote(id, &by);
                self.reply(Reply::Summary(Answer { to: reply, value }));
            }
            Command::AttachWorker {
                info,
                executor,
                reply,
            } => {
                let value = self.attach_worker(info, executor);
                self.reply(Reply::Done(Answer { to: reply, value }));
            }
            Command::DetachWorker { name, reply } => {
                let value = self.detach_worker(&name);
                self.reply(Reply::Done(Answer { to: reply, value }));
            }
            Command::Reattach { uid, key, reply } => {
                self.reattach_by_key(uid, key, reply, now);
            }
            Command::AwaitsWorker { name, reply } => {
                let value = Ok(self.awaiting.contains_key(&name));
                self.reply(Reply::Flag(Answer { to: reply, value }));
            }
        }
    }

    /// Does what waited for commits.
    fn complete(&mut self, action: Deferred, failed: Option<StoreError>, now: Now) {
        match action {
            Deferred::Durable(id) => {
                if let Some(live) = self.jobs.get_mut(&id) {
                    live.durable = match failed {
                        None => Durability::Committed,
                        Some(e) => Durability::Failed(Box::new(e)),
                    };
                }
            }
            Deferred::Ticket { to, ticket } => {
                let ticket = match failed {
                    None => Ok(ticket),
                    Some(e) => Err(SubmitError::Store(e)),
                };
                self.reply(Reply::Ticket(to, ticket));
            }
            Deferred::Withdrawn { to, summary } => {
                let value = match failed {
                    None => Ok(Cancelled::Withdrawn(*summary)),
                    Some(e) => Err(SubmitError::Store(e)),
                };
                self.reply(Reply::Cancelled(Answer { to, value }));
            }
            Deferred::Start(id) => self.start_recorded(id, failed, now),
            Deferred::Publish {
                result,
                summary,
                state,
            } => match failed {
                None => {
                    self.event(EngineEvent::Finished {
                        job: summary,
                        result: result.clone(),
                    });
                    if let Some(state) = state {
                        state.send_replace(JobState::Finished(result));
                    }
                }
                // The waiters see the engine give up on the job (their channel closes),
                // re-attach, and read what the store has.
                Some(e) => {
                    tracing::error!(job = %summary.id, error = %e, "the outcome could not be recorded; its waiters are not told");
                }
            },
            Deferred::RemoveLog(id) => {
                if failed.is_none() {
                    self.emit(Effect::RemoveLog(id));
                }
            }
            Deferred::Lookup { id, lookup } => self.emit(Effect::Lookup { id, lookup }),
            Deferred::Recent { live, by, to } => self.emit(Effect::Recent { live, by, to }),
        }
    }

    /// Takes back what the store held when the engine started: the queued jobs queue again;
    /// each job that was running is found again where its executor recorded it runs, queued
    /// again (`requeue_running`) or recorded lost. What it records about them is committed
    /// before anybody is served (the driver waits for those commits).
    pub(super) fn recover(&mut self, recovered: Recovered, now: Now) {
        self.keys = recovered
            .keys
            .iter()
            .map(|k| ((k.uid, k.key), (k.job, k.merged)))
            .collect();
        self.seen = SeenRequests::from_records(&recovered.requests);
        for (uid, bytes) in &recovered.log_bytes {
            self.usage.entry(*uid).or_default().log_bytes = *bytes;
        }
        let mut queued = recovered.queued;
        let mut found = Vec::new();
        for running in recovered.running {
            let id = running.job.id;
            let has_command = running.job.command.is_some();
            match running.runner {
                Some(runner) if has_command => {
                    found.push((running.job, runner, running.started_at));
                }
                _ if has_command && self.config.requeue_running => {
                    tracing::warn!(job = %id, "the job was running when the server stopped: queued again");
                    let requeued = self.persist(Record::Requeue(id));
                    // A job queued again writes a new log when it runs; the old one goes
                    // once the requeue is on record.
                    self.after([requeued], None, Deferred::RemoveLog(id), now);
                    queued.push(running.job);
                }
                _ => {
                    tracing::warn!(job = %id, "the job was running when the server stopped: recorded as lost");
                    self.record_lost(id, now);
                }
            }
        }
        queued.sort_by_key(|job| job.id);
        for stored in queued {
            self.restore(stored, now);
        }
        for (stored, runner, started_at) in found {
            self.adopt(stored, runner, started_at, now);
        }
    }

    /// Takes back a job that was running elsewhere when the server stopped: it runs on,
    /// and its worker, when it comes back, reports its end.
    fn adopt(
        &mut self,
        stored: StoredJob,
        runner: RecordedRunner,
        started_at: SystemTime,
        now: Now,
    ) {
        let RecordedRunner {
            worker: name,
            reference,
        } = runner;
        let id = stored.id;
        let lost = |core: &mut Self, why: &str| {
            tracing::warn!(job = %id, worker = %name, "the job was running elsewhere when the server stopped, and {why}: recorded as lost");
            core.record_lost(id, now);
        };
        let Some(command) = stored.command.map(Arc::new) else {
            return lost(self, "its command cannot be read");
        };
        let worker = match self.workers.iter().position(|w| w.info.name == name) {
            Some(index) => index,
            None => {
                self.workers.push(Worker {
                    info: WorkerInfo::new(name.clone(), Vec::<String>::new()),
                    runs_commands: false,
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
        let local = self.workers[worker].local && self.workers[worker].runs_commands;
        if local {
            tracing::info!(job = %id, worker = %name, "the job was running when the server stopped: finding it again");
        } else {
            tracing::info!(job = %id, worker = %name, "the job was running on a worker when the server stopped: waiting for the worker to report");
        }
        let size = command.byte_size();
        self.count_live(&info, size, &stored.waiters);
        let ran_for = now.wall.duration_since(started_at).unwrap_or_default();
        self.jobs.insert(
            id,
            Box::new(Live {
                job: None,
                info,
                state: None,
                durable: Durability::Committed,
                accepted_ms: epoch_ms(stored.accepted_at),
                started_ms: Some(started_ms(started_at)),
                waiters: stored.waiters.into_boxed_slice(),
                size,
            }),
        );
        self.running.insert(
            id,
            Running {
                worker,
                started: now.mono.checked_sub(ran_for).unwrap_or(now.mono),
                launched: false,
                cancelled: false,
                shown: crate::job::RunnerShown::default(),
            },
        );
        if local {
            // Its executor recorded where it runs, and is here to find it.
            self.launch(id, Work::Command(command), Some(reference));
            return;
        }
        self.awaiting
            .insert(name, (id, Work::Command(command), reference));
        self.emit(Effect::WakeAfter {
            after: self.config.worker_timeout,
            input: Box::new(Input::Unclaimed(id)),
        });
    }

    /// Records job `id`, taken back from the store, as lost.
    fn record_lost(&mut self, id: JobId, now: Now) {
        self.persist(Record::Finish {
            job: id,
            result: lost(),
            log_bytes: 0,
            at: now.wall,
        });
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
    fn restore(&mut self, stored: StoredJob, now: Now) {
        let id = stored.id;
        let Some(command) = stored.command.map(Arc::new) else {
            tracing::warn!(job = %id, "an in-process job cannot run again after a restart: recorded as lost");
            return self.record_lost(id, now);
        };
        let size = command.byte_size();
        let info = command_info(id, stored.owner, stored.summary, &command);
        self.scheduler.enqueue(info.clone());
        self.count_live(&info, size, &stored.waiters);
        let live = Live {
            job: Some(Work::Command(command)),
            info,
            state: None,
            durable: Durability::Committed,
            accepted_ms: epoch_ms(stored.accepted_at),
            started_ms: None,
            waiters: stored.waiters.into_boxed_slice(),
            size,
        };
        self.jobs.insert(id, Box::new(live));
    }
}

/// What the scheduler and hooks know of a command job taken back from the store.
fn command_info(
    id: JobId,
    owner: Identity,
    summary: String,
    command: &Arc<CommandJob>,
) -> Arc<JobInfo> {
    Arc::new(JobInfo {
        id,
        owner,
        summary,
        tags: command.tags.clone(),
        lane: command.lane.clone(),
        command: Some(command.clone()),
    })
}

/// The result of a job whose end nobody saw.
fn lost() -> JobResult {
    JobResult {
        outcome: Outcome::Lost,
        runtime: Duration::ZERO,
        results: Vec::new(),
    }
}

/// What the relation of `by` to a job the store describes is.
fn relation_to(record: &JobRecord, by: &Caller) -> Relation {
    Relation::of(
        by,
        record.summary.owner_uid,
        record.waiter_uids.iter().copied(),
    )
}
