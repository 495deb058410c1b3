//! Embedding cq-core in another daemon: serialise the daemon's own work, in-process.
//!
//! A daemon that must never run two expensive maintenance tasks at once (say, two index
//! rebuilds) starts an [`Engine`] and submits its work as [`Job`]s from wherever the work
//! arises. A submit hook merges a request for a task that is already queued, so that every
//! requester waits for the same run. No network, no authentication: the daemon is trusted.
//!
//! Run it with `cargo run -p cq-examples --example embed`.

use std::io::Write;
use std::time::Duration;

use async_trait::async_trait;
use cq_core::scheduler::{Decision, JobInfo, QueueView, SubmitHook};
use cq_core::{Engine, EngineConfig, Identity, Job, JobContext, Outcome, ShutdownMode};

/// The daemon's own kind of work.
struct Rebuild {
    index: &'static str,
}

#[async_trait]
impl Job for Rebuild {
    fn summary(&self) -> String {
        format!("rebuild {}", self.index)
    }

    async fn run(self: Box<Self>, mut ctx: JobContext) -> Outcome {
        println!(
            "job {}: rebuilding {} (nothing else runs now)",
            ctx.id, self.index
        );
        let _ = writeln!(ctx.log, "rebuilding {}", self.index);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => Outcome::Exited { code: 0 },
            () = ctx.cancel.cancelled() => Outcome::Cancelled,
        }
    }
}

/// Merges a rebuild of an index whose rebuild is still queued.
struct MergeQueuedDuplicates;

impl SubmitHook for MergeQueuedDuplicates {
    fn review(&self, job: &JobInfo, queue: &QueueView<'_>) -> Decision {
        queue
            .queued()
            .find(|queued| queued.summary == job.summary)
            .map_or(Decision::Accept, |queued| Decision::Merge(queued.id))
    }
}

#[tokio::main]
async fn main() {
    let engine = Engine::new(EngineConfig::default())
        .with_hook(MergeQueuedDuplicates)
        .start()
        .await
        .expect("the engine starts");
    let requests = ["users", "orders", "users", "orders", "users"];
    let waiters: Vec<_> = requests
        .into_iter()
        .enumerate()
        .map(|(n, index)| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut ticket = engine
                    .submit(Rebuild { index }, Identity::local())
                    .await
                    .expect("engine runs");
                let how = if ticket.merged {
                    "merged into"
                } else {
                    "queued as"
                };
                println!("request {n} ({index}): {how} job {}", ticket.id);
                let result = ticket.finished().await.expect("engine runs");
                println!(
                    "request {n} ({index}): job {} {}",
                    ticket.id, result.outcome
                );
            })
        })
        .collect();
    for waiter in waiters {
        waiter.await.expect("waiter task");
    }
    engine.shutdown(ShutdownMode::FinishRunning).await;
}
