//! How cq_server's own worker and cq_worker run jobs: as local processes, or on a Slurm
//! cluster. The options are the same in both programs, and so is `[executor]` in cq.toml.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use cq_core::{Executor, SlurmExecutor, SlurmOptions};

use crate::units::parse_duration;

/// What runs jobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ExecutorKind {
    /// Processes on this host (contained, as the requester).
    #[default]
    Process,
    /// Slurm batch jobs, submitted as the requester (see --partition).
    Slurm,
}

/// The executor options (`[executor]` in cq.toml).
#[derive(Clone, Debug, Args)]
pub struct ExecutorArgs {
    /// What runs jobs: process (here) or slurm (a Slurm cluster, one batch job per job).
    #[arg(long, value_enum, default_value_t = ExecutorKind::Process)]
    pub executor: ExecutorKind,
    /// How many jobs run at once (each on a worker of its own, named NAME-2, NAME-3, ...
    /// after the first); with --executor slurm, how many Slurm jobs run side by side.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub lanes: u16,
    /// With --executor slurm: the partition jobs go to [default: Slurm's default partition].
    #[arg(long, value_name = "NAME")]
    pub partition: Option<String>,
    /// With --executor slurm: the Slurm configuration file [default: Slurm's own].
    #[arg(long, value_name = "FILE")]
    pub slurm_conf: Option<PathBuf>,
    /// With --executor slurm: where jobs' output and results files go, a directory of this
    /// user's (mode 0711) that the compute nodes share with this host [default:
    /// /var/spool/cq-slurm as root, else slurm in the state directory or spool].
    #[arg(long, value_name = "DIR")]
    pub slurm_output_dir: Option<PathBuf>,
    /// With --executor slurm: one more option for sbatch (repeat), e.g. --sbatch-arg=--mem=4G.
    #[arg(long = "sbatch-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// With --executor slurm: where sbatch, scontrol, scancel, squeue, sacct and sinfo are
    /// [default: the usual system directories].
    #[arg(long, value_name = "DIR")]
    pub slurm_bin_dir: Option<PathBuf>,
    /// With --executor slurm: longest pause between two looks at a running job.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "500ms")]
    pub slurm_poll: Duration,
}

/// Where a root cq_server or cq_worker keeps Slurm jobs' files by default.
pub const ROOT_OUTPUT_DIR: &str = "/var/spool/cq-slurm";

/// The ids of the executor options: they belong in `[executor]`, not in `[server]` or
/// `[worker]`.
pub const EXECUTOR_OPTIONS: [&str; 8] = [
    "executor",
    "lanes",
    "partition",
    "slurm_conf",
    "slurm_output_dir",
    "sbatch_args",
    "slurm_bin_dir",
    "slurm_poll",
];

impl ExecutorArgs {
    /// The Slurm executor these options describe, checked against the cluster (it answers,
    /// it has the partition); `None` for --executor process. `default_dir` holds the jobs'
    /// output unless --slurm-output-dir says otherwise (made if missing, mode 0711).
    ///
    /// # Errors
    ///
    /// One line for the user: what is wrong and what to do.
    pub async fn slurm(
        &self,
        default_dir: &Path,
        base_env: Vec<(String, String)>,
        cwd: Option<PathBuf>,
    ) -> Result<Option<Arc<dyn Executor>>, String> {
        if self.executor != ExecutorKind::Slurm {
            if self.partition.is_some() || !self.sbatch_args.is_empty() {
                return Err("--partition and --sbatch-arg need --executor slurm".to_owned());
            }
            return Ok(None);
        }
        // Jobs that run as their requesters reach their own directories in it.
        let switch_user = nix::unistd::geteuid().is_root();
        let dir = match &self.slurm_output_dir {
            Some(dir) => dir.clone(),
            None => {
                let dir = if switch_user {
                    PathBuf::from(ROOT_OUTPUT_DIR)
                } else {
                    default_dir.to_owned()
                };
                use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o711)
                    .create(&dir)
                    .and_then(|()| {
                        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
                    })
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                dir
            }
        };
        if switch_user {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dir)
                .map_err(|e| format!("the Slurm output directory {}: {e}", dir.display()))?
                .permissions()
                .mode();
            if mode & 0o001 == 0 {
                return Err(format!(
                    "the Slurm output directory {} must let jobs' users reach their own directories in it (mode 0711)",
                    dir.display()
                ));
            }
        }
        let mut options = SlurmOptions::new(self.partition.clone(), dir);
        options.sbatch_args = self.sbatch_args.clone();
        options.slurm_conf = self.slurm_conf.clone();
        options.bin_dir = self.slurm_bin_dir.clone();
        options.poll = self.slurm_poll;
        options.base_env = base_env;
        if let Some(cwd) = cwd {
            options.cwd = cwd;
        }
        let executor = SlurmExecutor::new(options).map_err(|e| e.to_string())?;
        executor.check().await.map_err(|e| e.to_string())?;
        Ok(Some(Arc::new(executor)))
    }
}
