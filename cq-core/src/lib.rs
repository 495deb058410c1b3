//! cq-core: the embeddable serial command queue.
//!
//! Clients on many hosts submit commands to one server; the server runs them strictly one at a
//! time, in arrival order unless a submit hook decides otherwise, and tells every requester how
//! its job ended. This crate holds everything that does not depend on a concrete network
//! transport or authentication method, so another daemon can embed the queue with its own.
//!
//! # Layout
//!
//! - [`job`]: what can be queued: the [`Job`] trait, [`CommandJob`], [`JobId`].
//! - [`outcome`]: how a job ended ([`Outcome`]).
//! - [`scheduler`]: the synchronous, deterministic [`Scheduler`] trait, the FIFO
//!   [`SerialScheduler`] and [`SubmitHook`]s.
//! - [`engine`]: the task that owns the scheduler and the workers' jobs (a state machine free
//!   of I/O, and the async driver that carries out what it decides)
//!   ([`Engine`], [`EngineHandle`], [`JobTicket`]).
//! - [`executor`]: runs a [`CommandJob`] as a process group ([`ProcessExecutor`]) or as a
//!   Slurm batch job ([`SlurmExecutor`]).
//! - [`transport`]: [`Listener`] / [`Connector`] traits, [`PeerInfo`], an in-memory transport.
//! - [`policy`]: who may submit what ([`SubmitPolicy`]); [`account`]: local users jobs run as.
//! - [`printable`]: text from the network made safe for terminals and logs.
//! - [`auth`]: [`CredentialSource`] (makes credentials) and [`Authenticator`] (verifies them).
//! - [`protocol`]: the wire format: hello, messages, framing.
//! - [`store`]: the durable record of jobs ([`Store`], [`SqliteStore`], [`MemoryStore`]).
//! - [`server`]: the network server that feeds an engine ([`Server`]).
//! - [`client`]: the network client ([`Client`]).
//! - [`worker`]: a worker on another host that runs the coordinator's jobs
//!   ([`worker::Worker`], behind `client` and `process`).
//!
//! # Cargo features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `sqlite` | on | [`SqliteStore`] (SQLite built from its bundled sources: most of a clean build) |
//! | `process` | on | [`ProcessExecutor`]: commands as processes, a cgroup each, switched to the requester |
//! | `server` | on | [`Server`] and its hook and notice programs (needs `process`) |
//! | `client` | on | [`Client`] |
//!
//! With none of them (`default-features = false`), the engine, the scheduler, hooks, the
//! in-memory store and in-process jobs remain: a queue for a daemon's own work, without
//! SQLite, sockets or child processes.
//!
//! # Embedding
//!
//! A daemon that only needs to serialise its own work starts an [`Engine`] and submits
//! in-process [`Job`]s through its [`EngineHandle`]; no network is involved. To accept
//! commands from the network too, wrap the same handle in a [`Server`].

#![warn(missing_docs, unreachable_pub)]

pub mod account;
pub mod auth;
#[cfg(feature = "client")]
pub mod client;
pub mod engine;
pub mod executor;
pub mod job;
pub mod outcome;
pub mod policy;
pub mod printable;
pub mod protocol;
pub mod scheduler;
#[cfg(feature = "server")]
pub mod server;
pub mod store;
pub mod transport;
#[cfg(all(feature = "client", feature = "process"))]
pub mod worker;

pub use auth::{
    AuthError, AuthMethod, Authenticator, Credential, CredentialSource, Identity, ReplyKey,
    Verified,
};
#[cfg(feature = "client")]
pub use client::{Client, ClientError, Dispatch, JobEvent, Progress, Reconnect, Submission};
pub use engine::{
    Caller, Cancelled, Engine, EngineConfig, EngineEvent, EngineHandle, EngineStopped, JobOutput,
    JobResult, JobState, JobTicket, OutputPiece, QueueState, Reviewer, ShutdownMode, SubmitError,
    SubmitOptions, TaskFailed, TaskTicket, UserLimits,
};
#[cfg(feature = "process")]
pub use executor::{Containment, ProcessExecutor, SlurmExecutor, SlurmOptions};
pub use executor::{Executor, LogSink};
pub use job::{
    Clearance, CommandJob, GiveBack, InvalidJob, InvalidResult, Job, JobContext, JobId, JobPhase,
    JobSummary, MAX_RESULT_KEY, MAX_RESULT_VALUE, MAX_RESULTS, ResultSink, RunnerRecord, SubmitKey,
    check_result,
};
pub use outcome::{Outcome, SpawnFailure};
pub use policy::{AccessCheck, Admitted, PolicyRefusal, SharedPolicy, SubmitPolicy};
pub use scheduler::{
    AcceptAll, Decision, DedupScope, DuplicateJobs, HookChain, JobInfo, QueueSource, QueueView,
    Scheduler, SerialScheduler, SubmitHook, WorkerInfo,
};
#[cfg(feature = "server")]
pub use server::{Server, ServerConfig};
#[cfg(feature = "sqlite")]
pub use store::SqliteStore;
pub use store::{JobRecord, MemoryStore, Pending, Store, StoreError, StoredJob};
pub use transport::{
    Connector, Listener, PeerInfo, PendingConnection, TlsPeer, TransportError, UnixPeer,
};

/// The attribute for implementing cq-core's async traits ([`Job`], [`Executor`],
/// [`Authenticator`], [`Listener`]...), re-exported so that embedders use the same version.
pub use async_trait::async_trait;
/// Fires when a job is to stop ([`JobContext::cancel`]); re-exported for embedders.
pub use tokio_util::sync::CancellationToken;
