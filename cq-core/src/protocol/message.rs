//! The messages inside frames.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::job::{CommandJob, JobId, JobSummary, SubmitKey};
use crate::outcome::Outcome;

/// Every frame after the hello: a signed body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// A postcard-encoded [`Request`] or [`Reply`]. Kept as bytes because the credential is
    /// made over exactly these bytes.
    pub body: Vec<u8>,
    /// The sender's credential for `body`.
    pub credential: Vec<u8>,
}

/// Random bytes that tie replies to the request they answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Nonce(pub [u8; 16]);

impl Nonce {
    /// The nonce of replies that answer no decodable request.
    pub const NONE: Nonce = Nonce([0; 16]);

    /// A fresh nonce from the operating system's random source.
    ///
    /// # Panics
    ///
    /// If the operating system has no random source, which no supported system lacks.
    pub fn random() -> Self {
        let mut bytes = [0; 16];
        getrandom::fill(&mut bytes).expect("the OS random source works");
        Self(bytes)
    }
}

/// Names one request exactly: a SHA-256 digest of its body and of the credential that came
/// with it. Every reply carries the digest of the request it answers, so that a reply made
/// for another request (another user's, or an earlier one of the same user) is refused: even
/// the same body sent again with another credential is another request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestDigest(pub [u8; 32]);

impl RequestDigest {
    /// The digest of replies that answer no request the server could authenticate.
    pub const NONE: RequestDigest = RequestDigest([0; 32]);

    /// The digest of the request made of `body` and `credential`.
    pub fn of(body: &[u8], credential: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"cq-request-v1\0");
        hasher.update((body.len() as u64).to_be_bytes());
        hasher.update(body);
        hasher.update(credential);
        Self(hasher.finalize().into())
    }
}

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The server address the client dialled; a server refuses requests meant for another.
    /// Only the address and port travel (IPv6 flow info and scope id do not).
    pub destination: Option<SocketAddr>,
    /// Fresh per request, so that no two requests are alike.
    pub nonce: Nonce,
    /// What the client wants.
    pub action: Action,
}

/// What a client can ask for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Queue a command and report its events.
    Submit {
        /// The command.
        job: CommandJob,
        /// The submission's idempotency key, the same for every retry of it: a retry after a
        /// lost acknowledgement re-attaches to the job the first attempt queued.
        key: SubmitKey,
    },
    /// Report the events of an existing job (re-attach after a dropped connection). Its owner,
    /// waiters merged into it and admins may.
    Watch {
        /// The job.
        job: JobId,
    },
    /// List the running and queued jobs and the recently finished ones.
    List,
    /// Describe one job.
    Status {
        /// The job.
        job: JobId,
    },
    /// Cancel a job: a queued one is removed, a running one is stopped (all its processes get
    /// SIGTERM, then SIGKILL). Its owner and admins may; a merged waiter withdraws instead.
    Cancel {
        /// The job.
        job: JobId,
    },
    /// Send the job's output from the start; with `follow`, go on live until the job ends.
    /// Its owner and admins may.
    Log {
        /// The job.
        job: JobId,
        /// Keep streaming until the job ends, then send `Finished`; otherwise send `LogEnd`
        /// after the output logged so far.
        follow: bool,
    },
    /// Pause the queue: running jobs finish, nothing new starts (submissions are still
    /// taken). Admins only; answered with `Queue`.
    Pause,
    /// Resume a paused queue. Admins only; answered with `Queue`.
    Resume,
    /// Move a queued job ahead of every other queued job. Admins only; answered with the job
    /// (`Jobs`).
    Promote {
        /// The job.
        job: JobId,
    },
    /// How the queue is (paused, how many run and wait), for anybody the server admits;
    /// answered with `Queue`.
    QueueState,
    /// A worker (`cq_worker`) that runs nothing asks for its next job: answered with
    /// `Dispatch` once the coordinator gives it one, or `Idle` after a while (ask again).
    /// Only identities the coordinator's policy names as workers may. A worker that asks
    /// while the coordinator believes it runs a job it took has lost that job.
    Work {
        /// The worker's name, unique among the coordinator's workers.
        worker: String,
        /// What it offers; it gets only jobs whose tags it has.
        tags: Vec<String>,
        /// Random, fixed for the life of the worker process.
        instance: u64,
        /// Counts the process's requests for work. A request made no later than the one
        /// a job was handed to is an old one delivered late; a later one, or one of
        /// another process, means whoever ran the job runs nothing now: the job is lost.
        sequence: u64,
    },
    /// A worker tells the coordinator about the job it was given; answered with `Noted`.
    Report {
        /// The worker's name.
        worker: String,
        /// The job it runs.
        job: JobId,
        /// The lease of the dispatch it runs the job by.
        lease: u64,
        /// What it has to say.
        report: WorkReport,
    },
    /// The workers on other hosts that have joined, for anybody the server admits; answered
    /// with `Workers`.
    Workers,
}

/// What a listing says about a worker on another host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSummary {
    /// Its name.
    pub name: String,
    /// What it offers.
    pub tags: Vec<String>,
    /// The address it asks for work from (admins only; `None` for others).
    pub address: Option<String>,
    /// The job it runs, if it runs one.
    pub job: Option<JobId>,
    /// Milliseconds since it was last heard of.
    pub seen_ms_ago: u64,
}

/// What a worker says about the job it was given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkReport {
    /// It took the job and starts it now (before this, the coordinator may hand the same
    /// dispatch again; after it, a worker asking for work has lost the job).
    Started,
    /// A piece of the job's output: the bytes from `offset` on (a piece sent again after a
    /// lost answer overlaps what the coordinator has; it keeps each byte once).
    Output {
        /// Where `data` starts in the job's output.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Still running; nothing else to say.
    Alive,
    /// The job ended.
    Ended {
        /// How.
        outcome: Outcome,
        /// What it reported back (`KEY=VALUE`).
        results: Vec<(String, String)>,
    },
    /// Where the worker's executor runs the job, in its words (`slurm:4711`), for
    /// `--status` and `--list` on the coordinator.
    Runner {
        /// What to show (at most [`MAX_RUNNER_SHOWN`] bytes are kept).
        shown: String,
    },
}

/// The most bytes of a [`WorkReport::Runner`] the coordinator keeps.
pub const MAX_RUNNER_SHOWN: usize = 64;

/// Whose rights a dispatched job gets on the worker: the account the coordinator's policy
/// chose. The worker looks the name up in its own account database and refuses the job when
/// the uid there differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    /// The account's name.
    pub user: String,
    /// Its uid on the coordinator.
    pub uid: u32,
}

/// A server's reply to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The request this answers, or [`RequestDigest::NONE`] (an error before the request
    /// could be authenticated: it triggers nothing).
    pub request: RequestDigest,
    /// What happened.
    pub event: Event,
}

/// Something the server tells a client about its request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The job is durable on the server and queued (or merged into an equal job).
    Accepted {
        /// The job's id (the existing job's id when merged).
        job: JobId,
        /// Jobs ahead of it, including the running one.
        ahead: u32,
        /// Whether the request became a waiter of an existing job.
        merged: bool,
    },
    /// The request failed; the connection may be closed after this.
    Error {
        /// Stable code scripts can act on.
        code: ErrorCode,
        /// What failed and what to do, for a human.
        message: String,
    },
    /// The job ended.
    Finished {
        /// The job.
        job: JobId,
        /// How it ended.
        outcome: Outcome,
        /// How long it ran, in milliseconds.
        runtime_ms: u64,
        /// What it reported back (`KEY=VALUE`).
        results: Vec<(String, String)>,
    },
    /// The job's process started.
    Started {
        /// The job.
        job: JobId,
    },
    /// The answer to `List`, `Status` and `Cancel`, in pages that each fit a frame.
    Jobs {
        /// The jobs: running first, then queued in order, then finished, newest first.
        jobs: Vec<JobSummary>,
        /// Whether another page follows.
        more: bool,
    },
    /// A piece of the job's output (answer to `Log`), in order.
    Output {
        /// The job.
        job: JobId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The end of the output logged so far (answer to `Log` without `follow`).
    LogEnd {
        /// The job.
        job: JobId,
    },
    /// The answer to `Cancel` by a waiter merged into the job: it no longer waits for it;
    /// the job goes on for its owner.
    Withdrawn {
        /// The job.
        job: JobId,
    },
    /// The answer to `Pause` and `Resume`: the queue as it is now.
    Queue {
        /// Whether it is paused.
        paused: bool,
        /// Jobs running.
        running: u32,
        /// Jobs waiting.
        queued: u32,
        /// Submissions merged into running and queued jobs.
        waiters: u32,
    },
    /// The answer to `Work`: run this job now, and report on it.
    Dispatch {
        /// The job.
        job: JobId,
        /// What to run (its time limit set by the coordinator).
        command: CommandJob,
        /// Whose rights it gets; `None`: the worker's own user's.
        run_as: Option<RunAs>,
        /// The only programs it may run (absolute paths), when the policy has a list.
        commands: Option<Vec<String>>,
        /// Names this dispatch: the first `Started` names the one that runs the job, and
        /// every later report must name it too.
        lease: u64,
    },
    /// The answer to `Work` when there was nothing to run for a while: ask again.
    Idle,
    /// The answer to `Report`.
    Noted {
        /// The job is to be stopped (cancelled, or the coordinator shuts down).
        cancel: bool,
    },
    /// The answer to `Workers`.
    Workers {
        /// The workers, by name.
        workers: Vec<WorkerSummary>,
    },
}

impl Event {
    /// The job the event is about, for events that are about one.
    pub fn job(&self) -> Option<JobId> {
        match self {
            Self::Accepted { job, .. }
            | Self::Finished { job, .. }
            | Self::Started { job }
            | Self::Output { job, .. }
            | Self::LogEnd { job }
            | Self::Withdrawn { job } => Some(*job),
            Self::Dispatch { job, .. } => Some(*job),
            Self::Error { .. }
            | Self::Jobs { .. }
            | Self::Queue { .. }
            | Self::Idle
            | Self::Noted { .. }
            | Self::Workers { .. } => None,
        }
    }
}

/// A stable error code on the wire. Codes are never reused; unknown codes from newer servers
/// still print with their number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The peer's hello was not a cq hello.
    pub const BAD_HELLO: Self = Self(1);
    /// The peers speak different protocol versions.
    pub const VERSION_MISMATCH: Self = Self(2);
    /// A frame announced more than [`MAX_FRAME`](super::MAX_FRAME) bytes.
    pub const FRAME_TOO_LARGE: Self = Self(3);
    /// A frame could not be decoded.
    pub const MALFORMED: Self = Self(4);
    /// The request's credential was refused.
    pub const AUTH_FAILED: Self = Self(5);
    /// The request was addressed to another server.
    pub const WRONG_SERVER: Self = Self(6);
    /// The job cannot be run as given.
    pub const INVALID_JOB: Self = Self(7);
    /// A submit hook or policy refused the job.
    pub const REJECTED: Self = Self(8);
    /// No such job on this server.
    pub const UNKNOWN_JOB: Self = Self(9);
    /// The server is shutting down.
    pub const SHUTTING_DOWN: Self = Self(10);
    /// The peer sent nothing in time.
    pub const TIMEOUT: Self = Self(11);
    /// The server cannot take this request now (e.g. no room for a large request); trying
    /// again later may succeed.
    pub const BUSY: Self = Self(12);
    /// The server failed internally; its log says more.
    pub const INTERNAL: Self = Self(13);
    /// The requester may not do this to this job.
    pub const NOT_PERMITTED: Self = Self(14);
    /// The requester has too much queued or kept on the server.
    pub const OVER_QUOTA: Self = Self(15);
    /// The request was already received once.
    pub const REPLAYED: Self = Self(16);
    /// A worker's report is about a job the coordinator does not count as that worker's (it
    /// gave the job up, or another dispatch of it runs): the worker stops the job.
    pub const NOT_ASSIGNED: Self = Self(17);

    /// A short name for the code.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "bad-hello",
            2 => "version-mismatch",
            3 => "frame-too-large",
            4 => "malformed",
            5 => "auth-failed",
            6 => "wrong-server",
            7 => "invalid-job",
            8 => "rejected",
            9 => "unknown-job",
            10 => "shutting-down",
            11 => "timeout",
            12 => "busy",
            13 => "internal",
            14 => "not-permitted",
            15 => "over-quota",
            16 => "replayed",
            17 => "not-assigned",
            _ => "unknown-error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}
