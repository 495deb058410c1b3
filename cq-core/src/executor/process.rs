//! Runs commands as local processes, each in its own process group.

use std::io::{self, PipeWriter};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};

use super::command::Executor;
use crate::account::Account;
use crate::auth::Identity;
use crate::job::{CommandJob, JobContext, JobId};
use crate::outcome::{Outcome, SpawnFailure};

/// How long the log is still copied after the job's processes ended.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// `PATH` of the base environment when none is configured.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs each command as a process-group leader with stdin from `/dev/null`, stdout and
/// stderr to the job's log, and an environment of a small base (at least `PATH`) plus
/// `CQ_JOB_ID` plus the client's variables.
///
/// The job ends when its main process exits; anything still running in its process group
/// is then killed, so that a job cannot overlap the next one. On cancel or timeout the group
/// gets `SIGTERM`, then `SIGKILL` after the grace period.
#[derive(Clone, Debug)]
pub struct ProcessExecutor {
    base_env: Vec<(String, String)>,
    cwd: PathBuf,
    kill_grace: Duration,
    run_as: RunAs,
}

/// Whose rights a job runs with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunAs {
    /// The server's own user, whoever asked.
    #[default]
    Server,
    /// The requester's uid, gid and supplementary groups, with its `HOME`, `USER` and
    /// `LOGNAME`; needs a server running as root. The switch is made by util-linux's
    /// `setpriv` (at this path) between fork and exec: it sets the groups, which the standard
    /// library cannot do without `unsafe` code in the child.
    Requester {
        /// Path of the `setpriv` program.
        setpriv: PathBuf,
    },
}

impl RunAs {
    /// Where `setpriv` is on this host, if anywhere in the usual places.
    pub fn find_setpriv() -> Option<PathBuf> {
        [
            "/usr/bin/setpriv",
            "/bin/setpriv",
            "/usr/sbin/setpriv",
            "/sbin/setpriv",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    }
}

impl Default for ProcessExecutor {
    fn default() -> Self {
        Self {
            base_env: vec![("PATH".to_owned(), DEFAULT_PATH.to_owned())],
            cwd: PathBuf::from("/"),
            kill_grace: Duration::from_secs(10),
            run_as: RunAs::Server,
        }
    }
}

impl ProcessExecutor {
    /// An executor with base environment `PATH=`[`DEFAULT_PATH`], working directory `/`
    /// and a 10 s kill grace period.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the base environment every job starts from.
    #[must_use]
    pub fn with_base_env(mut self, env: Vec<(String, String)>) -> Self {
        self.base_env = env;
        self
    }

    /// Sets the working directory of jobs that do not name one.
    #[must_use]
    pub fn with_cwd(mut self, cwd: impl Into<PathBuf>) -> Self {
        self.cwd = cwd.into();
        self
    }

    /// Sets how long a job gets between `SIGTERM` and `SIGKILL`.
    #[must_use]
    pub fn with_kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// Sets whose rights jobs run with.
    #[must_use]
    pub fn with_run_as(mut self, run_as: RunAs) -> Self {
        self.run_as = run_as;
        self
    }

    /// The account `owner`'s job switches to, or `None` when it runs as this process.
    fn switch_to(&self, owner: &Identity) -> Result<Option<(Account, &Path)>, Outcome> {
        let RunAs::Requester { setpriv } = &self.run_as else {
            return Ok(None);
        };
        if owner.uid == nix::unistd::geteuid().as_raw() {
            return Ok(None);
        }
        let account = Account::lookup(owner.uid, owner.gid).map_err(|e| Outcome::SpawnFailed {
            reason: SpawnFailure::Other,
            message: e.to_string(),
        })?;
        Ok(Some((account, setpriv)))
    }

    fn spawn(
        &self,
        job: &CommandJob,
        id: JobId,
        owner: &Identity,
        output: PipeWriter,
    ) -> Result<Child, Outcome> {
        let (program, args) = job.argv.split_first().ok_or_else(|| Outcome::SpawnFailed {
            reason: SpawnFailure::NotFound,
            message: "empty command".to_owned(),
        })?;
        let cwd = job.cwd.as_deref().map_or(self.cwd.as_path(), Path::new);
        if !cwd.is_dir() {
            return Err(Outcome::SpawnFailed {
                reason: SpawnFailure::NotFound,
                message: format!(
                    "working directory {} does not exist on the server",
                    cwd.display()
                ),
            });
        }
        let err = output
            .try_clone()
            .map_err(|e| other_failure("cannot duplicate the output pipe", &e))?;
        let switch = self.switch_to(owner)?;
        let mut command = match &switch {
            None => Command::new(program),
            Some((account, setpriv)) => {
                // setpriv reports a missing program only as exit 127 in the log: look first,
                // so that the client hears "command not found" as it would without a switch.
                if job.find_program(self.base_path(), &self.cwd).is_none() {
                    return Err(spawn_failure(program, &io::ErrorKind::NotFound.into()));
                }
                let mut command = Command::new(setpriv);
                command
                    .arg(format!("--reuid={}", account.uid))
                    .arg(format!("--regid={}", account.gid))
                    .arg(groups_option(&account.groups))
                    .arg("--")
                    .arg(program);
                command
            }
        };
        command
            .args(args)
            .env_clear()
            .envs(self.base_env.iter().map(|(k, v)| (k, v)))
            .env("CQ_JOB_ID", id.to_string())
            .envs(job.env.iter().map(|(k, v)| (k, v)));
        if let Some((account, _)) = &switch {
            // Last, so that they name the user the job really runs as.
            command
                .env("HOME", &account.home)
                .env("USER", &account.name)
                .env("LOGNAME", &account.name);
        }
        command
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        // Spawning consumes nothing: the command keeps our copies of the pipe's write end,
        // which must be gone for the log to see end-of-file when the job's processes end.
        let child = command.spawn().map_err(|e| spawn_failure(program, &e));
        drop(command);
        child
    }

    /// The base environment's `PATH`.
    fn base_path(&self) -> &str {
        self.base_env
            .iter()
            .rev()
            .find(|(name, _)| name == "PATH")
            .map_or(DEFAULT_PATH, |(_, value)| value.as_str())
    }

    /// SIGTERM to the group, SIGKILL after the grace period, and reap the leader.
    async fn stop(&self, child: &mut Child, group: Pid) {
        signal_group(group, Signal::SIGTERM);
        if tokio::time::timeout(self.kill_grace, child.wait())
            .await
            .is_err()
        {
            signal_group(group, Signal::SIGKILL);
            let _ = child.wait().await;
        }
    }
}

#[async_trait]
impl Executor for ProcessExecutor {
    async fn run(&self, job: &CommandJob, ctx: JobContext) -> Outcome {
        let JobContext {
            id,
            owner,
            mut log,
            cancel,
        } = ctx;
        // Output goes through a pipe, not straight to the file, so that the log can be capped
        // and followed live.
        let (reader, writer) = match std::io::pipe() {
            Ok(pipe) => pipe,
            Err(e) => return other_failure("cannot create the output pipe", &e),
        };
        let mut child = match self.spawn(job, id, &owner, writer) {
            Ok(child) => child,
            Err(outcome) => return outcome,
        };
        let mut copying = match pipe::Receiver::from_owned_fd(OwnedFd::from(reader)) {
            Ok(output) => tokio::spawn(async move { log.pump(output).await }),
            Err(e) => {
                let _ = child.start_kill();
                return other_failure("cannot read the output pipe", &e);
            }
        };
        let Some(group) = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw)
        else {
            // Already reaped, which only happens if it exited and was waited for.
            return Outcome::Lost;
        };
        let time_limit = async {
            match job.timeout() {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            status = child.wait() => match status {
                Ok(status) => exit_outcome(status),
                Err(e) => other_failure("cannot wait for the job's process", &e),
            },
            () = cancel.cancelled() => {
                self.stop(&mut child, group).await;
                Outcome::Cancelled
            }
            () = time_limit => {
                self.stop(&mut child, group).await;
                Outcome::TimedOut
            }
        };
        // The leader is reaped; whatever it left behind in its group must not run into the
        // next job.
        signal_group(group, Signal::SIGKILL);
        // Copy what is still in the pipe. A process that left the group (setsid) may hold it
        // open: its output is not waited for.
        match tokio::time::timeout(OUTPUT_DRAIN, &mut copying).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(job = %id, error = %e, "cannot write the job's log"),
            Ok(Err(e)) => tracing::warn!(job = %id, error = %e, "the log copier failed"),
            Err(_) => {
                tracing::info!(job = %id, "a process that left the job's group still holds its output; log closed");
                copying.abort();
            }
        }
        outcome
    }
}

fn groups_option(groups: &[u32]) -> String {
    if groups.is_empty() {
        return "--clear-groups".to_owned();
    }
    let list: Vec<String> = groups.iter().map(u32::to_string).collect();
    format!("--groups={}", list.join(","))
}

fn signal_group(group: Pid, signal: Signal) {
    match killpg(group, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(%group, ?signal, error = %e, "cannot signal the job's process group")
        }
    }
}

fn exit_outcome(status: ExitStatus) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::Exited { code },
        (None, Some(signal)) => Outcome::Signaled {
            signal,
            core_dumped: status.core_dumped(),
        },
        (None, None) => Outcome::Lost,
    }
}

fn spawn_failure(program: &str, err: &io::Error) -> Outcome {
    match err.kind() {
        io::ErrorKind::NotFound => Outcome::SpawnFailed {
            reason: SpawnFailure::NotFound,
            message: format!("command not found: {program}"),
        },
        io::ErrorKind::PermissionDenied => Outcome::SpawnFailed {
            reason: SpawnFailure::PermissionDenied,
            message: format!("permission denied: {program}"),
        },
        _ => other_failure(&format!("cannot start {program}"), err),
    }
}

fn other_failure(what: &str, err: &io::Error) -> Outcome {
    Outcome::SpawnFailed {
        reason: SpawnFailure::Other,
        message: format!("{what}: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::executor::LogSink;
    use crate::job::JobId;

    fn ctx(log: &Path) -> (JobContext, CancellationToken) {
        let cancel = CancellationToken::new();
        let ctx = JobContext {
            id: JobId(7),
            owner: Identity::local(),
            log: LogSink::create(log, 1 << 20),
            cancel: cancel.clone(),
        };
        (ctx, cancel)
    }

    #[tokio::test]
    async fn output_env_and_status_reach_the_log_and_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("7.log");
        let job = CommandJob::new([
            "sh",
            "-c",
            "echo out $CQ_JOB_ID $FOO; echo err >&2; read x; exit 3",
        ])
        .with_env("FOO", "bar");
        let (ctx, _) = ctx(&log);
        let outcome = ProcessExecutor::new().run(&job, ctx).await;
        assert_eq!(outcome, Outcome::Exited { code: 3 });
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "out 7 bar\nerr\n");
    }

    #[tokio::test]
    async fn missing_program_is_reported_as_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, _) = ctx(&dir.path().join("log"));
        let outcome = ProcessExecutor::new()
            .run(&CommandJob::new(["no-such-cq-command"]), ctx)
            .await;
        assert!(
            matches!(&outcome, Outcome::SpawnFailed { reason: SpawnFailure::NotFound, message } if message.contains("no-such-cq-command")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn cancel_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // The shell and its background grandchild both hold the FIFO's write end, so the reader
        // sees end-of-file exactly when every process of the job is dead.
        let script = format!(
            "exec 3>{}; sleep 300 & echo ready >&3; wait",
            fifo.display()
        );
        let (ctx, cancel) = ctx(&dir.path().join("log"));
        let executor = ProcessExecutor::new().with_kill_grace(Duration::from_secs(5));
        let job = CommandJob::new(["sh", "-c", &script]);
        let run = tokio::spawn(async move { executor.run(&job, ctx).await });
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let reader = tokio::task::spawn_blocking(move || {
            use std::io::{BufRead, Read};
            let mut reader = std::io::BufReader::new(std::fs::File::open(&fifo).unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            ready_tx.send(line).unwrap();
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest).unwrap();
        });
        let limit = Duration::from_secs(10);
        assert_eq!(
            tokio::time::timeout(limit, ready_rx)
                .await
                .unwrap()
                .unwrap(),
            "ready\n"
        );
        cancel.cancel();
        let outcome = tokio::time::timeout(limit, run).await.unwrap().unwrap();
        assert_eq!(outcome, Outcome::Cancelled);
        tokio::time::timeout(limit, reader)
            .await
            .expect("a process of the cancelled job survived")
            .unwrap();
    }

    #[tokio::test]
    async fn time_limit_kills_and_reports_timed_out() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, _) = ctx(&dir.path().join("log"));
        let mut job = CommandJob::new(["sleep", "300"]);
        job.timeout_ms = Some(0);
        let outcome = ProcessExecutor::new().run(&job, ctx).await;
        assert_eq!(outcome, Outcome::TimedOut);
    }
}
