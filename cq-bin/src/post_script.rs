//! The client's post script: checked before submitting, run after the job ended.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use cq_core::{JobId, JobResult};
use nix::unistd::{AccessFlags, access};

/// Why a post script cannot be used or did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostScriptError {
    /// The script failed.
    #[error("post script {path} {status}")]
    Failed {
        /// The script.
        path: PathBuf,
        /// How it ended.
        status: ExitStatus,
    },
    /// The path is not an executable file.
    #[error("post script {path}: {reason}")]
    Unusable {
        /// The script.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// It could not be started.
    #[error("post script {path} could not be run: {source}")]
    Spawn {
        /// The script.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Finds the post script as a shell would (a name with a slash is a path, a bare name is
/// looked up in `PATH`) and checks that it is an executable file, so that a mistake is
/// reported before a job is submitted rather than hours later. Returns its absolute path:
/// what runs later is exactly the file checked now, whatever the directory then.
///
/// # Errors
///
/// [`PostScriptError::Unusable`] saying what is wrong.
pub fn check_post_script(path: &Path) -> Result<PathBuf, PostScriptError> {
    let unusable = |reason: String| PostScriptError::Unusable {
        path: path.to_owned(),
        reason,
    };
    let found = if path.as_os_str().as_encoded_bytes().contains(&b'/') {
        path.to_owned()
    } else {
        let dirs = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&dirs)
            .map(|dir| dir.join(path))
            .find(|candidate| candidate.is_file() && access(candidate, AccessFlags::X_OK).is_ok())
            .ok_or_else(|| unusable("not found in PATH (give a path, e.g. ./script)".to_owned()))?
    };
    let meta = std::fs::metadata(&found).map_err(|e| unusable(e.to_string().to_lowercase()))?;
    if !meta.is_file() {
        return Err(unusable("not a regular file".to_owned()));
    }
    access(&found, AccessFlags::X_OK)
        .map_err(|_| unusable("not executable (chmod +x it)".to_owned()))?;
    std::path::absolute(&found).map_err(|e| unusable(e.to_string()))
}

/// Runs the post script with the two classic arguments (internal status, exit status) and
/// the `CQ_*` variables, and waits for it.
///
/// # Errors
///
/// [`PostScriptError::Spawn`] when it cannot start, [`PostScriptError::Failed`] when it
/// exits non-zero or is killed.
pub async fn run_post_script(
    path: &Path,
    job: JobId,
    result: &JobResult,
    server: &str,
) -> Result<(), PostScriptError> {
    let outcome = &result.outcome;
    let status = tokio::process::Command::new(path)
        .arg(outcome.internal_status().to_string())
        .arg(outcome.exit_status().to_string())
        .env("CQ_JOB_ID", job.to_string())
        .env("CQ_OUTCOME", outcome.word())
        .env("CQ_EXIT_STATUS", outcome.exit_status().to_string())
        .env(
            "CQ_SIGNAL",
            outcome.signal().map(|s| s.to_string()).unwrap_or_default(),
        )
        .env(
            "CQ_DURATION",
            format!("{:.3}", result.runtime.as_secs_f64()),
        )
        .env("CQ_SERVER", server)
        .status()
        .await
        .map_err(|source| PostScriptError::Spawn {
            path: path.to_owned(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(PostScriptError::Failed {
            path: path.to_owned(),
            status,
        })
    }
}
