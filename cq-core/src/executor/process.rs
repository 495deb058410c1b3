//! Runs commands as local processes, each in its own cgroup (or process group) and session.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, PipeWriter};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::Signal;
use tokio::net::unix::pipe;

use super::cgroup::{CgroupTree, JobCgroup};
use super::child::{
    AllowedFile, ChildFailure, ChildSpec, ChildStdio, Exit, Started, Step, UserSwitch,
};
use super::command::Executor;
use super::results::{ResultBase, ResultFile};
use crate::job::{Clearance, CommandJob, JobContext, JobId};
use crate::outcome::{Outcome, SpawnFailure};

/// How long the log is still copied after the job's processes ended.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// `PATH` of the base environment when none is configured.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The file mode creation mask jobs start with.
pub const DEFAULT_JOB_UMASK: u32 = 0o022;

/// How jobs are kept together so that nothing of one outlives it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Containment {
    /// Each job in a cgroup v2 of its own: a job has ended when its cgroup is empty, and
    /// cancel, timeout and the end of its main process kill the whole cgroup.
    Cgroup(Arc<CgroupTree>),
    /// Each job in a session and process group of its own; a process that starts a new
    /// session escapes.
    ProcessGroup,
}

impl Containment {
    /// Cgroups where this process may make them, process groups otherwise (saying why).
    pub fn detect() -> (Self, Option<String>) {
        match CgroupTree::create() {
            Ok(tree) => (Self::Cgroup(Arc::new(tree)), None),
            Err(why) => (Self::ProcessGroup, Some(why.to_string())),
        }
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        match self {
            Self::Cgroup(tree) => format!("a cgroup per job, in {}", tree.path().display()),
            Self::ProcessGroup => "a session and process group per job".to_owned(),
        }
    }
}

/// Runs each command as the leader of a new session (no controlling terminal) in its own
/// cgroup where possible, with only descriptors 0, 1 and 2 (stdin from `/dev/null`, stdout and
/// stderr to the job's log), and an environment of a small base (at least `PATH`) plus
/// `CQ_JOB_ID` plus the client's variables.
///
/// What a job may do comes with it, in its [`Clearance`]: switched to the account named
/// there, the process enters the working directory, looks the program up and checks it
/// against the allowed commands with that account's rights only.
///
/// The job ends when its main process exits; anything still running in its cgroup (or
/// process group) is then killed, so that a job cannot overlap the next one. On cancel or
/// timeout it gets `SIGTERM`, then `SIGKILL` after the grace period.
#[derive(Clone, Debug)]
pub struct ProcessExecutor {
    base_env: Vec<(String, String)>,
    cwd: PathBuf,
    kill_grace: Duration,
    umask: u32,
    containment: Containment,
    /// What jobs left that SIGKILL could not end, by the uid they ran as.
    leftovers: Arc<Mutex<HashMap<u32, Vec<Leftover>>>>,
    /// Where jobs get their result files (`CQ_RESULT_FILE`); none without.
    results: Option<Arc<ResultBase>>,
}

/// A job's processes that survived SIGKILL (in uninterruptible sleep, on a hung FUSE or NFS
/// file system): each holds a thread and descriptors until it ends, so each user may have
/// only [`MAX_LEFTOVERS`] before their jobs stop starting.
#[derive(Debug)]
struct Leftover {
    leader: Started,
    cgroup: Option<JobCgroup>,
}

impl Leftover {
    fn gone(&self) -> bool {
        self.leader.has_ended() && self.cgroup.as_ref().is_none_or(|c| !c.is_populated())
    }
}

/// How many jobs' unkillable leftovers one user may have before their jobs stop starting.
const MAX_LEFTOVERS: usize = 3;

impl Default for ProcessExecutor {
    fn default() -> Self {
        Self {
            base_env: vec![("PATH".to_owned(), DEFAULT_PATH.to_owned())],
            cwd: PathBuf::from("/"),
            kill_grace: Duration::from_secs(10),
            umask: DEFAULT_JOB_UMASK,
            containment: Containment::ProcessGroup,
            leftovers: Arc::default(),
            results: None,
        }
    }
}

impl ProcessExecutor {
    /// An executor with base environment `PATH=`[`DEFAULT_PATH`], working directory `/`,
    /// a 10 s kill grace period and process-group containment.
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

    /// Sets how jobs are contained (see [`Containment::detect`]).
    #[must_use]
    pub fn with_containment(mut self, containment: Containment) -> Self {
        self.containment = containment;
        self
    }

    /// Gives every job a result file (`CQ_RESULT_FILE`: a FIFO the executor reads while the
    /// job runs) in a directory of its own below `dir`, which the executor makes (mode 0711,
    /// in a parent only this process's user may write, e.g. `/run/cq`) and removes when it
    /// goes. What the job writes there, `KEY=VALUE` lines, travels with its outcome
    /// ([`ResultSink`](crate::ResultSink)). Without, jobs report nothing back.
    ///
    /// # Errors
    ///
    /// When `dir` cannot be made.
    pub fn with_result_dir(mut self, dir: &std::path::Path) -> io::Result<Self> {
        self.results = Some(Arc::new(ResultBase::create(dir)?));
        Ok(self)
    }

    /// Removes `dir` if an executor gave it to [`with_result_dir`](Self::with_result_dir)
    /// and is gone without removing it (its process died); says whether it did.
    pub fn remove_abandoned_result_dir(dir: &std::path::Path) -> bool {
        ResultBase::remove_abandoned(dir)
    }

    /// The containment in force.
    pub fn containment(&self) -> &Containment {
        &self.containment
    }

    /// The base environment's `PATH`.
    pub fn base_path(&self) -> &str {
        self.base_env
            .iter()
            .rev()
            .find(|(name, _)| name == "PATH")
            .map_or(DEFAULT_PATH, |(_, value)| value.as_str())
    }

    fn spawn(
        &self,
        job: &CommandJob,
        id: JobId,
        clearance: &Clearance,
        cgroup: Option<&JobCgroup>,
        output: PipeWriter,
        result_file: Option<&std::path::Path>,
    ) -> Result<Started, Outcome> {
        let allowed = clearance.commands.as_deref().map(allowed_files);
        let cgroup = match cgroup.map(JobCgroup::dir_for_child).transpose() {
            Ok(fd) => fd,
            Err(e) => return Err(other_failure("cannot open the job's cgroup", &e)),
        };
        let spec = ChildSpec {
            argv: job.argv.clone(),
            env: job_environment(&self.base_env, job, id, clearance, result_file),
            candidates: job.program_candidates(self.base_path()),
            allowed,
            cwd: job
                .cwd
                .as_ref()
                .map_or_else(|| self.cwd.clone(), PathBuf::from),
            user: clearance.run_as.as_ref().map(|a| UserSwitch {
                uid: a.uid,
                gid: a.gid,
                groups: a.groups.clone(),
            }),
            cgroup,
            umask: self.umask,
        };
        let stdio = std::fs::File::open("/dev/null")
            .map(OwnedFd::from)
            .and_then(|stdin| {
                let stdout = OwnedFd::from(output);
                let stderr = stdout.try_clone()?;
                Ok(ChildStdio {
                    stdin,
                    stdout,
                    stderr,
                })
            })
            .map_err(|e| other_failure("cannot set up the job's input and output", &e))?;
        spec.spawn(stdio)
            .map_err(|e| other_failure("cannot start the job's process", &e))
    }

    /// Ends the job: `SIGTERM` to all of it, `SIGKILL` after the grace period; returns once
    /// its main process is reaped.
    async fn stop(&self, child: &Started, cgroup: Option<&JobCgroup>) {
        child.signal_group(Signal::SIGTERM);
        if let Some(cgroup) = cgroup {
            cgroup.signal(Signal::SIGTERM);
        }
        let everything_gone = async {
            let _ = child.wait().await;
            if let Some(cgroup) = cgroup {
                let _ = cgroup.emptied().await;
            }
        };
        if tokio::time::timeout(self.kill_grace, everything_gone)
            .await
            .is_err()
        {
            self.kill_rest(child, cgroup);
            // A process in uninterruptible sleep (a hung FUSE or NFS file system) dies only
            // once its system call returns: the queue must not wait for that.
            if tokio::time::timeout(self.kill_grace, child.wait())
                .await
                .is_err()
            {
                tracing::warn!(pid = ?child.pid(), "the job's process survived SIGKILL (uninterruptible sleep?); the queue goes on without it");
            }
        }
    }

    /// A refusal if `uid` already has [`MAX_LEFTOVERS`] jobs' worth of processes that could
    /// not be killed (forgetting those that have ended since).
    fn too_many_leftovers(&self, uid: u32) -> Option<Outcome> {
        let mut leftovers = self
            .leftovers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mine = leftovers.entry(uid).or_default();
        mine.retain(|leftover| !leftover.gone());
        (mine.len() >= MAX_LEFTOVERS).then(|| Outcome::SpawnFailed {
            reason: SpawnFailure::Other,
            message: format!(
                "{} of your earlier jobs left processes that cannot be killed (uninterruptible sleep: a hung file system?); no new job of yours starts until they end",
                mine.len()
            ),
        })
    }

    /// Kills whatever is left of the job.
    fn kill_rest(&self, child: &Started, cgroup: Option<&JobCgroup>) {
        child.signal_group(Signal::SIGKILL);
        if let Some(cgroup) = cgroup {
            cgroup.kill();
        }
    }
}

#[async_trait]
impl Executor for ProcessExecutor {
    async fn run(&self, job: &CommandJob, ctx: JobContext) -> Outcome {
        let JobContext {
            id,
            clearance,
            mut log,
            cancel,
            results,
            resume,
            ..
        } = ctx;
        // A process of an earlier server cannot be found again (and was never recorded as
        // findable): running the command once more would run it twice.
        if resume.is_some() {
            return Outcome::Lost;
        }
        let uid = clearance
            .run_as
            .as_ref()
            .map_or_else(|| nix::unistd::geteuid().as_raw(), |a| a.uid);
        if let Some(refused) = self.too_many_leftovers(uid) {
            return refused;
        }
        let mut cgroup = match &self.containment {
            Containment::Cgroup(tree) => match tree.job(id) {
                Ok(cgroup) => Some(cgroup),
                Err(e) => return other_failure("cannot create the job's cgroup", &e),
            },
            Containment::ProcessGroup => None,
        };
        // Output goes through a pipe, not straight to the file, so that the log can be capped
        // and followed live.
        let (reader, writer) = match std::io::pipe() {
            Ok(pipe) => pipe,
            Err(e) => return other_failure("cannot create the output pipe", &e),
        };
        let mut result_file = self.results.as_ref().and_then(|base| {
            let owner = clearance.run_as.as_ref().map(|a| (a.uid, a.gid));
            base.job(id, owner)
                .inspect_err(|e| tracing::warn!(job = %id, error = %e, "cannot make the job's result file; it reports nothing back"))
                .ok()
        });
        let result_path = result_file.as_ref().map(ResultFile::path);
        let mut child = match self.spawn(
            job,
            id,
            &clearance,
            cgroup.as_ref(),
            writer,
            result_path.as_deref(),
        ) {
            Ok(child) => child,
            Err(outcome) => return outcome,
        };
        let mut copying = match pipe::Receiver::from_owned_fd(OwnedFd::from(reader)) {
            Ok(output) => tokio::spawn(async move { log.pump(output).await }),
            Err(e) => {
                self.kill_rest(&child, cgroup.as_ref());
                let _ = child.wait().await;
                return other_failure("cannot read the output pipe", &e);
            }
        };
        let time_limit = async {
            match job.timeout() {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let program = job.argv.first().map_or("", String::as_str);
        let cwd = job
            .cwd
            .as_ref()
            .map_or_else(|| self.cwd.clone(), PathBuf::from);
        // Set up (as the requester), exec, run: cancel and the time limit apply throughout,
        // also to a child its user stopped before its exec.
        let ran = async {
            match child.exec().await {
                Ok(()) => Ok(child.wait().await),
                Err(failure) => Err(failure),
            }
        };
        let outcome = tokio::select! {
            ran = ran => match ran {
                Ok(Ok(exit)) => exit_outcome(exit),
                Ok(Err(e)) => other_failure("cannot wait for the job's process", &e),
                Err(failure) => {
                    let _ = child.wait().await;
                    spawn_failure(program, &cwd, failure)
                }
            },
            () = cancel.cancelled() => {
                self.stop(&child, cgroup.as_ref()).await;
                Outcome::Cancelled
            }
            () = time_limit => {
                self.stop(&child, cgroup.as_ref()).await;
                Outcome::TimedOut
            }
        };
        // The leader is reaped; whatever it left behind must not run into the next job.
        self.kill_rest(&child, cgroup.as_ref());
        let mut survivors = !child.has_ended();
        if let Some(job_cgroup) = &cgroup {
            match tokio::time::timeout(self.kill_grace, job_cgroup.emptied()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(job = %id, error = %e, "cannot wait for the job's cgroup to empty");
                }
                // Killed, but not gone: in uninterruptible sleep, as above.
                Err(_) => survivors = true,
            }
        }
        if survivors {
            tracing::warn!(job = %id, uid, "processes of the job survived SIGKILL (uninterruptible sleep on a hung file system?); the queue goes on without them");
            self.leftovers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(uid)
                .or_default()
                .push(Leftover {
                    leader: child,
                    cgroup: cgroup.take(),
                });
        }
        // Everything of the job has ended: what it reported is complete.
        if let Some(file) = result_file.as_mut() {
            let text = tokio::time::timeout(Duration::from_secs(5), file.read())
                .await
                .unwrap_or_default();
            let refused = results.set_lines(&text);
            if let Some(first) = refused.first() {
                tracing::info!(job = %id, refused = refused.len(), first = %first, "result lines were refused");
            }
        }
        // Removing its directory is not on the way to the next job.
        if let Some(file) = result_file {
            tokio::task::spawn_blocking(move || drop(file));
        }
        // Copy what is still in the pipe. Without a cgroup, a process that left the group
        // (setsid) may hold it open: its output is not waited for.
        match tokio::time::timeout(OUTPUT_DRAIN, &mut copying).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(job = %id, error = %e, "cannot write the job's log"),
            Ok(Err(e)) => tracing::warn!(job = %id, error = %e, "the log copier failed"),
            Err(_) => {
                tracing::info!(job = %id, "a process that left the job still holds its output; log closed");
                copying.abort();
            }
        }
        outcome
    }
}

/// A job's whole environment: the `base`, `CQ_JOB_ID`, the client's variables, and last
/// the account's `HOME`, `USER` and `LOGNAME`, so that they name the user the job runs as.
pub(crate) fn job_environment(
    base: &[(String, String)],
    job: &CommandJob,
    id: JobId,
    clearance: &Clearance,
    result_file: Option<&std::path::Path>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<&str, &str> = BTreeMap::new();
    let id = id.to_string();
    env.extend(base.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    env.insert("CQ_JOB_ID", &id);
    env.extend(job.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let result_file = result_file.map(|p| p.to_string_lossy());
    if let Some(path) = &result_file {
        env.insert("CQ_RESULT_FILE", path);
    }
    let home;
    if let Some(account) = &clearance.run_as {
        home = account.home.to_string_lossy();
        env.insert("HOME", &home);
        env.insert("USER", &account.name);
        env.insert("LOGNAME", &account.name);
    }
    env.into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The allowed commands as the child compares them: by device and inode, run by their own
/// (canonical) path. Entries that do not exist (now) allow nothing.
pub(crate) fn allowed_files(commands: &[PathBuf]) -> Vec<AllowedFile> {
    use std::os::unix::fs::MetadataExt;
    commands
        .iter()
        .filter_map(|path| {
            let canonical = path.canonicalize().ok()?;
            let meta = std::fs::metadata(&canonical).ok()?;
            Some(AllowedFile {
                dev: meta.dev(),
                ino: meta.ino(),
                path: canonical,
            })
        })
        .collect()
}

fn exit_outcome(exit: Exit) -> Outcome {
    match exit {
        Exit::Code(code) => Outcome::Exited { code },
        Exit::Signal {
            signal,
            core_dumped,
        } => Outcome::Signaled {
            signal,
            core_dumped,
        },
    }
}

/// What a failed start tells the client. The child did everything as the requester, so the
/// messages say only what the requester could have found out itself.
pub(crate) fn spawn_failure(
    program: &str,
    cwd: &std::path::Path,
    failure: ChildFailure,
) -> Outcome {
    let os = failure.error();
    let (reason, message) = match failure.step {
        Step::WorkingDirectory => (
            kind_of(&os),
            format!("cannot enter the working directory {}: {os}", cwd.display()),
        ),
        Step::Lookup if os.kind() == io::ErrorKind::NotFound => (
            SpawnFailure::NotFound,
            format!("command not found: {program}"),
        ),
        Step::Lookup | Step::Exec => (kind_of(&os), format!("cannot run {program}: {os}")),
        Step::NotAllowed => (
            SpawnFailure::NotPermitted,
            format!("{program} is not among the commands this server runs (policy commands)"),
        ),
        Step::User => (
            SpawnFailure::Other,
            format!("cannot switch to the requester's account: {os}"),
        ),
        Step::Clone => (
            SpawnFailure::Other,
            format!("cannot start the job's process: {os}"),
        ),
        Step::Cgroup => (
            SpawnFailure::Other,
            format!("cannot put the job's process in its cgroup: {os}"),
        ),
        Step::Session | Step::Descriptors => (
            SpawnFailure::Other,
            format!("cannot set up the job's process: {os}"),
        ),
    };
    Outcome::SpawnFailed { reason, message }
}

fn kind_of(err: &io::Error) -> SpawnFailure {
    match err.kind() {
        io::ErrorKind::NotFound => SpawnFailure::NotFound,
        io::ErrorKind::PermissionDenied => SpawnFailure::PermissionDenied,
        _ => SpawnFailure::Other,
    }
}

pub(crate) fn other_failure(what: &str, err: &io::Error) -> Outcome {
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

    fn ctx(log: &std::path::Path) -> (JobContext, CancellationToken) {
        let cancel = CancellationToken::new();
        let ctx = JobContext {
            id: JobId(7),
            owner: crate::auth::Identity::local(),
            clearance: Clearance::default(),
            log: LogSink::create(log, 1 << 20),
            cancel: cancel.clone(),
            results: crate::job::ResultSink::default(),
            give_back: crate::job::GiveBack::default(),
            runner: crate::job::RunnerRecord::default(),
            resume: None,
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

    /// Red team of Security III: a requester can stop its own child before its exec. Cancel
    /// must still end the job (and free the thread that made the child). The job's cgroup is
    /// frozen before the child is made in it, so that it is held before its exec for sure.
    #[tokio::test]
    async fn cancel_ends_a_job_whose_child_is_held_before_its_exec() {
        let dir = tempfile::tempdir().unwrap();
        let (containment, why) = Containment::detect();
        let Containment::Cgroup(tree) = &containment else {
            panic!("cgroup v2 with delegation (as CI has): {why:?}");
        };
        let tree = tree.clone();
        let executor = ProcessExecutor::new()
            .with_kill_grace(Duration::from_secs(2))
            .with_containment(containment);
        let frozen = tree.path().join("job-7");
        std::fs::create_dir(&frozen).unwrap();
        std::fs::write(frozen.join("cgroup.freeze"), "1").unwrap();
        let (ctx, cancel) = ctx(&dir.path().join("log"));
        let job = CommandJob::new(["true"]);
        let run = tokio::spawn(async move { executor.run(&job, ctx).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!run.is_finished(), "the held child cannot have run");
        cancel.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("cancel ends the job")
            .unwrap();
        assert_eq!(outcome, Outcome::Cancelled);
    }

    /// Red team of the vfork change: a job killed by a real-time signal was reported as never
    /// started (nix cannot represent signals from SIGRTMIN up).
    #[tokio::test]
    async fn a_job_killed_by_a_real_time_signal_is_reported_as_signaled() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, _) = ctx(&dir.path().join("log"));
        let job = CommandJob::new(["sh", "-c", "echo ran; kill -36 $$"]);
        let outcome = ProcessExecutor::new().run(&job, ctx).await;
        assert_eq!(
            outcome,
            Outcome::Signaled {
                signal: 36,
                core_dumped: false
            }
        );
    }

    /// Red team of the vfork change: each job whose processes survive SIGKILL holds a
    /// thread; a user may have only a few such leftovers before their jobs stop starting,
    /// and starts again once they are gone. (What cannot be killed cannot be made in a test:
    /// running children stand in for them.)
    #[tokio::test]
    async fn a_user_with_too_many_unkillable_leftovers_starts_nothing_until_they_end() {
        let executor = ProcessExecutor::new();
        let null = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let mut held = Vec::new();
        for _ in 0..MAX_LEFTOVERS {
            let spec = ChildSpec {
                argv: vec!["sleep".into(), "30".into()],
                env: Vec::new(),
                candidates: vec!["/bin/sleep".into()],
                allowed: None,
                cwd: "/".into(),
                user: None,
                cgroup: None,
                umask: 0o077,
            };
            let stdio = ChildStdio {
                stdin: null(),
                stdout: null(),
                stderr: null(),
            };
            let mut leader = spec.spawn(stdio).unwrap();
            leader.exec().await.unwrap();
            held.push(leader.pid().unwrap());
            executor
                .leftovers
                .lock()
                .unwrap()
                .entry(4242)
                .or_default()
                .push(Leftover {
                    leader,
                    cgroup: None,
                });
        }
        let refused = executor.too_many_leftovers(4242);
        assert!(
            matches!(&refused, Some(Outcome::SpawnFailed { message, .. }) if message.contains("cannot be killed")),
            "{refused:?}"
        );
        assert!(executor.too_many_leftovers(4243).is_none(), "others start");
        for pid in held {
            nix::sys::signal::kill(pid, Signal::SIGKILL).unwrap();
        }
        let limit = std::time::Instant::now() + Duration::from_secs(30);
        while executor.too_many_leftovers(4242).is_some() {
            assert!(
                std::time::Instant::now() < limit,
                "the leftovers never counted as gone"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
