//! The engine with in-process jobs: serial, FIFO, watchable, stoppable.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use cq_core::scheduler::{Decision, JobInfo, QueueView, SubmitHook};
use cq_core::{
    Caller, Engine, EngineConfig, Identity, Job, JobContext, JobId, JobState, Outcome,
    ShutdownMode, SubmitError,
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
    let result = tokio::time::timeout(LIMIT, ticket.finished())
        .await
        .unwrap()
        .unwrap();

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
