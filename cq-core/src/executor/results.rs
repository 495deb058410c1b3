//! A job's result file: `KEY=VALUE` lines the job writes to `$CQ_RESULT_FILE`, which travel
//! with its outcome to everyone waiting for it (see [`ResultSink`](crate::ResultSink)).
//!
//! The "file" is a FIFO the server makes for each job, in a directory of the server's own
//! (the job may pass through it, not write to it), owned by the job's user, and read by the
//! server while the job runs. So the job's user gets nothing it can grow, nest or keep: what
//! it writes goes through a pipe, the server keeps the first [`RESULT_FILE_CAP`] bytes and
//! drops the rest, and cleaning up is one `unlink` and one `rmdir`, never a walk through a
//! tree a user built.

use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::stat::Mode;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use crate::job::JobId;

/// The most of what a job writes that is kept.
pub(crate) const RESULT_FILE_CAP: usize = 64 * 1024;

/// The lock file a live executor holds in its base directory.
const LOCK: &str = ".lock";

/// The FIFO's name in the job's directory.
const FIFO: &str = "result";

/// Where the jobs' result directories are made; removed when the executor goes.
#[derive(Debug)]
pub(crate) struct ResultBase {
    dir: PathBuf,
    /// Held while this executor lives: a base directory whose lock can be taken was left by
    /// a server that died.
    _lock: nix::fcntl::Flock<File>,
}

impl ResultBase {
    /// Makes `dir` afresh (mode 0711: users may reach their own job's FIFO, not list the
    /// others); what a previous server left there goes. `dir`'s parent must be a directory
    /// only this process's user may write.
    ///
    /// The directory is set up (and locked) under a temporary name and then renamed into
    /// place, so that another server sweeping abandoned directories never sees it unlocked.
    pub(crate) fn create(dir: &Path) -> io::Result<Self> {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
        if dir.exists() && !remove_bounded(dir) {
            let aside = parent.join(format!(".results-stale-{}", unique()));
            tracing::warn!(dir = %dir.display(), aside = %aside.display(), "cannot remove what a previous server left; moved aside");
            fs::rename(dir, aside)?;
        }
        let fresh = parent.join(format!(".results-new-{}", unique()));
        DirBuilder::new().mode(0o711).create(&fresh)?;
        fs::set_permissions(&fresh, fs::Permissions::from_mode(0o711))?;
        let lock = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(fresh.join(LOCK))?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| io::Error::from(e))?;
        fs::rename(&fresh, dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    /// Removes `dir` if it is a base directory no live executor holds (its server died
    /// without removing it); says whether it did.
    pub(crate) fn remove_abandoned(dir: &Path) -> bool {
        let Ok(file) = File::open(dir.join(LOCK)) else {
            return false;
        };
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(_held) => remove_bounded(dir),
            Err(_) => false,
        }
    }

    /// A fresh FIFO for job `id`, given to `owner` (uid, gid) when the job runs as another
    /// user, and already being read.
    pub(crate) fn job(&self, id: JobId, owner: Option<(u32, u32)>) -> io::Result<ResultFile> {
        let dir = self.dir.join(format!("job-{id}"));
        if dir.exists() {
            remove_bounded(&dir);
        }
        DirBuilder::new().mode(0o711).create(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o711))?;
        let path = dir.join(FIFO);
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))?;
        if let Some((uid, gid)) = owner {
            // The directory is ours and not writable by anyone else: the FIFO cannot have
            // been swapped for a link.
            nix::unistd::chown(
                &path,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )?;
        }
        // Opened for reading and writing, so that it never reads as ended while no writer
        // has it open (before the job opens it, between its writes).
        let receiver = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path)?;
        let (finish, finished) = oneshot::channel();
        let reading = tokio::spawn(read_capped(receiver, finished));
        Ok(ResultFile {
            dir,
            finish: Some(finish),
            reading: Some(reading),
        })
    }
}

impl Drop for ResultBase {
    fn drop(&mut self) {
        remove_bounded(&self.dir);
    }
}

/// Keeps the first [`RESULT_FILE_CAP`] bytes read from `receiver` and drops the rest, until
/// told to finish; then takes what is still buffered and returns what it kept.
async fn read_capped(receiver: pipe::Receiver, mut finish: oneshot::Receiver<()>) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = vec![0; 16 * 1024];
    let keep = |kept: &mut Vec<u8>, bytes: &[u8]| {
        let room = RESULT_FILE_CAP.saturating_sub(kept.len());
        kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    };
    loop {
        tokio::select! {
            ready = receiver.readable() => {
                if ready.is_err() {
                    return kept;
                }
                match receiver.try_read(&mut buf) {
                    Ok(0) => return kept,
                    Ok(n) => keep(&mut kept, &buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return kept,
                }
            }
            _ = &mut finish => {
                // Read the pipe itself, not the reactor's idea of it: the job's end may be
                // seen before its last write is. Bounded, so that a writer outside the job
                // (its user's own process) cannot keep this going.
                let mut budget = RESULT_FILE_CAP + 1024 * 1024;
                while budget > 0 {
                    match nix::unistd::read(receiver.as_fd(), &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            keep(&mut kept, &buf[..n]);
                            budget = budget.saturating_sub(n);
                        }
                    }
                }
                return kept;
            }
        }
    }
}

/// One job's result FIFO (removed on drop).
#[derive(Debug)]
pub(crate) struct ResultFile {
    dir: PathBuf,
    finish: Option<oneshot::Sender<()>>,
    reading: Option<tokio::task::JoinHandle<Vec<u8>>>,
}

impl ResultFile {
    /// The path the job is told (`CQ_RESULT_FILE`).
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(FIFO)
    }

    /// What the job wrote (at most [`RESULT_FILE_CAP`] bytes), once it has ended.
    pub(crate) async fn read(&mut self) -> String {
        if let Some(finish) = self.finish.take() {
            let _ = finish.send(());
        }
        let mut kept = match self.reading.take() {
            Some(reading) => reading.await.unwrap_or_default(),
            None => Vec::new(),
        };
        // A line cut by the cap is not what the job said.
        if kept.len() >= RESULT_FILE_CAP {
            let whole = kept.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            kept.truncate(whole);
        }
        String::from_utf8_lossy(&kept).into_owned()
    }
}

impl Drop for ResultFile {
    fn drop(&mut self) {
        if let Some(reading) = &self.reading {
            reading.abort();
        }
        remove_bounded(&self.dir);
    }
}

/// Removes `dir` and what is in it, two levels deep at most (a job directory holds a FIFO;
/// a base directory holds job directories and its lock), without following links and
/// without recursing further: a tree deeper than that is not ours. Says whether `dir` went.
fn remove_bounded(dir: &Path) -> bool {
    let remove_entries = |dir: &Path, deeper: bool| {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => {
                    if deeper {
                        for inner in fs::read_dir(&path).into_iter().flatten().flatten() {
                            let _ = fs::remove_file(inner.path());
                        }
                    }
                    let _ = fs::remove_dir(&path);
                }
                _ => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
    };
    remove_entries(dir, true);
    fs::remove_dir(dir).is_ok() || !dir.exists()
}

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}
