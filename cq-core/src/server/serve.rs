//! The accept loop and server-wide settings.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection;
use super::hook_program::HookProgram;
use crate::auth::{Authenticator, CredentialSource};
use crate::engine::EngineHandle;
use crate::executor::Executor;
use crate::policy::SharedPolicy;
use crate::transport::Listener;

/// Server settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Time a new connection gets to finish its transport set-up, hello and first request.
    pub handshake_timeout: Duration,
    /// Time an idle connection is kept between requests.
    pub idle_timeout: Duration,
    /// Connections served at once; more are closed at once (each costs memory, no thread).
    pub max_connections: usize,
    /// Time connection tasks get to end after shutdown begins.
    pub shutdown_deadline: Duration,
    /// Time limit of jobs that ask for none.
    pub default_time_limit: Option<Duration>,
    /// Longest time limit a job may have; longer requests (and jobs without one) get this.
    pub max_time_limit: Option<Duration>,
}

impl ServerConfig {
    /// The time limit a job gets when it asks for `requested`.
    pub fn time_limit(&self, requested: Option<Duration>) -> Option<Duration> {
        match (requested.or(self.default_time_limit), self.max_time_limit) {
            (Some(limit), Some(max)) => Some(limit.min(max)),
            (None, max) => max,
            (limit, None) => limit,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            shutdown_deadline: Duration::from_secs(5),
            default_time_limit: None,
            max_time_limit: None,
        }
    }
}

/// What every connection task shares.
pub(super) struct Shared<A, C, E> {
    pub(super) engine: EngineHandle,
    pub(super) authenticator: A,
    pub(super) signer: C,
    pub(super) executor: Arc<E>,
    pub(super) config: ServerConfig,
    pub(super) hook_program: Option<HookProgram>,
    pub(super) policy: Option<SharedPolicy>,
}

/// Serves the cq protocol on a listener, feeding one engine.
pub struct Server<A, C, E> {
    shared: Arc<Shared<A, C, E>>,
}

impl<A, C, E> std::fmt::Debug for Server<A, C, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<A: Authenticator, C: CredentialSource, E: Executor> Server<A, C, E> {
    /// A server that verifies requests with `authenticator`, signs replies with `signer`
    /// and runs commands with `executor` through `engine`.
    pub fn new(engine: EngineHandle, authenticator: A, signer: C, executor: E) -> Self {
        Self::with_config(
            engine,
            authenticator,
            signer,
            executor,
            ServerConfig::default(),
        )
    }

    /// [`new`](Self::new) with explicit settings.
    pub fn with_config(
        engine: EngineHandle,
        authenticator: A,
        signer: C,
        executor: E,
        config: ServerConfig,
    ) -> Self {
        let executor = Arc::new(executor);
        Self {
            shared: Arc::new(Shared {
                hook_program: None,
                policy: None,
                engine,
                authenticator,
                signer,
                executor,
                config,
            }),
        }
    }

    /// Runs `hook` on every submission before the engine's own hooks.
    #[must_use]
    pub fn with_hook_program(mut self, hook: HookProgram) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.hook_program = Some(hook);
        }
        self
    }

    /// Checks every submission against `policy` (replaceable while serving) before any hook;
    /// without one, anybody authenticated may submit anything valid.
    #[must_use]
    pub fn with_policy(mut self, policy: SharedPolicy) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.policy = Some(policy);
        }
        self
    }

    /// Accepts and serves connections until `shutdown` resolves, then stops accepting,
    /// closes connections (jobs stay queued in the engine) and returns once every
    /// connection task has ended or the shutdown deadline passed.
    pub async fn run<L: Listener>(self, listener: L, shutdown: impl Future<Output = ()>) {
        let config = &self.shared.config;
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(config.max_connections));
        let mut backoff = Duration::ZERO;
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok(pending) => {
                    backoff = Duration::ZERO;
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        tracing::warn!(
                            limit = config.max_connections,
                            "connection limit reached; closing a new connection"
                        );
                        continue;
                    };
                    let shared = self.shared.clone();
                    let token = token.clone();
                    tracker.spawn(async move {
                        connection::serve(pending, &shared, &token).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off so that the loop does not spin, keep serving.
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
        drop(listener);
        token.cancel();
        tracker.close();
        if tokio::time::timeout(config.shutdown_deadline, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = tracker.len(),
                "connections still open at the shutdown deadline"
            );
        }
    }
}
