//! What can be queued: the [`Job`] trait and the network's kind of job, [`CommandJob`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::account::Account;
use crate::auth::Identity;
use crate::executor::LogSink;
use crate::outcome::Outcome;

/// Identifies one job on one server for its whole life; ids grow in acceptance order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A submission's idempotency key: random, chosen once per job a client submits and sent
/// again with every retry of that submission, so that a retry after a lost acknowledgement
/// re-attaches to the job instead of queueing it twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SubmitKey(pub [u8; 16]);

impl SubmitKey {
    /// A fresh key from the operating system's random source.
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

/// Something the engine can run, one at a time with every other job.
///
/// Network clients submit [`CommandJob`]s, which the server wraps with its executor; an
/// embedding daemon may implement this trait for its own in-process work and queue it through
/// the same [`Engine`](crate::Engine).
#[async_trait]
pub trait Job: Send + 'static {
    /// One line that says what the job does, for logs and listings.
    fn summary(&self) -> String;

    /// Runs the job to its end. The job should stop soon after `ctx.cancel` fires and report
    /// [`Outcome::Cancelled`].
    async fn run(self: Box<Self>, ctx: JobContext) -> Outcome;
}

/// What a running job gets from the engine.
#[derive(Debug)]
pub struct JobContext {
    /// The job's id.
    pub id: JobId,
    /// Who submitted it.
    pub owner: Identity,
    /// What the start check allowed it: whose rights, which programs.
    pub clearance: Clearance,
    /// Where the job's output goes.
    pub log: LogSink,
    /// Fires when the job is to be stopped (cancel request or server shutdown).
    pub cancel: CancellationToken,
    /// What the job reports back to everyone waiting for it (`KEY=VALUE` results).
    pub results: ResultSink,
    /// Lets the executor give back a job it never started (its worker went away before
    /// taking it): the engine then queues it again, in its old place.
    pub give_back: GiveBack,
    /// Lets an executor that hands the job elsewhere (a worker on another host) record
    /// where, so that a restarted server finds the job again instead of calling it lost.
    pub runner: RunnerRecord,
    /// Where the job already runs, when it is being found again after a restart (what the
    /// executor recorded with [`runner`](Self::runner)); `None` for a new run.
    pub resume: Option<String>,
}

/// See [`JobContext::runner`].
#[derive(Clone, Default)]
pub struct RunnerRecord {
    target: RunnerTarget,
    /// What users see of where the job runs (`--status`, `runner` in JSON).
    shown: RunnerShown,
}

/// What users see of where a job runs, as its executor last [showed](RunnerRecord::show) it;
/// shared between the record the executor holds and the engine, which shows it.
#[derive(Clone, Debug, Default)]
pub(crate) struct RunnerShown(Arc<std::sync::Mutex<Option<String>>>);

impl RunnerShown {
    fn set(&self, text: String) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(text);
    }

    /// What was shown last.
    pub(crate) fn get(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Where a [`RunnerRecord`] keeps the reference.
#[derive(Clone, Default)]
enum RunnerTarget {
    /// Nowhere (an engine without store): a restart cannot find the run.
    #[default]
    Nowhere,
    /// In the store, with the job: the server finds it again.
    Store(Arc<dyn crate::store::Store>, JobId, String),
    /// In a file (a worker's spool): the worker finds it again.
    File(std::path::PathBuf),
}

impl std::fmt::Debug for RunnerRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &self.target {
            RunnerTarget::Nowhere => "nowhere".to_owned(),
            RunnerTarget::Store(_, id, worker) => format!("job {id} on {worker}"),
            RunnerTarget::File(path) => path.display().to_string(),
        };
        f.debug_tuple("RunnerRecord").field(&target).finish()
    }
}

impl RunnerRecord {
    /// Records in `store` that job `id` runs on `worker`.
    pub fn new(store: Arc<dyn crate::store::Store>, id: JobId, worker: String) -> Self {
        Self {
            target: RunnerTarget::Store(store, id, worker),
            shown: RunnerShown::default(),
        }
    }

    /// Records in the file at `path` (replaced whole each time, synced before
    /// [`record`](Self::record) resolves).
    pub fn to_file(path: impl Into<std::path::PathBuf>) -> Self {
        Self {
            target: RunnerTarget::File(path.into()),
            shown: RunnerShown::default(),
        }
    }

    /// Records `reference` (the executor's own words for the run); resolves once it is
    /// durable. A record that keeps nothing (an engine without store) resolves at once.
    /// What users see is [`show`](Self::show)n apart.
    pub fn record(&self, reference: String) -> crate::store::Pending<()> {
        match &self.target {
            RunnerTarget::Store(store, id, worker) => {
                store.record_runner(*id, worker.clone(), reference)
            }
            RunnerTarget::Nowhere => crate::store::Pending::ready(Ok(())),
            RunnerTarget::File(path) => {
                crate::store::Pending::ready(write_synced(path, reference.as_bytes()).map_err(
                    |e| crate::store::StoreError::Database {
                        what: "record where a job runs",
                        reason: format!("{}: {e}", path.display()),
                    },
                ))
            }
        }
    }

    /// Tells users where the job runs, in the executor's words (`slurm:123`): `--status`
    /// and the `runner` of JSON listings show it while the job runs.
    pub fn show(&self, text: String) {
        self.shown.set(text);
    }

    /// What [`show`](Self::show) last said.
    pub fn shown(&self) -> Option<String> {
        self.shown.get()
    }

    /// This record, showing what its executor says in `shown` (which the engine reads).
    #[must_use]
    pub(crate) fn showing_in(mut self, shown: RunnerShown) -> Self {
        self.shown = shown;
        self
    }
}

/// Replaces the file at `path` with `data`, synced: a new file renamed over it.
/// (Private to this user, mode 0600; its directory synced too, so that the new name
/// survives a power loss.)
pub(crate) fn write_synced(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = std::path::PathBuf::from(temporary);
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(data)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// See [`JobContext::give_back`].
#[derive(Clone, Debug, Default)]
pub struct GiveBack(Arc<std::sync::atomic::AtomicBool>);

impl GiveBack {
    /// Says that the job never started: whatever the executor then returns, the engine
    /// queues the job again.
    pub fn give_back(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the executor gave the job back.
    pub fn given_back(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The most results one job may report.
pub const MAX_RESULTS: usize = 64;
/// The longest result key, in bytes.
pub const MAX_RESULT_KEY: usize = 64;
/// The longest result value, in bytes.
pub const MAX_RESULT_VALUE: usize = 4096;

/// What a job reports back with its outcome: `KEY=VALUE` pairs (for a Portage build, say,
/// the binary package's `BUILD_ID`) that travel to every waiter, are stored with the job,
/// and reach post scripts as `CQ_RESULT_<KEY>`. Keys are letters, digits and `_` (not
/// starting with a digit), values one line of printable text; both are bounded.
#[derive(Clone, Debug, Default)]
pub struct ResultSink(Arc<std::sync::Mutex<Vec<(String, String)>>>);

impl ResultSink {
    /// Records `key` = `value` (a later value for the same key replaces it).
    ///
    /// # Errors
    ///
    /// When the key or value is not allowed ([`check_result`]) or the job already has
    /// [`MAX_RESULTS`].
    pub fn set(&self, key: &str, value: &str) -> Result<(), InvalidResult> {
        check_result(key, value)?;
        let mut results = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(existing) = results.iter_mut().find(|(k, _)| k == key) {
            value.clone_into(&mut existing.1);
            return Ok(());
        }
        if results.len() >= MAX_RESULTS {
            return Err(InvalidResult::TooMany);
        }
        results.push((key.to_owned(), value.to_owned()));
        Ok(())
    }

    /// Records each `KEY=VALUE` line of `text`; returns why lines were refused.
    pub fn set_lines(&self, text: &str) -> Vec<InvalidResult> {
        let mut refused = Vec::new();
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            let set = match line.split_once('=') {
                Some((key, value)) => self.set(key.trim(), value),
                None => Err(InvalidResult::NotKeyValue),
            };
            if let Err(why) = set {
                refused.push(why);
            }
        }
        refused
    }

    /// The results so far.
    pub fn get(&self) -> Vec<(String, String)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Why a job's result was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidResult {
    /// The line has no `=`.
    #[error("a result line is not KEY=VALUE")]
    NotKeyValue,
    /// The key is empty, too long, starts with a digit or has other than letters, digits, `_`.
    #[error(
        "result key {0:?}: letters, digits and _ only, not starting with a digit, at most {MAX_RESULT_KEY} bytes"
    )]
    BadKey(String),
    /// The value is too long or not one line of printable text.
    #[error("result {0}: one line of printable text, at most {MAX_RESULT_VALUE} bytes")]
    BadValue(String),
    /// The job already reported [`MAX_RESULTS`].
    #[error("more than {MAX_RESULTS} results")]
    TooMany,
}

/// Checks one result (see [`ResultSink`]).
///
/// # Errors
///
/// What is wrong with it.
pub fn check_result(key: &str, value: &str) -> Result<(), InvalidResult> {
    let key_ok = !key.is_empty()
        && key.len() <= MAX_RESULT_KEY
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    if !key_ok {
        let shown: String = crate::printable::printable(key).chars().take(80).collect();
        return Err(InvalidResult::BadKey(shown));
    }
    if value.len() > MAX_RESULT_VALUE || value.chars().any(crate::printable::is_unsafe) {
        return Err(InvalidResult::BadValue(key.to_owned()));
    }
    Ok(())
}

/// What a command job was cleared to do when it came to start (see
/// [`AccessCheck::clear`](crate::policy::AccessCheck::clear)): whose rights it runs with and which programs
/// it may run. The default runs anything as the server's own user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Clearance {
    /// The account whose rights the job gets; `None` keeps the server's own user.
    pub run_as: Option<Account>,
    /// The only programs the job may run (absolute paths); `None` allows any.
    pub commands: Option<Vec<PathBuf>>,
}

/// A command sent by a client: the program and its arguments, extra environment, where to run.
///
/// This is the wire form of a job; its fields are part of the protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CommandJob {
    /// Program and arguments; `argv[0]` is looked up in the job's `PATH`.
    pub argv: Vec<String>,
    /// Variables set for the job on top of the server's base environment, in order.
    pub env: Vec<(String, String)>,
    /// Working directory on the server; the server's default when absent.
    pub cwd: Option<String>,
    /// Free-form labels (e.g. a build profile) that schedulers may route on.
    pub tags: Vec<String>,
    /// Wall-clock limit in milliseconds, after which the job's process group is killed.
    pub timeout_ms: Option<u64>,
    /// Jobs of one lane never run at the same time, on any worker (e.g. every build that
    /// writes one shared PKGDIR).
    pub lane: Option<String>,
}

impl CommandJob {
    /// A job that runs `argv` with no extra environment.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Adds one variable to the job's environment.
    #[must_use]
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Sets the job's working directory on the server.
    #[must_use]
    pub fn with_cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// Where the program `argv[0]` names may be, in the order `execvp` tries them: a name
    /// with a slash as it is (relative to the job's working directory), a bare name in each
    /// directory of the job's `PATH` (`base_path` when the client set none). Nothing is looked
    /// up here: that happens in the job's process, with the requester's rights.
    pub fn program_candidates(&self, base_path: &str) -> Vec<PathBuf> {
        let Some(program) = self.argv.first() else {
            return Vec::new();
        };
        if program.contains('/') {
            return vec![PathBuf::from(program)];
        }
        // The last assignment wins, as it does in the job's environment.
        let path = self
            .env
            .iter()
            .rev()
            .find(|(name, _)| name == "PATH")
            .map_or(base_path, |(_, value)| value.as_str());
        path.split(':')
            .map(|dir| if dir.is_empty() { "." } else { dir })
            .map(|dir| Path::new(dir).join(program))
            .collect()
    }

    /// Bytes of the job's strings (arguments, environment, working directory, tags): what it
    /// costs to keep queued.
    pub fn byte_size(&self) -> u64 {
        // Each string costs at least a byte more on the wire (its length), empty or not.
        let strings = self.argv.iter().map(|a| a.len() + 1).sum::<usize>()
            + self
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>()
            + self.cwd.as_ref().map_or(0, |c| c.len() + 1)
            + self.tags.iter().map(|t| t.len() + 1).sum::<usize>()
            + self.lane.as_ref().map_or(0, |l| l.len() + 1);
        strings as u64
    }

    /// The job's time limit, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }

    /// Checks what a process cannot be started with, so that bad input is refused at submit
    /// time with a reason instead of failing later.
    ///
    /// # Errors
    ///
    /// Returns the first problem found.
    pub fn validate(&self) -> Result<(), InvalidJob> {
        let Some(program) = self.argv.first() else {
            return Err(InvalidJob::EmptyCommand);
        };
        let size = self.byte_size();
        if size > MAX_JOB_BYTES {
            return Err(InvalidJob::TooLarge { size });
        }
        if program.is_empty() {
            return Err(InvalidJob::EmptyCommand);
        }
        if let Some(arg) = self.argv.iter().find(|a| a.contains('\0')) {
            return Err(InvalidJob::NulByte {
                what: format!("argument {arg:?}"),
            });
        }
        for (name, value) in &self.env {
            check_env_name(name)?;
            if value.contains('\0') {
                return Err(InvalidJob::NulByte {
                    what: format!("value of {name}"),
                });
            }
        }
        if self.cwd.as_ref().is_some_and(|cwd| cwd.contains('\0')) {
            return Err(InvalidJob::NulByte {
                what: "working directory".into(),
            });
        }
        if self.tags.len() > MAX_TAGS {
            return Err(InvalidJob::TooManyTags {
                count: self.tags.len(),
            });
        }
        let bad =
            |t: &String| t.is_empty() || t.len() > MAX_TAG_BYTES || t.chars().any(char::is_control);
        if let Some(tag) = self.tags.iter().chain(&self.lane).find(|t| bad(t)) {
            return Err(InvalidJob::BadTag { tag: tag.clone() });
        }
        Ok(())
    }

    /// The command line as one shell-like line, for logs: quoted where a shell would split,
    /// control characters escaped (a newline in an argument never starts a log line).
    pub fn summary(&self) -> String {
        let mut line = String::new();
        for arg in &self.argv {
            if !line.is_empty() {
                line.push(' ');
            }
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                line.push_str(arg);
            } else {
                line.push('\'');
                line.push_str(&crate::printable::printable(arg).replace('\'', r"'\''"));
                line.push('\'');
            }
        }
        line
    }
}

/// Checks that `name` can be an environment variable name.
///
/// # Errors
///
/// [`InvalidJob::BadEnvName`] when it is empty or holds `=` or a NUL byte.
pub fn check_env_name(name: &str) -> Result<(), InvalidJob> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(InvalidJob::BadEnvName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// What the engine queues: a command (data: stored, restored after a restart, run by the
/// engine's executor when its turn comes) or an in-process job (a closure, lost at a
/// restart).
pub(crate) enum Work {
    /// A command line, shared with the job's [`JobInfo`](crate::scheduler::JobInfo).
    Command(Arc<CommandJob>),
    /// An in-process job.
    Local(Box<dyn Job>),
}

impl Work {
    /// One line that says what it does.
    pub(crate) fn summary(&self) -> String {
        match self {
            Self::Command(command) => command.summary(),
            Self::Local(job) => job.summary(),
        }
    }

    /// The command, if it is one.
    pub(crate) fn command(&self) -> Option<&Arc<CommandJob>> {
        match self {
            Self::Command(command) => Some(command),
            Self::Local(_) => None,
        }
    }

    /// What it counts against its owner's queued bytes.
    pub(crate) fn size(&self) -> u64 {
        match self {
            Self::Command(command) => command.byte_size(),
            Self::Local(job) => job.summary().len() as u64,
        }
    }
}

/// What a listing says about one job: the wire form of `cq_client --list` and `--status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    /// The job's id.
    pub id: JobId,
    /// Who submitted it, as text (`user(uid)@host`).
    pub owner: String,
    /// The submitter's uid.
    pub owner_uid: u32,
    /// The command line (or an in-process job's description as one word).
    pub command: Vec<String>,
    /// The variables the submitter gave the job (`-E`); empty in the limited view.
    pub env: Vec<(String, String)>,
    /// The working directory the submitter gave; `None` in the limited view.
    pub cwd: Option<String>,
    /// Where it is in its life.
    pub phase: JobPhase,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub accepted_ms: u64,
    /// When it started.
    pub started_ms: Option<u64>,
    /// When it ended.
    pub finished_ms: Option<u64>,
    /// How it ended.
    pub outcome: Option<Outcome>,
    /// How long it ran, in milliseconds.
    pub runtime_ms: Option<u64>,
    /// How many submissions were merged into it (each is one more waiter).
    pub waiters: u32,
    /// What it reported back (once finished; empty in the limited view).
    pub results: Vec<(String, String)>,
    /// What a worker must offer to run it.
    pub tags: Vec<String>,
    /// Its lane: no two jobs of one lane run at the same time.
    pub lane: Option<String>,
    /// The worker it runs on, while it runs.
    pub worker: Option<String>,
    /// Why it waits, while it is queued and something other than the jobs ahead of it holds
    /// it back (no connected worker offers its tags, the queue is paused).
    pub waiting: Option<String>,
    /// Where its executor runs it, in the executor's words (`slurm:123` for Slurm's job
    /// 123), while it runs.
    pub runner: Option<String>,
}

impl JobSummary {
    /// What others than its owner and the admins see of a job: who, when, in which state,
    /// how it ended, and the program's name (the file name of its first word); never its
    /// arguments, environment, or why it could not start (which names its paths).
    pub fn limited(mut self) -> Self {
        self.outcome = self.outcome.map(Outcome::limited);
        self.env = Vec::new();
        self.cwd = None;
        self.results = Vec::new();
        let program = self
            .command
            .first()
            // The file name first: a directory on the way may hold a space. (An in-process
            // job's one-line summary then keeps its first word.)
            .map(|p| p.rsplit('/').next().unwrap_or(p))
            .and_then(|name| name.split_whitespace().next())
            .unwrap_or_default()
            .to_owned();
        self.command = vec![program];
        self
    }
}

/// A job's phase in a [`JobSummary`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum JobPhase {
    /// Waiting for its turn.
    Queued,
    /// Running now.
    Running,
    /// Ended.
    Finished,
}

impl JobPhase {
    /// The word for listings.
    pub fn word(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Finished => "finished",
        }
    }
}

/// Milliseconds since the Unix epoch, as listings show times.
pub(crate) fn epoch_ms(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The longest tag of a job, in bytes.
pub const MAX_TAG_BYTES: usize = 256;

/// The most tags a job may have (or a worker offer): every free worker compares them with
/// the queued jobs'.
pub const MAX_TAGS: usize = 64;

/// The most bytes a [`CommandJob`] may hold (arguments, environment, working directory,
/// tags): far more than any real command line, little enough to keep many queued.
pub const MAX_JOB_BYTES: u64 = 256 * 1024;

/// Why a [`CommandJob`] cannot be run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidJob {
    /// The environment variable name is empty or holds `=` or NUL.
    #[error(
        "invalid environment variable name {name:?}: names must be non-empty and hold no '=' or NUL"
    )]
    BadEnvName {
        /// The offending name.
        name: String,
    },
    /// There is no program to run.
    #[error("empty command: give the program to run after '--'")]
    EmptyCommand,
    /// The job holds more than [`MAX_JOB_BYTES`].
    #[error(
        "the job is too large: {size} bytes of arguments, environment and working directory, and the server takes at most {MAX_JOB_BYTES}"
    )]
    TooLarge {
        /// Its size.
        size: u64,
    },
    /// A tag or lane is empty, too long, or holds control characters.
    #[error(
        "invalid tag or lane {tag:?}: each is 1 to {MAX_TAG_BYTES} bytes of printable text (e.g. arch=amd64)"
    )]
    BadTag {
        /// The offending tag.
        tag: String,
    },
    /// The job has more than [`MAX_TAGS`] tags.
    #[error("the job has {count} tags; a job may have at most {MAX_TAGS}")]
    TooManyTags {
        /// How many it has.
        count: usize,
    },
    /// A string that becomes a C string holds a NUL byte.
    #[error("{what} contains a NUL byte")]
    NulByte {
        /// Which part of the job.
        what: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::SpawnFailure;

    #[test]
    fn the_limited_view_keeps_neither_arguments_nor_paths_of_a_failed_start() {
        let full = JobSummary {
            id: JobId(3),
            owner: "alice(1000)".into(),
            owner_uid: 1000,
            command: vec![
                "/home/alice/acme merger/bin/build".into(),
                "--token=s3cret".into(),
            ],
            env: vec![("TOKEN".into(), "s3cret".into())],
            cwd: Some("/home/alice/secret-project".into()),
            phase: JobPhase::Finished,
            accepted_ms: 1,
            started_ms: Some(2),
            finished_ms: Some(3),
            outcome: Some(Outcome::SpawnFailed {
                reason: SpawnFailure::NotFound,
                message: "cannot enter the working directory /home/alice/secret-project".into(),
            }),
            runtime_ms: Some(1),
            tags: Vec::new(),
            lane: None,
            worker: None,
            waiting: None,
            runner: None,
            waiters: 0,
            results: vec![(
                "PKG".into(),
                "/home/alice/secret-project/pkg.gpkg.tar".into(),
            )],
        };
        let seen = full.limited();
        assert_eq!(seen.command, ["build"]);
        assert!(seen.env.is_empty() && seen.cwd.is_none() && seen.results.is_empty());
        let Some(Outcome::SpawnFailed { reason, message }) = &seen.outcome else {
            panic!("{seen:?}");
        };
        assert_eq!(*reason, SpawnFailure::NotFound);
        assert!(!message.contains("alice"), "{message}");
    }

    #[test]
    fn validate_refuses_what_exec_cannot_take() {
        assert_eq!(
            CommandJob::default().validate(),
            Err(InvalidJob::EmptyCommand)
        );
        assert_eq!(
            CommandJob::new([""]).validate(),
            Err(InvalidJob::EmptyCommand)
        );
        let bad_name = CommandJob::new(["true"]).with_env("", "x");
        assert!(matches!(
            bad_name.validate(),
            Err(InvalidJob::BadEnvName { .. })
        ));
        let eq_name = CommandJob::new(["true"]).with_env("A=B", "x");
        assert!(matches!(
            eq_name.validate(),
            Err(InvalidJob::BadEnvName { .. })
        ));
        let nul = CommandJob::new(["echo", "a\0b"]);
        assert!(matches!(nul.validate(), Err(InvalidJob::NulByte { .. })));
        // Red team: 200,000 tags per job made every scheduling pass slow for everybody.
        let mut tagged = CommandJob::new(["true"]);
        tagged.tags = vec!["a".into(); MAX_TAGS + 1];
        assert!(matches!(
            tagged.validate(),
            Err(InvalidJob::TooManyTags { .. })
        ));
        tagged.tags.truncate(MAX_TAGS);
        assert_eq!(tagged.validate(), Ok(()));
        tagged.lane = Some("a\nb".into());
        assert!(matches!(tagged.validate(), Err(InvalidJob::BadTag { .. })));
        assert_eq!(
            CommandJob::new(["true"]).with_env("USE", "").validate(),
            Ok(())
        );
    }

    #[test]
    fn summary_quotes_what_a_shell_would_split() {
        let job = CommandJob::new([
            "emerge",
            "--buildpkgonly",
            "=dev-lang/rust-1.95",
            "a b",
            "it's",
        ]);
        assert_eq!(
            job.summary(),
            r"emerge --buildpkgonly =dev-lang/rust-1.95 'a b' 'it'\''s'"
        );
        let forged = CommandJob::new(["true", "x\nINFO accepted job=1 owner=root", "\x1b[2J"]);
        assert_eq!(
            forged.summary(),
            r"true 'x\nINFO accepted job=1 owner=root' '\x1b[2J'"
        );
    }
}
