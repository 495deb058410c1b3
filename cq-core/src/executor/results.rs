//! A job's result file: `KEY=VALUE` lines the job writes to `$CQ_RESULT_FILE`, which travel
//! with its outcome to everyone waiting for it (see [`ResultSink`](crate::ResultSink)).
//!
//! The file lives in a directory of its own, made by the server in a base directory only the
//! server can write (so the job's user cannot swap the directory), and handed to the job's
//! user. When the job has ended, the server opens the file without following links and
//! reads it only if it is a regular file of that user with one link: a job cannot make the
//! server read another file for it.

use std::fs::{self, DirBuilder, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::Mode;

use crate::job::JobId;

/// The most of a result file that is read.
pub(crate) const RESULT_FILE_CAP: u64 = 64 * 1024;

/// The lock file a live executor holds in its base directory (see
/// [`ResultBase::is_abandoned`]).
const LOCK: &str = ".lock";

/// Where the jobs' result directories are made; removed when the executor goes.
#[derive(Debug)]
pub(crate) struct ResultBase {
    dir: PathBuf,
    /// Held while this executor lives: a base directory whose lock can be taken was left by
    /// a server that died.
    _lock: nix::fcntl::Flock<File>,
}

impl ResultBase {
    /// Makes `dir` afresh (mode 0711: users may reach their own job's directory, not list
    /// them); what a previous server left there goes.
    pub(crate) fn create(dir: &Path) -> io::Result<Self> {
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        DirBuilder::new().recursive(true).mode(0o711).create(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o711))?;
        let lock = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(LOCK))?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| io::Error::from(e))?;
        Ok(Self {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    /// Whether `dir` is a base directory no live executor holds (its server died without
    /// removing it), which may be removed.
    pub(crate) fn is_abandoned(dir: &Path) -> bool {
        let Ok(file) = File::open(dir.join(LOCK)) else {
            return false;
        };
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
    }

    /// A fresh directory for job `id`, given to `owner` (uid, gid) when the job runs as
    /// another user.
    pub(crate) fn job(&self, id: JobId, owner: Option<(u32, u32)>) -> io::Result<ResultFile> {
        let dir = self.dir.join(format!("job-{id}"));
        let _ = fs::remove_dir_all(&dir);
        DirBuilder::new().mode(0o700).create(&dir)?;
        let handle = open(
            &dir,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let uid = match owner {
            Some((uid, gid)) => {
                nix::unistd::fchown(
                    &handle,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                )?;
                uid
            }
            None => nix::unistd::geteuid().as_raw(),
        };
        Ok(ResultFile { dir, handle, uid })
    }
}

impl Drop for ResultBase {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One job's result directory (removed on drop).
#[derive(Debug)]
pub(crate) struct ResultFile {
    dir: PathBuf,
    handle: OwnedFd,
    uid: u32,
}

impl ResultFile {
    /// The path the job is told (`CQ_RESULT_FILE`).
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join("result")
    }

    /// What the job wrote, if it wrote a regular file of its own (at most
    /// [`RESULT_FILE_CAP`] bytes of it).
    pub(crate) fn read(&self) -> Option<String> {
        let fd = openat(
            self.handle.as_fd(),
            "result",
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let file = File::from(fd);
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.uid() != self.uid || meta.nlink() != 1 {
            tracing::warn!(file = %self.path().display(), "a job's result file is not a plain file of its own; ignored");
            return None;
        }
        let mut text = Vec::new();
        file.take(RESULT_FILE_CAP).read_to_end(&mut text).ok()?;
        Some(String::from_utf8_lossy(&text).into_owned())
    }
}

impl Drop for ResultFile {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
