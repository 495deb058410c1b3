//! The engine with in-process jobs: serial, FIFO, watchable, stoppable.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use cq_core::scheduler::{Decision, JobInfo, QueueView, SubmitHook};
use std::time::{Duration, SystemTime};

use cq_core::store::{JobRecord, Pending, PrunedJob, Recovered, StoredJob};
use cq_core::{
    Caller, Cancelled, Engine, EngineConfig, EngineHandle, Identity, Job, JobContext, JobId,
    JobResult, JobState, MemoryStore, Outcome, OutputPiece, ShutdownMode, SpawnFailure, Store,
    SubmitError, SubmitKey, SubmitOptions, UserLimits,
};
use tokio::sync::{Mutex, Notify};

use crate::support::LIMIT;

/// Records the highest number of jobs that ever ran at once, and the start order.
#[derive(Default)]
struct Probe {
    running: AtomicUsize,
    most: AtomicUsize,
    order: Mutex<Vec<JobId>>,
}

struct Probed(Arc<Probe>);

#[async_trait]
impl Job for Probed {
    fn summary(&self) -> String {
        "probe".into()
    }

    async fn run(self: Box<Self>, ctx: JobContext) -> Outcome {
        let now = self.0.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.most.fetch_max(now, Ordering::SeqCst);
        self.0.order.lock().await.push(ctx.id);
        // Give other tasks every chance to start a second job, if the engine allowed it.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        Outcome::Exited { code: 0 }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_submitters_run_one_at_a_time_in_acceptance_order() {
    let engine = Engine::new(EngineConfig::default())
        .start()
        .await
        .expect("the engine starts");
    let probe = Arc::new(Probe::default());
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let engine = engine.clone();
            let probe = probe.clone();
            tokio::spawn(async move {
                let mut ticket = engine
                    .submit(Probed(probe), Identity::local())
                    .await
                    .unwrap();
                (ticket.id, ticket.finished().await.unwrap())
            })
        })
        .collect();
    for task in tasks {
        let (_, result) = tokio::time::timeout(LIMIT, task).await.unwrap().unwrap();
        assert_eq!(result.outcome, Outcome::Exited { code: 0 });
    }
    assert_eq!(probe.most.load(Ordering::SeqCst), 1, "two jobs ran at once");
    let order = probe.order.lock().await.clone();
    assert_eq!(order, (1..=50).map(JobId).collect::<Vec<_>>());
}

/// A job that runs until released.
struct Held(Arc<Notify>);

#[async_trait]
impl Job for Held {
    fn summary(&self) -> String {
        "held".into()
    }

    async fn run(self: Box<Self>, ctx: JobContext) -> Outcome {
        tokio::select! {
            () = self.0.notified() => Outcome::Exited { code: 0 },
            () = ctx.cancel.cancelled() => Outcome::Cancelled,
        }
    }
}

#[tokio::test]
async fn finished_jobs_can_still_be_watched_and_unknown_ones_are_named() {
    let engine = Engine::new(EngineConfig::default())
        .start()
        .await
        .expect("the engine starts");
    let release = Arc::new(Notify::new());
    let mut ticket = engine
        .submit(Held(release.clone()), Identity::local())
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, ticket.started())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ticket.state(), JobState::Running);
    release.notify_one();
    let result = finished(&mut ticket).await;

    let mut late = engine
        .watch(ticket.id, Caller::user(Identity::local()))
        .await
        .unwrap();
    assert_eq!(
        late.finished().await.unwrap(),
        result,
        "a late watcher gets the same outcome"
    );
    assert_eq!(
        engine
            .watch(JobId(99), Caller::user(Identity::local()))
            .await
            .unwrap_err(),
        SubmitError::UnknownJob(JobId(99))
    );
}

#[tokio::test]
async fn shutdown_waits_for_or_cancels_the_running_job_and_refuses_new_ones() {
    let engine = Engine::new(EngineConfig::default())
        .start()
        .await
        .expect("the engine starts");
    let release = Arc::new(Notify::new());
    let mut running = engine
        .submit(Held(release.clone()), Identity::local())
        .await
        .unwrap();
    let mut queued = engine
        .submit(Held(Arc::new(Notify::new())), Identity::local())
        .await
        .unwrap();
    assert_eq!(queued.ahead, 1);
    tokio::time::timeout(LIMIT, running.started())
        .await
        .unwrap()
        .unwrap();

    let stopping = tokio::spawn({
        let engine = engine.clone();
        async move { engine.shutdown(ShutdownMode::FinishRunning).await }
    });
    // A second, forcing request cancels the running job; the queued one never starts.
    tokio::time::timeout(LIMIT, engine.shutdown(ShutdownMode::CancelRunning))
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, stopping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        running.finished().await.unwrap().outcome,
        Outcome::Cancelled
    );
    assert!(
        queued.finished().await.is_err(),
        "the queued job did not run"
    );
    let refused = engine
        .submit(Held(release), Identity::local())
        .await
        .unwrap_err();
    assert_eq!(refused, SubmitError::Stopped);
}

/// Rejects everything with a reason, or merges into a given job.
struct Verdict(Decision);

impl SubmitHook for Verdict {
    fn review(&self, _: &JobInfo, _: &QueueView<'_>) -> Decision {
        self.0.clone()
    }
}

#[tokio::test]
async fn a_rejecting_hook_reaches_the_submitter() {
    let engine = Engine::new(EngineConfig::default())
        .with_hook(Verdict(Decision::Reject("maintenance".into())))
        .start()
        .await
        .expect("the engine starts");
    let err = engine
        .submit(Held(Arc::new(Notify::new())), Identity::local())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        SubmitError::Rejected {
            reason: "maintenance".into()
        }
    );
}

/// A job that ends, with this exit code, when it is told to.
struct EndsWhenTold(Arc<Notify>, i32);

#[async_trait]
impl Job for EndsWhenTold {
    fn summary(&self) -> String {
        "ends when told".into()
    }
    async fn run(self: Box<Self>, _ctx: JobContext) -> Outcome {
        self.0.notified().await;
        Outcome::Exited { code: self.1 }
    }
}

#[tokio::test]
async fn job_output_lands_in_the_log_dir() {
    struct Chatty;
    #[async_trait]
    impl Job for Chatty {
        fn summary(&self) -> String {
            "chatty".into()
        }
        async fn run(self: Box<Self>, mut ctx: JobContext) -> Outcome {
            use std::io::Write;
            writeln!(ctx.log, "hello from job {}", ctx.id).unwrap();
            Outcome::Exited { code: 0 }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(EngineConfig::default().with_log_dir(dir.path()))
        .start()
        .await
        .expect("the engine starts");
    let mut ticket = engine.submit(Chatty, Identity::local()).await.unwrap();
    ticket.finished().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("1.log")).unwrap(),
        "hello from job 1\n"
    );
}

/// A job's output comes from the engine as a stream: followed from before the job starts, what
/// it writes arrives while it runs, then how it ended; read later, all of it, then the end.
#[tokio::test]
async fn a_jobs_output_is_followed_through_the_engine_from_its_start_to_its_end() {
    /// Writes a line each time it is told to.
    struct Talker(Arc<Notify>);
    #[async_trait]
    impl Job for Talker {
        fn summary(&self) -> String {
            "talker".into()
        }
        async fn run(self: Box<Self>, mut ctx: JobContext) -> Outcome {
            use std::io::Write;
            for line in ["first", "second"] {
                self.0.notified().await;
                writeln!(ctx.log, "{line}").unwrap();
            }
            Outcome::Exited { code: 3 }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(EngineConfig::default().with_log_dir(dir.path()))
        .start()
        .await
        .expect("the engine starts");
    let (blocker, talker) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let me = Identity::local();
    let _first = engine
        .submit(EndsWhenTold(blocker.clone(), 0), me.clone())
        .await
        .unwrap();
    let ticket = engine
        .submit(Talker(talker.clone()), me.clone())
        .await
        .unwrap();
    let mut output = engine
        .output(ticket.id, Caller::user(me.clone()), true)
        .await
        .unwrap();
    blocker.notify_one();
    let mut running = engine
        .watch(ticket.id, Caller::user(me.clone()))
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, running.started())
        .await
        .expect("the job starts in time")
        .unwrap();
    // It runs and has written nothing: the reader waits (and may stop waiting, and go on).
    assert!(
        tokio::time::timeout(Duration::from_millis(200), output.next())
            .await
            .is_err(),
        "a piece came before the job wrote anything"
    );
    talker.notify_one();
    let mut read = Vec::new();
    while !read.ends_with(b"first\n") {
        match tokio::time::timeout(LIMIT, output.next())
            .await
            .expect("output in time")
        {
            Some(Ok(OutputPiece::Data(data))) => read.extend(data),
            other => panic!("the job's first line did not come while it ran: {other:?}"),
        }
    }
    talker.notify_one();
    let end = loop {
        match tokio::time::timeout(LIMIT, output.next())
            .await
            .expect("output in time")
        {
            Some(Ok(OutputPiece::Data(data))) => read.extend(data),
            other => break other,
        }
    };
    assert_eq!(String::from_utf8_lossy(&read), "first\nsecond\n");
    match end {
        Some(Ok(OutputPiece::Finished(result))) => {
            assert_eq!(result.outcome, Outcome::Exited { code: 3 });
        }
        other => panic!("the followed output did not end with the job's end: {other:?}"),
    }
    assert_eq!(output.next().await, None, "nothing comes after the end");

    let mut later = engine
        .output(ticket.id, Caller::user(me), false)
        .await
        .unwrap();
    assert_eq!(
        later.next().await,
        Some(Ok(OutputPiece::Data(b"first\nsecond\n".to_vec())))
    );
    assert_eq!(later.next().await, Some(Ok(OutputPiece::End)));
}

/// Red team of the output stream: a followed job whose executor gives it back (its worker
/// went away before it took it) runs again with a new log; the follower reads the first
/// run's output, a line saying the job was queued again, then all of the second run's.
#[tokio::test]
async fn a_followed_job_queued_again_shows_its_new_runs_output_whole() {
    /// Gives the job back after its first line, once told to; runs it the second time.
    struct GivesBackOnce(Arc<Notify>, AtomicUsize);
    #[async_trait]
    impl cq_core::Executor for GivesBackOnce {
        async fn run(&self, _job: &cq_core::CommandJob, mut ctx: JobContext) -> Outcome {
            use std::io::Write;
            if self.1.fetch_add(1, Ordering::SeqCst) == 0 {
                writeln!(ctx.log, "one").unwrap();
                self.0.notified().await;
                ctx.give_back.give_back();
                return Outcome::Lost;
            }
            writeln!(ctx.log, "two, and more").unwrap();
            Outcome::Exited { code: 0 }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let go = Arc::new(Notify::new());
    let engine = Engine::new(EngineConfig::default().with_log_dir(dir.path()))
        .with_executor(Arc::new(GivesBackOnce(go.clone(), AtomicUsize::new(0))))
        .start()
        .await
        .expect("the engine starts");
    let me = Identity::local();
    let ticket = engine
        .submit_command(
            cq_core::CommandJob::new(["/bin/true"]),
            me.clone(),
            SubmitOptions::new(),
        )
        .await
        .unwrap();
    let mut output = engine
        .output(ticket.id, Caller::user(me), true)
        .await
        .unwrap();
    let mut read = Vec::new();
    let end = loop {
        match tokio::time::timeout(LIMIT, output.next())
            .await
            .expect("output in time")
        {
            Some(Ok(OutputPiece::Data(data))) => {
                read.extend(data);
                if read == b"one\n" {
                    go.notify_one();
                }
            }
            other => break other,
        }
    };
    let read = String::from_utf8_lossy(&read);
    assert!(
        read.starts_with("one\n")
            && read.contains("queued again")
            && read.ends_with("\ntwo, and more\n"),
        "{read:?}"
    );
    assert!(
        matches!(end, Some(Ok(OutputPiece::Finished(ref r))) if r.outcome == Outcome::Exited { code: 0 }),
        "{end:?}"
    );
}

/// Every handle dropped while a job runs (issue 14: the closed inbox was polled again and
/// again): the job still ends, its waiter hears how, and the engine stops.
#[tokio::test]
async fn an_engine_whose_handles_are_all_dropped_finishes_its_job_and_stops() {
    let engine = Engine::new(EngineConfig::default()).start().await.unwrap();
    let go = Arc::new(Notify::new());
    let mut ticket = engine
        .submit(EndsWhenTold(go.clone(), 4), Identity::local())
        .await
        .unwrap();
    let mut events = engine.events();
    tokio::time::timeout(LIMIT, ticket.started())
        .await
        .expect("the job starts in time")
        .unwrap();
    drop(engine);
    go.notify_one();
    let result = tokio::time::timeout(LIMIT, ticket.finished())
        .await
        .expect("the job ends in time")
        .expect("its waiter hears how");
    assert_eq!(result.outcome, Outcome::Exited { code: 4 });
    // The engine stops: its event stream closes.
    let closed = tokio::time::timeout(LIMIT, async {
        loop {
            if let Err(tokio::sync::broadcast::error::RecvError::Closed) = events.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the engine did not stop");
}

/// An in-process job reports results through its context; they come back with its
/// outcome and are kept in the job's record; a bad one is refused, the rest still count.
#[tokio::test]
async fn an_in_process_jobs_results_come_back_with_its_outcome() {
    struct Reporting;
    #[async_trait]
    impl Job for Reporting {
        fn summary(&self) -> String {
            "reporting".into()
        }
        async fn run(self: Box<Self>, ctx: JobContext) -> Outcome {
            ctx.results.set("BUILD_ID", "7").unwrap();
            assert!(ctx.results.set("1ST", "x").is_err());
            assert!(ctx.results.set("LINE", "a\nb").is_err());
            assert_eq!(
                ctx.results
                    .set_lines("CPV=app-misc/foo-1\nnonsense\n")
                    .len(),
                1
            );
            Outcome::Exited { code: 0 }
        }
    }
    let engine = Engine::new(EngineConfig::default())
        .start()
        .await
        .expect("the engine starts");
    let mut ticket = engine.submit(Reporting, Identity::local()).await.unwrap();
    let result = ticket.finished().await.unwrap();
    let expected = vec![
        ("BUILD_ID".to_owned(), "7".to_owned()),
        ("CPV".to_owned(), "app-misc/foo-1".to_owned()),
    ];
    assert_eq!(result.results, expected);
    let summary = engine
        .status(JobId(1), Caller::admin(Identity::local()))
        .await
        .expect("the job is known");
    assert_eq!(summary.results, expected);
}

/// The end of the job `ticket` follows, heard within the tests' limit.
async fn finished(ticket: &mut cq_core::JobTicket) -> JobResult {
    tokio::time::timeout(LIMIT, ticket.finished())
        .await
        .expect("the job ends in time")
        .expect("the engine runs")
}

/// Which of a store's commits wait until the test lets them through.
#[derive(Default, PartialEq)]
enum HeldCommits {
    #[default]
    Nothing,
    Starts,
    Outcomes,
    /// Its lists of recent jobs (which wait behind the writer in the SQLite store).
    Reads,
}

/// A store whose commits of starts or of outcomes wait until the test lets them through, and
/// whose first `failed_outcomes` commits of outcomes fail.
#[derive(Default)]
struct SlowCommits {
    failed_outcomes: std::sync::atomic::AtomicUsize,
    inner: MemoryStore,
    held: HeldCommits,
    release: Arc<Notify>,
}

impl SlowCommits {
    fn hold<T: Send + 'static>(&self, done: Pending<T>, what: HeldCommits) -> Pending<T> {
        if what != self.held {
            return done;
        }
        let release = self.release.clone();
        let (tx, pending) = Pending::channel();
        tokio::spawn(async move {
            release.notified().await;
            let _ = tx.send(done.await);
        });
        pending
    }
}

/// An engine on a store whose `held` commits wait for the returned notification.
async fn engine_holding(held: HeldCommits) -> (EngineHandle, Arc<Notify>) {
    let release = Arc::new(Notify::new());
    let store = Arc::new(SlowCommits {
        held,
        release: release.clone(),
        ..SlowCommits::default()
    });
    let engine = Engine::new(EngineConfig::default())
        .with_store(store)
        .start()
        .await
        .unwrap();
    (engine, release)
}

impl Store for SlowCommits {
    fn load(&self) -> Pending<Recovered> {
        self.inner.load()
    }
    fn insert(&self, job: StoredJob) -> Pending<()> {
        self.inner.insert(job)
    }
    fn record_start(&self, id: JobId, at: SystemTime) -> Pending<()> {
        self.hold(self.inner.record_start(id, at), HeldCommits::Starts)
    }
    fn record_requeue(&self, id: JobId) -> Pending<()> {
        self.inner.record_requeue(id)
    }
    fn record_runner(&self, id: JobId, worker: String, reference: String) -> Pending<()> {
        self.inner.record_runner(id, worker, reference)
    }
    fn record_finish(&self, id: JobId, result: JobResult, log: u64, at: SystemTime) -> Pending<()> {
        let fail = self
            .failed_outcomes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Pending::ready(Err(cq_core::StoreError::Closed));
        }
        self.hold(
            self.inner.record_finish(id, result, log, at),
            HeldCommits::Outcomes,
        )
    }
    fn add_waiter(
        &self,
        id: JobId,
        who: Identity,
        key: Option<SubmitKey>,
        at: SystemTime,
    ) -> Pending<()> {
        self.inner.add_waiter(id, who, key, at)
    }
    fn remove_waiter(&self, id: JobId, uid: u32) -> Pending<()> {
        self.inner.remove_waiter(id, uid)
    }
    fn describe(&self, id: JobId) -> Pending<Option<JobRecord>> {
        self.inner.describe(id)
    }
    fn recent(&self, limit: usize) -> Pending<Vec<JobRecord>> {
        self.hold(self.inner.recent(limit), HeldCommits::Reads)
    }
    fn prune(&self, before: SystemTime) -> Pending<Vec<PrunedJob>> {
        self.inner.prune(before)
    }
    fn remember_request(&self, digest: [u8; 32], until: SystemTime) -> Pending<()> {
        self.inner.remember_request(digest, until)
    }
    fn forget_requests(&self, before: SystemTime) -> Pending<()> {
        self.inner.forget_requests(before)
    }
    fn flush(&self) -> Pending<()> {
        self.inner.flush()
    }
}

/// Security II, finding 10: the outcome reached waiters before it was committed, so a crash
/// in between could show one waiter "exited 0" and the others `lost`.
#[tokio::test]
async fn waiters_hear_an_outcome_only_once_it_is_committed() {
    let (engine, release) = engine_holding(HeldCommits::Outcomes).await;
    let held = Arc::new(Notify::new());
    let mut ticket = engine
        .submit(Held(held.clone()), Identity::local())
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, ticket.started())
        .await
        .unwrap()
        .unwrap();
    held.notify_one();
    let early =
        tokio::time::timeout(std::time::Duration::from_millis(300), ticket.finished()).await;
    assert!(
        early.is_err(),
        "the outcome was published before its commit"
    );
    release.notify_one();
    let result = finished(&mut ticket).await;
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
}

/// A job ran before its start was committed: the server killed in between found it queued
/// after the restart and ran it a second time (seen in the kill -9 round test). A job runs
/// only once its start is on disk, so a restart finds it started and never runs it again.
#[tokio::test]
async fn a_job_runs_only_once_its_start_is_committed() {
    let (engine, release) = engine_holding(HeldCommits::Starts).await;
    let probe = Arc::new(Probe::default());
    let mut ticket = engine
        .submit(Probed(probe.clone()), Identity::local())
        .await
        .unwrap();
    let announced =
        tokio::time::timeout(std::time::Duration::from_millis(300), ticket.started()).await;
    assert!(
        announced.is_err(),
        "the job was announced as started before its start was committed"
    );
    assert!(
        probe.order.lock().await.is_empty(),
        "the job ran before its start was committed"
    );
    release.notify_one();
    tokio::time::timeout(LIMIT, ticket.started())
        .await
        .unwrap()
        .unwrap();
    let result = finished(&mut ticket).await;
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
    assert_eq!(probe.order.lock().await.len(), 1);
}

/// Red team: an outcome whose commit failed (a full disk, the database locked too long) was
/// never recorded: its waiters were told nothing true, and a restart ran the job again. The
/// engine tries again until it is on record.
#[tokio::test]
async fn an_outcome_whose_commit_fails_is_recorded_again_and_heard() {
    let store = Arc::new(SlowCommits {
        failed_outcomes: 2.into(),
        ..SlowCommits::default()
    });
    let engine = Engine::new(EngineConfig::default())
        .with_store(store.clone())
        .start()
        .await
        .unwrap();
    let held = Arc::new(Notify::new());
    let mut ticket = engine
        .submit(Held(held.clone()), Identity::local())
        .await
        .unwrap();
    held.notify_one();
    let result = finished(&mut ticket).await;
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
    let recorded = store.describe(ticket.id).await.unwrap().unwrap();
    assert_eq!(recorded.summary.outcome, Some(Outcome::Exited { code: 0 }));
}

/// Red team: a job cancelled while its start was being committed was told "cancelled" and
/// ran all the same. A cancel before it runs now means it never runs.
#[tokio::test]
async fn a_job_cancelled_while_its_start_is_committed_never_runs() {
    let (engine, release) = engine_holding(HeldCommits::Starts).await;
    let probe = Arc::new(Probe::default());
    let mut ticket = engine
        .submit(Probed(probe.clone()), Identity::local())
        .await
        .unwrap();
    engine
        .cancel(ticket.id, Caller::user(Identity::local()))
        .await
        .expect("its owner may cancel it");
    release.notify_one();
    let result = finished(&mut ticket).await;
    assert_eq!(result.outcome, Outcome::Cancelled);
    assert!(probe.order.lock().await.is_empty(), "the cancelled job ran");
}

/// Issue 14: queries read what the store has committed, on a connection of their own. A job
/// gone from the engine while its outcome was being committed was "unknown" to a watcher
/// who asked just then; the watcher now waits for the commit and gets the outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_outcome_is_being_committed_can_be_watched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cq.db");
    let store = Arc::new(cq_core::SqliteStore::open(&path).unwrap());
    let engine = Engine::new(EngineConfig::default())
        .with_store(store)
        .start()
        .await
        .unwrap();
    let held = Arc::new(Notify::new());
    let ticket = engine
        .submit(Held(held.clone()), Identity::local())
        .await
        .unwrap();
    // Another process holds the write lock: the outcome's commit waits for it.
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    held.notify_one();
    // Give the engine time to let go of the job (if it has not, the watch is answered from
    // memory, and the test shows nothing, but passes).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let watching = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .watch(ticket.id, Caller::user(Identity::local()))
                .await
        })
    };
    // Let the watch reach the engine while the commit is held (if it comes later, it is
    // answered after the commit, and the test passes without showing anything).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    holder.execute_batch("ROLLBACK").unwrap();
    let mut watched = tokio::time::timeout(LIMIT, watching)
        .await
        .unwrap()
        .unwrap()
        .expect("the job is known, and watched to its end");
    let result = finished(&mut watched).await;
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
}

/// Security II, finding 3: a submission retried with its key after a lost acknowledgement
/// re-attaches to the job it made, instead of queueing it twice.
#[tokio::test]
async fn a_submission_with_a_known_key_reattaches() {
    let engine = Engine::new(EngineConfig::default()).start().await.unwrap();
    let probe = Arc::new(Probe::default());
    let key = SubmitKey::random();
    let first = engine
        .submit_with(
            Box::new(Probed(probe.clone())),
            Identity::local(),
            SubmitOptions::new().with_key(key),
        )
        .await
        .unwrap();
    let mut again = engine
        .submit_with(
            Box::new(Probed(probe.clone())),
            Identity::local(),
            SubmitOptions::new().with_key(key),
        )
        .await
        .unwrap();
    assert_eq!(again.id, first.id);
    again.finished().await.unwrap();
    let mut later = engine
        .submit_with(
            Box::new(Probed(probe.clone())),
            Identity::local(),
            SubmitOptions::new().with_key(key),
        )
        .await
        .unwrap();
    assert_eq!(later.id, first.id, "after the job ended too");
    later.finished().await.unwrap();
    assert_eq!(probe.order.lock().await.len(), 1, "the job ran once");
    let mut other = Identity::local();
    other.uid += 1;
    let theirs = engine
        .submit_with(
            Box::new(Probed(probe.clone())),
            other,
            SubmitOptions::new().with_key(key),
        )
        .await
        .unwrap();
    assert_ne!(theirs.id, first.id, "another user's key is another key");
}

/// Security III, finding 5: per-user limits, with a reason the user can act on.
#[tokio::test]
async fn a_user_over_its_limits_is_refused_and_others_are_not() {
    let mut config = EngineConfig::default();
    config.limits = UserLimits::unlimited();
    config.limits.queued_jobs = Some(2);
    let engine = Engine::new(config).start().await.unwrap();
    let hold = Arc::new(Notify::new());
    let alice = Identity::local();
    let mut bob = Identity::local();
    bob.uid += 1;
    for _ in 0..2 {
        engine
            .submit(Held(hold.clone()), alice.clone())
            .await
            .unwrap();
    }
    let refused = engine
        .submit(Held(hold.clone()), alice.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, SubmitError::OverQuota { reason } if reason.contains("2 jobs queued, running or waited for")),
        "{refused}"
    );
    engine.submit(Held(hold.clone()), bob).await.unwrap();
}

/// Red team of Security III: merging into someone's job must not be a way round the limit
/// (each wait is a record); withdrawing gives the wait back.
#[tokio::test]
async fn waits_count_towards_the_limit_and_a_withdrawal_frees_one() {
    let mut config = EngineConfig::default();
    config.limits = UserLimits::unlimited();
    config.limits.queued_jobs = Some(2);
    let engine = Engine::new(config).start().await.unwrap();
    let hold = Arc::new(Notify::new());
    let alice = Identity::local();
    let target = engine
        .submit(Held(hold.clone()), alice.clone())
        .await
        .unwrap();
    let merge = || SubmitOptions::new().with_verdict(Decision::Merge(target.id));
    let waited = engine
        .submit_with(Box::new(Held(hold.clone())), alice.clone(), merge())
        .await
        .unwrap();
    assert!(waited.merged);
    let refused = engine
        .submit_with(Box::new(Held(hold.clone())), alice.clone(), merge())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, SubmitError::OverQuota { .. }),
        "{refused}"
    );
    // Withdrawing (a waiter's cancel) hands the wait back.
    let mut bob = Identity::local();
    bob.uid += 1;
    engine
        .submit(Held(hold.clone()), bob.clone())
        .await
        .unwrap();
    let mut options = merge();
    options.merge_across_users = true;
    let bobs = engine
        .submit(Held(hold.clone()), bob.clone())
        .await
        .unwrap();
    let refused = engine
        .submit_with(Box::new(Held(hold.clone())), bob.clone(), options.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(refused, SubmitError::OverQuota { .. }),
        "{refused}"
    );
    engine
        .cancel(bobs.id, Caller::user(bob.clone()))
        .await
        .unwrap();
    let waiting = engine
        .submit_with(Box::new(Held(hold.clone())), bob.clone(), options)
        .await
        .unwrap();
    assert!(waiting.merged);
    engine
        .cancel(target.id, Caller::user(bob.clone()))
        .await
        .unwrap();
    engine.submit(Held(hold.clone()), bob).await.unwrap();
}

/// The rule of SECURITY.md in the engine: owners and admins see jobs in full and may cancel;
/// others see the program only and may neither wait for nor cancel them.
#[tokio::test]
async fn callers_see_and_do_what_their_relation_to_a_job_allows() {
    let engine = Engine::new(EngineConfig::default()).start().await.unwrap();
    let alice = Identity::local();
    let mut bob = Identity::local();
    bob.uid += 1;
    struct Secret(Arc<Notify>);
    #[async_trait]
    impl Job for Secret {
        fn summary(&self) -> String {
            "build --token=s3cret".into()
        }
        async fn run(self: Box<Self>, ctx: JobContext) -> Outcome {
            tokio::select! {
                () = self.0.notified() => Outcome::Exited { code: 0 },
                () = ctx.cancel.cancelled() => Outcome::Cancelled,
            }
        }
    }
    let ticket = engine
        .submit(Secret(Arc::new(Notify::new())), alice.clone())
        .await
        .unwrap();
    let seen_by_bob = engine
        .status(ticket.id, Caller::user(bob.clone()))
        .await
        .unwrap();
    let seen_by_alice = engine.status(ticket.id, Caller::user(alice)).await.unwrap();
    assert_eq!(seen_by_alice.command, ["build --token=s3cret"]);
    assert_eq!(
        seen_by_bob.command,
        ["build"],
        "others see the program's name only"
    );
    assert_eq!(seen_by_bob.owner_uid, seen_by_alice.owner_uid);
    assert!(matches!(
        engine.watch(ticket.id, Caller::user(bob.clone())).await,
        Err(SubmitError::NotPermitted { .. })
    ));
    assert!(matches!(
        engine.cancel(ticket.id, Caller::user(bob.clone())).await,
        Err(SubmitError::NotPermitted { .. })
    ));
    assert!(matches!(
        engine
            .output(ticket.id, Caller::user(bob.clone()), false)
            .await,
        Err(SubmitError::NotPermitted { .. })
    ));
    let by_admin = engine.cancel(ticket.id, Caller::admin(bob)).await.unwrap();
    assert!(matches!(by_admin, Cancelled::Job(_)), "{by_admin:?}");
}

/// Red team of Security III: the message of a failed start (it names the owner's paths)
/// reached a waiter merged into another user's job, and whoever watched it afterwards.
#[tokio::test]
async fn a_waiter_of_someone_elses_job_gets_its_outcome_without_the_owners_paths() {
    struct FailsToStart(Arc<Notify>);
    #[async_trait]
    impl Job for FailsToStart {
        fn summary(&self) -> String {
            "build".into()
        }
        async fn run(self: Box<Self>, _ctx: JobContext) -> Outcome {
            self.0.notified().await;
            Outcome::SpawnFailed {
                reason: SpawnFailure::NotFound,
                message: "cannot enter the working directory /home/alice/secret-project".into(),
            }
        }
    }
    let engine = Engine::new(EngineConfig::default()).start().await.unwrap();
    let go = Arc::new(Notify::new());
    let alice = Identity::local();
    let mut bob = Identity::local();
    bob.uid += 1;
    let mut owners = engine
        .submit(FailsToStart(go.clone()), alice.clone())
        .await
        .unwrap();
    let mut merge = SubmitOptions::new().with_verdict(Decision::Merge(owners.id));
    merge.merge_across_users = true;
    let mut bobs = engine
        .submit_with(Box::new(FailsToStart(go.clone())), bob.clone(), merge)
        .await
        .unwrap();
    go.notify_one();
    let full = owners.finished().await.unwrap().outcome;
    assert!(full.to_string().contains("secret-project"), "{full}");
    for seen in [
        bobs.finished().await.unwrap().outcome,
        engine
            .watch(owners.id, Caller::user(bob))
            .await
            .unwrap()
            .finished()
            .await
            .unwrap()
            .outcome,
    ] {
        assert!(
            matches!(&seen, Outcome::SpawnFailed { reason: SpawnFailure::NotFound, message } if !message.contains("alice")),
            "{seen:?}"
        );
    }
}

/// Records which worker ran which command, and how many ran at once; each run waits for a
/// permit.
struct OnWorker {
    name: &'static str,
    seen: Arc<std::sync::Mutex<Vec<(&'static str, String)>>>,
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    permits: Arc<tokio::sync::Semaphore>,
}

#[async_trait]
impl cq_core::Executor for OnWorker {
    async fn run(&self, job: &cq_core::CommandJob, _ctx: JobContext) -> Outcome {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.seen
            .lock()
            .unwrap()
            .push((self.name, job.argv[0].clone()));
        self.permits.acquire().await.unwrap().forget();
        self.running.fetch_sub(1, Ordering::SeqCst);
        Outcome::Exited { code: 0 }
    }
}

/// Two workers run two jobs at once, each one at a time; a tagged job goes only to the
/// worker that has its tag.
#[tokio::test]
async fn workers_run_jobs_side_by_side_each_one_at_a_time() {
    use cq_core::{CommandJob, SubmitOptions, WorkerInfo};
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let worker = |name| {
        Arc::new(OnWorker {
            name,
            seen: seen.clone(),
            running: running.clone(),
            most: most.clone(),
            permits: permits.clone(),
        })
    };
    let engine = Engine::new(EngineConfig::default())
        .with_executor(worker("local"))
        .with_worker(WorkerInfo::new("gpu", ["gpu"]), worker("gpu"))
        .start()
        .await
        .expect("the engine starts");
    let mut tickets = Vec::new();
    for (name, tags) in [
        ("a", vec![]),
        ("b", vec![]),
        ("c", vec!["gpu"]),
        ("d", vec![]),
    ] {
        let mut command = CommandJob::new([name]);
        command.tags = tags.into_iter().map(str::to_owned).collect();
        tickets.push(
            engine
                .submit_command(command, Identity::local(), SubmitOptions::new())
                .await
                .unwrap(),
        );
    }
    // a on local, b on gpu (it runs untagged jobs too); c waits for gpu, d for local.
    let started = |n: usize| {
        let seen = seen.clone();
        async move {
            while seen.lock().unwrap().len() < n {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    };
    tokio::time::timeout(LIMIT, started(2)).await.unwrap();
    assert_eq!(
        seen.lock().unwrap().clone(),
        [("local", "a".to_owned()), ("gpu", "b".to_owned())]
    );
    permits.add_permits(4);
    for mut ticket in tickets {
        let result = finished(&mut ticket).await;
        assert_eq!(result.outcome, Outcome::Exited { code: 0 });
    }
    let seen = seen.lock().unwrap().clone();
    assert!(seen.contains(&("gpu", "c".to_owned())), "{seen:?}");
    assert!(!seen.contains(&("local", "c".to_owned())), "{seen:?}");
    assert_eq!(most.load(Ordering::SeqCst), 2, "two workers, two at once");
}

/// A follower of the engine's events sees each job accepted, merged into, refused, started
/// and finished, in that order, with the finished job in full.
#[tokio::test]
async fn the_event_stream_tells_what_happened_in_order() {
    use cq_core::{EngineEvent, SubmitOptions, scheduler::Decision};
    let engine = Engine::new(EngineConfig::default())
        .start()
        .await
        .expect("the engine starts");
    let mut events = engine.events();
    let release = Arc::new(Notify::new());
    let mut held = engine
        .submit(Held(release.clone()), Identity::local())
        .await
        .unwrap();
    let merged = engine
        .submit_with(
            Box::new(Held(Arc::new(Notify::new()))),
            Identity::local(),
            SubmitOptions::new().with_verdict(Decision::Merge(held.id)),
        )
        .await
        .unwrap();
    assert!(merged.merged);
    let refused = engine
        .submit_with(
            Box::new(Held(Arc::new(Notify::new()))),
            Identity::local(),
            SubmitOptions::new().with_verdict(Decision::Reject("closed".into())),
        )
        .await;
    assert!(refused.is_err());
    release.notify_one();
    held.finished().await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let event = tokio::time::timeout(LIMIT, events.recv())
            .await
            .expect("an event")
            .unwrap();
        seen.push(match event {
            EngineEvent::Accepted { job, .. } => format!("accepted {job}"),
            EngineEvent::Merged { into, .. } => format!("merged {into}"),
            EngineEvent::Refused { reason, .. } => format!("refused {reason}"),
            EngineEvent::Started { job, worker } => format!("started {job} on {worker}"),
            EngineEvent::Finished { job, result } => {
                format!("finished {} {} {:?}", job.id, result.outcome, job.phase)
            }
            other => format!("{other:?}"),
        });
    }
    assert_eq!(
        seen,
        [
            "accepted 1",
            "started 1 on local",
            "merged 1",
            "refused closed",
            "finished 1 exited with status 0 Finished"
        ]
    );
}

/// A scheduler that holds everything until a gate opens (a time window, say).
struct Gated {
    inner: cq_core::SerialScheduler,
    open: Arc<std::sync::atomic::AtomicBool>,
}

impl cq_core::Scheduler for Gated {
    fn enqueue(&mut self, job: Arc<cq_core::JobInfo>) {
        self.inner.enqueue(job);
    }
    fn next_for(&mut self, worker: &cq_core::WorkerInfo) -> Option<JobId> {
        if self.open.load(Ordering::SeqCst) {
            self.inner.next_for(worker)
        } else {
            None
        }
    }
    fn finished(&mut self, id: JobId, outcome: &Outcome) {
        self.inner.finished(id, outcome);
    }
    fn requeue(&mut self, id: JobId) -> bool {
        self.inner.requeue(id)
    }
    fn remove(&mut self, id: JobId) -> bool {
        self.inner.remove(id)
    }
    fn promote(&mut self, id: JobId) -> bool {
        self.inner.promote(id)
    }
    fn view(&self) -> cq_core::QueueView<'_> {
        self.inner.view()
    }
}

/// A custom scheduler whose answer changes by itself gets the engine to ask again with
/// `wake()`; nothing else has to happen first.
#[tokio::test]
async fn wake_offers_free_workers_to_a_scheduler_that_changed_its_mind() {
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scheduler = Gated {
        inner: cq_core::SerialScheduler::new(),
        open: open.clone(),
    };
    let engine = Engine::with_scheduler(scheduler, EngineConfig::default())
        .start()
        .await
        .expect("the engine starts");
    let release = Arc::new(Notify::new());
    let mut ticket = engine
        .submit(Held(release.clone()), Identity::local())
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), ticket.started())
            .await
            .is_err(),
        "the gate is closed"
    );
    open.store(true, Ordering::SeqCst);
    engine.wake().await;
    tokio::time::timeout(LIMIT, ticket.started())
        .await
        .expect("woken, the job starts")
        .unwrap();
    release.notify_one();
    ticket.finished().await.unwrap();
}

/// Typed tasks: a value comes back; an error or a panic ends the task as `failed` with its
/// text (no longer as a made-up exit code or as "lost"), and the engine goes on.
#[tokio::test]
async fn tasks_hand_back_their_value_or_say_why_not() {
    use cq_core::TaskFailed;
    let engine = Engine::new(EngineConfig::default())
        .start()
        .await
        .expect("the engine starts");
    let answer = engine
        .submit_task("answer", Identity::local(), |_ctx| async {
            Ok::<_, String>(6 * 7)
        })
        .await
        .unwrap();
    let failing = engine
        .submit_task("disk", Identity::local(), |_ctx| async {
            Err::<u32, _>("disk full")
        })
        .await
        .unwrap();
    let failing_id = failing.ticket.id;
    let panicking = engine
        .submit_task("boom", Identity::local(), |_ctx| async {
            if true {
                panic!("boom");
            }
            Ok::<u32, String>(0)
        })
        .await
        .unwrap();
    let after = engine
        .submit_task("after", Identity::local(), |ctx| async move {
            Ok::<_, String>(ctx.id)
        })
        .await
        .unwrap();
    assert_eq!(answer.value().await, Ok(42));
    assert_eq!(
        failing.value().await,
        Err(TaskFailed::Failed("disk full".into()))
    );
    let Err(TaskFailed::Failed(why)) = panicking.value().await else {
        panic!("a panic is a failure");
    };
    assert!(why.contains("boom"), "{why}");
    assert_eq!(after.value().await, Ok(JobId(4)), "the engine went on");
    let failed = engine
        .status(failing_id, Caller::admin(Identity::local()))
        .await
        .unwrap();
    assert_eq!(failed.outcome.as_ref().map(Outcome::word), Some("failed"));
}

/// What exec cannot take is refused by the engine itself, whoever submits it (an embedder
/// calling `submit_command` passes no server that would check it).
#[tokio::test]
async fn the_engine_refuses_commands_exec_cannot_take() {
    use cq_core::{CommandJob, InvalidJob, SubmitOptions};
    let engine = Engine::new(EngineConfig::default())
        .start()
        .await
        .expect("the engine starts");
    let refused = engine
        .submit_command(
            CommandJob::default(),
            Identity::local(),
            SubmitOptions::new(),
        )
        .await;
    assert_eq!(
        refused.err(),
        Some(SubmitError::Invalid(InvalidJob::EmptyCommand))
    );
    let nul = engine
        .submit_command(
            CommandJob::new(["echo", "a\0b"]),
            Identity::local(),
            SubmitOptions::new(),
        )
        .await;
    assert!(matches!(nul, Err(SubmitError::Invalid(_))), "{nul:?}");
}

/// Records whom each command runs for, and holds it until the test lets it end.
struct Owners {
    seen: Arc<std::sync::Mutex<Vec<Identity>>>,
    release: Arc<Notify>,
}

#[async_trait]
impl cq_core::Executor for Owners {
    async fn run(&self, _job: &cq_core::CommandJob, ctx: JobContext) -> Outcome {
        self.seen.lock().unwrap().push(ctx.owner.clone());
        self.release.notified().await;
        Outcome::Exited { code: 0 }
    }
}

/// Issue 14: the policy was checked in the server's connection, so an embedder calling
/// `submit_command` skipped it, and a group the requester claimed stayed theirs. The engine's
/// access check now admits every command, whoever submits it.
#[tokio::test]
async fn an_embedders_commands_pass_the_access_check_and_run_as_the_account_names_them() {
    use cq_core::account::Account;
    use cq_core::{CommandJob, SharedPolicy, SubmitPolicy};
    let policy = SubmitPolicy {
        allow_root: true,
        first_regular_uid: 0,
        ..SubmitPolicy::default()
    };
    let (seen, release) = (Arc::default(), Arc::new(Notify::new()));
    let engine = Engine::new(EngineConfig::default())
        .with_executor(Arc::new(Owners {
            seen: Arc::clone(&seen),
            release: release.clone(),
        }))
        .with_access_check(Arc::new(SharedPolicy::new(policy)))
        .start()
        .await
        .expect("the engine starts");
    let mut preload = CommandJob::new(["true"]);
    preload
        .env
        .push(("LD_PRELOAD".to_owned(), "/tmp/evil.so".to_owned()));
    let mut events = engine.events();
    let refused = engine
        .submit_command(preload, Identity::local(), SubmitOptions::new())
        .await;
    assert!(
        matches!(&refused, Err(SubmitError::Refused(_))),
        "{refused:?}"
    );
    assert!(
        matches!(events.try_recv(), Ok(cq_core::EngineEvent::Refused { .. })),
        "the refusal is an event like any other"
    );
    let mut forged = Identity::local();
    forged.gid = 4242;
    forged.user = Some("somebody-else".to_owned());
    let mut ticket = engine
        .submit_command(CommandJob::new(["true"]), forged, SubmitOptions::new())
        .await
        .expect("a clean command is admitted");
    release.notify_one();
    let result = finished(&mut ticket).await;
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
    let account = Account::lookup(Identity::local().uid).unwrap();
    let owners = seen.lock().unwrap().clone();
    assert_eq!(owners.len(), 1, "only the admitted command ran");
    assert_eq!(owners[0].gid, account.gid, "the claimed group is not used");
    assert_eq!(owners[0].user.as_deref(), Some(account.name.as_str()));
}

/// Decides from the live queue it is shown: rejects while anything waits or runs.
struct Closed(Arc<std::sync::Mutex<Vec<Vec<JobId>>>>);

#[async_trait]
impl cq_core::Reviewer for Closed {
    async fn review(
        &self,
        _job: &cq_core::CommandJob,
        _owner: &Identity,
        queue: &[cq_core::JobSummary],
    ) -> Decision {
        self.0
            .lock()
            .unwrap()
            .push(queue.iter().map(|j| j.id).collect());
        if queue.is_empty() {
            Decision::Accept
        } else {
            Decision::Reject("busy".to_owned())
        }
    }
}

/// Issue 14: the hook program ran only for the server's connections, on a full list that
/// waited for the store. The engine's reviewer decides about every command, from the live
/// queue, also while the store is slow to read.
#[tokio::test]
async fn the_reviewer_decides_every_command_from_the_live_queue() {
    use cq_core::CommandJob;
    let held = Arc::new(Notify::new());
    let store = Arc::new(SlowCommits {
        inner: MemoryStore::new(),
        held: HeldCommits::Reads,
        release: held.clone(),
        ..SlowCommits::default()
    });
    let shown = Arc::default();
    let release = Arc::new(Notify::new());
    let engine = Engine::new(EngineConfig::default())
        .with_store(store)
        .with_executor(Arc::new(Owners {
            seen: Arc::default(),
            release: release.clone(),
        }))
        .with_reviewer(Arc::new(Closed(Arc::clone(&shown))))
        .start()
        .await
        .expect("the engine starts");
    let mut first = tokio::time::timeout(
        LIMIT,
        engine.submit_command(
            CommandJob::new(["true"]),
            Identity::local(),
            SubmitOptions::new(),
        ),
    )
    .await
    .expect("the reviewer does not wait for the store")
    .expect("accepted on an empty queue");
    let second = tokio::time::timeout(
        LIMIT,
        engine.submit_command(
            CommandJob::new(["true"]),
            Identity::local(),
            SubmitOptions::new(),
        ),
    )
    .await
    .expect("the reviewer does not wait for the store");
    assert_eq!(
        second.err(),
        Some(SubmitError::Rejected {
            reason: "busy".to_owned()
        })
    );
    assert_eq!(*shown.lock().unwrap(), vec![vec![], vec![first.id]]);
    release.notify_one();
    let result = finished(&mut first).await;
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
}

/// Red team: a retried submission (same key, after a lost acknowledgement) was reviewed
/// again before it re-attached: a storm of retries took every reviewer's turn, and a
/// reviewer that now says no refused a job that was already queued. A retry re-attaches
/// without a second review.
#[tokio::test]
async fn a_retry_reattaches_without_a_second_review() {
    use cq_core::CommandJob;
    let shown = Arc::default();
    let release = Arc::new(Notify::new());
    let engine = Engine::new(EngineConfig::default())
        .with_executor(Arc::new(Owners {
            seen: Arc::default(),
            release: release.clone(),
        }))
        .with_reviewer(Arc::new(Closed(Arc::clone(&shown))))
        .start()
        .await
        .expect("the engine starts");
    let key = SubmitKey::random();
    let first = engine
        .submit_command(
            CommandJob::new(["true"]),
            Identity::local(),
            SubmitOptions::new().with_key(key),
        )
        .await
        .expect("accepted on an empty queue");
    let mut again = engine
        .submit_command(
            CommandJob::new(["true"]),
            Identity::local(),
            SubmitOptions::new().with_key(key),
        )
        .await
        .expect("a retry re-attaches (the reviewer would say busy)");
    assert_eq!(again.id, first.id);
    assert_eq!(shown.lock().unwrap().len(), 1, "reviewed once");
    release.notify_one();
    let result = finished(&mut again).await;
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
}

/// Records the time limit each command arrives with.
struct Limits(Arc<std::sync::Mutex<Vec<Option<u64>>>>);

#[async_trait]
impl cq_core::Executor for Limits {
    async fn run(&self, job: &cq_core::CommandJob, _ctx: JobContext) -> Outcome {
        self.0.lock().unwrap().push(job.timeout_ms);
        Outcome::Exited { code: 0 }
    }
}

/// Issue 14: the store decided what became of the jobs that were running when the engine
/// stopped; it now loads them as they were and the engine decides: lost, or run again when
/// configured so, each recorded before anybody is served.
#[tokio::test]
async fn jobs_running_when_the_engine_stopped_are_lost_or_run_again_as_configured() {
    use cq_core::CommandJob;
    use cq_core::store::StoredJob;
    for requeue in [false, true] {
        let store = Arc::new(MemoryStore::new());
        let job = StoredJob {
            id: JobId(1),
            owner: Identity::local(),
            summary: "true".to_owned(),
            command: Some(CommandJob::new(["true"])),
            key: None,
            accepted_at: SystemTime::now(),
            waiters: Vec::new(),
        };
        store.insert(job).await.unwrap();
        store
            .record_start(JobId(1), SystemTime::now())
            .await
            .unwrap();
        let mut config = EngineConfig::default();
        config.requeue_running = requeue;
        let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
        let engine = Engine::new(config)
            .with_store(store.clone())
            .with_executor(Arc::new(Limits(ran.clone())))
            .start()
            .await
            .expect("the engine starts");
        let admin = Caller::admin(Identity::local());
        let mut ticket = engine.watch(JobId(1), admin.clone()).await.unwrap();
        let result = finished(&mut ticket).await;
        let expected = if requeue {
            Outcome::Exited { code: 0 }
        } else {
            Outcome::Lost
        };
        assert_eq!(result.outcome, expected);
        assert_eq!(ran.lock().unwrap().len(), usize::from(requeue));
        let recorded = store.describe(JobId(1)).await.unwrap().unwrap();
        assert_eq!(recorded.summary.outcome, Some(expected), "as recorded");
    }
}

/// A job as the store keeps it: a command (`true`) or, without one, an in-process job.
fn stored(id: u64, command: bool) -> cq_core::store::StoredJob {
    cq_core::store::StoredJob {
        id: JobId(id),
        owner: Identity::local(),
        summary: "true".to_owned(),
        command: command.then(|| cq_core::CommandJob::new(["true"])),
        key: None,
        accepted_at: SystemTime::now(),
        waiters: Vec::new(),
    }
}

/// Red team: a job recorded as running where its worker never came back (a Slurm job of a
/// lane the engine no longer has, after `--lanes 3` became `--lanes 1`) was queued again with
/// `requeue_running`, and ran a second time while Slurm still ran it. It is recorded lost.
#[tokio::test]
async fn a_job_whose_worker_does_not_come_back_is_lost_never_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cq.db");
    {
        let store = cq_core::SqliteStore::open(&path).unwrap();
        store.insert(stored(1, true)).await.unwrap();
        store
            .record_start(JobId(1), SystemTime::now())
            .await
            .unwrap();
        store
            .record_runner(JobId(1), "local-3".into(), "slurm:4242 0 cq-1".into())
            .await
            .unwrap();
    }
    let mut config = EngineConfig::default();
    config.requeue_running = true;
    config.worker_timeout = std::time::Duration::from_millis(200);
    let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
    let engine = Engine::new(config)
        .with_store(Arc::new(cq_core::SqliteStore::open(&path).unwrap()))
        .with_executor(Arc::new(Limits(ran.clone())))
        .start()
        .await
        .expect("the engine starts");
    let mut ticket = engine
        .watch(JobId(1), Caller::admin(Identity::local()))
        .await
        .unwrap();
    let result = finished(&mut ticket).await;
    assert_eq!(result.outcome, Outcome::Lost);
    assert!(ran.lock().unwrap().is_empty(), "it ran again");
}

/// Red team: what the engine recorded at start about jobs it cannot run (an in-process job
/// left queued) was not committed before it served: a watcher asking at once was told the
/// job was unknown.
#[tokio::test]
async fn what_a_restart_decides_is_on_record_before_anybody_asks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cq.db");
    {
        let store = cq_core::SqliteStore::open(&path).unwrap();
        store.insert(stored(1, false)).await.unwrap();
    }
    let engine = Engine::new(EngineConfig::default())
        .with_store(Arc::new(cq_core::SqliteStore::open(&path).unwrap()))
        .start()
        .await
        .expect("the engine starts");
    let mut ticket = engine
        .watch(JobId(1), Caller::admin(Identity::local()))
        .await
        .expect("the job is known");
    let result = finished(&mut ticket).await;
    assert_eq!(result.outcome, Outcome::Lost);
}

/// The engine sets every command's time limit (the default when it asks for none, never more
/// than the most allowed), whoever submits it.
#[tokio::test]
async fn the_engine_gives_every_command_its_time_limit() {
    use cq_core::{CommandJob, SubmitOptions};
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut config = EngineConfig::default();
    config.default_time_limit = Some(std::time::Duration::from_secs(60));
    config.max_time_limit = Some(std::time::Duration::from_secs(120));
    let engine = Engine::new(config)
        .with_executor(Arc::new(Limits(seen.clone())))
        .start()
        .await
        .expect("the engine starts");
    for asked in [None, Some(90_000), Some(600_000)] {
        let mut command = CommandJob::new(["true"]);
        command.timeout_ms = asked;
        let mut ticket = engine
            .submit_command(command, Identity::local(), SubmitOptions::new())
            .await
            .unwrap();
        ticket.finished().await.unwrap();
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [Some(60_000), Some(90_000), Some(120_000)]
    );
}

/// Counts the start checks; admits everything until told to refuse.
#[derive(Default)]
struct CountedStartChecks(AtomicUsize, std::sync::atomic::AtomicBool);

impl cq_core::AccessCheck for CountedStartChecks {
    fn admit(
        &self,
        requester: &Identity,
        _job: &cq_core::CommandJob,
    ) -> Result<cq_core::Admitted, cq_core::PolicyRefusal> {
        Ok(cq_core::Admitted::new(requester.clone()))
    }
    fn clear(
        &self,
        _owner: &Identity,
        _job: &cq_core::CommandJob,
    ) -> Result<cq_core::Clearance, cq_core::PolicyRefusal> {
        self.0.fetch_add(1, Ordering::SeqCst);
        if self.1.load(Ordering::SeqCst) {
            return Err(cq_core::PolicyRefusal::NotAllowed(
                "removed from the policy".to_owned(),
            ));
        }
        Ok(cq_core::Clearance::default())
    }
}

/// A command job whose start's commit is held, once its start check has begun.
struct HeldStart {
    _engine: EngineHandle,
    /// Lets the start's commit through.
    release: Arc<Notify>,
    checks: Arc<CountedStartChecks>,
    /// Owners of the jobs that ran.
    seen: Arc<std::sync::Mutex<Vec<Identity>>>,
    /// Ends the running job.
    ran: Arc<Notify>,
    ticket: cq_core::JobTicket,
}

async fn held_start_checked_once() -> HeldStart {
    let release = Arc::new(Notify::new());
    let store = Arc::new(SlowCommits {
        held: HeldCommits::Starts,
        release: release.clone(),
        ..SlowCommits::default()
    });
    let checks = Arc::new(CountedStartChecks::default());
    let (seen, ran) = (Arc::default(), Arc::new(Notify::new()));
    let engine = Engine::new(EngineConfig::default())
        .with_store(store)
        .with_executor(Arc::new(Owners {
            seen: Arc::clone(&seen),
            release: ran.clone(),
        }))
        .with_access_check(checks.clone())
        .start()
        .await
        .expect("the engine starts");
    let ticket = engine
        .submit_command(
            cq_core::CommandJob::new(["true"]),
            Identity::local(),
            SubmitOptions::new(),
        )
        .await
        .expect("admitted");
    let checked = async {
        while checks.0.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(LIMIT, checked)
        .await
        .expect("the start check waited for the start's commit");
    HeldStart {
        _engine: engine,
        release,
        checks,
        seen,
        ran,
        ticket,
    }
}

/// Issue 13: the start check (the policy and the account database, read on the blocking pool)
/// began only once the job's start was committed, so each job of a busy queue waited for
/// the commit and then for the check. It runs while the start is being recorded, once, and
/// the job still runs only after the commit.
#[tokio::test]
async fn the_start_check_runs_while_the_start_is_recorded_and_only_once() {
    let HeldStart {
        _engine,
        release,
        checks,
        seen,
        ran,
        mut ticket,
    } = held_start_checked_once().await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "the job ran before its start was committed"
    );
    release.notify_one();
    ran.notify_one();
    let result = finished(&mut ticket).await;
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(checks.0.load(Ordering::SeqCst), 1, "checked once");
}

/// Red team of the early start check: a check begun while the start was recorded is used
/// only if that took less than a second; a commit that took longer (a slow disk) left time
/// for the owner to be removed from the policy, and the job is checked again at launch.
#[tokio::test]
async fn a_job_whose_start_took_long_to_record_is_checked_again() {
    let HeldStart {
        _engine,
        release,
        checks,
        seen,
        ran: _,
        mut ticket,
    } = held_start_checked_once().await;
    checks.1.store(true, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    release.notify_one();
    let result = finished(&mut ticket).await;
    assert!(
        matches!(
            result.outcome,
            Outcome::SpawnFailed {
                reason: SpawnFailure::NotPermitted,
                ..
            }
        ),
        "{:?}",
        result.outcome
    );
    assert!(seen.lock().unwrap().is_empty(), "the job ran");
    assert_eq!(checks.0.load(Ordering::SeqCst), 2);
}
