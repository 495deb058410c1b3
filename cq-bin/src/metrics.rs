//! `cq_server --metrics ADDR`: OpenMetrics (Prometheus) text on `GET /metrics`.
//!
//! Counters come from the engine's event stream; the queue's gauges are read from the
//! engine at each scrape. Nothing names a job, a user or a command: the endpoint says how
//! busy the queue is, not what is in it. It is off unless asked for; bind it to a local or
//! monitoring-only address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use cq_core::server::{Refusal, ServerStats};
use cq_core::{EngineEvent, EngineHandle, SqliteStore};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;

/// Scrapes served at once; more wait for a turn.
const SCRAPERS: usize = 8;
/// The most of a request read.
const REQUEST_LIMIT: usize = 8 * 1024;
/// Time a scraper gets to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The store's commits, carried into the registry at each scrape.
#[derive(Debug)]
struct StoreMeters {
    store: Arc<SqliteStore>,
    commits: Counter,
    seconds: Counter<f64, AtomicU64>,
    /// What was carried over last time: (commits, seconds).
    carried: std::sync::Mutex<(u64, f64)>,
}

impl StoreMeters {
    fn update(&self) {
        let mut carried = self
            .carried
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let commits = self.store.commit_count();
        let seconds = self.store.commit_time().as_secs_f64();
        self.commits.inc_by(commits.saturating_sub(carried.0));
        self.seconds.inc_by((seconds - carried.1).max(0.0));
        *carried = (commits, seconds);
    }
}

/// The server's own counters, carried into the registry at each scrape.
#[derive(Debug)]
struct ServerMeters {
    stats: Arc<ServerStats>,
    accepted: Counter,
    open: Gauge,
    refused: Family<ReasonLabel, Counter>,
    /// What was carried over last time: (connections, refusals by kind).
    carried: std::sync::Mutex<(u64, [u64; Refusal::ALL.len()])>,
}

impl ServerMeters {
    fn update(&self) {
        let mut carried = self
            .carried
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let accepted = self.stats.connections_accepted();
        self.accepted.inc_by(accepted.saturating_sub(carried.0));
        carried.0 = accepted;
        for (i, why) in Refusal::ALL.into_iter().enumerate() {
            let now = self.stats.refused(why);
            self.refused
                .get_or_create(&ReasonLabel { reason: why.word() })
                .inc_by(now.saturating_sub(carried.1[i]));
            carried.1[i] = now;
        }
        self.open
            .set(i64::try_from(self.stats.connections_open()).unwrap_or(i64::MAX));
    }
}

/// The counters and gauges.
#[derive(Debug)]
struct Meters {
    registry: Registry,
    accepted: Counter,
    merged: Counter,
    refused: Counter,
    started: Counter,
    finished: Family<OutcomeLabel, Counter>,
    runtime: Histogram,
    queued: Gauge,
    running: Gauge,
    waiters: Gauge,
    paused: Gauge,
    server: Option<ServerMeters>,
    store: Option<StoreMeters>,
}

impl Meters {
    fn new(stats: Option<Arc<ServerStats>>, store: Option<Arc<SqliteStore>>) -> Self {
        let mut registry = Registry::with_prefix("cq");
        let accepted = Counter::default();
        let merged = Counter::default();
        let refused = Counter::default();
        let started = Counter::default();
        let finished = Family::<OutcomeLabel, Counter>::default();
        // 1 s to about 16 hours, each bucket 3 times the last.
        let runtime = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            1.0, 3.0, 11,
        ));
        let queued = Gauge::default();
        let running = Gauge::default();
        let waiters = Gauge::default();
        let paused = Gauge::default();
        registry.register(
            "jobs_accepted",
            "Jobs accepted into the queue",
            accepted.clone(),
        );
        registry.register(
            "jobs_merged",
            "Submissions merged into an equal job",
            merged.clone(),
        );
        registry.register(
            "jobs_refused",
            "Submissions refused (hook, quota, merge policy)",
            refused.clone(),
        );
        registry.register("jobs_started", "Jobs started", started.clone());
        registry.register("jobs_finished", "Jobs ended, by outcome", finished.clone());
        registry.register(
            "job_runtime_seconds",
            "Run time of ended jobs",
            runtime.clone(),
        );
        registry.register("queue_queued", "Jobs waiting", queued.clone());
        registry.register("queue_running", "Jobs running", running.clone());
        registry.register(
            "queue_waiters",
            "Submissions merged into jobs not yet ended",
            waiters.clone(),
        );
        registry.register(
            "queue_paused",
            "1 while an admin has paused the queue",
            paused.clone(),
        );
        let server = stats.map(|stats| {
            let meters = ServerMeters {
                stats,
                accepted: Counter::default(),
                open: Gauge::default(),
                refused: Family::default(),
                carried: std::sync::Mutex::new((0, [0; Refusal::ALL.len()])),
            };
            registry.register(
                "connections_accepted",
                "Connections taken",
                meters.accepted.clone(),
            );
            registry.register(
                "connections_open",
                "Connections being served",
                meters.open.clone(),
            );
            registry.register(
                "requests_refused",
                "Requests and connections turned away, by reason (authentication, policy, limits)",
                meters.refused.clone(),
            );
            meters
        });
        let store = store.map(|store| {
            let meters = StoreMeters {
                store,
                commits: Counter::default(),
                seconds: Counter::default(),
                carried: std::sync::Mutex::new((0, 0.0)),
            };
            registry.register(
                "store_commits",
                "Transactions the job store committed (submissions that arrive together share one)",
                meters.commits.clone(),
            );
            registry.register(
                "store_commit_seconds",
                "Time the store's transactions took, fsync included (divide by the commits for the mean latency)",
                meters.seconds.clone(),
            );
            meters
        });
        Self {
            server,
            store,
            registry,
            accepted,
            merged,
            refused,
            started,
            finished,
            runtime,
            queued,
            running,
            waiters,
            paused,
        }
    }

    fn count(&self, event: &EngineEvent) {
        match event {
            EngineEvent::Accepted { .. } => {
                self.accepted.inc();
            }
            EngineEvent::Merged { .. } => {
                self.merged.inc();
            }
            EngineEvent::Refused { .. } => {
                self.refused.inc();
            }
            EngineEvent::Started { .. } => {
                self.started.inc();
            }
            EngineEvent::Finished { result, .. } => {
                self.finished
                    .get_or_create(&OutcomeLabel {
                        outcome: result.outcome.word().to_owned(),
                    })
                    .inc();
                self.runtime.observe(result.runtime.as_secs_f64());
            }
            _ => {}
        }
    }

    async fn render(&self, engine: &EngineHandle) -> String {
        if let Ok(state) = engine.queue_state().await {
            let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            self.queued.set(gauge(state.queued));
            self.running.set(gauge(state.running));
            self.waiters.set(gauge(state.waiters));
            self.paused.set(i64::from(state.paused));
        }
        if let Some(server) = &self.server {
            server.update();
        }
        if let Some(store) = &self.store {
            store.update();
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        text
    }
}

/// Serves the metrics of `engine` (and of the server's connections, with `stats`, and of
/// its `store`) on `listener` until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    engine: EngineHandle,
    stats: Option<Arc<ServerStats>>,
    store: Option<Arc<SqliteStore>>,
    stop: CancellationToken,
) {
    let meters = Arc::new(Meters::new(stats, store));
    let counting = {
        let meters = meters.clone();
        let mut events = engine.events();
        let stop = stop.clone();
        async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    event = events.recv() => match event {
                        Ok(event) => meters.count(&event),
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "the metrics fell behind the engine's events");
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        }
    };
    tokio::spawn(counting);
    let turns = Arc::new(Semaphore::new(SCRAPERS));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(turn) = turns.clone().try_acquire_owned() else {
            // Busy: a scraper that is turned away tries again at its next interval.
            drop(stream);
            continue;
        };
        let meters = meters.clone();
        let engine = engine.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &meters, &engine).await {
                tracing::debug!(%peer, error = %e, "metrics: a scrape failed");
            }
            drop(turn);
        });
    }
}

/// Reads one request and answers it: the metrics for `GET /metrics`, 404 for other paths,
/// 405 for other methods.
async fn answer(
    mut stream: TcpStream,
    meters: &Meters,
    engine: &EngineHandle,
) -> std::io::Result<()> {
    let mut request = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < REQUEST_LIMIT {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let line = request
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_owned())
        .unwrap_or_default();
    let mut words = line.split_whitespace();
    let (status, body) = match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics")) => ("200 OK", meters.render(engine).await),
        (Some("GET"), _) => (
            "404 Not Found",
            "not found: the metrics are at /metrics\n".to_owned(),
        ),
        _ => ("405 Method Not Allowed", "GET /metrics only\n".to_owned()),
    };
    let kind = if status.starts_with("200") {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Binds `addr` for [`serve`] (before anything else starts, so that a taken address fails
/// the start).
///
/// # Errors
///
/// When the address cannot be bound.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
