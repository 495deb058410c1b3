//! The network client: submit a job or re-attach to one, and follow it to its end.
//!
//! [`Client`] connects and sends requests; a [`Submission`] reads one request's replies and
//! checks each; [`ClientError`] says what went wrong and whether trying again may help.

mod error;
mod submission;

pub use error::ClientError;
pub use submission::{JobEvent, Progress, Submission};

use std::io;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_util::codec::Framed;

use crate::auth::{Authenticator, CredentialSource, ReplyKey};
use crate::engine::JobResult;
use crate::job::{CommandJob, JobId, JobSummary, SubmitKey};
use crate::protocol::{
    Action, Envelope, Event, FrameCodec, HELLO_LEN, Hello, Nonce, PROTOCOL_VERSION, Request,
    RequestDigest, Role, RunAs, SERVER_UID_LEN, WorkReport,
};
use crate::transport::{Connector, Stream};

/// How long the client waits for the acceptance of a request. Waiting for the job itself
/// has no limit.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a worker waits for the answer to a request for work (the server answers `Idle`
/// well before: this only catches a server that stopped answering).
const WORK_TIMEOUT: Duration = Duration::from_secs(300);

/// A job the coordinator gave a worker to run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dispatch {
    /// The job.
    pub job: JobId,
    /// What to run, its time limit included.
    pub command: CommandJob,
    /// Whose rights it gets; `None`: the worker's own user's.
    pub run_as: Option<RunAs>,
    /// The only programs it may run, when the coordinator's policy has a list.
    pub commands: Option<Vec<String>>,
    /// Names this dispatch; every report on the job names it.
    pub lease: u64,
}

/// How long the client waits for the server's greeting, which cq_server sends as soon as the
/// connection is made: a peer that says nothing for this long is not cq_server.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Talks to one server.
#[derive(Debug)]
pub struct Client<C, S, A> {
    connector: C,
    signer: S,
    /// Shared with the submissions, which outlive a borrow of the client (they may be
    /// moved into tasks of their own).
    verifier: std::sync::Arc<A>,
}

impl<C: Connector, S: CredentialSource, A: Authenticator> Client<C, S, A> {
    /// A client that reaches the server through `connector`, signs requests with `signer`
    /// and checks the server's replies with `verifier`.
    pub fn new(connector: C, signer: S, verifier: A) -> Self {
        Self {
            connector,
            signer,
            verifier: std::sync::Arc::new(verifier),
        }
    }

    /// The server as the user named it.
    pub fn server_name(&self) -> String {
        self.connector.server_name()
    }

    /// Submits `job` once, with idempotency key `key`; returns once the server has accepted
    /// it. Sending the same job again with the same key re-attaches to the job the first
    /// attempt queued, if it did.
    ///
    /// # Errors
    ///
    /// Any [`ClientError`]: connection, protocol, credential, or the server's refusal.
    pub async fn submit(
        &self,
        job: CommandJob,
        key: SubmitKey,
    ) -> Result<Submission<C::Stream, A>, ClientError> {
        self.request(Action::Submit { job, key }, None).await
    }

    /// Submits `job` until the server has accepted it, trying again (with the same key, so
    /// that nothing runs twice) while the server cannot be reached or cuts the connection
    /// before acknowledging; `on_retry` hears of each failed attempt and the delay before
    /// the next. Gives up after `policy.give_up_after` without an answer.
    ///
    /// # Errors
    ///
    /// The last error when giving up, or the first one that retrying cannot mend.
    pub async fn submit_retrying(
        &self,
        job: CommandJob,
        policy: &Reconnect,
        mut on_retry: impl FnMut(&ClientError, Duration),
    ) -> Result<Submission<C::Stream, A>, ClientError> {
        let key = SubmitKey::random();
        let started = tokio::time::Instant::now();
        let mut delay = policy.first_delay;
        loop {
            match self.submit(job.clone(), key).await {
                Ok(submission) => return Ok(submission),
                Err(e) if e.is_transient() && started.elapsed() < policy.give_up_after => {
                    on_retry(&e, delay);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(policy.max_delay);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Re-attaches to job `id` (queued, running or recently finished).
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit); [`ErrorCode::UNKNOWN_JOB`](crate::protocol::ErrorCode::UNKNOWN_JOB) when the server does not know it.
    pub async fn watch(&self, id: JobId) -> Result<Submission<C::Stream, A>, ClientError> {
        self.request(Action::Watch { job: id }, Some(id)).await
    }

    /// Follows job `id` to its end, starting with `submission` if there is one, and
    /// re-attaching (with growing delays) whenever the connection is lost, e.g. while the
    /// server restarts. `on_progress` hears when the job starts, and about each failed
    /// attempt and the delay before the next one. Gives up when the server has been unreachable for `policy.give_up_after`.
    ///
    /// # Errors
    ///
    /// The last error when giving up, or the first error that retrying cannot mend (refused
    /// credential, unknown job, ...).
    pub async fn follow(
        &self,
        id: JobId,
        submission: Option<Submission<C::Stream, A>>,
        policy: &Reconnect,
        mut on_progress: impl FnMut(Progress<'_>),
    ) -> Result<JobResult, ClientError> {
        let mut current = submission;
        let mut delay = policy.first_delay;
        let mut unreachable_since: Option<tokio::time::Instant> = None;
        loop {
            let attempt = match current.take() {
                Some(submission) => submission.wait_reporting(&mut on_progress).await,
                None => match self.watch(id).await {
                    Ok(submission) => {
                        unreachable_since = None;
                        delay = policy.first_delay;
                        submission.wait_reporting(&mut on_progress).await
                    }
                    Err(e) => Err(e),
                },
            };
            match attempt {
                Ok(result) => return Ok(result),
                Err(e) if e.is_transient() => {
                    let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= policy.give_up_after {
                        return Err(e);
                    }
                    on_progress(Progress::Retrying { error: &e, delay });
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(policy.max_delay);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The running job, the queued ones in order, and the most recently finished ones.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub async fn list(&self) -> Result<Vec<JobSummary>, ClientError> {
        self.query(Action::List).await
    }

    /// One job, as the server knows it.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit); [`ErrorCode::UNKNOWN_JOB`](crate::protocol::ErrorCode::UNKNOWN_JOB) when the server does not know it.
    pub async fn status(&self, id: JobId) -> Result<JobSummary, ClientError> {
        self.query(Action::Status { job: id })
            .await?
            .pop()
            .ok_or(ClientError::Protocol("empty status".into()))
    }

    /// Cancels job `id` (its owner and admins may); returns the job as it is afterwards (a
    /// running job shows `running` until its processes are gone), or `None` when this user
    /// was a waiter merged into the job and withdrew instead.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit); [`ErrorCode::NOT_PERMITTED`](crate::protocol::ErrorCode::NOT_PERMITTED) for someone else's job.
    pub async fn cancel(&self, id: JobId) -> Result<Option<JobSummary>, ClientError> {
        let mut channel = self.open(Action::Cancel { job: id }, Some(id)).await?;
        let answer = match timeout(REPLY_TIMEOUT, channel.next_reply()).await {
            Err(_) => Err(ClientError::Timeout {
                during: "the answer",
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Event::Withdrawn { .. })) => Ok(None),
            Ok(Ok(Event::Jobs { mut jobs, .. })) => jobs
                .pop()
                .map(Some)
                .ok_or(ClientError::Protocol("empty answer".into())),
            Ok(Ok(other)) => Err(ClientError::Protocol(format!(
                "expected the cancelled job, got {other:?}"
            ))),
        };
        channel.close().await;
        answer
    }

    /// Moves queued job `id` ahead of every other queued job. Admins only.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit); [`ErrorCode::NOT_PERMITTED`](crate::protocol::ErrorCode::NOT_PERMITTED) for anybody but an admin, [`ErrorCode::REJECTED`](crate::protocol::ErrorCode::REJECTED) when the job is not waiting.
    pub async fn promote(&self, id: JobId) -> Result<JobSummary, ClientError> {
        let mut jobs = self.query(Action::Promote { job: id }).await?;
        jobs.pop()
            .ok_or(ClientError::Protocol("empty answer".into()))
    }

    /// Pauses the server's queue (`paused`: running jobs finish, nothing new starts) or
    /// resumes it; answers how the queue is now. Admins only.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit); [`ErrorCode::NOT_PERMITTED`](crate::protocol::ErrorCode::NOT_PERMITTED) for anybody but an admin.
    pub async fn set_paused(&self, paused: bool) -> Result<crate::QueueState, ClientError> {
        self.queue(if paused {
            Action::Pause
        } else {
            Action::Resume
        })
        .await
    }

    /// How the server's queue is: paused or not, how many jobs run and wait.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub async fn queue_state(&self) -> Result<crate::QueueState, ClientError> {
        self.queue(Action::QueueState).await
    }

    /// As worker `worker` offering `tags`, asks for the next job; `None` when the server had
    /// none for a while (ask again). The server must name this identity as a worker.
    /// `instance` is random and the same for the life of the worker process, `sequence`
    /// counts its requests for work (see [`Action::Work`]): a later request, or one from
    /// another process, tells the server that whatever job the worker ran is lost.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit); [`ErrorCode::NOT_PERMITTED`](crate::protocol::ErrorCode::NOT_PERMITTED)
    /// for an identity the server does not admit as a worker, or a worker name another holds.
    pub async fn work(
        &self,
        worker: &str,
        tags: &[String],
        instance: u64,
        sequence: u64,
    ) -> Result<Option<Dispatch>, ClientError> {
        let action = Action::Work {
            worker: worker.to_owned(),
            tags: tags.to_vec(),
            instance,
            sequence,
        };
        let mut channel = self.open(action, None).await?;
        let answer = match timeout(WORK_TIMEOUT, channel.next_reply()).await {
            Err(_) => Err(ClientError::Timeout {
                during: "the answer to a request for work",
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Event::Idle)) => Ok(None),
            Ok(Ok(Event::Dispatch {
                job,
                command,
                run_as,
                commands,
                lease,
            })) => Ok(Some(Dispatch {
                job,
                command,
                run_as,
                commands,
                lease,
            })),
            Ok(Ok(other)) => Err(ClientError::Protocol(format!(
                "expected a job or idle, got {other:?}"
            ))),
        };
        channel.close().await;
        answer
    }

    /// As worker `worker`, reports on job `job`, which it runs by the dispatch with `lease`;
    /// answers whether the job is to be stopped.
    ///
    /// # Errors
    ///
    /// As [`work`](Self::work); the server refuses reports on a job it did not give this
    /// worker.
    pub async fn report(
        &self,
        worker: &str,
        job: JobId,
        lease: u64,
        report: WorkReport,
    ) -> Result<bool, ClientError> {
        let action = Action::Report {
            worker: worker.to_owned(),
            job,
            lease,
            report,
        };
        let mut channel = self.open(action, None).await?;
        let answer = match timeout(REPLY_TIMEOUT, channel.next_reply()).await {
            Err(_) => Err(ClientError::Timeout {
                during: "the answer to a report",
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Event::Noted { cancel })) => Ok(cancel),
            Ok(Ok(other)) => Err(ClientError::Protocol(format!(
                "expected the report to be noted, got {other:?}"
            ))),
        };
        channel.close().await;
        answer
    }

    /// The workers on other hosts that have joined the server (their addresses for an
    /// admin only).
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub async fn workers(&self) -> Result<Vec<crate::protocol::WorkerSummary>, ClientError> {
        let mut channel = self.open(Action::Workers, None).await?;
        let answer = match timeout(REPLY_TIMEOUT, channel.next_reply()).await {
            Err(_) => Err(ClientError::Timeout {
                during: "the answer",
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Event::Workers { workers })) => Ok(workers),
            Ok(Ok(other)) => Err(ClientError::Protocol(format!(
                "expected the workers, got {other:?}"
            ))),
        };
        channel.close().await;
        answer
    }

    async fn queue(&self, action: Action) -> Result<crate::QueueState, ClientError> {
        let mut channel = self.open(action, None).await?;
        let answer = match timeout(REPLY_TIMEOUT, channel.next_reply()).await {
            Err(_) => Err(ClientError::Timeout {
                during: "the answer",
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Event::Queue {
                paused,
                running,
                queued,
                waiters,
            })) => Ok(crate::QueueState {
                paused,
                running: running as usize,
                queued: queued as usize,
                waiters: waiters as usize,
            }),
            Ok(Ok(other)) => Err(ClientError::Protocol(format!(
                "expected the queue's state, got {other:?}"
            ))),
        };
        channel.close().await;
        answer
    }

    /// Job `id`'s output from the start, handed to `output` piece by piece. With `follow` it
    /// goes on live until the job ends and returns how it ended; without, it returns `None`
    /// after what is logged so far.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit); [`ErrorCode::NOT_PERMITTED`](crate::protocol::ErrorCode::NOT_PERMITTED) for someone else's job.
    pub async fn log(
        &self,
        id: JobId,
        follow: bool,
        mut output: impl FnMut(&[u8]),
    ) -> Result<Option<JobResult>, ClientError> {
        let mut channel = self.open(Action::Log { job: id, follow }, Some(id)).await?;
        let result = loop {
            match channel.next_reply().await? {
                Event::Output { data, .. } => output(&data),
                Event::LogEnd { .. } => break None,
                Event::Finished {
                    outcome,
                    runtime_ms,
                    results,
                    ..
                } => {
                    break Some(JobResult {
                        outcome,
                        runtime: Duration::from_millis(runtime_ms),
                        results,
                    });
                }
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected reply to a log request: {other:?}"
                    )));
                }
            }
        };
        channel.close().await;
        Ok(result)
    }

    /// Sends `action` and reads the job list it is answered with, page by page.
    async fn query(&self, action: Action) -> Result<Vec<JobSummary>, ClientError> {
        let mut channel = self.open(action, None).await?;
        let mut all = Vec::new();
        let answer = loop {
            match timeout(REPLY_TIMEOUT, channel.next_reply()).await {
                Err(_) => {
                    break Err(ClientError::Timeout {
                        during: "the answer",
                    });
                }
                Ok(Err(e)) => break Err(e),
                Ok(Ok(Event::Jobs { jobs, more })) => {
                    all.extend(jobs);
                    if !more {
                        break Ok(all);
                    }
                }
                Ok(Ok(other)) => {
                    break Err(ClientError::Protocol(format!(
                        "expected a job list, got {other:?}"
                    )));
                }
            }
        };
        channel.close().await;
        answer
    }

    async fn request(
        &self,
        action: Action,
        expected: Option<JobId>,
    ) -> Result<Submission<C::Stream, A>, ClientError> {
        let mut submission = self.open(action, expected).await?;
        match timeout(REPLY_TIMEOUT, submission.next_reply()).await {
            Err(_) => Err(ClientError::Timeout {
                during: "the acceptance of the request",
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Event::Accepted { job, ahead, merged })) => {
                submission.job = job;
                submission.ahead = ahead;
                submission.merged = merged;
                submission.expect_job(job);
                Ok(submission)
            }
            Ok(Ok(other)) => Err(ClientError::Protocol(format!(
                "expected an acceptance, got {other:?}"
            ))),
        }
    }

    /// Connects, exchanges hellos and sends `action`; the replies (about job `expected`, when
    /// the action names one) are the caller's to read.
    async fn open(
        &self,
        action: Action,
        expected: Option<JobId>,
    ) -> Result<Submission<C::Stream, A>, ClientError> {
        let (mut stream, peer) = self.connector.connect().await?;
        stream
            .write_all(&Hello::new(Role::Client).encode())
            .await
            .map_err(|source| ClientError::Io {
                during: "the hello",
                source,
            })?;
        let mut greeting = [0; HELLO_LEN + SERVER_UID_LEN];
        read_greeting(&mut stream, &mut greeting[..HELLO_LEN]).await?;
        let hello = Hello::decode(&greeting[..HELLO_LEN].try_into().unwrap_or_default())
            .map_err(ClientError::NotCq)?;
        if hello.version != PROTOCOL_VERSION {
            return Err(ClientError::VersionMismatch {
                server: hello.version,
                client: PROTOCOL_VERSION,
            });
        }
        read_greeting(&mut stream, &mut greeting[HELLO_LEN..]).await?;
        let server_uid = u32::from_be_bytes(greeting[HELLO_LEN..].try_into().unwrap_or_default());
        let nonce = Nonce::random();
        let request = Request {
            destination: peer.addr,
            nonce,
            action,
        };
        let body =
            postcard::to_allocvec(&request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        // A reply key spares a credential per reply, if the source can seal it for the uid the
        // server names (a lie there only makes the server unable to read the request).
        let key = ReplyKey::random();
        let (credential, reply_key) = match self
            .signer
            .credential_with_key(&body, &key, server_uid)
            .await
            .map_err(ClientError::Credential)?
        {
            Some(credential) => (credential, Some(key)),
            None => (
                self.signer
                    .credential_for(&body)
                    .await
                    .map_err(ClientError::Credential)?,
                None,
            ),
        };
        let digest = RequestDigest::of(&body, &credential.0);
        let mut framed = Framed::new(stream, FrameCodec::<Envelope, Envelope>::new());
        framed
            .send(Envelope {
                body,
                credential: credential.0,
            })
            .await
            .map_err(ClientError::Frame)?;
        Ok(Submission::new(
            framed,
            digest,
            peer,
            reply_key,
            self.verifier.clone(),
            expected,
        ))
    }
}

/// Reads the next part of the server's greeting, bounded by the reply timeout.
async fn read_greeting<St: Stream>(stream: &mut St, into: &mut [u8]) -> Result<(), ClientError> {
    match timeout(HELLO_TIMEOUT, stream.read_exact(into)).await {
        Err(_) => Err(ClientError::Timeout {
            during: "the hello",
        }),
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ClientError::Closed {
            during: "the hello",
        }),
        Ok(Err(source)) => Err(ClientError::Io {
            during: "the hello",
            source,
        }),
        Ok(Ok(_)) => Ok(()),
    }
}

/// How a client re-attaches to its job after losing the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconnect {
    /// Delay before the first retry; it doubles up to `max_delay`.
    pub first_delay: Duration,
    /// Longest delay between retries.
    pub max_delay: Duration,
    /// Give up when the server has been unreachable this long.
    pub give_up_after: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            give_up_after: Duration::from_secs(3600),
        }
    }
}
