//! Properties of the core alone, driven by a test that plays the driver: it commits records
//! in any order, ends launched jobs when it likes, and answers the store's reads from what
//! it committed. Under random interleavings of submissions (equal ones merged), watches,
//! cancels, commits and ends:
//!
//! - a job is launched only once its record and its start are committed;
//! - no worker runs two jobs at once;
//! - a ticket is handed out only once its job is on record;
//! - every ticket hears exactly one end, the one committed for its job, only once it is
//!   committed; in the end, every ticket has heard it, or (after a shutdown) its job never
//!   ran; and a shutdown ends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio::sync::{oneshot, watch};

use super::{Core, Effect, Input, Now, Record, Reply, Worker};
use crate::auth::Identity;
use crate::engine::config::{EngineConfig, UserLimits};
use crate::engine::events::EngineEvent;
use crate::engine::handle::{
    Caller, Command, JobResult, JobState, JobTicket, ShutdownMode, SubmitError, SubmitOptions,
};
use crate::job::{CommandJob, JobId, Work};
use crate::outcome::Outcome;
use crate::scheduler::{DedupScope, DuplicateJobs, SerialScheduler, WorkerInfo};
use crate::store::{JobRecord, StoreError};

#[derive(Clone, Debug)]
enum Step {
    /// Submits one of a few commands as one of a few users (equal commands merge).
    Submit { command: u8, uid: u32 },
    /// Watches the n-th job submitted so far.
    Watch { job: usize, uid: u32 },
    /// Cancels (or withdraws from) the n-th job submitted so far.
    Cancel { job: usize, uid: u32 },
    /// Commits the n-th open record.
    Commit(usize),
    /// Ends the n-th launched job with an exit code, or gives it back unstarted.
    End {
        job: usize,
        code: i32,
        given_back: bool,
    },
    /// Drops the n-th ticket handed out (a client that does not wait).
    Detach(usize),
    /// Asks the engine to stop, cancelling the running jobs or not.
    Shutdown { cancel: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..4, 1u32..4).prop_map(|(command, uid)| Step::Submit { command, uid }),
        1 => (0usize..16, 1u32..4).prop_map(|(job, uid)| Step::Watch { job, uid }),
        1 => (0usize..16, 1u32..4).prop_map(|(job, uid)| Step::Cancel { job, uid }),
        4 => (0usize..8).prop_map(Step::Commit),
        2 => (0usize..4, 0i32..3, 0u8..4).prop_map(|(job, code, back)| Step::End {
            job,
            code,
            given_back: back == 0,
        }),
        1 => (0u8..8).prop_map(|n| Step::Shutdown { cancel: n == 0 }),
        2 => (0usize..16).prop_map(Step::Detach),
    ]
}

fn user(uid: u32) -> Identity {
    Identity {
        uid,
        gid: uid,
        user: Some(format!("user{uid}")),
        host: None,
        method: crate::auth::AuthMethod::Local,
        principal: None,
    }
}

/// A test playing the driver, and what it saw.
struct Driver {
    core: Core<SerialScheduler>,
    now: Now,
    /// Records handed out and not committed yet, in the order they came.
    open: BTreeMap<super::CommitId, Record>,
    inserted: HashSet<JobId>,
    started: HashSet<JobId>,
    /// Each job's end as committed.
    ended: HashMap<JobId, JobResult>,
    /// What the store holds about finished jobs, for lookups.
    records: HashMap<JobId, JobRecord>,
    /// Merged waiters, by job.
    waiters: HashMap<JobId, Vec<u32>>,
    /// Launched jobs not ended yet, by worker; and those asked to stop.
    launched: BTreeMap<JobId, String>,
    ever_launched: HashSet<JobId>,
    cancelled: HashSet<JobId>,
    shut_down: bool,
    /// Submissions and watches not answered yet.
    asked: Vec<(u32, oneshot::Receiver<Result<JobTicket, SubmitError>>)>,
    other_replies: Vec<oneshot::Receiver<Result<crate::engine::Cancelled, SubmitError>>>,
    /// Tickets handed out, with the end each one heard first.
    tickets: Vec<(JobId, watch::Receiver<JobState>, Option<JobResult>)>,
    jobs: Vec<JobId>,
}

impl Driver {
    fn new() -> Self {
        let config = EngineConfig {
            limits: UserLimits::unlimited(),
            ..EngineConfig::default()
        };
        let workers = ["local", "second"]
            .into_iter()
            .map(|name| Worker {
                info: WorkerInfo::new(name, Vec::<String>::new()),
                runs_commands: true,
                attached: true,
                local: true,
            })
            .collect();
        let hook = Box::new(DuplicateJobs::new(DedupScope::QueuedOrRunning));
        let now = Now::read();
        Self {
            core: Core::new(SerialScheduler::new(), hook, config, workers, 1),
            now,
            open: BTreeMap::new(),
            inserted: HashSet::new(),
            started: HashSet::new(),
            ended: HashMap::new(),
            records: HashMap::new(),
            waiters: HashMap::new(),
            launched: BTreeMap::new(),
            ever_launched: HashSet::new(),
            cancelled: HashSet::new(),
            shut_down: false,
            asked: Vec::new(),
            other_replies: Vec::new(),
            tickets: Vec::new(),
            jobs: Vec::new(),
        }
    }

    fn input(&mut self, input: Input) -> Result<(), TestCaseError> {
        self.now.wall += Duration::from_millis(1);
        self.now.mono += Duration::from_millis(1);
        self.core.handle(input, self.now);
        self.carry_out()?;
        self.check_tickets()
    }

    fn command(&mut self, command: Command) -> Result<(), TestCaseError> {
        self.input(Input::Command(command))
    }

    fn carry_out(&mut self) -> Result<(), TestCaseError> {
        while let Some(effect) = self.core.poll_effect() {
            match effect {
                Effect::Persist {
                    record,
                    commit: Some(commit),
                } => {
                    self.open.insert(commit, record);
                }
                // Given back unstarted: it did not run.
                Effect::Persist {
                    record: Record::Requeue(id),
                    commit: None,
                } => {
                    self.ever_launched.remove(&id);
                }
                Effect::Launch(spec) => {
                    prop_assert!(
                        self.inserted.contains(&spec.id) && self.started.contains(&spec.id),
                        "job {} launched before it and its start were committed",
                        spec.id
                    );
                    prop_assert!(
                        !self.launched.values().any(|w| *w == spec.worker),
                        "worker {} given job {} while it runs another",
                        spec.worker,
                        spec.id
                    );
                    self.ever_launched.insert(spec.id);
                    self.launched.insert(spec.id, spec.worker);
                }
                Effect::Cancel(id) => {
                    self.cancelled.insert(id);
                }
                Effect::Event(EngineEvent::Finished { job, .. }) => {
                    let waiter_uids = self.waiters.get(&job.id).cloned().unwrap_or_default();
                    self.records.insert(
                        job.id,
                        JobRecord {
                            summary: *job,
                            waiter_uids,
                        },
                    );
                }
                Effect::Reply(Reply::Ticket(to, ticket)) => {
                    if let Ok(ticket) = &ticket {
                        prop_assert!(
                            self.inserted.contains(&ticket.id),
                            "a ticket for job {} before the job was committed",
                            ticket.id
                        );
                    }
                    to.send(ticket);
                }
                Effect::Reply(Reply::Cancelled(answer)) => answer.send(),
                Effect::Lookup { id, lookup } => {
                    let found = Ok(self.records.get(&id).cloned());
                    lookup.answer(id, found, None);
                }
                Effect::Persist { commit: None, .. }
                | Effect::Reply(_)
                | Effect::Event(_)
                | Effect::RemoveLog(_)
                | Effect::Released(_)
                | Effect::CheckStart { .. }
                | Effect::Equip { .. }
                | Effect::WorkerGone(_)
                | Effect::WakeAfter { .. }
                | Effect::Prune { .. }
                | Effect::Recent { .. } => {}
            }
        }
        let asked = std::mem::take(&mut self.asked);
        for (uid, mut answer) in asked {
            match answer.try_recv() {
                Ok(Ok(ticket)) => {
                    if ticket.merged {
                        self.waiters.entry(ticket.id).or_default().push(uid);
                    }
                    if !self.jobs.contains(&ticket.id) {
                        self.jobs.push(ticket.id);
                    }
                    self.tickets.push((ticket.id, ticket.state, None));
                }
                Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {}
                Err(oneshot::error::TryRecvError::Empty) => self.asked.push((uid, answer)),
            }
        }
        self.other_replies.retain_mut(|answer| {
            matches!(answer.try_recv(), Err(oneshot::error::TryRecvError::Empty))
        });
        Ok(())
    }

    /// Every end a ticket shows is the one committed for its job, and it never changes.
    fn check_tickets(&mut self) -> Result<(), TestCaseError> {
        for (id, state, heard) in &mut self.tickets {
            let state = state.borrow();
            if *state == JobState::Running {
                prop_assert!(
                    self.started.contains(id),
                    "a ticket of job {} heard it run before its start was committed",
                    id
                );
            }
            let JobState::Finished(result) = &*state else {
                continue;
            };
            let committed = self.ended.get(id);
            prop_assert_eq!(
                committed,
                Some(result),
                "a ticket of job {} heard an end that is not the committed one",
                id
            );
            if let Some(first) = heard {
                prop_assert_eq!(&*first, result, "job {}'s end changed", id);
            }
            *heard = Some(result.clone());
        }
        Ok(())
    }

    fn commit(&mut self, n: usize) -> Result<(), TestCaseError> {
        let Some(&commit) = self.open.keys().nth(n % self.open.len().max(1)) else {
            return Ok(());
        };
        let record = self.open.remove(&commit).expect("open");
        match record {
            Record::Insert(job) => {
                self.inserted.insert(job.id);
            }
            Record::Start { job, .. } => {
                self.started.insert(job);
            }
            Record::Finish { job, result, .. } => {
                prop_assert!(
                    self.ended.insert(job, result).is_none(),
                    "job {} ended twice",
                    job
                );
            }
            _ => {}
        }
        self.input(Input::Committed {
            commit,
            result: Ok::<(), StoreError>(()),
        })
    }

    fn end(&mut self, n: usize, code: i32, given_back: bool) -> Result<(), TestCaseError> {
        let Some(&id) = self.launched.keys().nth(n % self.launched.len().max(1)) else {
            return Ok(());
        };
        self.launched.remove(&id);
        let outcome = if self.cancelled.contains(&id) {
            Outcome::Cancelled
        } else {
            Outcome::Exited { code }
        };
        self.input(Input::Ended {
            id,
            outcome,
            log_bytes: 0,
            given_back,
            results: vec![("code".to_owned(), code.to_string())],
        })
    }

    fn step(&mut self, step: Step) -> Result<(), TestCaseError> {
        match step {
            Step::Submit { command, uid } => {
                let (reply, answer) = oneshot::channel();
                self.asked.push((uid, answer));
                let job = Work::Command(Arc::new(CommandJob::new([
                    "/bin/true".to_owned(),
                    command.to_string(),
                ])));
                self.command(Command::Submit {
                    job,
                    owner: user(uid),
                    options: SubmitOptions::new().merging_across_users(true),
                    reply,
                })
            }
            Step::Watch { job, uid } => {
                let Some(&id) = self.jobs.get(job % self.jobs.len().max(1)) else {
                    return Ok(());
                };
                let (reply, answer) = oneshot::channel();
                self.asked.push((uid, answer));
                self.command(Command::Watch {
                    id,
                    by: Caller::user(user(uid)),
                    reply,
                })
            }
            Step::Cancel { job, uid } => {
                let Some(&id) = self.jobs.get(job % self.jobs.len().max(1)) else {
                    return Ok(());
                };
                let (reply, answer) = oneshot::channel();
                self.other_replies.push(answer);
                self.command(Command::Cancel {
                    id,
                    by: Caller::user(user(uid)),
                    reply,
                })
            }
            Step::Detach(n) => {
                if !self.tickets.is_empty() {
                    let n = n % self.tickets.len();
                    self.tickets.remove(n);
                }
                Ok(())
            }
            Step::Commit(n) => self.commit(n),
            Step::End {
                job,
                code,
                given_back,
            } => self.end(job, code, given_back),
            Step::Shutdown { cancel } => {
                self.shut_down = true;
                let (done, _stopped) = oneshot::channel();
                let mode = if cancel {
                    ShutdownMode::CancelRunning
                } else {
                    ShutdownMode::FinishRunning
                };
                self.command(Command::Shutdown { mode, done })
            }
        }
    }

    /// Commits everything and ends every launched job until nothing is left to do.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..1000 {
            if self.open.is_empty() && self.launched.is_empty() {
                return Ok(());
            }
            if self.open.is_empty() {
                self.end(0, 0, false)?;
            } else {
                self.commit(0)?;
            }
        }
        Err(TestCaseError::fail("the core did not settle"))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_ticket_hears_the_committed_end_once_and_jobs_start_only_on_record(
        steps in proptest::collection::vec(step(), 1..60)
    ) {
        let mut driver = Driver::new();
        for step in steps {
            driver.step(step)?;
        }
        driver.settle()?;
        prop_assert!(driver.asked.is_empty(), "a submission or watch was never answered");
        if driver.shut_down {
            prop_assert!(driver.core.is_stopped(), "the engine did not stop");
            // Its waiters heard the end, or that the engine will not run the job before it
            // stops: nobody waits on a stopped engine.
            for (id, state, _) in &mut driver.tickets {
                let heard = matches!(&*state.borrow(), JobState::Finished(_));
                prop_assert!(
                    heard || state.has_changed().is_err(),
                    "a waiter of job {} still waits on a stopped engine",
                    id
                );
            }
        } else {
            prop_assert!(driver.core.live_jobs() == 0, "jobs are left in the queue");
        }
        // What the engine still holds (the queued jobs of a stopped engine) goes with it.
        let Driver { core, tickets, ended, ever_launched, .. } = driver;
        drop(core);
        for (id, state, _) in &tickets {
            let state = state.borrow();
            match &*state {
                JobState::Finished(result) => prop_assert_eq!(ended.get(id), Some(result)),
                _ => prop_assert!(
                    !ever_launched.contains(id),
                    "a ticket of job {} never heard its end, though the job ran",
                    id
                ),
            }
        }
    }
}

fn stored(id: u64, uid: u32) -> crate::store::StoredJob {
    crate::store::StoredJob {
        id: JobId(id),
        owner: user(uid),
        summary: "/bin/true far".to_owned(),
        command: Some(CommandJob::new(["/bin/true", "far"])),
        key: None,
        accepted_at: std::time::SystemTime::now(),
        waiters: Vec::new(),
    }
}

/// Red team of the sans-IO core: a job that ran on another host's worker when the server
/// stopped waits for that worker; its owner cancels it meanwhile, and is told it is
/// cancelled: when the worker comes back, the job is found again and stopped at once.
#[test]
fn a_job_cancelled_while_its_worker_is_away_is_stopped_when_the_worker_comes_back() {
    let mut driver = Driver::new();
    let recovered = crate::store::Recovered {
        running: vec![crate::store::RunningJob {
            job: stored(7, 1),
            started_at: std::time::SystemTime::now(),
            runner: Some(crate::store::RecordedRunner {
                worker: "far".to_owned(),
                reference: "slurm:42".to_owned(),
            }),
        }],
        next_id: 8,
        ..Default::default()
    };
    // (Its record and its start were committed by the server before.)
    driver.inserted.insert(JobId(7));
    driver.started.insert(JobId(7));
    driver.core.recover(recovered, driver.now);
    driver.carry_out().unwrap();
    let (reply, mut answer) = oneshot::channel();
    driver
        .command(Command::Cancel {
            id: JobId(7),
            by: Caller::user(user(1)),
            reply,
        })
        .unwrap();
    assert!(
        matches!(answer.try_recv(), Ok(Ok(crate::engine::Cancelled::Job(_)))),
        "the owner is told the job is cancelled"
    );
    let (reply, _attached) = oneshot::channel();
    /// The core only passes executors on to the driver.
    struct Unused;
    #[async_trait::async_trait]
    impl crate::executor::Executor for Unused {
        async fn run(&self, _: &CommandJob, _: crate::job::JobContext) -> Outcome {
            unreachable!("the core runs nothing")
        }
    }
    let executor: Arc<dyn crate::executor::Executor> = Arc::new(Unused);
    driver
        .command(Command::AttachWorker {
            info: WorkerInfo::new("far", Vec::<String>::new()),
            executor,
            reply,
        })
        .unwrap();
    assert!(
        driver.launched.contains_key(&JobId(7)),
        "the job is found again where it runs"
    );
    assert!(
        driver.cancelled.contains(&JobId(7)),
        "a job its owner cancelled while its worker was away is stopped when it is found again"
    );
}

/// Red team of the lazy state channels: a job whose waiters all went (its channel was
/// forgotten) is watched while its start is being recorded; the new watcher must hear it
/// queued, not running, until the start is on record.
#[test]
fn a_job_watched_anew_while_its_start_is_recorded_is_not_said_to_run() {
    let mut driver = Driver::new();
    driver.step(Step::Submit { command: 0, uid: 1 }).unwrap();
    // Its record commits (the submitter gets its ticket); its start does not yet.
    let insert = *driver
        .open
        .iter()
        .find(|(_, record)| matches!(record, Record::Insert(_)))
        .expect("the job's record")
        .0;
    driver.open.remove(&insert);
    driver.inserted.insert(JobId(1));
    driver
        .input(Input::Committed {
            commit: insert,
            result: Ok(()),
        })
        .unwrap();
    assert_eq!(driver.tickets.len(), 1, "the submitter's ticket");
    // The submitter goes; the next submissions forget the channel nobody holds.
    driver.step(Step::Detach(0)).unwrap();
    driver.step(Step::Submit { command: 1, uid: 1 }).unwrap();
    driver.step(Step::Watch { job: 0, uid: 1 }).unwrap();
    let (id, state, _) = driver.tickets.last().expect("the watcher's ticket");
    assert_eq!(*id, JobId(1));
    assert_eq!(
        *state.borrow(),
        JobState::Queued,
        "its start is not on record"
    );
}

/// Issue 13: requests are remembered as 16 bytes of their digest and a whole second. A
/// replay is refused until its credential expires, also within the second it expires in and
/// after a restart; it is forgotten only once that second has passed.
#[test]
fn a_remembered_request_is_refused_until_its_credential_expires() {
    use std::time::{Duration, UNIX_EPOCH};
    let digest = [7u8; 32];
    let mut other = digest;
    other[31] ^= 1; // the same first 16 bytes: the same entry, refused alike
    let until = UNIX_EPOCH + Duration::from_millis(1_800_000_000_250);
    let mut seen = super::SeenRequests::default();
    seen.insert(&digest, until);
    for now in [
        until - Duration::from_secs(60),
        until,
        until + Duration::from_millis(700),
    ] {
        assert!(seen.holds(&digest, now), "replay accepted at {now:?}");
        seen.forget_expired(now);
        assert!(seen.holds(&digest, now), "forgotten before it expired");
    }
    assert!(seen.holds(&other, until));
    assert!(
        !seen.holds(&[8u8; 32], until),
        "another request is not refused"
    );
    let restarted = super::SeenRequests::from_records(&[(digest, until)]);
    assert!(restarted.holds(&digest, until + Duration::from_millis(700)));
    let later = until + Duration::from_secs(2);
    assert!(
        !seen.holds(&digest, later),
        "refused after its credential expired"
    );
    seen.forget_expired(later);
    assert!(seen.0.is_empty(), "kept after it expired");
}
