//! One request: authenticate it, refuse a replay, check where it was sent, and dispatch.

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Duration;

use tokio::time::Instant;

use super::{Connection, Signing};
use crate::account::Account;
use crate::auth::{AuthError, Authenticator, Credential, CredentialSource, Identity};
use crate::engine::{Caller, Cancelled};
use crate::protocol::{Action, Envelope, ErrorCode, Event, Request, RequestDigest};
use crate::server::Refusal;
use crate::transport::Stream;

/// Rejected credentials are answered no sooner than this after they arrived, so that the
/// time to answer does not tell which check failed.
const AUTH_REJECT_FLOOR: Duration = Duration::from_millis(50);

impl<S, A, C> Connection<'_, S, A, C>
where
    S: Stream,
    A: Authenticator,
    C: CredentialSource,
{
    pub(super) async fn request(&mut self, envelope: Envelope) -> ControlFlow<()> {
        let arrived = Instant::now();
        // Until this request is authenticated, its replies are unsigned errors.
        self.signing = Signing::Unsigned;
        self.request = RequestDigest::NONE;
        let digest = RequestDigest::of(&envelope.body, &envelope.credential);
        let credential = Credential(envelope.credential);
        // Verify before decoding: unauthenticated peers never reach the request decoder.
        let verified = match self
            .shared
            .authenticator
            .verify_request(&envelope.body, &credential, &self.peer)
            .await
        {
            Ok(verified) => verified,
            Err(e) => {
                self.shared.stats.refuse(match &e {
                    AuthError::Expired(_) => Refusal::AuthExpired,
                    AuthError::Replayed(_) => Refusal::AuthReplayed,
                    AuthError::Unavailable(_) => Refusal::AuthUnavailable,
                    AuthError::Unauthorized(_) => Refusal::Policy,
                    _ => Refusal::AuthInvalid,
                });
                if self.shared.garbage_log.allow() {
                    tracing::warn!(peer = %self.peer.describe(), reason = %e, "rejected a request");
                }
                tokio::time::sleep_until(arrived + AUTH_REJECT_FLOOR).await;
                // The server's own credential service is down: nothing is wrong with the
                // request, and it is worth sending again once the service is back.
                if let AuthError::Unavailable(why) = &e {
                    let message = format!(
                        "this server cannot check credentials now ({why}); its admin must start its munged (or fix --munge-socket)"
                    );
                    self.fail(ErrorCode::BUSY, &message).await;
                } else {
                    self.fail(ErrorCode::AUTH_FAILED, &e.to_string()).await;
                }
                return ControlFlow::Break(());
            }
        };
        // What a waiting client's request held for hours: the credential and the request's
        // bytes are of no use once checked and decoded.
        drop(credential);
        self.request = digest;
        self.signing = match verified.reply_key {
            Some(key) => Signing::Tagged(key, 0),
            None => Signing::Credential,
        };
        let identity = verified.identity;
        if let Some(until) = verified.replayable_until
            && let Err(e) = self.shared.engine.remember_request(digest.0, until).await
        {
            tracing::warn!(peer = %self.peer.describe(), who = %identity, error = %e, "refused a request");
            self.shared.stats.refuse(Refusal::AuthReplayed);
            let _ = self.refuse(&e).await;
            return ControlFlow::Break(());
        }
        let request: Request = match postcard::from_bytes(&envelope.body) {
            Ok(request) => {
                drop(envelope.body);
                request
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer.describe(), error = %e, "malformed request");
                self.shared.stats.refuse(Refusal::Malformed);
                self.fail(ErrorCode::MALFORMED, &format!("malformed request: {e}"))
                    .await;
                return ControlFlow::Break(());
            }
        };
        let dialled = request.destination.map(canonical);
        let reached = self.peer.local_addr.map(canonical);
        if dialled != reached {
            tracing::warn!(peer = %self.peer.describe(), ?dialled, ?reached, "request addressed to another server");
            self.shared.stats.refuse(Refusal::Malformed);
            let message = format!(
                "the request was made for server {} but reached {}: connect to the server directly",
                describe(dialled),
                describe(reached)
            );
            self.fail(ErrorCode::WRONG_SERVER, &message).await;
            return ControlFlow::Break(());
        }
        // A connection's future is as large as its largest state, and a client waiting for
        // its job holds one for hours: the other kinds of request are boxed, so that they
        // do not set the size of every waiting submission's.
        match request.action {
            Action::Submit { job, key } => self.submit(job, key, identity).await,
            Action::Work {
                worker,
                tags,
                instance,
                sequence,
            } => Box::pin(self.work(worker, tags, (instance, sequence), identity)).await,
            Action::Report {
                worker,
                job,
                lease,
                report,
            } => Box::pin(self.report(worker, job, lease, report, identity)).await,
            action => {
                let Some(caller) = self.caller(identity).await else {
                    return ControlFlow::Break(());
                };
                Box::pin(self.query(action, caller)).await
            }
        }
    }

    /// Answers everything but a submission.
    async fn query(&mut self, action: Action, caller: Caller) -> ControlFlow<()> {
        let engine = &self.shared.engine;
        match action {
            Action::Watch { job } => {
                tracing::info!(%job, who = %caller.identity, "watching");
                match engine.watch(job, caller).await {
                    Ok(ticket) => self.follow(ticket).await,
                    Err(e) => {
                        let _ = self.refuse(&e).await;
                        ControlFlow::Break(())
                    }
                }
            }
            Action::List => {
                let listed = engine.list(caller).await;
                self.answer(listed).await
            }
            Action::Status { job } => {
                let found = engine.status(job, caller).await.map(|j| vec![j]);
                self.answer(found).await
            }
            Action::Cancel { job } => match engine.cancel(job, caller).await {
                Ok(Cancelled::Job(summary)) => self.answer(Ok(vec![summary])).await,
                Ok(Cancelled::Withdrawn(_)) => self.send(Event::Withdrawn { job }).await,
                Err(e) => self.refuse(&e).await,
            },
            Action::Log { job, follow } => self.stream_log(job, follow, caller).await,
            Action::Pause | Action::Resume | Action::QueueState => {
                let state = match action {
                    Action::QueueState => engine.queue_state().await,
                    _ => engine.set_paused(action == Action::Pause, caller).await,
                };
                match state {
                    Ok(state) => {
                        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                        self.send(Event::Queue {
                            paused: state.paused,
                            running: count(state.running),
                            queued: count(state.queued),
                            waiters: count(state.waiters),
                        })
                        .await
                    }
                    Err(e) => self.refuse(&e).await,
                }
            }
            Action::Promote { job } => {
                let moved = engine.promote(job, caller).await.map(|j| vec![j]);
                self.answer(moved).await
            }
            Action::Workers => {
                let workers = self.shared.workers.list(caller.admin);
                self.send(Event::Workers { workers }).await
            }
            Action::Submit { .. } | Action::Work { .. } | Action::Report { .. } => {
                ControlFlow::Break(())
            }
        }
    }

    /// Who asks, with the rights the policy gives: its account (which replaces any group the
    /// credential claimed), and whether it is an admin. Refuses (and answers) requesters the
    /// policy does not admit.
    pub(super) async fn caller(&mut self, identity: Identity) -> Option<Caller> {
        let Some(policy) = &self.shared.policy else {
            return Some(Caller::user(identity));
        };
        let policy = policy.current();
        let who = identity.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let account = Account::lookup(who.uid);
            policy
                .check_requester(&who, account.as_ref())
                .map(|admin| (admin, account.ok()))
        })
        .await;
        match checked {
            Ok(Ok((admin, account))) => {
                let identity = crate::policy::with_account(identity, account.as_ref());
                Some(Caller { identity, admin })
            }
            Ok(Err(refusal)) => {
                tracing::info!(who = %identity, reason = %refusal, "refused by policy");
                self.shared.stats.refuse(Refusal::Policy);
                self.fail(ErrorCode::NOT_PERMITTED, &refusal.to_string())
                    .await;
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "the policy check failed");
                self.fail(ErrorCode::INTERNAL, "the server could not check its policy")
                    .await;
                None
            }
        }
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn describe(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "(no address)".to_owned(), |a| a.to_string())
}
