//! Runs commands on a Slurm cluster: each job becomes a Slurm batch job, submitted with the
//! requester's rights, followed until Slurm says it ended.
//!
//! Why a batch job (`sbatch`) and not `srun`: the batch job does not depend on the process
//! that submitted it, so a coordinator killed while it runs finds it again after a restart
//! and reports its real end. Its output goes to a file in a directory of its own (which must
//! be on a file system the compute nodes share with this host); the executor copies it into
//! the job's log as it grows, so `--log` and `--follow` work as for local jobs.
//!
//! Why the requester's rights and not root's `--uid`: Slurm then checks the requester's own
//! access (partitions, accounts, limits), as it would for a job they submitted themselves;
//! with `--uid`, Slurm checks root's access to the partition. It also works for a worker that
//! is not root (its jobs run as its own user).
//!
//! Crash safety: the job's name and directory are recorded (durably, through
//! [`JobContext::runner`]) before it is submitted, and its Slurm job id after; a restarted
//! coordinator looks the job up by id, or by name when it stopped between the two; a job
//! Slurm does not have then is recorded lost (and anything that comes under its name is
//! cancelled): it never runs twice.

mod cluster;
mod files;
mod state;

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::time::Instant;

pub use cluster::PrivateSlurm;

use self::files::{JobFiles, OwnedReader};
use self::state::{Reading, SlurmEnd, SlurmState};
use super::child::{ChildSpec, ChildStdio, UserSwitch};
use super::command::Executor;
use super::process::{DEFAULT_JOB_UMASK, DEFAULT_PATH, allowed_files, job_environment};
use crate::job::{Clearance, CommandJob, JobContext, JobId};
use crate::outcome::{Outcome, SpawnFailure};

/// How a Slurm executor submits and follows jobs.
#[derive(Clone, Debug)]
pub struct SlurmOptions {
    /// The partition jobs go to; `None` leaves it to Slurm (its default partition).
    pub partition: Option<String>,
    /// Further `sbatch` options, given before cq's own (which win where they overlap), e.g.
    /// `--account=build` or `--mem=4G`.
    pub sbatch_args: Vec<String>,
    /// The Slurm configuration file (`SLURM_CONF`); `None` uses Slurm's default.
    pub slurm_conf: Option<PathBuf>,
    /// Where each job gets a directory for its output and results: must exist, belong to
    /// this process's user, be writable by nobody else, and be shared with the compute nodes
    /// (on one host, any such directory).
    pub output_dir: PathBuf,
    /// Where `sbatch`, `scontrol`, `scancel`, `squeue` and `sacct` are; `None` searches
    /// [`DEFAULT_PATH`].
    pub bin_dir: Option<PathBuf>,
    /// Longest pause between two looks at a running job's state (the first looks come
    /// sooner: short jobs end soon).
    pub poll: Duration,
    /// Working directory of jobs that name none.
    pub cwd: PathBuf,
    /// The environment every job starts from (at least `PATH`).
    pub base_env: Vec<(String, String)>,
}

impl SlurmOptions {
    /// Options for jobs in `partition` (`None`: Slurm's default), with their output in
    /// `output_dir`.
    pub fn new(partition: Option<String>, output_dir: impl Into<PathBuf>) -> Self {
        Self {
            partition,
            sbatch_args: Vec::new(),
            slurm_conf: None,
            output_dir: output_dir.into(),
            bin_dir: None,
            poll: Duration::from_millis(500),
            cwd: PathBuf::from("/"),
            base_env: vec![("PATH".to_owned(), DEFAULT_PATH.to_owned())],
        }
    }
}

/// Why a Slurm executor cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// A Slurm program is not installed where it was looked for.
    #[error("{program} not found in {searched}: is the Slurm client installed?")]
    MissingProgram {
        /// The program.
        program: &'static str,
        /// Where it was looked for.
        searched: String,
    },
    /// The output directory is unfit for jobs' output.
    #[error("the Slurm output directory {path}: {why}")]
    OutputDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Slurm did not answer, or refused what was asked.
    #[error("{0}")]
    Slurm(String),
}

/// The Slurm programs the executor runs.
#[derive(Clone, Debug)]
struct Programs {
    sbatch: PathBuf,
    scontrol: PathBuf,
    scancel: PathBuf,
    squeue: PathBuf,
    sacct: PathBuf,
    sinfo: PathBuf,
}

impl Programs {
    fn find(bin_dir: Option<&Path>) -> Result<Self, SlurmError> {
        let searched = bin_dir.map_or_else(|| DEFAULT_PATH.to_owned(), |d| d.display().to_string());
        let find = |program: &'static str| {
            searched
                .split(':')
                .map(|dir| Path::new(dir).join(program))
                .find(|path| path.is_file())
                .ok_or_else(|| SlurmError::MissingProgram {
                    program,
                    searched: searched.clone(),
                })
        };
        Ok(Self {
            sbatch: find("sbatch")?,
            scontrol: find("scontrol")?,
            scancel: find("scancel")?,
            squeue: find("squeue")?,
            sacct: find("sacct")?,
            sinfo: find("sinfo")?,
        })
    }
}

/// Runs each job as a Slurm batch job (see the module docs): in the configured partition,
/// with the requester's rights, environment, working directory and time limit; output into
/// the job's log; exit code and signal as Slurm records them; cancel and timeout through
/// `scancel`. Its jobs can be found again after a restart.
///
/// The allowed commands of a [`Clearance`] are checked on this host (the program as it
/// resolves here must be an allowed one); the node runs that program's path, so the
/// cluster must have the same programs there.
#[derive(Clone, Debug)]
pub struct SlurmExecutor {
    options: SlurmOptions,
    programs: Programs,
    /// The batch script every job runs: it runs the command from its arguments.
    script: PathBuf,
}

/// Most bytes of `sbatch`'s or another Slurm program's answer kept for a message.
const MAX_ANSWER: usize = 64 * 1024;
/// Longest wait for one Slurm program (its own retries included).
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// The first look at a new job's state; later looks come less often, up to the poll.
const FIRST_POLL: Duration = Duration::from_millis(10);
/// How long a stopped job may take to end in Slurm before cq stops waiting for it.
const STOP_WAIT: Duration = Duration::from_secs(120);

impl SlurmExecutor {
    /// An executor with `options`.
    ///
    /// # Errors
    ///
    /// [`SlurmError`] when a Slurm program is missing or the output directory is unfit.
    pub fn new(options: SlurmOptions) -> Result<Self, SlurmError> {
        let programs = Programs::find(options.bin_dir.as_deref())?;
        let unfit = |why| SlurmError::OutputDir {
            path: options.output_dir.clone(),
            why,
        };
        files::check_output_dir(&options.output_dir).map_err(unfit)?;
        let script = files::write_script(&options.output_dir).map_err(unfit)?;
        Ok(Self {
            options,
            programs,
            script,
        })
    }

    /// Checks that Slurm answers and knows the partition: for a clear error at start instead
    /// of at the first job.
    ///
    /// # Errors
    ///
    /// [`SlurmError::Slurm`] with Slurm's own words.
    pub async fn check(&self) -> Result<(), SlurmError> {
        let args = ["--noheader".to_owned(), "--format=%P".to_owned()];
        let answer = self
            .tool(&self.programs.sinfo, &args)
            .await
            .map_err(|e| SlurmError::Slurm(format!("Slurm does not answer: {e}")))?;
        // Without cgroups, a process of a job that leaves its session outlives scancel:
        // cq's cancel and time limit then end the job, not everything it started.
        if let Ok(config) = self
            .tool(&self.programs.scontrol, &["show".into(), "config".into()])
            .await
            && let Some(proctrack) = config
                .lines()
                .find_map(|l| l.trim().strip_prefix("ProctrackType"))
                .map(|v| v.trim_start_matches([' ', '=']).trim().to_owned())
            && proctrack != "proctrack/cgroup"
        {
            tracing::warn!(%proctrack, "Slurm tracks job processes without cgroups: a process that leaves its job's session outlives cancel and time limits");
        }
        if let Some(partition) = &self.options.partition
            && !answer
                .lines()
                .any(|l| l.trim().trim_end_matches('*') == partition)
        {
            return Err(SlurmError::Slurm(format!(
                "Slurm has no partition {partition} (sinfo lists: {})",
                answer.split_whitespace().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(())
    }

    /// Runs a Slurm program with this process's rights; its output, or why it failed.
    async fn tool(&self, program: &Path, args: &[String]) -> Result<String, String> {
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .env_remove("SLURM_CONF");
        if let Some(conf) = &self.options.slurm_conf {
            command.env("SLURM_CONF", conf);
        }
        let name = program.file_name().map_or_else(
            || program.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let output = tokio::time::timeout(TOOL_TIMEOUT, command.output())
            .await
            .map_err(|_| format!("{name} did not answer in {} s", TOOL_TIMEOUT.as_secs()))?
            .map_err(|e| format!("cannot run {name}: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(answer_text(&output.stderr, &name))
        }
    }

    /// What Slurm says of job `slurm_id` (submitted as `name` for `uid`); an error when it
    /// cannot be asked.
    async fn state(&self, slurm_id: u64, name: &str, uid: u32) -> Result<Reading, String> {
        let id = slurm_id.to_string();
        match self
            .tool(
                &self.programs.scontrol,
                &["--oneliner".into(), "show".into(), "job".into(), id.clone()],
            )
            .await
        {
            Ok(line) => Ok(state::from_scontrol(&line, slurm_id, name, uid)),
            Err(e) if e.contains("Invalid job id") => {
                // Forgotten by the controller (MinJobAge): the accounting database may still
                // hold it. (Not the text completion log of `sacct -c`: a job name with a
                // newline writes a whole forged record there, for any job.)
                let record = self
                    .tool(
                        &self.programs.sacct,
                        &[
                            "-X".into(),
                            "-n".into(),
                            "-P".into(),
                            "-o".into(),
                            "ExitCode,State,UID,JobName".into(),
                            "-j".into(),
                            id,
                        ],
                    )
                    .await
                    .unwrap_or_default();
                Ok(state::from_sacct(&record, name, uid))
            }
            Err(e) => Err(e),
        }
    }

    /// The ids of the jobs Slurm knows by `name` among `uid`'s. Only the requester's own
    /// jobs count (anybody may name a job anything), compared by number here: Slurm reads
    /// `--user=1004` as the account *named* "1004" first, if there is one.
    async fn jobs_named(&self, name: &str, uid: u32) -> Result<Vec<u64>, String> {
        let listed = self
            .tool(
                &self.programs.squeue,
                &[
                    "--noheader".into(),
                    "--states=all".into(),
                    format!("--name={name}"),
                    "--format=%i %U".into(),
                ],
            )
            .await?;
        Ok(state::owned_ids(&listed, uid))
    }

    /// The id of the job Slurm knows by `name` among `uid`'s, if any (for a coordinator
    /// that stopped between submitting a job and recording its id).
    async fn find_by_name(&self, name: &str, uid: u32) -> Result<Option<u64>, String> {
        let ids = self.jobs_named(name, uid).await?;
        match ids.as_slice() {
            [] => Ok(None),
            [id] => Ok(Some(*id)),
            // The requester submitted a job of their own under cq's name (they can read it
            // from sbatch's arguments): which is cq's cannot be told.
            _ => Err(format!(
                "Slurm lists {} jobs of the requester's under the job's name {name}",
                ids.len()
            )),
        }
    }

    /// Whether Slurm's job `slurm_id` has ended (or is gone), by its state alone: a field
    /// its owner cannot change.
    async fn has_ended(&self, slurm_id: u64) -> Result<bool, String> {
        let state = self
            .tool(
                &self.programs.squeue,
                &[
                    "--noheader".into(),
                    "--states=all".into(),
                    format!("--jobs={slurm_id}"),
                    "--format=%i %T".into(),
                ],
            )
            .await;
        let state = match state {
            Ok(state) => state,
            Err(e) if e.contains("Invalid job id") => return Ok(true),
            Err(e) => return Err(e),
        };
        let active = state.lines().any(|line| {
            line.trim().split_once(' ').is_some_and(|(id, state)| {
                id.parse() == Ok(slurm_id)
                    && matches!(
                        state::classify_word(state.trim()),
                        None | Some(SlurmState::Active)
                    )
            })
        });
        Ok(!active)
    }

    /// Waits (up to [`STOP_WAIT`]) until job `slurm_id`, cancelled, has ended in Slurm: its
    /// lane must not take the next job while it still runs.
    async fn wait_until_ended(&self, id: JobId, slurm_id: u64) {
        let started = Instant::now();
        let mut pause = FIRST_POLL;
        while started.elapsed() < STOP_WAIT {
            if let Ok(true) = self.has_ended(slurm_id).await {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 3 / 2).min(self.options.poll);
        }
        tracing::warn!(job = %id, slurm_job = slurm_id, "the Slurm job did not end after scancel; the queue goes on");
    }

    /// Submits the job; its Slurm id, or the outcome that ends it here.
    async fn submit(
        &self,
        job: &CommandJob,
        id: JobId,
        clearance: &Clearance,
        files: &JobFiles,
    ) -> Result<u64, Outcome> {
        let argv = self.argv_to_run(job, clearance)?;
        let cwd = job
            .cwd
            .as_ref()
            .map_or_else(|| self.options.cwd.clone(), PathBuf::from);
        let mut args = vec![
            self.programs.sbatch.display().to_string(),
            // cq's own options come after the admin's: the last one wins in sbatch.
        ];
        args.extend(self.options.sbatch_args.iter().cloned());
        args.extend([
            "--parsable".to_owned(),
            format!("--job-name={}", files.name()),
            format!("--output={}", files.output().display()),
            "--open-mode=append".to_owned(),
            format!("--chdir={}", cwd.display()),
            // cq runs a job once: a node failure ends it, Slurm does not run it again.
            "--no-requeue".to_owned(),
            "--export=ALL".to_owned(),
        ]);
        if let Some(partition) = &self.options.partition {
            args.push(format!("--partition={partition}"));
        }
        if let Some(limit) = job.timeout() {
            // Slurm counts whole minutes; cq itself stops the job at the exact limit.
            args.push(format!("--time={}", limit.as_secs().div_ceil(60).max(1)));
        }
        // The script runs the command from its arguments: no shell ever reads the command,
        // so no argument can be more than an argument.
        args.push(self.script.display().to_string());
        args.push(cwd.display().to_string());
        args.push(files.no_cwd().display().to_string());
        args.extend(argv);
        let mut env: Vec<(String, String)> = job_environment(
            &self.options.base_env,
            job,
            id,
            clearance,
            Some(&files.results()),
        )
        .into_iter()
        // sbatch reads its options from SBATCH_* and SLURM_* variables too: only the admin's
        // configuration decides them.
        .filter(|(k, _)| !k.starts_with("SBATCH_") && !k.starts_with("SLURM_"))
        .collect();
        if let Some(conf) = &self.options.slurm_conf {
            env.push(("SLURM_CONF".to_owned(), conf.display().to_string()));
        }
        let uid = clearance
            .run_as
            .as_ref()
            .map_or_else(|| nix::unistd::geteuid().as_raw(), |a| a.uid);
        // sbatch runs as the requester, who may stop and trace it and make it print any id:
        // the job is the one Slurm lists under its unique name among the requester's.
        self.sbatch(args, env, clearance).await?;
        match self.find_by_name(files.name(), uid).await {
            Ok(Some(slurm_id)) => Ok(slurm_id),
            Ok(None) => Err(refused(
                "sbatch succeeded, but Slurm lists no job of the requester's under its name",
            )),
            Err(e) => Err(refused(&e)),
        }
    }

    /// The command as the node runs it: with allowed commands, the allowed program the
    /// command's program resolves to here, by its own path.
    fn argv_to_run(&self, job: &CommandJob, clearance: &Clearance) -> Result<Vec<String>, Outcome> {
        let mut argv = job.argv.clone();
        let Some(commands) = &clearance.commands else {
            return Ok(argv);
        };
        use std::os::unix::fs::MetadataExt;
        let program = argv.first().cloned().unwrap_or_default();
        let cwd = job
            .cwd
            .as_ref()
            .map_or_else(|| self.options.cwd.clone(), PathBuf::from);
        let base_path = self
            .options
            .base_env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
        let allowed = allowed_files(commands);
        for candidate in job.program_candidates(base_path) {
            let Ok(meta) = std::fs::metadata(cwd.join(&candidate)) else {
                continue;
            };
            return match allowed
                .iter()
                .find(|a| a.dev == meta.dev() && a.ino == meta.ino())
            {
                Some(file) => {
                    argv[0] = file.path.display().to_string();
                    Ok(argv)
                }
                None => Err(Outcome::SpawnFailed {
                    reason: SpawnFailure::NotPermitted,
                    message: format!(
                        "{program} is not among the commands this server runs (policy commands)"
                    ),
                }),
            };
        }
        Err(Outcome::SpawnFailed {
            reason: SpawnFailure::NotFound,
            message: format!("command not found: {program}"),
        })
    }

    /// Runs `sbatch` as the requester; its answer.
    async fn sbatch(
        &self,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        clearance: &Clearance,
    ) -> Result<String, Outcome> {
        let failure = |what: &str, e: &io::Error| super::process::other_failure(what, e);
        let stdin =
            std::fs::File::open("/dev/null").map_err(|e| failure("cannot open /dev/null", &e))?;
        let (out_r, out_w) = std::io::pipe().map_err(|e| failure("cannot make a pipe", &e))?;
        let (err_r, err_w) = std::io::pipe().map_err(|e| failure("cannot make a pipe", &e))?;
        let spec = ChildSpec {
            candidates: vec![self.programs.sbatch.clone()],
            argv,
            env,
            allowed: None,
            // Somewhere every account may enter; the job's own directory is --chdir.
            cwd: PathBuf::from("/"),
            user: clearance.run_as.as_ref().map(|a| UserSwitch {
                uid: a.uid,
                gid: a.gid,
                groups: a.groups.clone(),
            }),
            cgroup: None,
            umask: DEFAULT_JOB_UMASK,
        };
        let stdio = ChildStdio {
            stdin: OwnedFd::from(stdin),
            stdout: OwnedFd::from(out_w),
            stderr: OwnedFd::from(err_w),
        };
        let mut child = spec
            .spawn(stdio)
            .map_err(|e| failure("cannot start sbatch", &e))?;
        if let Err(failed) = child.exec().await {
            let _ = child.wait().await;
            return Err(super::process::spawn_failure(
                "sbatch",
                Path::new("/"),
                failed,
            ));
        }
        let read = |reader: std::io::PipeReader| async move {
            let mut text = Vec::new();
            if let Ok(pipe) = pipe::Receiver::from_owned_fd(OwnedFd::from(reader)) {
                let _ = pipe.take(MAX_ANSWER as u64).read_to_end(&mut text).await;
            }
            text
        };
        let ran = async {
            let (out, err) = tokio::join!(read(out_r), read(err_r));
            (out, err, child.wait().await)
        };
        let (out, err, exit) = match tokio::time::timeout(TOOL_TIMEOUT, ran).await {
            Ok(ran) => ran,
            Err(_) => {
                child.signal_group(nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait().await;
                return Err(refused(&format!(
                    "sbatch did not answer in {} s (is slurmctld reachable?)",
                    TOOL_TIMEOUT.as_secs()
                )));
            }
        };
        match exit {
            Ok(super::child::Exit::Code(0)) => Ok(String::from_utf8_lossy(&out).into_owned()),
            Ok(_) => Err(refused(&answer_text(&err, "sbatch"))),
            Err(e) => Err(failure("cannot wait for sbatch", &e)),
        }
    }

    /// Stops Slurm's job `slurm_id` (cancel or timeout): one cq found among the requester's
    /// own (jobs never change owners), never an id anything else gave. A failure is logged;
    /// the job is still waited for.
    async fn scancel(&self, id: JobId, slurm_id: u64) {
        if let Err(e) = self
            .tool(&self.programs.scancel, &[slurm_id.to_string()])
            .await
        {
            tracing::warn!(job = %id, slurm_job = slurm_id, error = %e, "cannot cancel the Slurm job");
        }
    }

    /// Stops whatever job of `uid`'s Slurm has under `name` (one stopped while submitting).
    async fn scancel_named(&self, id: JobId, name: &str, uid: u32) {
        match self.jobs_named(name, uid).await {
            Ok(ids) => {
                for slurm_id in ids {
                    self.scancel(id, slurm_id).await;
                }
            }
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "cannot look for the Slurm job being submitted to cancel it");
            }
        }
    }

    /// Follows the Slurm job to its end: its output into the log, cancel and time limit
    /// through `scancel`, its end as cq reports it.
    async fn follow(
        &self,
        job: &CommandJob,
        ctx: &mut JobContext,
        slurm_id: u64,
        files: &JobFiles,
        uid: u32,
        deadline: Option<Instant>,
    ) -> Outcome {
        let id = ctx.id;
        let mut output = OwnedReader::new(files.output(), uid, ctx.log.len());
        let mut pause = FIRST_POLL;
        let mut stopped: Option<(Outcome, Instant)> = None;
        let mut unreachable_since: Option<Instant> = None;
        loop {
            let time_limit = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = ctx.cancel.cancelled(), if stopped.is_none() => {
                    self.scancel(id, slurm_id).await;
                    stopped = Some((Outcome::Cancelled, Instant::now()));
                }
                () = time_limit, if stopped.is_none() => {
                    self.scancel(id, slurm_id).await;
                    stopped = Some((Outcome::TimedOut, Instant::now()));
                }
            }
            pause = (pause * 3 / 2).min(self.options.poll);
            output.copy_into(&mut ctx.log);
            let state = self.state(slurm_id, files.name(), uid).await;
            match state {
                Ok(Reading::Seen(SlurmState::Active)) => unreachable_since = None,
                Ok(Reading::Seen(SlurmState::Ended(end))) => {
                    output.copy_into(&mut ctx.log);
                    if files.cwd_failed(uid) && stopped.is_none() {
                        let cwd = job
                            .cwd
                            .as_deref()
                            .map_or_else(|| self.options.cwd.display().to_string(), str::to_owned);
                        return Outcome::SpawnFailed {
                            reason: SpawnFailure::NotFound,
                            message: format!(
                                "cannot enter the working directory {cwd} on the Slurm node"
                            ),
                        };
                    }
                    ctx.results.set_lines(&files.read_results(uid));
                    return match (stopped, end) {
                        // What cq stopped it for, unless it ended on its own first.
                        (Some((why, _)), SlurmEnd::Cancelled | SlurmEnd::TimedOut) => why,
                        _ => end.outcome(),
                    };
                }
                Ok(Reading::Tampered(why)) => {
                    tracing::warn!(job = %id, slurm_job = slurm_id, why, "the Slurm job was changed outside cq: stopped");
                    self.scancel(id, slurm_id).await;
                    self.wait_until_ended(id, slurm_id).await;
                    output.copy_into(&mut ctx.log);
                    return Outcome::Failed {
                        message: format!("{why}: stopped"),
                    };
                }
                Ok(Reading::Unknown) => {
                    tracing::warn!(job = %id, slurm_job = slurm_id, "Slurm no longer knows the job: recorded as lost");
                    output.copy_into(&mut ctx.log);
                    return Outcome::Lost;
                }
                Err(e) => {
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < self.options.poll * 2 {
                        tracing::warn!(job = %id, slurm_job = slurm_id, error = %e, "cannot ask Slurm about the job; asking again");
                    }
                }
            }
            if let Some((why, at)) = &stopped
                && at.elapsed() > STOP_WAIT
            {
                tracing::warn!(job = %id, slurm_job = slurm_id, "the Slurm job did not end after scancel; the queue goes on");
                return why.clone();
            }
        }
    }

    /// Finds a job again after a restart from what was recorded: its Slurm id, or `None`
    /// when Slurm never got it.
    async fn find_again(&self, reference: &Reference) -> Result<Option<u64>, Outcome> {
        if let Some(slurm_id) = reference.slurm_id {
            return Ok(Some(slurm_id));
        }
        // Stopped between recording the job's name and its id: Slurm may have it or not.
        let mut pause = Duration::from_secs(1);
        let started = Instant::now();
        loop {
            match self.find_by_name(&reference.name, reference.uid).await {
                Ok(found) => return Ok(found),
                Err(e) if started.elapsed() < STOP_WAIT => {
                    tracing::warn!(error = %e, "cannot ask Slurm for a job found again; asking again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot ask Slurm for a job found again: recorded as lost");
                    return Err(Outcome::Lost);
                }
            }
        }
    }
}

/// What the executor records of a job (see [`JobContext::runner`]): `slurm:ID UID NAME`, or
/// `slurm:- UID NAME` before Slurm gave an id. Users see `slurm:ID`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reference {
    slurm_id: Option<u64>,
    uid: u32,
    name: String,
}

impl Reference {
    fn parse(text: &str) -> Option<Self> {
        let mut words = text.split(' ');
        let id = words.next()?.strip_prefix("slurm:")?;
        let uid = words.next()?.parse().ok()?;
        let name = words.next()?.to_owned();
        if words.next().is_some() || !files::valid_name(&name) {
            return None;
        }
        let slurm_id = match id {
            "-" => None,
            id => Some(id.parse().ok()?),
        };
        Some(Self {
            slurm_id,
            uid,
            name,
        })
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.slurm_id {
            Some(id) => write!(f, "slurm:{id} {} {}", self.uid, self.name),
            None => write!(f, "slurm:- {} {}", self.uid, self.name),
        }
    }
}

/// Slurm not taking a job (unreachable, or refusing it), its words passed through.
fn refused(message: &str) -> Outcome {
    Outcome::SpawnFailed {
        reason: SpawnFailure::Other,
        message: format!("Slurm did not take the job: {message}"),
    }
}

/// A Slurm program's error output as one line for a message.
fn answer_text(stderr: &[u8], program: &str) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut joined = if lines.is_empty() {
        format!("{program} failed without saying why")
    } else {
        lines.join("; ")
    };
    if joined.len() > 1000 {
        let mut end = 1000;
        while !joined.is_char_boundary(end) {
            end -= 1;
        }
        joined.truncate(end);
        joined.push('…');
    }
    joined.chars().filter(|c| !c.is_control()).collect()
}

#[async_trait]
impl Executor for SlurmExecutor {
    async fn run(&self, job: &CommandJob, mut ctx: JobContext) -> Outcome {
        let id = ctx.id;
        // The time limit counts from the submission (a stalled sbatch is the job's time).
        // A job found again after a restart gets it anew: Slurm's own --time still holds.
        let deadline = job.timeout().map(|limit| Instant::now() + limit);
        let (slurm_id, files, uid) = match ctx.resume.take() {
            Some(recorded) => {
                // Only what this executor recorded can be found again.
                let Some(reference) = Reference::parse(&recorded) else {
                    tracing::warn!(job = %id, reference = %recorded, "not a Slurm job's record: recorded as lost");
                    return Outcome::Lost;
                };
                let files = JobFiles::existing(&self.options.output_dir, &reference.name);
                match self.find_again(&reference).await {
                    Ok(Some(slurm_id)) => {
                        tracing::info!(job = %id, slurm_job = slurm_id, "found the Slurm job again");
                        ctx.runner.show(format!("slurm:{slurm_id}"));
                        (slurm_id, files, reference.uid)
                    }
                    Ok(None) => {
                        // Slurm has no such job now, but the sbatch of the stopped server may
                        // still live (its user may have stopped it) and submit it later:
                        // running it again could run it twice. Whatever comes goes.
                        tracing::warn!(job = %id, "the server stopped while submitting the job to Slurm: recorded as lost");
                        self.scancel_named(id, &reference.name, reference.uid).await;
                        files.remove();
                        return Outcome::Lost;
                    }
                    Err(outcome) => return outcome,
                }
            }
            None => {
                if ctx.cancel.is_cancelled() {
                    return Outcome::Cancelled;
                }
                let (uid, gid) = ctx.clearance.run_as.as_ref().map_or_else(
                    || {
                        (
                            nix::unistd::geteuid().as_raw(),
                            nix::unistd::getegid().as_raw(),
                        )
                    },
                    |a| (a.uid, a.gid),
                );
                let files = match JobFiles::create(&self.options.output_dir, id, uid, gid) {
                    Ok(files) => files,
                    Err(e) => {
                        return super::process::other_failure(
                            "cannot make the job's Slurm output directory",
                            &e,
                        );
                    }
                };
                let mut reference = Reference {
                    slurm_id: None,
                    uid,
                    name: files.name().to_owned(),
                };
                // Recorded before Slurm has it: a restart in between finds it by name.
                if let Err(e) = ctx.runner.record(reference.to_string()).await {
                    files.remove();
                    return Outcome::SpawnFailed {
                        reason: SpawnFailure::Other,
                        message: format!("cannot record the job before submitting it: {e}"),
                    };
                }
                // Cancel and the time limit hold while sbatch runs too (its user may stop it).
                let time_limit = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                let submitted = tokio::select! {
                    submitted = self.submit(job, id, &ctx.clearance, &files) => submitted,
                    () = ctx.cancel.cancelled() => Err(Outcome::Cancelled),
                    () = time_limit => Err(Outcome::TimedOut),
                };
                let slurm_id = match submitted {
                    Ok(slurm_id) => slurm_id,
                    Err(outcome) => {
                        // sbatch is killed or done; whatever it may have submitted goes too.
                        self.scancel_named(id, files.name(), uid).await;
                        files.remove();
                        return outcome;
                    }
                };
                tracing::info!(job = %id, slurm_job = slurm_id, "submitted to Slurm");
                ctx.runner.show(format!("slurm:{slurm_id}"));
                reference.slurm_id = Some(slurm_id);
                // Durable or not, a restart finds the job (by name if need be).
                drop(ctx.runner.record(reference.to_string()));
                (slurm_id, files, uid)
            }
        };
        let outcome = self
            .follow(job, &mut ctx, slurm_id, &files, uid, deadline)
            .await;
        files.remove();
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_read_back_as_written_and_nothing_else_is() {
        let written = Reference {
            slurm_id: Some(17),
            uid: 1000,
            name: "cq-5-0123456789abcdef".to_owned(),
        };
        assert_eq!(
            Reference::parse(&written.to_string()),
            Some(written.clone())
        );
        let before = Reference {
            slurm_id: None,
            ..written
        };
        assert_eq!(Reference::parse(&before.to_string()), Some(before));
        for bad in [
            "lease:1:2",
            "slurm:x 1000 cq-5-0123456789abcdef",
            "slurm:1 1000 ../../etc",
            "slurm:1 1000 cq-5-0123456789abcdef extra",
            "slurm:1 root cq-5-0123456789abcdef",
        ] {
            assert_eq!(Reference::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn slurm_messages_become_one_bounded_printable_line() {
        let text = answer_text(
            b"sbatch: error: Batch job submission failed: Invalid partition name specified\n\x1b[31m\n",
            "sbatch",
        );
        assert_eq!(
            text,
            "sbatch: error: Batch job submission failed: Invalid partition name specified; [31m"
        );
        assert!(answer_text(&[b'x'; 5000], "sbatch").len() <= 1004);
        assert_eq!(
            answer_text(b"", "sbatch"),
            "sbatch failed without saying why"
        );
    }
}
