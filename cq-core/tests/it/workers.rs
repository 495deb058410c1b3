//! Workers that join a coordinator: routing by tags, trust, and a worker that loses the
//! coordinator for a while. Over the in-memory transport, with the real process executor.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cq_core::protocol::{ErrorCode, WorkReport, plain_refusal};
use cq_core::transport::{
    Connector, Listener, MemoryConnector, PeerInfo, PendingConnection, TransportError,
    memory_transport,
};
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
#[derive(Clone, Debug)]
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
const BUILDER2: As = As(4_000_003, "builder2");

/// A connector that can be cut off, as a network can, or led to an impostor that answers
/// every request with an unauthenticated refusal (someone who took the coordinator's port
/// while it was away, or sits on the way).
#[derive(Clone)]
struct Cuttable {
    inner: MemoryConnector,
    cut: Arc<AtomicBool>,
    impostor: MemoryConnector,
    to_impostor: Arc<AtomicBool>,
    /// Connections asked for, so that a test waits for attempts rather than for time.
    attempts: Arc<Attempts>,
}

/// Counts connection attempts and wakes whoever waits for more.
#[derive(Default)]
struct Attempts {
    count: std::sync::atomic::AtomicUsize,
    more: tokio::sync::Notify,
}

impl Attempts {
    /// Waits (bounded) until `n` more connections were asked for than when it was called.
    async fn wait_for(&self, n: usize) {
        let until = self.count.load(Ordering::SeqCst) + n;
        tokio::time::timeout(LIMIT, async {
            loop {
                let more = self.more.notified();
                tokio::pin!(more);
                more.as_mut().enable();
                if self.count.load(Ordering::SeqCst) >= until {
                    return;
                }
                more.await;
            }
        })
        .await
        .expect("the worker keeps trying");
    }
}

#[async_trait]
impl Connector for Cuttable {
    type Stream = <MemoryConnector as Connector>::Stream;

    async fn connect(&self) -> Result<(Self::Stream, PeerInfo), TransportError> {
        self.attempts.count.fetch_add(1, Ordering::SeqCst);
        self.attempts.more.notify_waiters();
        if self.cut.load(Ordering::SeqCst) {
            return Err(TransportError::Connect {
                server: self.server_name(),
                source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "cut"),
            });
        }
        if self.to_impostor.load(Ordering::SeqCst) {
            return self.impostor.connect().await;
        }
        self.inner.connect().await
    }

    fn server_name(&self) -> String {
        self.inner.server_name()
    }
}

struct Coordinator {
    engine: EngineHandle,
    policy: SharedPolicy,
    connector: Cuttable,
    stop: CancellationToken,
    spool: tempfile::TempDir,
    _logs: tempfile::TempDir,
}

/// A coordinator that runs nothing itself and admits `builder` as a worker.
async fn coordinator(worker_timeout: Duration) -> Coordinator {
    coordinator_with(worker_timeout, false).await
}

/// [`coordinator`], queueing the jobs of workers away too long again if `requeue_lost`.
async fn coordinator_with(worker_timeout: Duration, requeue_lost: bool) -> Coordinator {
    let (listener, connector) = memory_transport();
    let logs = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::default().with_log_dir(logs.path());
    config.local_worker = false;
    let policy = SubmitPolicy {
        workers: vec!["builder".into(), "builder2".into()],
        ..SubmitPolicy::default()
    };
    let policy = SharedPolicy::new(policy);
    let engine = Engine::new(config)
        .with_access_check(Arc::new(policy.clone()))
        .start()
        .await
        .unwrap();
    let mut server_config = ServerConfig::default();
    server_config.worker_timeout = worker_timeout;
    server_config.worker_poll = Duration::from_millis(500);
    server_config.requeue_lost = requeue_lost;
    let server = Server::with_config(engine.clone(), Believe, BUILDER, server_config)
        .with_policy(policy.clone());
    let stop = CancellationToken::new();
    tokio::spawn(server.run(listener, stop.clone().cancelled_owned()));
    let (fake, impostor) = memory_transport();
    tokio::spawn(async move {
        loop {
            let pending = fake.accept().await.unwrap();
            let (mut stream, _) = pending.establish().await.unwrap();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let refusal = plain_refusal(ErrorCode::NOT_PERMITTED, "go away");
                let _ = stream.write_all(&refusal).await;
                let _ = stream.read_to_end(&mut Vec::new()).await;
            });
        }
    });
    Coordinator {
        engine,
        policy,
        connector: Cuttable {
            inner: connector,
            cut: Arc::default(),
            impostor,
            to_impostor: Arc::default(),
            attempts: Arc::default(),
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

/// As worker `name` (process and request number `asker`), asks for work, expects `job`,
/// and starts it: the claim a real worker makes before it runs a job.
async fn take_job(
    client: &Client<Cuttable, As, Believe>,
    name: &str,
    asker: (u64, u64),
    job: JobId,
) -> cq_core::Dispatch {
    let dispatch = client
        .work(name, &[], asker.0, asker.1)
        .await
        .unwrap()
        .expect("a job");
    assert_eq!(dispatch.job, job);
    assert!(
        !client
            .report(name, job, dispatch.lease, WorkReport::Started)
            .await
            .unwrap()
    );
    dispatch
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
        server_code(alice.work("amd", &[], 1, 0).await),
        ErrorCode::NOT_PERMITTED
    );
    let submitted = alice
        .submit(shell("sleep 30", &[]), SubmitKey::random())
        .await
        .unwrap();
    let id = submitted.job;
    assert_eq!(
        server_code(alice.report("amd", id, 0, WorkReport::Started).await),
        ErrorCode::NOT_PERMITTED
    );

    // Two processes ask for work under one name before either started the job (two hosts
    // with one host name): each gets a dispatch of its own, and only the first to start it
    // runs it.
    let builder = coordinator.client(BUILDER);
    let first = builder
        .work("amd", &[], 1, 0)
        .await
        .unwrap()
        .expect("a job");
    let second = builder
        .work("amd", &[], 2, 0)
        .await
        .unwrap()
        .expect("the job again");
    assert_eq!((first.job, second.job), (id, id));
    assert_ne!(first.lease, second.lease);
    assert!(
        !builder
            .report("amd", id, first.lease, WorkReport::Started)
            .await
            .unwrap()
    );
    // A started job's report (a retry after a lost answer) is taken again.
    assert!(
        !builder
            .report("amd", id, first.lease, WorkReport::Started)
            .await
            .unwrap()
    );
    assert_eq!(
        server_code(
            builder
                .report("amd", id, second.lease, WorkReport::Started)
                .await
        ),
        ErrorCode::NOT_ASSIGNED
    );
    let forged = WorkReport::Ended {
        outcome: Outcome::Exited { code: 0 },
        results: Vec::new(),
    };
    // Not under another name, another lease, about another job, nor from another identity
    // the policy admits as a worker too.
    assert_eq!(
        server_code(
            builder
                .report("other", id, first.lease, forged.clone())
                .await
        ),
        ErrorCode::NOT_ASSIGNED
    );
    assert_eq!(
        server_code(
            builder
                .report("amd", id, second.lease, forged.clone())
                .await
        ),
        ErrorCode::NOT_ASSIGNED
    );
    assert_eq!(
        server_code(
            builder
                .report("amd", JobId(id.0 + 1), first.lease, forged.clone())
                .await
        ),
        ErrorCode::NOT_ASSIGNED
    );
    let squatter = coordinator.client(BUILDER2);
    assert_eq!(
        server_code(
            squatter
                .report("amd", id, first.lease, forged.clone())
                .await
        ),
        ErrorCode::NOT_PERMITTED
    );
    assert_eq!(
        server_code(squatter.work("amd", &[], 9, 0).await),
        ErrorCode::NOT_PERMITTED
    );
    // The coordinator still counts the job as running.
    let status = alice.status(id).await.unwrap();
    assert_eq!(status.outcome, None);

    // The process that runs the job asking for work is an old request arriving late: the
    // job goes on. Another process of the worker asking for work means the one that ran the
    // job is gone (restarted), and the job with it.
    assert!(builder.work("amd", &[], 1, 0).await.unwrap().is_none());
    assert_eq!(alice.status(id).await.unwrap().outcome, None);
    // A later request of the process that started it: it gave the job up (red team: a job
    // the worker had dropped stayed running for ever while the worker asked for work).
    assert!(builder.work("amd", &[], 1, 1).await.unwrap().is_none());
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
    // The worker finds nobody, several times: it keeps the rest of the output and the end.
    coordinator.connector.attempts.wait_for(3).await;
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
    let running = coordinator.spool.path().join("running");
    let script = format!("touch {}; sleep 60", running.display());
    let submitted = alice
        .submit(shell(&script, &[]), SubmitKey::random())
        .await
        .unwrap();
    started_on(&mut events, submitted.job).await;
    // The worker has taken the job (one it was handed and never took goes back to the
    // queue instead).
    tokio::time::timeout(LIMIT, async {
        while !running.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the worker runs the job");
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
    // The job has really started on the worker before it is cancelled (a file the job
    // makes is the only sign of that: polled, bounded).
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

#[tokio::test]
async fn jobs_of_one_lane_never_overlap_across_workers_while_other_lanes_run_beside_them() {
    let coordinator = coordinator(Duration::from_secs(30)).await;
    let mut events = coordinator.engine.events();
    let _one = coordinator.worker("one", &[]);
    let _two = coordinator.worker("two", &[]);
    let alice = coordinator.client(ALICE);
    let gate = coordinator.spool.path().join("open");
    let held = format!(
        "while [ ! -e {g} ]; do sleep 0.02; done",
        g = gate.display()
    );
    let in_lane = |lane: &str, script: &str| {
        let mut job = shell(script, &[]);
        job.lane = Some(lane.to_owned());
        job
    };
    let first = alice
        .submit(in_lane("pkgdir", &held), SubmitKey::random())
        .await
        .unwrap();
    started_on(&mut events, first.job).await;
    let second = alice
        .submit(in_lane("pkgdir", "true"), SubmitKey::random())
        .await
        .unwrap();
    // Another lane runs on the free worker at once; the same lane waits, and says why.
    let other = alice
        .submit(in_lane("other", "true"), SubmitKey::random())
        .await
        .unwrap();
    let other_result = tokio::time::timeout(LIMIT, other.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other_result.outcome, Outcome::Exited { code: 0 });
    let waiting = alice.status(second.job).await.unwrap();
    assert_eq!(waiting.outcome, None);
    assert_eq!(
        waiting.waiting.as_deref(),
        Some(format!("job {} runs in its lane pkgdir", first.job).as_str())
    );
    std::fs::write(&gate, b"").unwrap();
    let first_result = tokio::time::timeout(LIMIT, first.wait())
        .await
        .unwrap()
        .unwrap();
    let second_result = tokio::time::timeout(LIMIT, second.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first_result.outcome, Outcome::Exited { code: 0 });
    assert_eq!(second_result.outcome, Outcome::Exited { code: 0 });
}

#[tokio::test]
async fn an_unauthenticated_refusal_stops_neither_the_worker_nor_its_job() {
    let coordinator = coordinator(Duration::from_secs(30)).await;
    let mut events = coordinator.engine.events();
    let worker = coordinator.worker("w", &[]);
    let alice = coordinator.client(ALICE);
    let gate = coordinator.spool.path().join("open");
    let script = format!(
        "echo before; while [ ! -e {g} ]; do sleep 0.02; done; echo after",
        g = gate.display()
    );
    let submitted = alice
        .submit(shell(&script, &[]), SubmitKey::random())
        .await
        .unwrap();
    let id = submitted.job;
    started_on(&mut events, id).await;
    // Red team: whoever answers the worker's connections says "not permitted", unsigned;
    // the worker used to kill its job and quit.
    coordinator
        .connector
        .to_impostor
        .store(true, Ordering::SeqCst);
    // Several reports meet the impostor, before and after the job ends.
    coordinator.connector.attempts.wait_for(3).await;
    std::fs::write(&gate, b"").unwrap();
    coordinator.connector.attempts.wait_for(3).await;
    coordinator
        .connector
        .to_impostor
        .store(false, Ordering::SeqCst);
    let result = tokio::time::timeout(LIMIT, submitted.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
    assert_eq!(log_of(&alice, id).await, "before\nafter\n");
    // And the worker is still there for the next job.
    let next = alice
        .submit(shell("echo next", &[]), SubmitKey::random())
        .await
        .unwrap();
    let next = tokio::time::timeout(LIMIT, next.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.outcome, Outcome::Exited { code: 0 });
    worker.cancel();
}

#[tokio::test]
async fn a_coordinator_that_stops_waits_for_the_end_its_workers_report() {
    let coordinator = coordinator(Duration::from_secs(60)).await;
    let mut events = coordinator.engine.events();
    let _worker = coordinator.worker("w", &[]);
    let alice = coordinator.client(ALICE);
    let gate = coordinator.spool.path().join("open");
    let script = format!(
        "while [ ! -e {g} ]; do sleep 0.02; done; echo done",
        g = gate.display()
    );
    let submitted = alice
        .submit(shell(&script, &[]), SubmitKey::random())
        .await
        .unwrap();
    started_on(&mut events, submitted.job).await;
    // Red team: the coordinator stopped listening while it drained, so the worker could not
    // report the end, and the job was recorded lost.
    coordinator.stop.cancel();
    let refused = alice.submit(shell("true", &[]), SubmitKey::random()).await;
    assert!(
        matches!(&refused, Err(ClientError::Server { code, .. }) if *code == ErrorCode::SHUTTING_DOWN),
        "{refused:?}"
    );
    std::fs::write(&gate, b"").unwrap();
    let result = tokio::time::timeout(LIMIT, submitted.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
}

#[tokio::test]
async fn a_worker_that_asks_many_times_at_once_with_other_tags_keeps_its_name_and_its_last_tags() {
    let coordinator = coordinator(Duration::from_secs(30)).await;
    let builder = coordinator.client(BUILDER);
    // Red team: concurrent requests with different tags left the engine and the registry
    // disagreeing on whether "w" was attached, and "w" was refused from then on.
    let asks: Vec<_> = (0..8)
        .map(|n| {
            let builder = coordinator.client(BUILDER);
            tokio::spawn(async move { builder.work("w", &[format!("n={n}")], n, 0).await })
        })
        .collect();
    for ask in asks {
        assert!(ask.await.unwrap().unwrap().is_none());
    }
    drop(builder);
    let _worker = coordinator.worker("w", &["arch=amd64"]);
    let mut events = coordinator.engine.events();
    let alice = coordinator.client(ALICE);
    let job = alice
        .submit(shell("true", &["arch=amd64"]), SubmitKey::random())
        .await
        .unwrap();
    assert_eq!(started_on(&mut events, job.job).await, "w");
    let result = tokio::time::timeout(LIMIT, job.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
}

#[tokio::test]
async fn a_worker_the_coordinator_refuses_for_a_while_keeps_its_job_and_comes_back() {
    let coordinator = coordinator(Duration::from_secs(30)).await;
    let mut events = coordinator.engine.events();
    let _worker = coordinator.worker("w", &[]);
    let alice = coordinator.client(ALICE);
    let gate = coordinator.spool.path().join("open");
    let script = format!(
        "echo before; while [ ! -e {g} ]; do sleep 0.02; done; echo after",
        g = gate.display()
    );
    let submitted = alice
        .submit(shell(&script, &[]), SubmitKey::random())
        .await
        .unwrap();
    let id = submitted.job;
    started_on(&mut events, id).await;
    // Red team: a genuine refusal that says nothing about the job (here a policy that does
    // not name the worker for a while; a request relayed from another address, an account
    // lookup that failed) made the worker kill its job and quit.
    let admitted = (*coordinator.policy.current()).clone();
    coordinator.policy.replace(SubmitPolicy::default());
    // Reports are refused meanwhile, before and after the job ends.
    coordinator.connector.attempts.wait_for(3).await;
    std::fs::write(&gate, b"").unwrap();
    coordinator.connector.attempts.wait_for(3).await;
    coordinator.policy.replace(admitted);
    let result = tokio::time::timeout(LIMIT, submitted.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
    assert_eq!(log_of(&alice, id).await, "before\nafter\n");
    let next = alice
        .submit(shell("true", &[]), SubmitKey::random())
        .await
        .unwrap();
    let next = tokio::time::timeout(LIMIT, next.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.outcome, Outcome::Exited { code: 0 });
}

#[tokio::test]
async fn a_job_given_to_a_worker_that_left_before_taking_it_runs_on_another() {
    let coordinator = coordinator(Duration::from_secs(30)).await;
    let leaving = coordinator.worker("leaving", &["kind=x"]);
    let alice = coordinator.client(ALICE);
    let mut events = coordinator.engine.events();
    let first = alice
        .submit(shell("true", &["kind=x"]), SubmitKey::random())
        .await
        .unwrap();
    assert_eq!(started_on(&mut events, first.job).await, "leaving");
    tokio::time::timeout(LIMIT, first.wait())
        .await
        .unwrap()
        .unwrap();
    // Red team: a job given to a worker that had just stopped waited for the worker timeout
    // and failed, though it never ran and another worker was free. Now the worker leaves
    // the queue at once, and a job it never took goes back to the queue.
    leaving.cancel();
    let second = alice
        .submit(shell("true", &["kind=x"]), SubmitKey::random())
        .await
        .unwrap();
    let _staying = coordinator.worker("staying", &["kind=x"]);
    let result = tokio::time::timeout(Duration::from_secs(10), second.wait())
        .await
        .expect("the job runs well before the worker timeout")
        .unwrap();
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
}

#[tokio::test]
async fn a_job_too_large_for_a_worker_is_refused_when_submitted() {
    let coordinator = coordinator(Duration::from_secs(30)).await;
    let alice = coordinator.client(ALICE);
    // Red team: empty arguments counted nothing, so a job that fit the limit could not be
    // sent to any worker, and was handed out again and again.
    let mut argv = vec!["/bin/true".to_owned()];
    argv.extend(std::iter::repeat_n(String::new(), 300_000));
    let refused = alice
        .submit(CommandJob::new(argv), SubmitKey::random())
        .await;
    assert!(
        matches!(&refused, Err(ClientError::Server { code, .. }) if *code == ErrorCode::INVALID_JOB),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_job_given_to_a_worker_that_went_away_after_its_last_report_runs_on_another() {
    let coordinator = coordinator(Duration::from_secs(30)).await;
    let alice = coordinator.client(ALICE);
    let builder = coordinator.client(BUILDER);
    let first = alice
        .submit(shell("true", &[]), SubmitKey::random())
        .await
        .unwrap();
    let dispatch = take_job(&builder, "gone", (1, 0), first.job).await;
    let ended = WorkReport::Ended {
        outcome: Outcome::Exited { code: 0 },
        results: Vec::new(),
    };
    builder
        .report("gone", first.job, dispatch.lease, ended)
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, first.wait())
        .await
        .unwrap()
        .unwrap();
    // "gone" never asks for work again (it was switched off after its last report). The
    // next job is handed to it, and must not wait for the worker timeout.
    let second = alice
        .submit(shell("true", &[]), SubmitKey::random())
        .await
        .unwrap();
    let _other = coordinator.worker("other", &[]);
    let result = tokio::time::timeout(Duration::from_secs(10), second.wait())
        .await
        .expect("the job runs well before the worker timeout")
        .unwrap();
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
}

#[tokio::test]
async fn with_requeue_lost_the_job_of_a_worker_away_too_long_runs_on_another() {
    let coordinator = coordinator_with(Duration::from_secs(2), true).await;
    let alice = coordinator.client(ALICE);
    let builder = coordinator.client(BUILDER);
    let submitted = alice
        .submit(shell("echo ran", &[]), SubmitKey::random())
        .await
        .unwrap();
    // A worker takes the job and is never heard of again.
    let dispatch = builder
        .work("vanished", &[], 1, 0)
        .await
        .unwrap()
        .expect("a job");
    builder
        .report(
            "vanished",
            submitted.job,
            dispatch.lease,
            WorkReport::Started,
        )
        .await
        .unwrap();
    let _other = coordinator.worker("other", &[]);
    let result = tokio::time::timeout(LIMIT, submitted.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
    // The vanished worker, back, may not end the job it lost.
    let late = WorkReport::Ended {
        outcome: Outcome::Exited { code: 9 },
        results: Vec::new(),
    };
    assert_eq!(
        server_code(
            builder
                .report("vanished", dispatch.job, dispatch.lease, late)
                .await
        ),
        ErrorCode::NOT_ASSIGNED
    );
}

#[tokio::test]
async fn an_impossible_end_still_ends_the_job_as_a_failure() {
    let coordinator = coordinator(Duration::from_secs(30)).await;
    let alice = coordinator.client(ALICE);
    let builder = coordinator.client(BUILDER);
    // Red team: a refused end (here an exit code no process has; a message past the limit,
    // e.g. a 5,000-byte program name in "not found") left the job running for ever.
    for (reported, expected) in [
        (
            Outcome::Exited { code: 256 },
            Outcome::Failed {
                message: "the worker reported exit code 256, which no process has".into(),
            },
        ),
        (
            Outcome::Failed {
                message: "x".repeat(10_000),
            },
            Outcome::Failed {
                message: format!("{}...", "x".repeat(4096)),
            },
        ),
    ] {
        let submitted = alice
            .submit(shell("true", &[]), SubmitKey::random())
            .await
            .unwrap();
        let dispatch = take_job(&builder, "w", (1, 0), submitted.job).await;
        let end = WorkReport::Ended {
            outcome: reported,
            results: Vec::new(),
        };
        builder
            .report("w", submitted.job, dispatch.lease, end)
            .await
            .unwrap();
        let result = tokio::time::timeout(LIMIT, submitted.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(result.outcome, expected);
    }
}

#[tokio::test]
async fn with_requeue_lost_a_cancelled_job_stays_cancelled_and_a_restarted_workers_runs_again() {
    let coordinator = coordinator_with(Duration::from_secs(2), true).await;
    let alice = coordinator.client(ALICE);
    let builder = coordinator.client(BUILDER);
    // Red team: a job its owner cancelled came back and ran when its worker went silent.
    let cancelled = alice
        .submit(shell("echo must-not-run", &[]), SubmitKey::random())
        .await
        .unwrap();
    take_job(&builder, "silent", (1, 0), cancelled.job).await;
    alice.cancel(cancelled.job).await.unwrap();
    let result = tokio::time::timeout(LIMIT, cancelled.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.outcome, Outcome::Lost);
    // A worker whose other process asks for work ran nothing since: its job runs again.
    let restarted = alice
        .submit(shell("echo ran", &[]), SubmitKey::random())
        .await
        .unwrap();
    take_job(&builder, "restarts", (1, 0), restarted.job).await;
    let restarted_id = restarted.job;
    let _other = coordinator.worker("other", &[]);
    // (It may be handed the job again: it does not take it, so another worker does.)
    builder.work("restarts", &[], 2, 0).await.unwrap();
    let result = tokio::time::timeout(LIMIT, restarted.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
    assert_eq!(log_of(&alice, restarted_id).await, "ran\n");
}

#[tokio::test]
async fn late_requests_for_work_do_not_keep_a_silent_workers_job_alive() {
    let coordinator = coordinator(Duration::from_secs(2)).await;
    let alice = coordinator.client(ALICE);
    let builder = coordinator.client(BUILDER);
    let submitted = alice
        .submit(shell("true", &[]), SubmitKey::random())
        .await
        .unwrap();
    take_job(&builder, "w", (7, 5), submitted.job).await;
    // Red team: old requests arriving late counted as signs of life, so the job of a
    // worker that said nothing more ran for ever.
    let late = tokio::spawn(async move {
        loop {
            let _ = builder.work("w", &[], 7, 0).await;
        }
    });
    let result = tokio::time::timeout(LIMIT, submitted.wait())
        .await
        .unwrap()
        .unwrap();
    late.abort();
    assert_eq!(result.outcome, Outcome::Lost);
}

#[tokio::test]
async fn a_job_on_a_worker_can_be_followed_while_it_runs() {
    let coordinator = coordinator(Duration::from_secs(30)).await;
    let mut events = coordinator.engine.events();
    let _worker = coordinator.worker("w", &[]);
    let alice = coordinator.client(ALICE);
    let gate = coordinator.spool.path().join("open");
    let script = format!(
        "echo first; while [ ! -e {g} ]; do sleep 0.02; done; echo second",
        g = gate.display()
    );
    let submitted = alice
        .submit(shell(&script, &[]), SubmitKey::random())
        .await
        .unwrap();
    let id = submitted.job;
    started_on(&mut events, id).await;
    // The first line reaches a follower while the job still runs (it waits for the gate,
    // which opens only once the follower has seen that line).
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = coordinator.client(ALICE);
    let following = tokio::spawn(async move {
        let mut all = Vec::new();
        let result = follower
            .log(id, true, |data| {
                all.extend_from_slice(data);
                let _ = seen_tx.send(String::from_utf8_lossy(&all).into_owned());
            })
            .await
            .unwrap();
        (String::from_utf8_lossy(&all).into_owned(), result)
    });
    let seen = tokio::time::timeout(LIMIT, async {
        loop {
            let text = seen_rx.recv().await.expect("the follower goes on");
            if text.contains("first") {
                return text;
            }
        }
    })
    .await
    .unwrap();
    assert!(!seen.contains("second"), "{seen}");
    std::fs::write(&gate, b"").unwrap();
    let (all, result) = tokio::time::timeout(LIMIT, following)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all, "first\nsecond\n");
    assert_eq!(result.map(|r| r.outcome), Some(Outcome::Exited { code: 0 }));
    tokio::time::timeout(LIMIT, submitted.wait())
        .await
        .unwrap()
        .unwrap();
}
