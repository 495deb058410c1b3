//! Following what the engine does, for a dashboard or a metrics exporter: every job
//! accepted, merged, refused, started and finished, from one stream.
//!
//! Run it with `cargo run -p cq-examples --example events`.

use std::time::Duration;

use cq_core::scheduler::Decision;
use cq_core::{
    Engine, EngineConfig, EngineEvent, Identity, Job, JobContext, Outcome, ShutdownMode,
    SubmitOptions, async_trait,
};

/// Some work of the daemon's own.
struct Work(u64);

#[async_trait]
impl Job for Work {
    fn summary(&self) -> String {
        format!("work {}", self.0)
    }

    async fn run(self: Box<Self>, _ctx: JobContext) -> Outcome {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Outcome::Exited {
            code: i32::from(self.0 == 3),
        }
    }
}

#[tokio::main]
async fn main() {
    let engine = Engine::new(EngineConfig::default())
        .start()
        .await
        .expect("the engine starts");
    let mut events = engine.events();
    let follower = tokio::spawn(async move {
        let (mut finished, mut failed, mut refused) = (0, 0, 0);
        while let Ok(event) = events.recv().await {
            match event {
                EngineEvent::Accepted { job, summary, .. } => {
                    println!("accepted job {job}: {summary}");
                }
                EngineEvent::Started { job, worker } => println!("started job {job} on {worker}"),
                EngineEvent::Refused { reason, .. } => {
                    refused += 1;
                    println!("refused: {reason}");
                }
                EngineEvent::Finished { job, result } => {
                    finished += 1;
                    if result.outcome != (Outcome::Exited { code: 0 }) {
                        failed += 1;
                    }
                    println!("job {} {} in {:?}", job.id, result.outcome, result.runtime);
                }
                _ => {}
            }
            if finished == 4 && refused == 1 {
                return (finished, failed, refused);
            }
        }
        (finished, failed, refused)
    });
    let mut tickets = Vec::new();
    for n in 1..=4 {
        tickets.push(engine.submit(Work(n), Identity::local()).await.unwrap());
    }
    let refused = engine
        .submit_with(
            Box::new(Work(5)),
            Identity::local(),
            SubmitOptions::new().with_verdict(Decision::Reject("maintenance".into())),
        )
        .await;
    assert!(refused.is_err());
    for mut ticket in tickets {
        ticket.finished().await.unwrap();
    }
    let (finished, failed, refused) = follower.await.unwrap();
    assert_eq!((finished, failed, refused), (4, 1, 1));
    println!("{finished} finished, {failed} failed, {refused} refused");
    engine.shutdown(ShutdownMode::FinishRunning).await;
}
