//! One server per state directory: a second one would recover the same queue and run its jobs
//! again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Held for the server's whole life; the lock goes with the process, however it ends. A
/// clean stop removes the file, so that no stale pid is left for others to signal.
#[derive(Debug)]
pub struct StateLock {
    lock: Option<Flock<File>>,
    path: PathBuf,
}

impl Drop for StateLock {
    fn drop(&mut self) {
        // Removed while still locked: nobody can take it over between the two.
        let _ = std::fs::remove_file(&self.path);
        drop(self.lock.take());
    }
}

/// Why the state directory cannot be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateLockError {
    /// Another server holds it.
    #[error("another cq_server{} uses {what}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Busy {
        /// What is taken: the state directory or the pid file.
        what: String,
        /// The other server's pid, if it wrote one.
        pid: Option<u32>,
    },
    /// The lock file cannot be used.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Takes `dir/cq_server.pid` (an exclusive, non-blocking `flock`) and writes our pid in it.
///
/// # Errors
///
/// [`StateLockError::Busy`] naming the other server's pid when one holds the directory.
pub fn lock_state_dir(dir: &Path) -> Result<StateLock, StateLockError> {
    lock_pid_file(
        &dir.join("cq_server.pid"),
        format!("the state directory {}", dir.display()),
    )
}

/// Takes the pid file `path` (exclusive, non-blocking `flock`) and writes our pid in it;
/// `what` names what it protects, for the error.
///
/// # Errors
///
/// [`StateLockError::Busy`] naming the other server's pid when one holds the file.
pub fn lock_pid_file(path: &Path, what: String) -> Result<StateLock, StateLockError> {
    let path = path.to_owned();
    let io = |source| StateLockError::Io {
        path: path.clone(),
        source,
    };
    use std::os::unix::fs::OpenOptionsExt;
    // Never through a symlink: a planted one would make the server truncate another file.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(StateLockError::Busy {
                what,
                pid: text.trim().parse().ok(),
            });
        }
        Err((_, errno)) => return Err(io(std::io::Error::from(errno))),
    };
    lock.set_len(0).map_err(io)?;
    lock.rewind().map_err(io)?;
    writeln!(lock, "{}", std::process::id()).map_err(io)?;
    Ok(StateLock {
        lock: Some(lock),
        path,
    })
}
