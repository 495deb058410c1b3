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
    private_dir(dir)?;
    let canonical = dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
    private_dir(&canonical)?;
    let me = nix::unistd::geteuid().as_raw();
    for ancestor in canonical.ancestors().skip(1) {
        let meta = ancestor
            .metadata()
            .map_err(|e| format!("cannot inspect {}: {e}", ancestor.display()))?;
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.uid() != 0 && meta.uid() != me {
            return Err(format!(
                "{} (a parent of the state directory) belongs to uid {}, who could replace the state directory",
                ancestor.display(),
                meta.uid()
            ));
        }
        if meta.mode() & 0o022 != 0 && !sticky {
            return Err(format!(
                "{} (a parent of the state directory) can be written by others, who could replace the state directory",
                ancestor.display()
            ));
        }
    }
    private_dir(&canonical.join("logs"))?;
    Ok(canonical)
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
