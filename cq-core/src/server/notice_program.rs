//! A notice program: an admin's program run once for every finished job (mail, chat,
//! webhooks are its business), beyond the job's own waiters.
//!
//! It gets the finished job as one JSON object on stdin, and its output is ignored:
//!
//! ```text
//! {"id": 42, "owner": "portage(250)@192.0.2.21", "owner_uid": 250,
//!  "command": ["emerge", "--buildpkgonly", "=app-misc/foo-1"], "cwd": null,
//!  "outcome": "exited", "exit_status": 0, "signal": null, "runtime_ms": 61250,
//!  "waiters": 2, "results": {"BUILD_ID": "7"}}
//! ```
//!
//! The job's `-E` variables are left out (they may hold secrets). Notices run one at a
//! time, in the order jobs end, each within a time limit (then it is killed with its process
//! group), in a new session with only descriptors 0–2, a clean environment and, when given
//! one, an unprivileged account's rights. A failing program is logged; it never holds up the
//! queue. At most [`NOTICE_BACKLOG`] notices wait (each at most [`NOTICE_LIMIT`] bytes: a
//! longer command is shown by its program name); past that, new notices are dropped, and the
//! log says which.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::account::Account;
use crate::engine::EngineEvent;
use crate::job::JobSummary;

/// Runs an external program for every finished job.
#[derive(Clone, Debug)]
pub struct NoticeProgram {
    path: PathBuf,
    time_limit: Duration,
    run_as: Option<Account>,
}

#[derive(Serialize)]
struct Notice<'a> {
    id: u64,
    owner: &'a str,
    owner_uid: u32,
    command: &'a [String],
    cwd: Option<&'a str>,
    outcome: Option<&'static str>,
    exit_status: Option<u8>,
    signal: Option<i32>,
    runtime_ms: Option<u64>,
    waiters: u32,
    results: BTreeMap<&'a str, &'a str>,
}

impl NoticeProgram {
    /// Runs `path` for every finished job, killing it after `time_limit`.
    pub fn new(path: impl Into<PathBuf>, time_limit: Duration) -> Self {
        Self {
            path: path.into(),
            time_limit,
            run_as: None,
        }
    }

    /// Runs the program with `account`'s rights instead of this process's.
    #[must_use]
    pub fn run_as(mut self, account: Account) -> Self {
        self.run_as = Some(account);
        self
    }

    /// Runs the program for each finished job among `events` until they end (the engine
    /// stopped).
    ///
    /// Finished jobs are taken off the engine's stream at once and kept, as the notices
    /// themselves (no variables, at most [`NOTICE_LIMIT`] bytes each), in a queue of
    /// [`NOTICE_BACKLOG`]: a slow program holds neither the engine's events nor much memory.
    /// Notices that do not fit are dropped, and the log says so.
    pub async fn serve(self, mut events: broadcast::Receiver<EngineEvent>) {
        let (notices, mut pending) =
            tokio::sync::mpsc::channel::<(crate::JobId, Vec<u8>)>(NOTICE_BACKLOG);
        let path = self.path.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(EngineEvent::Finished { job, .. }) => {
                        let Some(notice) = encode(&job) else { continue };
                        if notices.try_send((job.id, notice)).is_err() {
                            tracing::warn!(notice = %path.display(), job = %job.id, "the notice program is too far behind: this notice is dropped");
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(notice = %path.display(), missed, "notices of finished jobs were dropped");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        while let Some((id, notice)) = pending.recv().await {
            self.notify(id, &notice).await;
        }
    }

    async fn notify(&self, id: crate::JobId, input: &[u8]) {
        let deadline = tokio::time::Instant::now() + self.time_limit;
        if let Err(why) = super::hook_program::converse(
            &self.path,
            self.run_as.as_ref(),
            input,
            deadline,
            self.time_limit,
        )
        .await
        {
            tracing::warn!(notice = %self.path.display(), job = %id, reason = %why, "the notice program failed");
        }
    }
}

/// Notices kept waiting for the program.
pub const NOTICE_BACKLOG: usize = 256;

/// The largest notice: a job whose command makes it longer is shown by its program name.
pub const NOTICE_LIMIT: usize = 64 * 1024;

/// The notice of `job`, as JSON.
fn encode(job: &JobSummary) -> Option<Vec<u8>> {
    let encoded = encode_with(job, &job.command)?;
    if encoded.len() <= NOTICE_LIMIT {
        return Some(encoded);
    }
    let program: Vec<String> = job.command.first().cloned().into_iter().collect();
    encode_with(job, &program)
}

fn encode_with(job: &JobSummary, command: &[String]) -> Option<Vec<u8>> {
    {
        let notice = Notice {
            id: job.id.0,
            owner: &job.owner,
            owner_uid: job.owner_uid,
            command,
            cwd: job.cwd.as_deref(),
            outcome: job.outcome.as_ref().map(crate::Outcome::word),
            exit_status: job.outcome.as_ref().map(crate::Outcome::exit_status),
            signal: job.outcome.as_ref().and_then(crate::Outcome::signal),
            runtime_ms: job.runtime_ms,
            waiters: job.waiters,
            results: job
                .results
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        };
        match serde_json::to_vec(&notice) {
            Ok(encoded) => Some(encoded),
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "cannot encode a notice");
                None
            }
        }
    }
}
