//! Properties of the engine under random interleavings of submissions (some merged into an
//! equal queued job), watches, cancels, job ends and store commits (issue 14): every waiter
//! hears exactly one outcome, the same one as every other waiter of its job, only once that
//! outcome is committed, and the outcome is one the job could have had.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use cq_core::scheduler::{Decision, JobInfo, QueueView, SubmitHook};
use cq_core::store::{JobRecord, Pending, PrunedJob, Recovered, StoredJob};
use cq_core::{
    Caller, Engine, EngineConfig, EngineStopped, Identity, Job, JobContext, JobId, JobResult,
    MemoryStore, Outcome, Store, StoreError, SubmitKey,
};
use proptest::prelude::*;
use tokio::sync::oneshot;

use crate::support::LIMIT;

type Commit = (JobId, Pending<()>, oneshot::Sender<Result<(), StoreError>>);

/// A store whose commits of outcomes wait until the test releases them, and which records
/// which outcomes it committed.
#[derive(Default)]
struct GatedOutcomes {
    inner: MemoryStore,
    held: Mutex<Vec<Commit>>,
    committed: Arc<Mutex<HashSet<JobId>>>,
}

impl GatedOutcomes {
    /// Commits every outcome held back so far.
    fn release(&self) {
        let held = std::mem::take(&mut *self.held.lock().unwrap());
        for (id, done, reply) in held {
            // On record before anybody can hear of it.
            self.committed.lock().unwrap().insert(id);
            tokio::spawn(async move {
                let _ = reply.send(done.await);
            });
        }
    }
}

impl Store for GatedOutcomes {
    fn load(&self) -> Pending<Recovered> {
        self.inner.load()
    }
    fn insert(&self, job: StoredJob) -> Pending<()> {
        self.inner.insert(job)
    }
    fn record_start(&self, id: JobId, at: SystemTime) -> Pending<()> {
        self.inner.record_start(id, at)
    }
    fn record_requeue(&self, id: JobId) -> Pending<()> {
        self.inner.record_requeue(id)
    }
    fn record_runner(&self, id: JobId, worker: String, reference: String) -> Pending<()> {
        self.inner.record_runner(id, worker, reference)
    }
    fn record_finish(&self, id: JobId, result: JobResult, log: u64, at: SystemTime) -> Pending<()> {
        let done = self.inner.record_finish(id, result, log, at);
        let (reply, pending) = Pending::channel();
        self.held.lock().unwrap().push((id, done, reply));
        pending
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
        // As SQLite's reader: what is committed only.
        let committed = self.committed.lock().unwrap().contains(&id);
        let record = self.inner.describe(id);
        let (reply, pending) = Pending::channel();
        tokio::spawn(async move {
            let record = record.await.map(|found| {
                found.map(|mut record| {
                    if !committed {
                        record.summary.outcome = None;
                        record.summary.phase = cq_core::JobPhase::Running;
                    }
                    record
                })
            });
            let _ = reply.send(record);
        });
        pending
    }
    fn recent(&self, limit: usize) -> Pending<Vec<JobRecord>> {
        self.inner.recent(limit)
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

/// The jobs that run now, each ended by the test with an exit code.
type Ends = Arc<Mutex<BTreeMap<JobId, oneshot::Sender<i32>>>>;

/// A job that runs until the test ends it (or it is cancelled).
struct Scripted {
    label: u8,
    ends: Ends,
}

#[async_trait]
impl Job for Scripted {
    fn summary(&self) -> String {
        format!("job {}", self.label)
    }

    async fn run(self: Box<Self>, ctx: JobContext) -> Outcome {
        let (end, ended) = oneshot::channel();
        self.ends.lock().unwrap().insert(ctx.id, end);
        tokio::select! {
            code = ended => code.map_or(Outcome::Lost, |code| Outcome::Exited { code }),
            () = ctx.cancel.cancelled() => Outcome::Cancelled,
        }
    }
}

/// Merges a submission into a queued job with the same summary.
struct MergeEqual;

impl SubmitHook for MergeEqual {
    fn review(&self, job: &JobInfo, queue: &QueueView<'_>) -> Decision {
        queue
            .queued()
            .find(|queued| queued.summary == job.summary)
            .map_or(Decision::Accept, |queued| Decision::Merge(queued.id))
    }
}

#[derive(Clone, Debug)]
enum Step {
    Submit(u8),
    Watch(usize),
    End(usize, i32),
    Cancel(usize),
    Commit,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..3u8).prop_map(Step::Submit),
        2 => any::<usize>().prop_map(Step::Watch),
        3 => (any::<usize>(), 0..3i32).prop_map(|(i, code)| Step::End(i, code)),
        1 => any::<usize>().prop_map(Step::Cancel),
        2 => Just(Step::Commit),
    ]
}

/// What one waiter heard: its job, the outcome, and whether it was committed by then.
type Heard = (JobId, Result<JobResult, EngineStopped>, bool);

async fn run_steps(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let store = Arc::new(GatedOutcomes::default());
    let committed = store.committed.clone();
    let engine = Engine::new(EngineConfig::default())
        .with_store(store.clone())
        .with_hook(MergeEqual)
        .start()
        .await
        .expect("the engine starts");
    let ends: Ends = Arc::default();
    let admin = Caller::admin(Identity::local());
    let mut jobs: Vec<JobId> = Vec::new();
    let mut waiters: Vec<tokio::task::JoinHandle<Heard>> = Vec::new();
    let mut ended_with: HashMap<JobId, i32> = HashMap::new();
    let cancelled: Arc<Mutex<HashSet<JobId>>> = Arc::default();
    // A watch or a cancel of a job whose end is being committed waits for the commit: they
    // run beside the steps.
    type Aside = Result<Option<tokio::task::JoinHandle<Heard>>, String>;
    let mut asides: Vec<tokio::task::JoinHandle<Aside>> = Vec::new();
    let listen = |mut ticket: cq_core::JobTicket, committed: Arc<Mutex<HashSet<JobId>>>| {
        tokio::spawn(async move {
            let heard = ticket.finished().await;
            let on_record = committed.lock().unwrap().contains(&ticket.id);
            (ticket.id, heard, on_record)
        })
    };
    for step in steps {
        match step {
            Step::Submit(label) => {
                let job = Scripted {
                    label,
                    ends: ends.clone(),
                };
                let ticket = engine.submit(job, Identity::local()).await.unwrap();
                if !jobs.contains(&ticket.id) {
                    jobs.push(ticket.id);
                }
                waiters.push(listen(ticket, committed.clone()));
            }
            Step::Watch(i) if !jobs.is_empty() => {
                let id = jobs[i % jobs.len()];
                let (engine, admin, committed) = (engine.clone(), admin.clone(), committed.clone());
                asides.push(tokio::spawn(async move {
                    // Every job it names was submitted, and none is forgotten.
                    match engine.watch(id, admin).await {
                        Ok(ticket) => Ok(Some(listen(ticket, committed))),
                        Err(e) => Err(format!("watching job {id}: {e}")),
                    }
                }));
            }
            Step::End(i, code) => {
                let mut running = ends.lock().unwrap();
                if let Some(&id) = running.keys().nth(i % running.len().max(1)) {
                    let end = running.remove(&id).unwrap();
                    if end.send(code).is_ok() {
                        ended_with.insert(id, code);
                    }
                }
            }
            Step::Cancel(i) if !jobs.is_empty() => {
                let id = jobs[i % jobs.len()];
                let (engine, admin, cancelled) = (engine.clone(), admin.clone(), cancelled.clone());
                // Asked for now: the job may end as cancelled from this moment.
                cancelled.lock().unwrap().insert(id);
                asides.push(tokio::spawn(async move {
                    let _ = engine.cancel(id, admin).await;
                    Ok(None)
                }));
            }
            Step::Commit => store.release(),
            Step::Watch(_) | Step::Cancel(_) => {}
        }
        tokio::task::yield_now().await;
    }
    // Then everything ends: each job that runs exits 0, each outcome is committed.
    let mut failed_asides = Vec::new();
    let drained = tokio::time::timeout(LIMIT, async {
        while !asides.is_empty() || waiters.iter().any(|w| !w.is_finished()) {
            for aside in std::mem::take(&mut asides) {
                if aside.is_finished() {
                    match aside.await.unwrap() {
                        Ok(waiter) => waiters.extend(waiter),
                        Err(e) => failed_asides.push(e),
                    }
                } else {
                    asides.push(aside);
                }
            }
            let running = std::mem::take(&mut *ends.lock().unwrap());
            for (id, end) in running {
                if end.send(0).is_ok() {
                    ended_with.insert(id, 0);
                }
            }
            store.release();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    prop_assert!(drained.is_ok(), "a waiter never heard its job's end");
    prop_assert!(failed_asides.is_empty(), "{:?}", failed_asides);
    let mut outcomes: HashMap<JobId, JobResult> = HashMap::new();
    for waiter in waiters {
        let (id, heard, on_record) = waiter.await.unwrap();
        let result = heard.map_err(|e| TestCaseError::fail(format!("job {id}: {e}")))?;
        prop_assert!(
            on_record,
            "job {id}: heard {result:?} before it was committed"
        );
        if let Some(other) = outcomes.get(&id) {
            prop_assert_eq!(
                other,
                &result,
                "job {}: two waiters heard different ends",
                id
            );
        }
        match &result.outcome {
            Outcome::Exited { code } => prop_assert_eq!(
                ended_with.get(&id),
                Some(code),
                "job {}: an exit it never made",
                id
            ),
            Outcome::Cancelled => {
                prop_assert!(
                    cancelled.lock().unwrap().contains(&id),
                    "job {id}: cancelled by nobody"
                );
            }
            other => prop_assert!(false, "job {id}: {other:?}"),
        }
        outcomes.insert(id, result);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn every_waiter_hears_one_committed_end_the_same_as_the_others(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run_steps(steps))?;
    }
}
