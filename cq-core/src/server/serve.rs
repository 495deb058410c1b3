//! The accept loop and server-wide settings.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection;
use super::log_limit::LogLimiter;
use crate::auth::{Authenticator, CredentialSource};
use crate::engine::{EngineHandle, ShutdownMode};
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
    /// A remote worker away longer than this has lost the job it ran.
    pub worker_timeout: Duration,
    /// A job whose worker was away too long is queued again instead of recorded lost (it
    /// may then run twice, if that worker only lost its network).
    pub requeue_lost: bool,
    /// How long a worker's request for work waits for a job before it is answered `Idle`
    /// (the worker asks again at once: this is its heartbeat while idle).
    pub worker_poll: Duration,
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
            worker_timeout: Duration::from_secs(300),
            requeue_lost: false,
            worker_poll: Duration::from_secs(20),
        }
    }
}

/// What every connection task shares.
pub(super) struct Shared<A, C> {
    pub(super) engine: EngineHandle,
    pub(super) authenticator: A,
    pub(super) signer: C,
    pub(super) config: ServerConfig,
    pub(super) policy: Option<SharedPolicy>,
    pub(super) budget: ReadBudget,
    /// Log lines about peers that fail before they are authenticated: a flood must not
    /// flood the log too.
    pub(super) garbage_log: LogLimiter,
    /// Connections and refusals, for metrics.
    pub(super) stats: Arc<super::ServerStats>,
    /// Workers on other hosts.
    pub(super) workers: Arc<super::workers::RemoteWorkers>,
}

/// Serves the cq protocol on a listener, feeding one engine.
pub struct Server<A, C> {
    shared: Shared<A, C>,
}

impl<A, C> std::fmt::Debug for Server<A, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<A: Authenticator, C: CredentialSource> Server<A, C> {
    /// A server that verifies requests with `authenticator`, signs replies with `signer`
    /// and queues commands in `engine` (which runs them with its executor:
    /// [`Engine::with_executor`](crate::Engine::with_executor)).
    pub fn new(engine: EngineHandle, authenticator: A, signer: C) -> Self {
        Self::with_config(engine, authenticator, signer, ServerConfig::default())
    }

    /// [`new`](Self::new) with explicit settings.
    pub fn with_config(
        engine: EngineHandle,
        authenticator: A,
        signer: C,
        config: ServerConfig,
    ) -> Self {
        let budget = ReadBudget::new(config.free_frame, config.preauth_pool);
        Self {
            shared: Shared {
                policy: None,
                engine,
                authenticator,
                signer,
                budget,
                garbage_log: LogLimiter::new(),
                stats: Arc::default(),
                workers: Arc::new(super::workers::RemoteWorkers::new(
                    config.worker_timeout,
                    config.requeue_lost,
                )),
                config,
            },
        }
    }

    /// Checks every request against `policy` (replaceable while serving): who may use the
    /// server, who is an admin, who may serve as a worker. Submissions are checked by the
    /// engine, for every caller: give it the same policy with
    /// [`Engine::with_access_check`](crate::Engine::with_access_check); a server with a policy
    /// refuses every submission to an engine without an access check rather than queue it
    /// unchecked. Without a policy, anybody authenticated may submit anything valid, and
    /// nobody is an admin.
    #[must_use]
    pub fn with_policy(mut self, policy: SharedPolicy) -> Self {
        self.shared.policy = Some(policy);
        self
    }

    /// Its counters of connections and refused requests (shared: they keep counting while
    /// it runs).
    pub fn stats(&self) -> Arc<super::ServerStats> {
        self.shared.stats.clone()
    }

    /// Accepts and serves connections until `shutdown` resolves. Then it asks the engine to
    /// stop (the running job may finish: stop it sooner with
    /// [`EngineHandle::shutdown`] and [`ShutdownMode::CancelRunning`]) and keeps serving
    /// meanwhile, new connections too, so that the running job's waiters hear its outcome,
    /// the others are told the server is stopping, and workers on other hosts can report
    /// the end of the jobs they run. Returns once the engine has stopped and every
    /// connection task has ended (or the shutdown deadline passed).
    pub async fn run<L: Listener>(self, listener: L, shutdown: impl Future<Output = ()>) {
        let shared = Arc::new(self.shared);
        let config = &shared.config;
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(config.max_connections));
        let per_host = Arc::new(HostCounts::default());
        let mut backoff = Duration::ZERO;
        // Connections are still served while the engine stops: workers on other hosts must
        // deliver the end of the jobs it waits for (new submissions are refused meanwhile).
        let engine = shared.engine.clone();
        let stopped = async move {
            shutdown.await;
            engine.shutdown(ShutdownMode::FinishRunning).await;
        };
        tokio::pin!(stopped);
        loop {
            let accepted = tokio::select! {
                () = &mut stopped => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok(pending) => {
                    backoff = Duration::ZERO;
                    let peer = pending.peer_addr();
                    let Some(host_slot) =
                        per_host.enter(peer, pending.peer_uid(), config.max_connections_per_host)
                    else {
                        shared.stats.refuse(super::Refusal::TooManyConnections);
                        if shared.garbage_log.allow() {
                            tracing::warn!(
                                peer = %peer.map_or_else(String::new, |p| p.ip().to_string()),
                                limit = config.max_connections_per_host,
                                "too many connections from one host; closing a new one"
                            );
                        }
                        continue;
                    };
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        shared.stats.refuse(super::Refusal::TooManyConnections);
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
                    shared.stats.opened();
                    tracker.spawn(async move {
                        connection::serve(pending, &shared, &token).await;
                        shared.stats.closed();
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
struct HostCounts(Mutex<HashMap<HostKey, usize>>);

/// One connection's place in [`HostCounts`], given back on drop.
struct HostSlot {
    counts: Arc<HostCounts>,
    keys: Vec<HostKey>,
}

/// Who a connection counts against for the per-host limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum HostKey {
    /// This machine: all of 127.0.0.0/8 and ::1.
    Loopback,
    /// One IPv4 address.
    V4(std::net::Ipv4Addr),
    /// One IPv6 address (with its interface, for link-local ones).
    V6(std::net::Ipv6Addr, u32),
    /// An IPv6 /64 (with its interface, for link-local ones): a site or a machine usually
    /// has one, and with it 2^64 addresses.
    V6Network(u64, u32),
    /// A user of this host, over a Unix socket (no address; the kernel names the uid).
    LocalUser(u32),
}

/// How many connections one IPv6 /64 may hold, in per-host limits: several machines (VMs on
/// one bridge) often share a /64, so it gets more than one host's share, but not 2^64.
const NETWORK_SHARES: usize = 8;

/// The keys a connection from `peer` counts against, with each key's limit.
fn host_keys(peer: SocketAddr, per_host: usize) -> Vec<(HostKey, usize)> {
    let scope = match peer {
        SocketAddr::V6(v6) => v6.scope_id(),
        SocketAddr::V4(_) => 0,
    };
    match peer.ip().to_canonical() {
        ip if ip.is_loopback() => vec![(HostKey::Loopback, per_host)],
        IpAddr::V4(v4) => vec![(HostKey::V4(v4), per_host)],
        IpAddr::V6(v6) => {
            let network = (u128::from(v6) >> 64) as u64;
            vec![
                (HostKey::V6(v6, scope), per_host),
                (
                    HostKey::V6Network(network, scope),
                    per_host.saturating_mul(NETWORK_SHARES),
                ),
            ]
        }
    }
}

impl HostCounts {
    /// A slot for one more connection from `peer`, if each of its keys is under its limit.
    fn enter(
        self: &Arc<Self>,
        peer: Option<SocketAddr>,
        peer_uid: Option<u32>,
        per_host: usize,
    ) -> Option<Option<HostSlot>> {
        let keys = match (peer, peer_uid) {
            (Some(peer), _) => host_keys(peer, per_host),
            // Over a Unix socket each local user gets one host's share.
            (None, Some(uid)) => vec![(HostKey::LocalUser(uid), per_host)],
            (None, None) => return Some(None),
        };
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if keys
            .iter()
            .any(|(key, limit)| counts.get(key).copied().unwrap_or(0) >= *limit)
        {
            return None;
        }
        for (key, _) in &keys {
            *counts.entry(*key).or_default() += 1;
        }
        Some(Some(HostSlot {
            counts: self.clone(),
            keys: keys.into_iter().map(|(key, _)| key).collect(),
        }))
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        for key in &self.keys {
            if let Some(count) = counts.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<HostKey> {
        host_keys(text.parse().unwrap(), 10)
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    }

    /// Red team of Security III: 17 loopback addresses, or the many addresses of one IPv6
    /// network, each got their own share of the connection limit; then one /64 shared one
    /// host's share, so one neighbour locked out its whole LAN.
    #[test]
    fn hosts_are_addresses_the_loopback_is_one_and_an_ipv6_network_has_a_larger_share() {
        assert_eq!(keys("127.0.0.2:1"), keys("127.0.0.1:2"));
        assert_eq!(keys("127.9.8.7:1"), keys("[::1]:1"));
        assert_eq!(keys("[::ffff:127.0.0.1]:1"), keys("127.0.0.1:1"));
        assert_ne!(keys("192.0.2.1:1"), keys("192.0.2.2:1"));
        assert_eq!(keys("[::ffff:192.0.2.1]:1"), keys("192.0.2.1:1"));
        let a = keys("[2001:db8:1:2::1]:1");
        let b = keys("[2001:db8:1:2::2]:1");
        assert_ne!(a[0], b[0], "two addresses");
        assert_eq!(a[1], b[1], "one network");
        assert_ne!(
            keys("[fe80::1%2]:1"),
            keys("[fe80::1%3]:1"),
            "link-local per interface"
        );
        let limits: Vec<usize> = host_keys("[2001:db8::1]:1".parse().unwrap(), 10)
            .into_iter()
            .map(|(_, limit)| limit)
            .collect();
        assert_eq!(limits, [10, 10 * NETWORK_SHARES]);
    }

    #[test]
    fn a_host_over_its_share_is_refused_and_its_slots_come_back() {
        let counts = Arc::new(HostCounts::default());
        let neighbour: SocketAddr = "[2001:db8::66]:1".parse().unwrap();
        let other: SocketAddr = "[2001:db8::2]:1".parse().unwrap();
        let held: Vec<_> = (0..2)
            .map(|_| counts.enter(Some(neighbour), None, 2).unwrap())
            .collect();
        assert!(counts.enter(Some(neighbour), None, 2).is_none());
        assert!(
            counts.enter(Some(other), None, 2).is_some(),
            "a neighbour on the same /64"
        );
        drop(held);
        assert!(counts.enter(Some(neighbour), None, 2).is_some());
    }

    #[test]
    fn each_local_user_gets_one_hosts_share_over_a_unix_socket() {
        let counts = Arc::new(HostCounts::default());
        let held: Vec<_> = (0..2)
            .map(|_| counts.enter(None, Some(1001), 2).unwrap())
            .collect();
        assert!(
            counts.enter(None, Some(1001), 2).is_none(),
            "user 1001 is full"
        );
        assert!(
            counts.enter(None, Some(1002), 2).is_some(),
            "others are not"
        );
        drop(held);
        assert!(counts.enter(None, Some(1001), 2).is_some());
    }
}
