//! A custom scheduler: jobs whose command sets `URGENT=1` go ahead of the others, and
//! commands run through an executor of the daemon's own (here one that only pretends).
//! (Tags would not do: a job's tags are what a worker must offer to run it.)
//!
//! Run it with `cargo run -p cq-examples --example scheduler`.

use std::sync::{Arc, Mutex};

use cq_core::{
    CommandJob, Engine, EngineConfig, Executor, Identity, JobContext, JobId, JobInfo, Outcome,
    QueueView, Scheduler, SerialScheduler, ShutdownMode, SubmitOptions, WorkerInfo, async_trait,
};

/// FIFO, but an urgent job goes ahead of every job that is not.
#[derive(Default)]
struct UrgentFirst {
    inner: SerialScheduler,
}

impl Scheduler for UrgentFirst {
    fn enqueue(&mut self, job: std::sync::Arc<JobInfo>) {
        let urgent = job
            .command
            .as_ref()
            .is_some_and(|c| c.env.iter().any(|(k, v)| k == "URGENT" && v == "1"));
        let id = job.id;
        self.inner.enqueue(job);
        if urgent {
            self.inner.promote(id);
        }
    }
    fn next_for(&mut self, worker: &WorkerInfo) -> Option<JobId> {
        self.inner.next_for(worker)
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
    fn view(&self) -> QueueView<'_> {
        self.inner.view()
    }
}

/// Records the order commands ran in, instead of running them; each run waits for a go.
struct Recorder {
    ran: Mutex<Vec<String>>,
    go: tokio::sync::Semaphore,
}

#[async_trait]
impl Executor for Recorder {
    async fn run(&self, job: &CommandJob, _ctx: JobContext) -> Outcome {
        self.ran.lock().unwrap().push(job.argv.join(" "));
        self.go.acquire().await.expect("open").forget();
        Outcome::Exited { code: 0 }
    }
}

#[tokio::main]
async fn main() {
    let ran = Arc::new(Recorder {
        ran: Mutex::default(),
        go: tokio::sync::Semaphore::new(0),
    });
    let engine = Engine::with_scheduler(UrgentFirst::default(), EngineConfig::default())
        .with_executor(ran.clone())
        .start()
        .await
        .expect("the engine starts");
    let mut tickets = Vec::new();
    for (name, urgent) in [("a", false), ("b", false), ("c", true), ("d", false)] {
        let mut command = CommandJob::new(["build", name]);
        if urgent {
            command = command.with_env("URGENT", "1");
        }
        let ticket = engine
            .submit_command(command, Identity::local(), SubmitOptions::new())
            .await
            .expect("queued");
        tickets.push(ticket);
    }
    // Everything is queued (`a` already runs): let them all go.
    ran.go.add_permits(4);
    for mut ticket in tickets {
        ticket.finished().await.unwrap();
    }
    let order = ran.ran.lock().unwrap().clone();
    println!("ran: {order:?}");
    // `a` started at once; the urgent `c` went ahead of `b` and `d`.
    assert_eq!(order, ["build a", "build c", "build b", "build d"]);
    engine.shutdown(ShutdownMode::FinishRunning).await;
}
