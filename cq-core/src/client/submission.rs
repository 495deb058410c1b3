//! One request's replies: each checked (tag or credential, nonce), errors turned into errors.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_util::codec::Framed;

use crate::auth::{AuthError, Authenticator, Credential, REPLY_TAG_LEN, ReplyKey};
use crate::engine::JobResult;
use crate::job::JobId;
use crate::protocol::{Envelope, Event, FrameCodec, Nonce, Reply};
use crate::transport::PeerInfo;

use super::ClientError;

/// A job the server has accepted for this client, and the connection its events come on.
#[derive(Debug)]
pub struct Submission<'a, St, A> {
    framed: Framed<St, FrameCodec<Envelope, Envelope>>,
    nonce: Nonce,
    peer: PeerInfo,
    /// The key the request's credential carried: replies tagged with it need no credential.
    reply_key: Option<ReplyKey>,
    /// Position of the next tagged reply.
    next_seq: u64,
    verifier: &'a A,
    /// The job's id on the server.
    pub job: JobId,
    /// Jobs ahead of it when it was accepted, including the running one.
    pub ahead: u32,
    /// Whether the request was merged into an existing equal job.
    pub merged: bool,
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

impl<'a, St: crate::transport::Stream, A: Authenticator> Submission<'a, St, A> {
    /// The replies to the request with `nonce` just sent on `framed`.
    pub(super) fn new(
        framed: Framed<St, FrameCodec<Envelope, Envelope>>,
        nonce: Nonce,
        peer: PeerInfo,
        reply_key: Option<ReplyKey>,
        verifier: &'a A,
    ) -> Self {
        Self {
            framed,
            nonce,
            peer,
            reply_key,
            next_seq: 0,
            verifier,
            job: JobId(0),
            ahead: 0,
            merged: false,
        }
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
                ..
            } => Ok(JobEvent::Finished(JobResult {
                outcome,
                runtime: Duration::from_millis(runtime_ms),
            })),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Waits for the job to end.
    ///
    /// # Errors
    ///
    /// As [`next_event`](Self::next_event).
    pub async fn wait(mut self) -> Result<JobResult, ClientError> {
        loop {
            if let JobEvent::Finished(result) = self.next_event().await? {
                let _ = self.framed.close().await;
                return Ok(result);
            }
        }
    }

    /// Closes the connection cleanly (over TLS: with close_notify), so that the server sees
    /// an orderly end rather than a cut connection.
    pub async fn close(mut self) {
        let _ = self.framed.close().await;
    }

    /// Reads one reply, checks that the server made it for this request, and turns error
    /// replies into errors.
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
            // A credential is far longer than a tag: a tag-sized one must be the tag.
            Some(key) if envelope.credential.len() == REPLY_TAG_LEN => {
                if key.check(self.next_seq, &envelope.body, &envelope.credential) {
                    self.next_seq += 1;
                    Ok(())
                } else {
                    Err(AuthError::Mismatch(
                        "the reply's tag is not the one the request's key makes".to_owned(),
                    ))
                }
            }
            _ => self
                .verifier
                .verify(&envelope.body, &Credential(envelope.credential), &self.peer)
                .await
                .map(drop),
        };
        let reply = match (verified, postcard::from_bytes::<Reply>(&envelope.body)) {
            (Ok(_), Ok(reply)) => reply,
            (Ok(_), Err(e)) => return Err(ClientError::Protocol(e.to_string())),
            // An error reply triggers nothing, so its text is worth showing even unverified:
            // it usually says why (e.g. the server refused our credential for the same reason).
            (
                Err(why),
                Ok(Reply {
                    event: Event::Error { code, message },
                    ..
                }),
            ) => {
                let message = format!("{message}; the reply itself is unverified: {why}");
                return Err(ClientError::Server { code, message });
            }
            (Err(why), _) => return Err(ClientError::ReplyNotAuthentic(why)),
        };
        let for_us = reply.nonce == self.nonce
            || (reply.nonce == Nonce::NONE && matches!(reply.event, Event::Error { .. }));
        if !for_us {
            return Err(ClientError::ReplyNotAuthentic(AuthError::Mismatch(
                "the reply answers another request".to_owned(),
            )));
        }
        match reply.event {
            Event::Error { code, message } => Err(ClientError::Server { code, message }),
            event => Ok(event),
        }
    }
}
