//! The server and client engines over the in-memory transport.

use std::sync::Arc;

use async_trait::async_trait;
use cq_core::protocol::ErrorCode;
use cq_core::scheduler::{Decision, JobInfo, QueueView, SubmitHook};
use cq_core::transport::{MemoryConnector, memory_transport};
use cq_core::{
    AuthError, Caller, Client, ClientError, CommandJob, Credential, CredentialSource, Engine,
    EngineConfig, EngineHandle, Identity, JobEvent, JobId, Outcome, Server, SubmitKey,
};
use tokio_util::sync::CancellationToken;

use crate::support::{CopyAuth, GatedExecutor, LIMIT};

struct Running {
    engine: EngineHandle,
    connector: MemoryConnector,
    executor: GatedExecutor,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

async fn start(engine: Engine) -> Running {
    let (listener, connector) = memory_transport();
    let executor = GatedExecutor::default();
    let engine = engine
        .with_executor(Arc::new(executor.clone()))
        .start()
        .await
        .expect("the engine starts");
    let server = Server::new(engine.clone(), CopyAuth, CopyAuth);
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    let served = tokio::spawn(server.run(listener, shutdown));
    Running {
        engine,
        connector,
        executor,
        stop,
        served,
    }
}

fn client(running: &Running) -> Client<MemoryConnector, CopyAuth, CopyAuth> {
    Client::new(running.connector.clone(), CopyAuth, CopyAuth)
}

#[tokio::test]
async fn a_dropped_client_reattaches_by_id_and_gets_the_outcome() {
    let server = start(Engine::new(EngineConfig::default())).await;
    server.executor.gate("build");
    let client = client(&server);
    let mut submission = client
        .submit(CommandJob::new(["build"]), SubmitKey::random())
        .await
        .unwrap();
    assert_eq!(
        (submission.job, submission.ahead, submission.merged),
        (JobId(1), 0, false)
    );
    let end = server.executor.running("build").await;
    assert_eq!(
        tokio::time::timeout(LIMIT, submission.next_event())
            .await
            .unwrap()
            .unwrap(),
        JobEvent::Started
    );
    drop(submission);

    // The job is unaffected by the lost connection; a new one picks it up by id. A
    // submission lives on its own: it can wait in a task of its own, the client dropped.
    let again = client.watch(JobId(1)).await.unwrap();
    drop(client);
    let waiting = tokio::spawn(again.wait());
    end.send(Outcome::Exited { code: 5 }).unwrap();
    let result = tokio::time::timeout(LIMIT, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(result.outcome, Outcome::Exited { code: 5 });

    // After the end, a watcher gets the same outcome at once.
    let late = self::client(&server).watch(JobId(1)).await.unwrap();
    assert_eq!(
        tokio::time::timeout(LIMIT, late.wait())
            .await
            .unwrap()
            .unwrap()
            .outcome,
        Outcome::Exited { code: 5 }
    );

    server.stop.cancel();
    tokio::time::timeout(LIMIT, server.served)
        .await
        .unwrap()
        .unwrap();
}

fn server_error(result: Result<impl std::fmt::Debug, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Server { code, message, .. }) => (code, message),
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test]
async fn refusals_carry_a_code_and_a_reason() {
    struct NoRoot;
    impl SubmitHook for NoRoot {
        fn review(&self, job: &JobInfo, _: &QueueView<'_>) -> Decision {
            match &job.command {
                Some(c) if c.argv[0] == "reboot" => {
                    Decision::Reject("no reboots during builds".into())
                }
                _ => Decision::Accept,
            }
        }
    }
    let server = start(Engine::new(EngineConfig::default()).with_hook(NoRoot)).await;
    let client = client(&server);

    let (code, message) = server_error(
        client
            .submit(CommandJob::new(["reboot"]), SubmitKey::random())
            .await,
    );
    assert_eq!(code, ErrorCode::REJECTED);
    assert!(message.contains("no reboots during builds"), "{message}");

    let (code, _) = server_error(
        client
            .submit(CommandJob::default(), SubmitKey::random())
            .await,
    );
    assert_eq!(code, ErrorCode::INVALID_JOB);

    let (code, message) = server_error(client.watch(JobId(77)).await);
    assert_eq!(code, ErrorCode::UNKNOWN_JOB);
    assert!(message.contains("77"), "{message}");
}

/// Red team: with the policy moved into the engine, a `Server` given a policy over an engine
/// without an access check queued every submission unchecked (anybody's, `LD_PRELOAD`...). Such
/// a server now refuses submissions; with the check, the policy's refusal reaches the client.
#[tokio::test]
async fn a_server_with_a_policy_never_queues_a_submission_its_engine_does_not_check() {
    use cq_core::{SharedPolicy, SubmitPolicy};
    // Nobody the test's credentials name may submit.
    let policy = SharedPolicy::new(SubmitPolicy {
        users: vec!["somebody-else".into()],
        ..SubmitPolicy::default()
    });
    for checked in [false, true] {
        let (listener, connector) = memory_transport();
        let mut engine = Engine::new(EngineConfig::default());
        if checked {
            engine = engine.with_access_check(Arc::new(policy.clone()));
        }
        let engine = engine.start().await.expect("the engine starts");
        let server = Server::new(engine.clone(), CopyAuth, CopyAuth).with_policy(policy.clone());
        let stop = CancellationToken::new();
        let served = tokio::spawn(server.run(listener, stop.clone().cancelled_owned()));
        let client = Client::new(connector, CopyAuth, CopyAuth);
        let (code, message) = server_error(
            client
                .submit(CommandJob::new(["true"]), SubmitKey::random())
                .await,
        );
        if checked {
            assert_eq!(code, ErrorCode::NOT_PERMITTED, "{message}");
        } else {
            assert_eq!(code, ErrorCode::INTERNAL, "{message}");
        }
        let queued = engine.list(Caller::admin(Identity::local())).await.unwrap();
        assert!(queued.is_empty(), "queued: {queued:?}");
        stop.cancel();
        tokio::time::timeout(LIMIT, served).await.unwrap().unwrap();
    }
}

/// Signs every message as if it were another one.
#[derive(Debug)]
struct WrongSigner;

#[async_trait]
impl CredentialSource for WrongSigner {
    async fn credential_for(&self, _: &[u8]) -> Result<Credential, AuthError> {
        Ok(Credential(b"some other request".to_vec()))
    }
}

#[tokio::test]
async fn a_request_with_a_credential_for_something_else_is_refused() {
    let server = start(Engine::new(EngineConfig::default())).await;
    let bad = Client::new(server.connector.clone(), WrongSigner, CopyAuth);
    let (code, _) = server_error(
        bad.submit(CommandJob::new(["true"]), SubmitKey::random())
            .await,
    );
    assert_eq!(code, ErrorCode::AUTH_FAILED);
    // The next, honest client is served.
    let honest = client(&server);
    let ok = honest
        .submit(CommandJob::new(["true"]), SubmitKey::random())
        .await
        .unwrap();
    assert_eq!(ok.job, JobId(1), "the refused request was never queued");
}

#[tokio::test]
async fn a_stopping_server_tells_the_running_jobs_waiter_its_outcome_and_the_others_to_come_back() {
    let server = start(Engine::new(EngineConfig::default())).await;
    let engine = server.engine.clone();
    server.executor.gate("long");
    let client = client(&server);
    let running = client
        .submit(CommandJob::new(["long"]), SubmitKey::random())
        .await
        .unwrap();
    let end = server.executor.running("long").await;
    let queued = client
        .submit(CommandJob::new(["next"]), SubmitKey::random())
        .await
        .unwrap();
    server.stop.cancel();
    // The queued job's waiter hears at once that the server stops, and may come back.
    let err = tokio::time::timeout(LIMIT, queued.wait())
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("stopping"), "{err}");
    // The running job's waiter keeps its connection until the outcome is recorded.
    end.send(Outcome::Exited { code: 0 }).unwrap();
    let result = tokio::time::timeout(LIMIT, running.wait())
        .await
        .unwrap()
        .expect("the outcome reaches the waiter before the server stops");
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
    tokio::time::timeout(LIMIT, server.served)
        .await
        .unwrap()
        .unwrap();
    assert!(
        engine
            .watch(JobId(2), Caller::user(Identity::local()))
            .await
            .is_err(),
        "the engine has stopped"
    );
}

/// Signs like [`CopyAuth`] once it has been "busy" `busy` times.
struct BusySigner {
    busy: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl CredentialSource for BusySigner {
    async fn credential_for(&self, message: &[u8]) -> Result<Credential, AuthError> {
        use std::sync::atomic::Ordering;
        if self
            .busy
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(AuthError::Unavailable("munged's backlog is full".into()));
        }
        CopyAuth.credential_for(message).await
    }
}

#[tokio::test]
async fn a_briefly_busy_credential_service_delays_a_reply_instead_of_spoiling_it() {
    let (listener, connector) = memory_transport();
    let executor = GatedExecutor::default();
    let engine = Engine::new(EngineConfig::default())
        .with_executor(Arc::new(executor.clone()))
        .start()
        .await
        .unwrap();
    let signer = BusySigner {
        busy: std::sync::atomic::AtomicUsize::new(2),
    };
    let server = Server::new(engine, CopyAuth, signer);
    let stop = CancellationToken::new();
    let served = tokio::spawn(server.run(listener, stop.clone().cancelled_owned()));
    let client = Client::new(connector, CopyAuth, CopyAuth);
    let submission = tokio::time::timeout(
        LIMIT,
        client.submit(CommandJob::new(["true"]), SubmitKey::random()),
    )
    .await
    .unwrap()
    .expect("the acceptance arrives, signed, after the signer's busy spell");
    assert_eq!(submission.job, JobId(1));
    stop.cancel();
    drop(submission);
    let _ = tokio::time::timeout(LIMIT, served).await;
}

/// Red team: a client waiting for its job announced a large frame on its connection and sent
/// nothing more, holding a share of the read pool every connection draws on for large frames
/// for as long as it liked. Now whatever it sends ends its wait, and a large frame is refused
/// before it holds anything: another client's large request is served.
#[tokio::test]
async fn a_waiting_client_cannot_hold_the_shared_read_pool() {
    use cq_core::protocol::{
        Action, Envelope, FrameCodec, HELLO_LEN, Hello, Nonce, Request, Role, SERVER_UID_LEN,
    };
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (listener, connector) = memory_transport();
    let executor = GatedExecutor::default();
    executor.gate("waits");
    let engine = Engine::new(EngineConfig::default())
        .with_executor(Arc::new(executor.clone()))
        .start()
        .await
        .expect("the engine starts");
    let mut config = cq_core::ServerConfig::default();
    config.free_frame = 1024;
    config.preauth_pool = 12_000;
    let stop = CancellationToken::new();
    let served = tokio::spawn(
        Server::with_config(engine, CopyAuth, CopyAuth, config)
            .run(listener, stop.clone().cancelled_owned()),
    );

    // A client submits a job by hand and waits for it (it runs, and does not end).
    let (mut stream, _) = cq_core::Connector::connect(&connector).await.unwrap();
    stream
        .write_all(&Hello::new(Role::Client).encode())
        .await
        .unwrap();
    let mut greeting = [0; HELLO_LEN + SERVER_UID_LEN];
    stream.read_exact(&mut greeting).await.unwrap();
    let body = postcard::to_allocvec(&Request {
        destination: None,
        nonce: Nonce::random(),
        action: Action::Submit {
            job: CommandJob::new(["waits"]),
            key: SubmitKey::random(),
        },
    })
    .unwrap();
    let mut framed =
        tokio_util::codec::Framed::new(stream, FrameCodec::<Envelope, Envelope>::new());
    framed
        .send(Envelope {
            credential: body.clone(),
            body,
        })
        .await
        .unwrap();
    let accepted = tokio::time::timeout(LIMIT, framed.next()).await.unwrap();
    assert!(matches!(accepted, Some(Ok(_))), "{accepted:?}");
    let end = executor.running("waits").await;
    // Then it announces a frame of 10,000 bytes, within the pool, and sends no more.
    let mut stream = framed.into_inner();
    stream.write_all(&10_000u32.to_be_bytes()).await.unwrap();
    // The server ends the wait (and the connection); or, holding the pool, reads on.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        stream.read_to_end(&mut rest),
    )
    .await;

    // Another client's request of some 4 KB (a large frame: it draws on the pool) is served.
    let large = CommandJob::new(["/bin/true".to_owned(), "x".repeat(2000)]);
    let submitted = Client::new(connector.clone(), CopyAuth, CopyAuth)
        .submit(large, SubmitKey::random())
        .await;
    assert!(
        submitted.is_ok(),
        "a large request was refused while a waiting client announced a frame: {:?}",
        submitted.err()
    );
    let _ = end.send(Outcome::Exited { code: 0 });
    stop.cancel();
    let _ = tokio::time::timeout(LIMIT, served).await;
}
