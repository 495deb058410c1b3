//! Workers that join a coordinator: routing by tags, trust, and a worker that loses the
//! coordinator for a while. Over the in-memory transport, with the real process executor.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cq_core::protocol::{ErrorCode, WorkReport};
use cq_core::transport::{Connector, MemoryConnector, PeerInfo, TransportError, memory_transport};
use cq_core::worker::{Worker, WorkerOptions};
use cq_core::{
    AuthError, AuthMethod, Authenticator, Client, ClientError, CommandJob, Credential,
    CredentialSource, Engine, EngineConfig, EngineEvent, EngineHandle, Identity, JobId, Outcome,
    ProcessExecutor, Server, ServerConfig, SharedPolicy, SubmitKey, SubmitPolicy,
};
use tokio_util::sync::CancellationToken;

use crate::support::LIMIT;

/// Signs as the uid and name it holds (uids no account has, so that names come from here).
#[derive(Clone)]
struct As(u32, &'static str);

#[async_trait]
impl CredentialSource for As {
    async fn credential_for(&self, message: &[u8]) -> Result<Credential, AuthError> {
        let mut credential = self.0.to_be_bytes().to_vec();
        credential.extend_from_slice(self.1.as_bytes());
        credential.push(0);
        credential.extend_from_slice(message);
        Ok(Credential(credential))
    }
}

/// Believes what [`As`] says (the server side), and anything the server sends (the client
/// side).
#[derive(Clone)]
struct Believe;

#[async_trait]
impl Authenticator for Believe {
    async fn verify(
        &self,
        message: &[u8],
        credential: &Credential,
        _: &PeerInfo,
    ) -> Result<Identity, AuthError> {
        let bad = || AuthError::Mismatch("not made by As".into());
        let uid = u32::from_be_bytes(credential.0.get(..4).ok_or_else(bad)?.try_into().unwrap());
        let rest = &credential.0[4..];
        let nul = rest.iter().position(|&b| b == 0).ok_or_else(bad)?;
        if &rest[nul + 1..] != message {
            return Err(bad());
        }
        Ok(Identity {
            uid,
            gid: uid,
            user: Some(String::from_utf8_lossy(&rest[..nul]).into_owned()),
            host: None,
            method: AuthMethod::Custom("as"),
            principal: None,
        })
    }
}

const BUILDER: As = As(4_000_001, "builder");
const ALICE: As = As(4_000_002, "alice");

/// A connector that can be cut off, as a network can.
#[derive(Clone)]
struct Cuttable {
    inner: MemoryConnector,
    cut: Arc<AtomicBool>,
}

#[async_trait]
impl Connector for Cuttable {
    type Stream = <MemoryConnector as Connector>::Stream;

    async fn connect(&self) -> Result<(Self::Stream, PeerInfo), TransportError> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(TransportError::Connect {
                server: self.server_name(),
                source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "cut"),
            });
        }
        self.inner.connect().await
    }

    fn server_name(&self) -> String {
        self.inner.server_name()
    }
}

struct Coordinator {
    engine: EngineHandle,
    connector: Cuttable,
    stop: CancellationToken,
    spool: tempfile::TempDir,
    _logs: tempfile::TempDir,
}

/// A coordinator that runs nothing itself and admits `builder` as a worker.
async fn coordinator(worker_timeout: Duration) -> Coordinator {
    let (listener, connector) = memory_transport();
    let logs = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::default().with_log_dir(logs.path());
    config.local_worker = false;
    let engine = Engine::new(config).start().await.unwrap();
    let mut server_config = ServerConfig::default();
    server_config.worker_timeout = worker_timeout;
    server_config.worker_poll = Duration::from_millis(500);
    let policy = SubmitPolicy {
        workers: vec!["builder".into()],
        ..SubmitPolicy::default()
    };
    let server = Server::with_config(engine.clone(), Believe, BUILDER, server_config)
        .with_policy(SharedPolicy::new(policy));
    let stop = CancellationToken::new();
    tokio::spawn(server.run(listener, stop.clone().cancelled_owned()));
    Coordinator {
        engine,
        connector: Cuttable {
            inner: connector,
            cut: Arc::default(),
        },
        stop,
        spool: tempfile::tempdir().unwrap(),
        _logs: logs,
    }
}

impl Coordinator {
    fn client(&self, who: As) -> Client<Cuttable, As, Believe> {
        Client::new(self.connector.clone(), who, Believe)
    }

    /// Starts worker `name` with `tags`, as `builder`.
    fn worker(&self, name: &str, tags: &[&str]) -> CancellationToken {
        let mut options = WorkerOptions::new(
            name,
            tags.iter().map(|t| (*t).to_owned()).collect(),
            self.spool.path().join(name),
        );
        // The coordinator names no requester here (it does not switch users).
        options.allow_root_jobs = true;
        options.flush_every = Duration::from_millis(50);
        options.max_retry_delay = Duration::from_millis(200);
        let worker = Worker::new(
            self.client(BUILDER),
            Arc::new(ProcessExecutor::new()),
            options,
        );
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move { worker.run(token).await });
        stop
    }
}

async fn log_of(client: &Client<Cuttable, As, Believe>, id: JobId) -> String {
    let mut log = Vec::new();
    client
        .log(id, false, |data| log.extend_from_slice(data))
        .await
        .unwrap();
    String::from_utf8_lossy(&log).into_owned()
}

fn shell(script: &str, tags: &[&str]) -> CommandJob {
    let mut job = CommandJob::new(["/bin/sh", "-c", script]);
    job.tags = tags.iter().map(|t| (*t).to_owned()).collect();
    job
}

/// The worker that started `job`, from the engine's events.
async fn started_on(
    events: &mut tokio::sync::broadcast::Receiver<EngineEvent>,
    job: JobId,
) -> String {
    loop {
        match tokio::time::timeout(LIMIT, events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            EngineEvent::Started { job: id, worker } if id == job => return worker,
            _ => {}
        }
    }
}

#[tokio::test]
async fn jobs_run_on_the_worker_whose_tags_they_name_and_their_output_comes_back() {
    let coordinator = coordinator(Duration::from_secs(30)).await;
    let mut events = coordinator.engine.events();
    let _amd = coordinator.worker("amd", &["arch=amd64"]);
    let _arm = coordinator.worker("arm", &["arch=arm64"]);
    let alice = coordinator.client(ALICE);

    let arm_job = alice
        .submit(
            shell("echo built on arm; exit 3", &["arch=arm64"]),
            SubmitKey::random(),
        )
        .await
        .unwrap();
    let id = arm_job.job;
    assert_eq!(started_on(&mut events, id).await, "arm");
    let result = tokio::time::timeout(LIMIT, arm_job.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.outcome, Outcome::Exited { code: 3 });
    assert_eq!(log_of(&alice, id).await, "built on arm\n");

    let amd_job = alice
        .submit(shell("echo amd", &["arch=amd64"]), SubmitKey::random())
        .await
        .unwrap();
    let id = amd_job.job;
    assert_eq!(started_on(&mut events, id).await, "amd");
    let result = tokio::time::timeout(LIMIT, amd_job.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
    coordinator.stop.cancel();
}

#[tokio::test]
async fn a_job_no_worker_can_run_waits_until_one_joins() {
    let coordinator = coordinator(Duration::from_secs(30)).await;
    let _amd = coordinator.worker("amd", &["arch=amd64"]);
    let alice = coordinator.client(ALICE);
    let waiting = alice
        .submit(shell("echo riscv", &["arch=riscv"]), SubmitKey::random())
        .await
        .unwrap();
    let id = waiting.job;
    // The engine decides what starts before it answers the next request.
    let state = coordinator.engine.queue_state().await.unwrap();
    assert_eq!(
        (state.running, state.queued),
        (0, 1),
        "no worker may run {id}"
    );
    let _riscv = coordinator.worker("riscv", &["arch=riscv"]);
    let result = tokio::time::timeout(LIMIT, waiting.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
}

fn server_code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn only_the_policys_workers_get_jobs_and_only_the_worker_given_a_job_reports_on_it() {
    let coordinator = coordinator(Duration::from_secs(30)).await;
    let alice = coordinator.client(ALICE);
    // A user is not a worker: it gets no job to read, and cannot report one.
    assert_eq!(
        server_code(alice.work("amd", &[]).await),
        ErrorCode::NOT_PERMITTED
    );
    let submitted = alice
        .submit(shell("sleep 30", &[]), SubmitKey::random())
        .await
        .unwrap();
    let id = submitted.job;
    assert_eq!(
        server_code(alice.report("amd", id, WorkReport::Started).await),
        ErrorCode::NOT_PERMITTED
    );

    // The real worker takes it; the same identity under another worker name cannot report
    // its end, nor can anybody end a job that runs nowhere.
    let builder = coordinator.client(BUILDER);
    let dispatch = builder.work("amd", &[]).await.unwrap().expect("a job");
    assert_eq!(dispatch.job, id);
    assert!(
        !builder
            .report("amd", id, WorkReport::Started)
            .await
            .unwrap()
    );
    let forged = WorkReport::Ended {
        outcome: Outcome::Exited { code: 0 },
        results: Vec::new(),
    };
    assert_eq!(
        server_code(builder.report("other", id, forged.clone()).await),
        ErrorCode::NOT_PERMITTED
    );
    assert_eq!(
        server_code(builder.report("amd", JobId(id.0 + 1), forged.clone()).await),
        ErrorCode::NOT_PERMITTED
    );
    // The coordinator still counts the job as running.
    let status = alice.status(id).await.unwrap();
    assert_eq!(status.outcome, None);

    // A worker that asks for work while its job runs has lost it (it was restarted).
    assert!(builder.work("amd", &[]).await.unwrap().is_none());
    let result = tokio::time::timeout(LIMIT, submitted.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.outcome, Outcome::Lost);
}

#[tokio::test]
async fn a_worker_cut_off_from_the_coordinator_finishes_its_job_and_reports_all_of_it_later() {
    let coordinator = coordinator(Duration::from_secs(60)).await;
    let mut events = coordinator.engine.events();
    let _worker = coordinator.worker("w", &[]);
    let alice = coordinator.client(ALICE);
    let marker = coordinator.spool.path().join("cut");
    let script = format!(
        "echo before; while [ ! -e {m} ]; do sleep 0.05; done; echo after; exit 7",
        m = marker.display()
    );
    let submitted = alice
        .submit(shell(&script, &[]), SubmitKey::random())
        .await
        .unwrap();
    let id = submitted.job;
    started_on(&mut events, id).await;
    // The network goes; the job ends meanwhile; the network comes back.
    coordinator.connector.cut.store(true, Ordering::SeqCst);
    std::fs::write(&marker, b"").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // the worker finds nobody: it retries
    coordinator.connector.cut.store(false, Ordering::SeqCst);
    let result = tokio::time::timeout(LIMIT, submitted.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.outcome, Outcome::Exited { code: 7 });
    assert_eq!(log_of(&alice, id).await, "before\nafter\n");
}

#[tokio::test]
async fn a_worker_away_longer_than_the_timeout_has_lost_its_job() {
    let coordinator = coordinator(Duration::from_secs(2)).await;
    let mut events = coordinator.engine.events();
    let worker = coordinator.worker("w", &[]);
    let alice = coordinator.client(ALICE);
    let submitted = alice
        .submit(shell("sleep 60", &[]), SubmitKey::random())
        .await
        .unwrap();
    started_on(&mut events, submitted.job).await;
    coordinator.connector.cut.store(true, Ordering::SeqCst);
    let result = tokio::time::timeout(LIMIT, submitted.wait()).await;
    // The client's own connection was made before the cut.
    let result = result.unwrap().unwrap();
    assert_eq!(result.outcome, Outcome::Lost);
    worker.cancel();
}

#[tokio::test]
async fn cancelling_a_job_that_runs_on_a_worker_stops_it_there() {
    let coordinator = coordinator(Duration::from_secs(30)).await;
    let mut events = coordinator.engine.events();
    let _worker = coordinator.worker("w", &[]);
    let alice = coordinator.client(ALICE);
    let marker = coordinator.spool.path().join("still-running");
    let script = format!("sleep 0.3; touch {m}; sleep 60", m = marker.display());
    let submitted = alice
        .submit(shell(&script, &[]), SubmitKey::random())
        .await
        .unwrap();
    let id = submitted.job;
    started_on(&mut events, id).await;
    // The job has really started on the worker before it is cancelled.
    tokio::time::timeout(LIMIT, async {
        while !marker.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    alice.cancel(id).await.unwrap();
    let result = tokio::time::timeout(LIMIT, submitted.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.outcome, Outcome::Cancelled);
}

// ===== TEMPORARY RED-TEAM TESTS (to be removed) =====

const BUILDER2: As = As(4_000_003, "builder2");

async fn rt_coordinator(dedup: bool) -> Coordinator {
    let (listener, connector) = memory_transport();
    let logs = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::default().with_log_dir(logs.path());
    config.local_worker = false;
    let mut engine = Engine::new(config);
    if dedup {
        engine = engine.with_hook(cq_core::DuplicateJobs::new(cq_core::DedupScope::Queued));
    }
    let engine = engine.start().await.unwrap();
    let mut server_config = ServerConfig::default();
    server_config.worker_timeout = Duration::from_secs(30);
    server_config.worker_poll = Duration::from_millis(500);
    let policy = SubmitPolicy {
        workers: vec!["builder".into(), "builder2".into()],
        ..SubmitPolicy::default()
    };
    let server = Server::with_config(engine.clone(), Believe, BUILDER, server_config)
        .with_policy(SharedPolicy::new(policy));
    let stop = CancellationToken::new();
    tokio::spawn(server.run(listener, stop.clone().cancelled_owned()));
    Coordinator { engine, connector: Cuttable { inner: connector, cut: Arc::default() }, stop, spool: tempfile::tempdir().unwrap(), _logs: logs }
}

#[tokio::test]
async fn rt_dump_refusal() {
    let b = cq_core::protocol::plain_refusal(ErrorCode::NOT_PERMITTED, "forged");
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    println!("REFUSAL_HEX={hex}");
}

#[tokio::test]
async fn rt_same_job_started_twice() {
    let c = rt_coordinator(false).await;
    let alice = c.client(ALICE);
    let b = c.client(BUILDER);
    let sub = alice.submit(shell("true", &[]), SubmitKey::random()).await.unwrap();
    // Two hosts configured with the same name (default: host name), same identity.
    let (d1, d2) = tokio::join!(b.work("w", &[]), b.work("w", &[]));
    let (d1, d2) = (d1.unwrap().unwrap(), d2.unwrap().unwrap());
    assert_eq!(d1.job, d2.job);
    let s1 = b.report("w", d1.job, WorkReport::Started).await;
    let s2 = b.report("w", d2.job, WorkReport::Started).await;
    println!("RT started twice: {s1:?} {s2:?}");
    // forged end without output, code 256
    let e = b.report("w", d1.job, WorkReport::Ended { outcome: Outcome::Exited { code: 256 }, results: vec![] }).await;
    println!("RT ended: {e:?}");
    let r = tokio::time::timeout(LIMIT, sub.wait()).await.unwrap().unwrap();
    println!("RT outcome {:?} exit_status {}", r.outcome, r.outcome.exit_status());
}

#[tokio::test]
async fn rt_ended_without_started() {
    let c = rt_coordinator(false).await;
    let alice = c.client(ALICE);
    let b = c.client(BUILDER);
    let sub = alice.submit(shell("exit 1", &[]), SubmitKey::random()).await.unwrap();
    let d = b.work("w", &[]).await.unwrap().unwrap();
    let e = b.report("w", d.job, WorkReport::Ended { outcome: Outcome::Exited { code: 0 }, results: vec![("k".into(), "v".into())] }).await;
    println!("RT ended-before-started: {e:?}");
    let r = tokio::time::timeout(LIMIT, sub.wait()).await.unwrap().unwrap();
    println!("RT outcome {:?} results {:?}", r.outcome, r.results);
}

#[tokio::test]
async fn rt_name_squat() {
    let c = rt_coordinator(false).await;
    let squat = c.client(BUILDER2);
    let _ = squat.work("amd", &[]).await;
    // the real "amd" worker (identity builder) now
    let mut options = WorkerOptions::new("amd", vec![], c.spool.path().join("amd"));
    options.allow_root_jobs = true;
    let worker = Worker::new(c.client(BUILDER), Arc::new(ProcessExecutor::new()), options);
    let r = tokio::time::timeout(LIMIT, worker.run(CancellationToken::new())).await.unwrap();
    println!("RT real worker after squat: {r:?}");
}

#[tokio::test]
async fn rt_retag_race() {
    let c = rt_coordinator(false).await;
    let b = c.client(BUILDER);
    let conn = c.connector.clone();
    for round in 0..20 {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..8 {
            let b = Client::new(conn.clone(), BUILDER, Believe);
            let tag = format!("t{round}-{i}");
            set.spawn(async move { b.work("w", &[tag]).await.map(|_| ()) });
        }
        let mut errs = vec![];
        while let Some(r) = set.join_next().await {
            if let Err(e) = r.unwrap() { errs.push(e.to_string()); }
        }
        if !errs.is_empty() {
            println!("RT round {round} errors: {errs:?}");
            // now a plain work request with fixed tags: refused for good?
            tokio::time::sleep(Duration::from_secs(4)).await;
            let again = b.work("w", &["x".to_owned()]).await;
            println!("RT after race: {:?}", again.map(|d| d.map(|d| d.job)));
            let again = b.work("w", &["x".to_owned()]).await;
            println!("RT after race 2: {:?}", again.map(|d| d.map(|d| d.job)));
            let alice = c.client(ALICE);
            let sub = alice.submit(shell("true", &["x"]), SubmitKey::random()).await.unwrap();
            let st = alice.status(sub.job).await.unwrap();
            println!("RT job state {:?} waiting {:?} worker {:?}", st.phase, st.waiting, st.worker);
            return;
        }
    }
    println!("RT retag race did not trigger");
}

#[tokio::test]
async fn rt_dedup_ignores_tags() {
    let c = rt_coordinator(true).await;
    let alice = c.client(ALICE);
    let a = alice.submit(shell("uname -m", &["arch=amd64"]), SubmitKey::random()).await.unwrap();
    let b = alice.submit(shell("uname -m", &["arch=arm64"]), SubmitKey::random()).await.unwrap();
    println!("RT dedup: first {} second {} merged={:?}", a.job, b.job, b.merged);
}
