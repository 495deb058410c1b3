//! A Slurm job's files: a directory of its own (the requester's, inside the executor's
//! output directory) holding the output Slurm writes and the results the job writes.
//!
//! The requester owns the directory, so anything in it may be a trap for a reader with more
//! rights (a symlink to `/etc/shadow`, a FIFO that blocks): files are opened without
//! following symlinks and without blocking, and read only if they are regular files of the
//! requester's.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::executor::LogSink;
use crate::job::JobId;

/// Most bytes of results read back.
const MAX_RESULTS_READ: u64 = 64 * 1024;
/// Most bytes of output copied in one look (the rest comes with the next).
const MAX_COPY: u64 = 1024 * 1024;

/// Checks that `dir` can hold jobs' directories: a directory of this user's that nobody
/// else may write to (another user could otherwise put their own directory in a job's place).
pub(super) fn check_output_dir(dir: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("not a directory".to_owned());
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!(
            "belongs to uid {}, not to this process's user",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "others may write to it (mode {:o}); make it 0711 or 0755",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Writes the batch script of every job into `dir` (readable by all, as sbatch reads it
/// with the requester's rights); its path.
pub(super) fn write_script(dir: &Path) -> Result<PathBuf, String> {
    use std::io::Write;
    let path = dir.join("cq-run.sh");
    let temporary = dir.join(format!(".cq-run.sh.{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&temporary)
        .and_then(|mut file| {
            // Whatever the umask: every requester's sbatch reads it.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            file.write_all(SCRIPT.as_bytes())
        })
        .and_then(|()| std::fs::rename(&temporary, &path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        format!("cannot write the batch script {}: {e}", path.display())
    })?;
    Ok(path)
}

/// The batch script. Its arguments: the working directory, the file that says it could not
/// be entered, then the command, which only `exec` sees. It enters the directory itself:
/// slurmstepd runs a job whose directory it cannot enter in /tmp instead, where any user
/// may have put a `./configure` of their own.
const SCRIPT: &str = "#!/bin/sh
# cq: enters the job's working directory and runs the command given as arguments.
cd -- \"$1\" 2>/dev/null || { echo \"cq: cannot enter the working directory $1\" >&2; : > \"$2\"; exit 126; }
shift 2
exec \"$@\"
";

/// Whether `name` is one [`JobFiles::create`] makes.
pub(super) fn valid_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with("cq-")
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-')
}

/// One job's directory.
#[derive(Debug)]
pub(super) struct JobFiles {
    dir: PathBuf,
    name: String,
}

impl JobFiles {
    /// Makes the job's directory in `base`, owned by `uid`:`gid` (mode 0700).
    pub(super) fn create(base: &Path, id: JobId, uid: u32, gid: u32) -> io::Result<Self> {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
        let name = format!("cq-{id}-{:016x}", u64::from_ne_bytes(random));
        let dir = base.join(&name);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        if uid != nix::unistd::geteuid().as_raw()
            && let Err(e) = std::os::unix::fs::lchown(&dir, Some(uid), Some(gid))
        {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        Ok(Self { dir, name })
    }

    /// The directory `name` in `base`, made by an earlier run.
    pub(super) fn existing(base: &Path, name: &str) -> Self {
        Self {
            dir: base.join(name),
            name: name.to_owned(),
        }
    }

    /// Its name, also the Slurm job's name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Where Slurm writes the job's output (standard output and error).
    pub(super) fn output(&self) -> PathBuf {
        self.dir.join("output")
    }

    /// What the batch script makes when it cannot enter the job's working directory.
    pub(super) fn no_cwd(&self) -> PathBuf {
        self.dir.join("cwd-failed")
    }

    /// Whether the batch script could not enter the job's working directory.
    pub(super) fn cwd_failed(&self, uid: u32) -> bool {
        open_owned(&self.no_cwd(), uid).is_ok()
    }

    /// Where the job writes its results (`CQ_RESULT_FILE`).
    pub(super) fn results(&self) -> PathBuf {
        self.dir.join("results")
    }

    /// What the job wrote to its results file (nothing if it is no regular file of `uid`'s).
    pub(super) fn read_results(&self, uid: u32) -> String {
        let mut text = Vec::new();
        if let Ok(file) = open_owned(&self.results(), uid) {
            let _ = file.take(MAX_RESULTS_READ).read_to_end(&mut text);
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// Removes the directory with the files Slurm and the job were given. Anything else in
    /// it is the requester's doing and stays (with a warning): walking a tree its user
    /// controls, with this process's rights, is what an attacker would want.
    pub(super) fn remove(&self) {
        for file in [self.output(), self.results(), self.no_cwd()] {
            // Unlinks a symlink itself, never what it points to.
            if let Err(e) = std::fs::remove_file(&file)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::debug!(file = %file.display(), error = %e, "cannot remove a Slurm job's file");
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "a Slurm job's directory holds what its job put there: left in place");
        }
    }
}

/// Opens `path` for reading if it is a regular file of `uid`'s, never through a symlink and
/// never blocking on a FIFO.
fn open_owned(path: &Path, uid: u32) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != uid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "not a regular file of the job's user",
        ));
    }
    Ok(file)
}

/// Copies a growing output file into the job's log, from where the log ends.
#[derive(Debug)]
pub(super) struct OwnedReader {
    path: PathBuf,
    uid: u32,
    offset: u64,
    file: Option<File>,
    /// Set once the file turned out unfit: it is not read again.
    refused: bool,
}

impl OwnedReader {
    /// A reader of `path`, which must be `uid`'s, starting at `offset`.
    pub(super) fn new(path: PathBuf, uid: u32, offset: u64) -> Self {
        Self {
            path,
            uid,
            offset,
            file: None,
            refused: false,
        }
    }

    /// Appends what the file gained since the last call to `log`.
    pub(super) fn copy_into(&mut self, log: &mut LogSink) {
        if self.refused || log.is_full() {
            return;
        }
        if self.file.is_none() {
            match open_owned(&self.path, self.uid) {
                Ok(mut file) => {
                    if file.seek(SeekFrom::Start(self.offset)).is_err() {
                        return;
                    }
                    self.file = Some(file);
                }
                // Slurm makes it when the job starts.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) => {
                    tracing::warn!(file = %self.path.display(), error = %e, "the Slurm job's output file is not read");
                    self.refused = true;
                    return;
                }
            }
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let mut chunk = Vec::new();
        // What was read before an error is output all the same.
        let _ = file.by_ref().take(MAX_COPY).read_to_end(&mut chunk);
        if !chunk.is_empty() {
            self.offset += chunk.len() as u64;
            log.append(&chunk);
        }
    }
}
