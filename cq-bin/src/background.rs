//! `cq_client --background`: the wait continues in a detached process.
//!
//! The waiter is a fresh `cq_client --new-session --wait ID` rather than a fork of the running
//! client: a fork of a process with an async runtime (and blocking worker threads) is not safe.
//! It calls setsid(2) first, so it has no controlling terminal and the terminal's hang-up and
//! signals do not reach it; stdin is `/dev/null`, stdout and stderr go to a log file.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

/// Starts `cq_client ARGS` detached, logging to `log`.
///
/// # Errors
///
/// When the log cannot be opened or the process cannot start.
pub fn spawn_waiter(args: &[OsString], log: &Path) -> io::Result<()> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Private (it holds the job's output) and never through a link someone else planted.
    use std::os::unix::fs::OpenOptionsExt;
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(log)?;
    let err = out.try_clone()?;
    Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map(drop)
}
