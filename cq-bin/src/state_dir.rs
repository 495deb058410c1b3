//! The state directory: the job database, the job logs and the pid file, private to the
//! server's user, in a place nobody else can change.

use std::fs::{DirBuilder, Permissions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates `dir` (mode 0700) if it is missing, and checks the one that is there: owned by
/// the server's user (a group or others' access is taken away, and said so), and in parent
/// directories that only root or that user can change. Does the same for `dir/logs`.
///
/// Returns the directory's canonical path, which the server must use from then on: the
/// checks are of that path, and a symbolic link on the way to `dir` may be changed later
/// by whoever owns it.
///
/// # Errors
///
/// What is wrong, in words for the admin.
pub fn prepare(dir: &Path) -> Result<PathBuf, String> {
    let canonical = prepare_private(dir)?;
    private_dir(&canonical.join("logs"))?;
    Ok(canonical)
}

/// [`prepare`] without the `logs` inside: a private directory (cq_worker's spool) on a way
/// only root and this user can change. Returns its canonical path.
///
/// # Errors
///
/// What is wrong, in words for the admin.
pub fn prepare_private(dir: &Path) -> Result<PathBuf, String> {
    let me = nix::unistd::geteuid().as_raw();
    let given =
        std::path::absolute(dir).map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
    // Nothing is created or changed before the way there is known to be safe: a link
    // someone else controls would make the server create, chmod and fill any directory.
    check_way(&given, me)?;
    private_dir(&given)?;
    let canonical = given
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
    for ancestor in canonical.ancestors().skip(1) {
        let meta = ancestor
            .metadata()
            .map_err(|e| format!("cannot inspect {}: {e}", ancestor.display()))?;
        trusted_parent(ancestor, &meta, me)?;
    }
    private_dir(&canonical)?;
    Ok(canonical)
}

/// Where jobs' result directories go (`CQ_RESULT_FILE`), below a directory only the
/// server's user can write. Jobs that run as the server's user get `state_dir/results`; jobs
/// that run as their requesters cannot reach into the private state directory, so theirs go
/// to `/run/cq/results-<hash of state_dir>` (`/run/cq` made mode 0755 if missing, and refused
/// unless root's and written only by root).
///
/// # Errors
///
/// What is wrong, in words for the admin.
pub fn result_dir(state_dir: &Path, jobs_as_requesters: bool) -> Result<PathBuf, String> {
    if !jobs_as_requesters {
        return Ok(state_dir.join("results"));
    }
    let run = Path::new("/run/cq");
    match DirBuilder::new().mode(0o755).create(run) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", run.display())),
    }
    let meta = std::fs::symlink_metadata(run)
        .map_err(|e| format!("cannot inspect {}: {e}", run.display()))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} must be a directory of root's that only root can write",
            run.display()
        ));
    }
    // Jobs must pass through it to their own directory (the server's umask made it 0700).
    if meta.mode() & 0o011 != 0o011 {
        std::fs::set_permissions(run, Permissions::from_mode(meta.mode() & 0o7777 | 0o111))
            .map_err(|e| format!("cannot let jobs through {}: {e}", run.display()))?;
    }
    // What servers that died left behind.
    for entry in std::fs::read_dir(run).into_iter().flatten().flatten() {
        let path = entry.path();
        let ours = entry.file_name().to_string_lossy().starts_with("results-");
        if ours {
            cq_core::ProcessExecutor::remove_abandoned_result_dir(&path);
        }
    }
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(state_dir, &mut hasher);
    Ok(run.join(format!(
        "results-{:016x}",
        std::hash::Hasher::finish(&hasher)
    )))
}

/// Checks that `dir` (if it exists) and every directory on the way to it can be changed only
/// by root or `me` (a sticky, world-writable parent such as /tmp is fine for what it holds,
/// not as `dir` itself), with no symbolic link on the way that someone else owns.
///
/// # Errors
///
/// What is wrong, in words for the admin.
pub fn check_trusted_dir(dir: &Path, me: u32) -> Result<(), String> {
    let given =
        std::path::absolute(dir).map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
    check_way(&given, me)?;
    match std::fs::symlink_metadata(&given) {
        Ok(meta) if meta.is_dir() => {
            if (meta.uid() != 0 && meta.uid() != me) || meta.mode() & 0o022 != 0 {
                return Err(format!(
                    "{} can be changed by others than root and cq_server's user (owner uid {}, mode {:o}), who could swap the socket",
                    given.display(),
                    meta.uid(),
                    meta.mode() & 0o7777
                ));
            }
            Ok(())
        }
        Ok(_) => Err(format!("{} is not a directory", given.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot inspect {}: {e}", given.display())),
    }
}

/// Checks each existing entry on the way to `path`, as given: directories must be ones only
/// root or `me` can change, and a symbolic link must be root's or `me`'s (its target is
/// checked as the way goes on through it).
fn check_way(path: &Path, me: u32) -> Result<(), String> {
    let mut at = PathBuf::new();
    let count = path.components().count();
    for (i, component) in path.components().enumerate() {
        at.push(component);
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot inspect {}: {e}", at.display())),
        };
        if meta.file_type().is_symlink() {
            if meta.uid() != 0 && meta.uid() != me {
                return Err(format!(
                    "{} (on the way to the state directory) is a symbolic link of uid {}, who could point it elsewhere",
                    at.display(),
                    meta.uid()
                ));
            }
            continue;
        }
        if i + 1 < count {
            trusted_parent(&at, &meta, me)?;
        }
    }
    Ok(())
}

/// A directory above the state directory: only root or `me` may change it (others may
/// write only where the sticky bit keeps them from renaming what is not theirs).
fn trusted_parent(dir: &Path, meta: &std::fs::Metadata, me: u32) -> Result<(), String> {
    let sticky = meta.mode() & 0o1000 != 0;
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "{} (a parent of the state directory) belongs to uid {}, who could replace the state directory",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 && !sticky {
        return Err(format!(
            "{} (a parent of the state directory) can be written by others, who could replace the state directory",
            dir.display()
        ));
    }
    Ok(())
}

fn private_dir(dir: &Path) -> Result<(), String> {
    if dir.metadata().is_ok_and(|m| !m.is_dir()) {
        return Err(format!("{} is not a directory", dir.display()));
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let meta = dir
        .metadata()
        .map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if meta.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, not to cq_server's uid {me}: it would hold every job's environment and output where that user can read or replace them",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot make {} private: {e}", dir.display()))?;
        tracing::info!(dir = %dir.display(), was = format!("{:o}", meta.mode() & 0o777), "made the state directory private (mode 0700)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_is_private_and_an_open_one_is_closed() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("state");
        prepare(&dir).unwrap();
        for d in [dir.clone(), dir.join("logs")] {
            assert_eq!(
                d.metadata().unwrap().mode() & 0o777,
                0o700,
                "{}",
                d.display()
            );
        }
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        prepare(&dir).unwrap();
        assert_eq!(dir.metadata().unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_parent_others_can_write_is_refused() {
        let top = tempfile::tempdir().unwrap();
        std::fs::set_permissions(top.path(), Permissions::from_mode(0o777)).unwrap();
        let err = prepare(&top.path().join("state")).unwrap_err();
        assert!(err.contains("can be written by others"), "{err}");
    }

    /// Red team of Security III: a link in a directory others may write led the server to
    /// chmod and fill whatever it pointed at.
    #[test]
    fn a_link_in_a_directory_others_can_write_is_refused_before_anything_changes() {
        let top = tempfile::tempdir().unwrap();
        let shared = top.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, Permissions::from_mode(0o2775)).unwrap();
        let victim = top.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::set_permissions(&victim, Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&victim, shared.join("state")).unwrap();
        let err = prepare(&shared.join("state")).unwrap_err();
        assert!(err.contains("can be written by others"), "{err}");
        assert_eq!(victim.metadata().unwrap().mode() & 0o777, 0o755);
        assert!(!victim.join("logs").exists());
    }

    #[test]
    fn a_state_directory_reached_through_a_link_is_used_by_its_real_path() {
        let top = tempfile::tempdir().unwrap();
        let real = top.path().join("real");
        let link = top.path().join("link");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let used = prepare(&link).unwrap();
        assert_eq!(used, real.canonicalize().unwrap());
        assert!(used.join("logs").is_dir());
    }
}
