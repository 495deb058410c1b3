//! The accept loop and server-wide settings.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection;
use super::hook_program::HookProgram;
use super::log_limit::LogLimiter;
use crate::auth::{Authenticator, CredentialSource};
use crate::engine::{EngineHandle, ShutdownMode};
use crate::executor::Executor;
use crate::policy::SharedPolicy;
use crate::protocol::ReadBudget;
use crate::transport::{Listener, PendingConnection};

/// Server settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Time a new connection gets, in all, to finish its transport set-up, say hello and
    /// send its first request.
    pub handshake_timeout: Duration,
    /// Time an idle connection is kept between requests.
    pub idle_timeout: Duration,
    /// Connections served at once; more are closed at once (each costs memory, no thread).
    pub max_connections: usize,
    /// Connections served at once from one peer address.
    pub max_connections_per_host: usize,
    /// Frames up to this size cost a connection nothing before it is authenticated.
    pub free_frame: usize,
    /// Bytes all unauthenticated frames larger than `free_frame` may hold at once.
    pub preauth_pool: usize,
    /// Time connection tasks get to end after the engine stopped.
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
            max_connections_per_host: 256,
            free_frame: 16 * 1024,
            preauth_pool: 32 * 1024 * 1024,
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
    pub(super) budget: ReadBudget,
    /// Log lines about peers that fail before they are authenticated: a flood must not
    /// flood the log too.
    pub(super) garbage_log: LogLimiter,
}

/// Serves the cq protocol on a listener, feeding one engine.
pub struct Server<A, C, E> {
    shared: Shared<A, C, E>,
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
        let budget = ReadBudget::new(config.free_frame, config.preauth_pool);
        Self {
            shared: Shared {
                hook_program: None,
                policy: None,
                engine,
                authenticator,
                signer,
                executor: Arc::new(executor),
                budget,
                garbage_log: LogLimiter::new(),
                config,
            },
        }
    }

    /// Runs `hook` on every submission before the engine's own hooks.
    #[must_use]
    pub fn with_hook_program(mut self, hook: HookProgram) -> Self {
        self.shared.hook_program = Some(hook);
        self
    }

    /// Checks every request against `policy` (replaceable while serving): who may use the
    /// server, who is an admin, what jobs may hold. Without one, anybody authenticated may
    /// submit anything valid, and nobody is an admin.
    #[must_use]
    pub fn with_policy(mut self, policy: SharedPolicy) -> Self {
        self.shared.policy = Some(policy);
        self
    }

    /// Accepts and serves connections until `shutdown` resolves. Then it stops accepting,
    /// asks the engine to stop (the running job may finish: stop it sooner with
    /// [`EngineHandle::shutdown`] and [`ShutdownMode::CancelRunning`]) and keeps serving the
    /// connections meanwhile, so that the running job's waiters hear its outcome and the
    /// others are told the server is stopping. Returns once the engine has stopped and every
    /// connection task has ended (or the shutdown deadline passed).
    pub async fn run<L: Listener>(self, listener: L, shutdown: impl Future<Output = ()>) {
        let shared = Arc::new(self.shared);
        let config = &shared.config;
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(config.max_connections));
        let per_host = Arc::new(HostCounts::default());
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
                    let host = pending.peer_addr().map(|a| host_of(a.ip()));
                    let Some(host_slot) = per_host.enter(host, config.max_connections_per_host)
                    else {
                        if shared.garbage_log.allow() {
                            tracing::warn!(
                                peer = %host.map_or_else(String::new, |h| h.to_string()),
                                limit = config.max_connections_per_host,
                                "too many connections from one host; closing a new one"
                            );
                        }
                        continue;
                    };
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        if shared.garbage_log.allow() {
                            tracing::warn!(
                                limit = config.max_connections,
                                "connection limit reached; closing a new connection"
                            );
                        }
                        continue;
                    };
                    let shared = shared.clone();
                    let token = token.clone();
                    tracker.spawn(async move {
                        connection::serve(pending, &shared, &token).await;
                        drop(permit);
                        drop(host_slot);
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
        shared.engine.shutdown(ShutdownMode::FinishRunning).await;
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

/// Connections per peer address.
#[derive(Debug, Default)]
struct HostCounts(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in [`HostCounts`], given back on drop.
struct HostSlot {
    counts: Arc<HostCounts>,
    host: IpAddr,
}

/// What counts as one host for the per-host limit: an IPv4 address, an IPv6 /64 (what one
/// site or machine is usually given: anyone with one has 2^64 addresses), and the whole
/// loopback network (every address in it is this machine).
fn host_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) if v4.is_loopback() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
    }
}

impl HostCounts {
    /// A slot for one more connection from `host`, if it has fewer than `limit`.
    fn enter(self: &Arc<Self>, host: Option<IpAddr>, limit: usize) -> Option<Option<HostSlot>> {
        let Some(host) = host else {
            return Some(None);
        };
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(host).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Some(HostSlot {
            counts: self.clone(),
            host,
        }))
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.host) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.host);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str) -> IpAddr {
        host_of(text.parse().unwrap())
    }

    /// Red team of Security III: 17 loopback addresses, or the many addresses of one IPv6
    /// network, each got their own share of the connection limit.
    #[test]
    fn one_host_is_an_ipv4_address_an_ipv6_network_or_the_loopback() {
        assert_eq!(host("127.0.0.2"), host("127.0.0.1"));
        assert_eq!(host("127.9.8.7"), host("::ffff:127.0.0.1"));
        assert_ne!(host("192.0.2.1"), host("192.0.2.2"));
        assert_eq!(host("::ffff:192.0.2.1"), host("192.0.2.1"));
        assert_eq!(
            host("2001:db8:1:2::1"),
            host("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(host("2001:db8:1:2::1"), host("2001:db8:1:3::1"));
    }
}
