//! One request's replies: each checked (tag or credential, request digest, job), errors
//! turned into errors.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_util::codec::Framed;

use crate::auth::{AuthError, Authenticator, Credential, ReplyKey};
use crate::engine::JobResult;
use crate::job::JobId;
use crate::protocol::{Envelope, Event, FrameCodec, Reply, RequestDigest};
use crate::transport::PeerInfo;

use super::ClientError;

/// A request sent, and the connection its replies come on.
#[derive(Debug)]
pub struct Submission<St, A> {
    framed: Framed<St, FrameCodec<Envelope, Envelope>>,
    /// The request the replies must name.
    request: RequestDigest,
    peer: PeerInfo,
    /// The key the request's credential carried: replies must then carry its tags, and
    /// nothing weaker is believed.
    reply_key: Option<ReplyKey>,
    /// Position of the next tagged reply.
    next_seq: u64,
    verifier: std::sync::Arc<A>,
    /// The job's id on the server.
    pub job: JobId,
    /// Jobs ahead of it when it was accepted, including the running one.
    pub ahead: u32,
    /// Whether the request was merged into an existing equal job.
    pub merged: bool,
    /// The job every event must be about, once known.
    expected: Option<JobId>,
}

/// Something that happened to a submitted job.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobEvent {
    /// It started.
    Started,
    /// It ended.
    Finished(JobResult),
}

/// What a wait for a job has to tell before the job ends.
#[derive(Debug)]
#[non_exhaustive]
pub enum Progress<'a> {
    /// The job started (told again after a re-attachment while it runs).
    Started,
    /// The server could not be reached; the wait tries again after `delay`.
    Retrying {
        /// What went wrong.
        error: &'a ClientError,
        /// How long until the next attempt.
        delay: std::time::Duration,
    },
}

impl<St: crate::transport::Stream, A: Authenticator> Submission<St, A> {
    /// The replies to the request named `request`, just sent on `framed`; `expected` is the
    /// job it is about, when the request names one.
    pub(super) fn new(
        framed: Framed<St, FrameCodec<Envelope, Envelope>>,
        request: RequestDigest,
        peer: PeerInfo,
        reply_key: Option<ReplyKey>,
        verifier: std::sync::Arc<A>,
        expected: Option<JobId>,
    ) -> Self {
        Self {
            framed,
            request,
            peer,
            reply_key,
            next_seq: 0,
            verifier,
            job: expected.unwrap_or(JobId(0)),
            ahead: 0,
            merged: false,
            expected,
        }
    }

    /// From now on, every event must be about `job`.
    pub(super) fn expect_job(&mut self, job: JobId) {
        self.expected = Some(job);
    }

    /// The next event of the job.
    ///
    /// # Errors
    ///
    /// A [`ClientError`] when the connection breaks, a reply is not authentic, or the server
    /// reports an error.
    pub async fn next_event(&mut self) -> Result<JobEvent, ClientError> {
        match self.next_reply().await? {
            Event::Started { .. } => Ok(JobEvent::Started),
            Event::Finished {
                outcome,
                runtime_ms,
                results,
                ..
            } => Ok(JobEvent::Finished(JobResult {
                outcome,
                runtime: Duration::from_millis(runtime_ms),
                results,
            })),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Waits for the job to end.
    ///
    /// # Errors
    ///
    /// As [`next_event`](Self::next_event).
    pub async fn wait(self) -> Result<JobResult, ClientError> {
        self.wait_reporting(|_| {}).await
    }

    /// Waits for the job to end, telling `on_progress` when it starts.
    ///
    /// # Errors
    ///
    /// As [`next_event`](Self::next_event).
    pub async fn wait_reporting(
        mut self,
        mut on_progress: impl FnMut(Progress<'_>),
    ) -> Result<JobResult, ClientError> {
        loop {
            match self.next_event().await? {
                JobEvent::Started => on_progress(Progress::Started),
                JobEvent::Finished(result) => {
                    let _ = self.framed.close().await;
                    return Ok(result);
                }
            }
        }
    }

    /// Closes the connection cleanly (over TLS: with close_notify), so that the server sees
    /// an orderly end rather than a cut connection.
    pub async fn close(mut self) {
        let _ = self.framed.close().await;
    }

    /// Reads one reply, checks that the server made it for this very request (and, once the
    /// job is known, about this job), and turns error replies into errors.
    pub(super) async fn next_reply(&mut self) -> Result<Event, ClientError> {
        let envelope = match self.framed.next().await {
            None => {
                return Err(ClientError::Closed {
                    during: "the wait for the job",
                });
            }
            Some(Err(e)) => return Err(ClientError::Frame(e)),
            Some(Ok(envelope)) => envelope,
        };
        let verified = match &self.reply_key {
            // A request that sealed a key believes its tags and nothing else: a credential
            // per reply is something any user can make the server produce.
            Some(key) => {
                if key.check(self.next_seq, &envelope.body, &envelope.credential) {
                    self.next_seq += 1;
                    Ok(())
                } else {
                    Err(AuthError::Mismatch(
                        "the reply does not carry the tag the request's key makes".to_owned(),
                    ))
                }
            }
            None => self
                .verifier
                .verify(&envelope.body, &Credential(envelope.credential), &self.peer)
                .await
                .map(drop),
        };
        let reply = match (verified, postcard::from_bytes::<Reply>(&envelope.body)) {
            (Ok(()), Ok(reply)) => reply,
            (Ok(()), Err(e)) => return Err(ClientError::Protocol(e.to_string())),
            // An error reply triggers nothing, so its text is worth showing even unverified:
            // it usually says why (e.g. the server refused our credential for the same reason).
            (
                Err(why),
                Ok(Reply {
                    event: Event::Error { code, message },
                    ..
                }),
            ) => {
                // Said as the server's words: a message about munged, say, is about the
                // server's munged, not this host's.
                tracing::debug!(reason = %why, "an error reply that cannot be verified");
                let message = format!("the server says (unverified): {message}");
                return Err(ClientError::Server {
                    code,
                    message,
                    verified: false,
                });
            }
            (Err(why), _) => return Err(ClientError::ReplyNotAuthentic(why)),
        };
        // An error the server sent before it could authenticate the request names none; it
        // triggers nothing, so it is shown for what it says.
        let unattributed_error =
            reply.request == RequestDigest::NONE && matches!(reply.event, Event::Error { .. });
        if reply.request != self.request && !unattributed_error {
            return Err(ClientError::ReplyNotAuthentic(AuthError::Mismatch(
                "the reply answers another request".to_owned(),
            )));
        }
        if let (Some(expected), Some(about)) = (self.expected, reply.event.job())
            && expected != about
        {
            return Err(ClientError::ReplyNotAuthentic(AuthError::Mismatch(
                format!("the reply is about job {about}, not job {expected}"),
            )));
        }
        match reply.event {
            // An unattributed error names no request: it could answer anybody's.
            Event::Error { code, message } => Err(ClientError::Server {
                code,
                message,
                verified: !unattributed_error,
            }),
            event => Ok(event),
        }
    }
}
