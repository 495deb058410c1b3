//! An external submit hook: a program that decides about each incoming job.
//!
//! For admins who do not write Rust. The program gets the incoming job and the queue as JSON
//! on stdin and answers on stdout with one JSON object:
//!
//! ```text
//! stdin:  {"job": {"command": ["emerge", ...], "env": {"USE": "X"}, "cwd": null,
//!                  "owner": "portage(250)@192.0.2.21", "owner_uid": 250, "owner_gid": 250},
//!          "queue": [{"id": 41, "state": "running", "owner": "...", "owner_uid": 250,
//!                     "command": [...], "waiters": 0}, ...]}
//! stdout: {"decision": "accept"}
//!       | {"decision": "reject", "reason": "no builds during the backup"}
//!       | {"decision": "merge", "job": 41}
//! ```
//!
//! A program that fails, exceeds its time limit (it is then killed) or answers anything else
//! gets the fallback decision instead, and the reason is logged: a broken hook never wedges
//! the server. A configured hook is a policy, so the fallback an admin should choose is to
//! reject. Only a few hooks run at once (more submissions wait for a turn, within the same
//! time limit), each in a new session with only descriptors 0–2, a clean environment, and,
//! when given one, an unprivileged account's rights.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Semaphore;

use crate::account::Account;
use crate::auth::Identity;
use crate::engine::Reviewer;
use crate::executor::child::{ChildSpec, ChildStdio, Exit, UserSwitch};
use crate::executor::{DEFAULT_JOB_UMASK, DEFAULT_PATH};
use crate::job::{CommandJob, JobId, JobPhase, JobSummary};
use crate::scheduler::Decision;

/// Most bytes read from a hook's answer.
const ANSWER_LIMIT: u64 = 64 * 1024;

/// Hooks that run at once unless set otherwise.
pub const DEFAULT_HOOK_CONCURRENCY: usize = 4;

/// Runs an external program on every submission.
#[derive(Clone, Debug)]
pub struct HookProgram {
    path: PathBuf,
    time_limit: Duration,
    fallback: Decision,
    run_as: Option<Account>,
    turns: Arc<Semaphore>,
}

#[derive(Serialize)]
struct HookJob<'a> {
    command: &'a [String],
    env: BTreeMap<&'a str, &'a str>,
    cwd: Option<&'a str>,
    owner: String,
    owner_uid: u32,
    owner_gid: u32,
}

#[derive(Serialize)]
struct HookQueued<'a> {
    id: u64,
    state: &'static str,
    owner: &'a str,
    owner_uid: u32,
    command: &'a [String],
    waiters: u32,
}

#[derive(Serialize)]
struct HookInput<'a> {
    job: HookJob<'a>,
    queue: Vec<HookQueued<'a>>,
}

#[derive(Deserialize)]
#[serde(tag = "decision", rename_all = "lowercase", deny_unknown_fields)]
enum HookAnswer {
    Accept,
    Merge { job: u64 },
    Reject { reason: String },
}

/// Asks the program about `job`, submitted by `owner`, given the `queue` (jobs that are not
/// finished are shown to it).
#[async_trait::async_trait]
impl Reviewer for HookProgram {
    async fn review(&self, job: &CommandJob, owner: &Identity, queue: &[JobSummary]) -> Decision {
        self.ask_in_time(job, owner, queue).await
    }
}

impl HookProgram {
    /// Runs `path` with a time limit; `fallback` is the decision when it fails. It runs as
    /// this process's user unless [`run_as`](Self::run_as) says otherwise, and at most
    /// [`DEFAULT_HOOK_CONCURRENCY`] at once.
    pub fn new(path: impl Into<PathBuf>, time_limit: Duration, fallback: Decision) -> Self {
        Self {
            path: path.into(),
            time_limit,
            fallback,
            run_as: None,
            turns: Arc::new(Semaphore::new(DEFAULT_HOOK_CONCURRENCY)),
        }
    }

    /// Runs the hook with `account`'s rights (e.g. `nobody`), not the server's.
    #[must_use]
    pub fn run_as(mut self, account: Account) -> Self {
        self.run_as = Some(account);
        self
    }

    /// Runs at most `hooks` at once.
    #[must_use]
    pub fn with_concurrency(mut self, hooks: usize) -> Self {
        self.turns = Arc::new(Semaphore::new(hooks.max(1)));
        self
    }

    async fn ask_in_time(
        &self,
        job: &CommandJob,
        owner: &Identity,
        queue: &[JobSummary],
    ) -> Decision {
        // Waiting for a turn counts against the time limit too: under a flood, submissions
        // get the fallback rather than an unbounded wait (or an unbounded number of hooks).
        let deadline = tokio::time::Instant::now() + self.time_limit;
        let asked = match tokio::time::timeout_at(deadline, self.turns.acquire()).await {
            Ok(Ok(_turn)) => self.ask(job, owner, queue, deadline).await,
            _ => Err(format!(
                "no turn within {:?}: other submissions' hooks were running",
                self.time_limit
            )),
        };
        match asked {
            Ok(decision) => decision,
            Err(why) => {
                tracing::warn!(hook = %self.path.display(), reason = %why, fallback = ?self.fallback, "submit hook failed");
                self.fallback.clone()
            }
        }
    }

    async fn ask(
        &self,
        job: &CommandJob,
        owner: &Identity,
        queue: &[JobSummary],
        deadline: tokio::time::Instant,
    ) -> Result<Decision, String> {
        let input = HookInput {
            job: HookJob {
                command: &job.argv,
                env: job
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
                cwd: job.cwd.as_deref(),
                owner: owner.to_string(),
                owner_uid: owner.uid,
                owner_gid: owner.gid,
            },
            queue: queue
                .iter()
                .filter(|j| j.phase != JobPhase::Finished)
                .map(|j| HookQueued {
                    id: j.id.0,
                    state: j.phase.word(),
                    owner: &j.owner,
                    owner_uid: j.owner_uid,
                    command: &j.command,
                    waiters: j.waiters,
                })
                .collect(),
        };
        let input =
            serde_json::to_vec(&input).map_err(|e| format!("cannot encode its input: {e}"))?;
        let answer = converse(
            &self.path,
            self.run_as.as_ref(),
            &input,
            deadline,
            self.time_limit,
        )
        .await?;
        match serde_json::from_slice::<HookAnswer>(&answer) {
            Ok(HookAnswer::Accept) => Ok(Decision::Accept),
            Ok(HookAnswer::Merge { job }) => Ok(Decision::Merge(JobId(job))),
            Ok(HookAnswer::Reject { reason }) => Ok(Decision::Reject(reason)),
            Err(e) => Err(format!(
                "unreadable answer ({e}): {:?}",
                String::from_utf8_lossy(&answer)
            )),
        }
    }
}

/// Runs the program at `path` (as `run_as`, when given) in a new session with only
/// descriptors 0–2 and a clean environment, writes `input` to its stdin, and returns what it
/// wrote to stdout (at most [`ANSWER_LIMIT`] bytes) once it exited 0. A program still running
/// at `deadline` is killed, with its whole process group.
pub(crate) async fn converse(
    path: &std::path::Path,
    run_as: Option<&Account>,
    input: &[u8],
    deadline: tokio::time::Instant,
    time_limit: Duration,
) -> Result<Vec<u8>, String> {
    let spec = ChildSpec {
        argv: vec![path.to_string_lossy().into_owned()],
        env: vec![("PATH".to_owned(), DEFAULT_PATH.to_owned())],
        candidates: vec![path.to_owned()],
        allowed: None,
        cwd: PathBuf::from("/"),
        user: run_as.map(|a| UserSwitch {
            uid: a.uid,
            gid: a.gid,
            groups: a.groups.clone(),
        }),
        cgroup: None,
        umask: DEFAULT_JOB_UMASK,
    };
    let io = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| format!("cannot {what}: {e}")
    };
    let (stdin_read, stdin_write) = std::io::pipe().map_err(io("make its input pipe"))?;
    let (stdout_read, stdout_write) = std::io::pipe().map_err(io("make its output pipe"))?;
    let stdio = ChildStdio {
        stdin: OwnedFd::from(stdin_read),
        stdout: OwnedFd::from(stdout_write),
        stderr: std::fs::File::open("/dev/null")
            .map(OwnedFd::from)
            .map_err(io("open /dev/null"))?,
    };
    let mut child = spec.spawn(stdio).map_err(io("run it"))?;
    let mut stdin =
        pipe::Sender::from_owned_fd(OwnedFd::from(stdin_write)).map_err(io("write its input"))?;
    let mut stdout =
        pipe::Receiver::from_owned_fd(OwnedFd::from(stdout_read)).map_err(io("read its answer"))?;
    let conversation = async {
        if let Err(failure) = child.exec().await {
            return Err(format!("cannot run it: {}", failure.error()));
        }
        // A program that does not read its input must not block us: ignore write errors.
        let _ = stdin.write_all(input).await;
        drop(stdin);
        let mut answer = Vec::new();
        (&mut stdout)
            .take(ANSWER_LIMIT)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let exit = child.wait().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((exit, answer))
    };
    let (exit, answer) = match tokio::time::timeout_at(deadline, conversation).await {
        Ok(done) => done?,
        Err(_) => {
            // The whole group: a shell script's children too.
            child.signal_group(Signal::SIGKILL);
            return Err(format!("no answer within {time_limit:?}; killed"));
        }
    };
    match exit {
        Exit::Code(0) => Ok(answer),
        Exit::Code(code) => Err(format!("it failed with exit status: {code}")),
        Exit::Signal { signal, .. } => Err(format!("it was killed by signal {signal}")),
    }
}
