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

/// What the post script is told about the job besides how it ended: what ran.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFacts {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The `-E` variables.
    pub env: Vec<(String, String)>,
    /// The job's tags.
    pub tags: Vec<String>,
    /// Whether this submission was merged into an equal job already queued (perhaps
    /// another requester's).
    pub merged: bool,
}

impl JobFacts {
    /// The variables these facts make: `CQ_COMMAND` (quoted as a shell would take it),
    /// `CQ_ARGC` and `CQ_ARGV_0`..., `CQ_JOB_ENV_<NAME>` for each `-E` variable, `CQ_TAGS`
    /// (comma-separated) and `CQ_MERGED` (`1` or `0`).
    pub fn variables(&self) -> Vec<(String, String)> {
        let mut vars = vec![
            (
                "CQ_COMMAND".to_owned(),
                cq_core::CommandJob::new(self.argv.iter().cloned()).summary(),
            ),
            ("CQ_ARGC".to_owned(), self.argv.len().to_string()),
        ];
        for (n, arg) in self.argv.iter().enumerate() {
            vars.push((format!("CQ_ARGV_{n}"), arg.clone()));
        }
        for (name, value) in &self.env {
            vars.push((format!("CQ_JOB_ENV_{name}"), value.clone()));
        }
        vars.push(("CQ_TAGS".to_owned(), self.tags.join(",")));
        vars.push((
            "CQ_MERGED".to_owned(),
            if self.merged { "1" } else { "0" }.to_owned(),
        ));
        vars
    }
}

/// Runs the post script with the two classic arguments (internal status, exit status) and
/// the `CQ_*` variables (with `facts`, also what ran; `CQ_RESULT_<KEY>` for each result the
/// job reported), and waits for it.
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
    facts: Option<&JobFacts>,
) -> Result<(), PostScriptError> {
    let outcome = &result.outcome;
    // The server checked them; a key it should not have sent is left out, not trusted.
    let results = result
        .results
        .iter()
        .filter(|(key, value)| cq_core::check_result(key, value).is_ok())
        .map(|(key, value)| (format!("CQ_RESULT_{key}"), value));
    let status = tokio::process::Command::new(path)
        .envs(facts.map(JobFacts::variables).unwrap_or_default())
        .envs(results)
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
