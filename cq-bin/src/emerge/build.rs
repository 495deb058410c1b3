//! `cq-emerge-build =CATEGORY/PF`, the job cq-emerge submits: on the build host, build one
//! package as a binary package and report which instance it made.
//!
//! It is the only program a build host's policy needs to allow for cq-emerge, and it takes
//! nothing but one exact atom: a requester cannot pass emerge options (`--root`,
//! `--config-root`, `--quickpkg-direct-root`...) through it. Flags come from the job's
//! environment (`USE`, `USE_EXPAND` variables), which the policy's `env_allow` limits.
//!
//! The build host runs one job at a time, so the instance that appears in `PKGDIR` while
//! the build runs is this build's; its `BUILD_ID` (Portage's `binpkg-multi-instance`)
//! goes back to every waiter as a result, and the VMs install exactly that instance.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::plan::is_cpv;

/// Why a build did not give a binary package.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The argument is not one `=CATEGORY/PF` atom.
    #[error("expected one atom =CATEGORY/PF (e.g. =app-misc/hello-1.0), got {0:?}")]
    Usage(Vec<String>),
    /// A program could not be started.
    #[error("cannot run {program}: {source} (is Portage installed, and in the job's PATH?)")]
    Spawn {
        /// What was run.
        program: String,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
    /// `portageq envvar PKGDIR` said nothing usable.
    #[error("portageq envvar PKGDIR failed: {0}")]
    NoPkgdir(String),
    /// emerge failed (its output is in the job's log).
    #[error("emerge --buildpkgonly {atom} failed ({status})")]
    Emerge {
        /// The atom.
        atom: String,
        /// How emerge ended.
        status: std::process::ExitStatus,
    },
    /// emerge succeeded, yet no new binary package appeared.
    #[error(
        "emerge succeeded but no new binary package of {0} appeared in PKGDIR (is PKGDIR the one the VMs install from?)"
    )]
    NothingBuilt(String),
    /// The result file could not be written.
    #[error("cannot write the result file: {0}")]
    Result(std::io::Error),
}

impl BuildError {
    /// The exit status for it: emerge's own when it failed, else 1 (2 for usage).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Emerge { status, .. } => status
                .code()
                .and_then(|c| u8::try_from(c).ok())
                .filter(|c| *c != 0)
                .unwrap_or(1),
            _ => 1,
        }
    }
}

/// One binary package instance in PKGDIR.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instance {
    /// `BUILD_ID` (none without `binpkg-multi-instance`).
    pub build_id: Option<u64>,
    /// The file, relative to PKGDIR.
    pub path: PathBuf,
}

/// What a build made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    /// `CATEGORY/PF`.
    pub cpv: String,
    /// The new instance.
    pub instance: Instance,
}

impl Built {
    /// The result lines for `$CQ_RESULT_FILE`.
    pub fn result_lines(&self) -> String {
        let mut lines = format!(
            "CPV={}\nBINPKG={}\n",
            self.cpv,
            self.instance.path.display()
        );
        if let Some(id) = self.instance.build_id {
            lines.push_str(&format!("BUILD_ID={id}\n"));
        }
        lines
    }
}

/// Builds `args` (exactly one `=CATEGORY/PF`) with the `emerge` and `portageq` in `PATH`,
/// and writes the results to `$CQ_RESULT_FILE` when there is one.
///
/// # Errors
///
/// See [`BuildError`].
pub fn build(args: &[String]) -> Result<Built, BuildError> {
    let [atom] = args else {
        return Err(BuildError::Usage(args.to_vec()));
    };
    let cpv = atom
        .strip_prefix('=')
        .filter(|cpv| is_cpv(cpv))
        .ok_or_else(|| BuildError::Usage(args.to_vec()))?;
    let pkgdir = pkgdir()?;
    let before = instances(&pkgdir, cpv);
    let status = Command::new("emerge")
        .args([
            "--buildpkgonly",
            "--oneshot",
            "--nodeps",
            "--color=n",
            "--nospinner",
        ])
        .arg(atom)
        .status()
        .map_err(|source| BuildError::Spawn {
            program: "emerge".into(),
            source,
        })?;
    if !status.success() {
        return Err(BuildError::Emerge {
            atom: atom.clone(),
            status,
        });
    }
    let instance = instances(&pkgdir, cpv)
        .difference(&before)
        .max()
        .cloned()
        .ok_or_else(|| BuildError::NothingBuilt(atom.clone()))?;
    let built = Built {
        cpv: cpv.to_owned(),
        instance,
    };
    if let Some(file) = std::env::var_os("CQ_RESULT_FILE") {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(file)
            .and_then(|mut f| f.write_all(built.result_lines().as_bytes()))
            .map_err(BuildError::Result)?;
    }
    Ok(built)
}

/// The build host's PKGDIR, as Portage sees it in this environment.
fn pkgdir() -> Result<PathBuf, BuildError> {
    let out = Command::new("portageq")
        .args(["envvar", "PKGDIR"])
        .output()
        .map_err(|source| BuildError::Spawn {
            program: "portageq".into(),
            source,
        })?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || dir.is_empty() {
        return Err(BuildError::NoPkgdir(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(PathBuf::from(dir))
}

/// The binary packages of `cpv` in `pkgdir`: `CATEGORY/PN/PF-N.{gpkg.tar,xpak}` with
/// `binpkg-multi-instance`, `CATEGORY/PF.{gpkg.tar,tbz2}` without.
pub fn instances(pkgdir: &Path, cpv: &str) -> BTreeSet<Instance> {
    let Some((category, pf)) = cpv.split_once('/') else {
        return BTreeSet::new();
    };
    let mut found = BTreeSet::new();
    let category_dir = pkgdir.join(category);
    let mut consider = |relative: PathBuf, name: &str| {
        let stem = ["gpkg.tar", "xpak", "tbz2"]
            .iter()
            .find_map(|ext| name.strip_suffix(ext)?.strip_suffix('.'));
        let Some(stem) = stem else { return };
        if stem == pf {
            found.insert(Instance {
                build_id: None,
                path: relative,
            });
        } else if let Some(id) = stem
            .strip_prefix(pf)
            .and_then(|s| s.strip_prefix('-'))
            .and_then(|s| s.parse().ok())
        {
            found.insert(Instance {
                build_id: Some(id),
                path: relative,
            });
        }
    };
    for entry in std::fs::read_dir(&category_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            for inner in std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let inner_name = inner.file_name().to_string_lossy().into_owned();
                let relative = Path::new(category).join(&name).join(&inner_name);
                consider(relative, &inner_name);
            }
        } else {
            consider(Path::new(category).join(&name), &name);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_exact_atom_is_taken() {
        for bad in [
            vec![],
            vec!["app-misc/hello-1.0".to_owned()],
            vec!["=app-misc/hello".to_owned()],
            vec!["--root=/".to_owned()],
            vec!["=app-misc/hello-1.0".to_owned(), "--root=/".to_owned()],
            vec!["=../../x-1".to_owned()],
        ] {
            assert!(matches!(build(&bad), Err(BuildError::Usage(_))), "{bad:?}");
        }
    }

    #[test]
    fn instances_are_found_with_their_build_ids() {
        let dir = tempfile::tempdir().unwrap();
        let pn = dir.path().join("app-misc/hello");
        std::fs::create_dir_all(&pn).unwrap();
        for name in [
            "hello-1.0-1.gpkg.tar",
            "hello-1.0-12.gpkg.tar",
            "hello-1.0.1-3.gpkg.tar",
            "hello-1.0-x.gpkg.tar",
        ] {
            std::fs::write(pn.join(name), "").unwrap();
        }
        std::fs::write(dir.path().join("app-misc/hello-1.0.tbz2"), "").unwrap();
        let ids: Vec<Option<u64>> = instances(dir.path(), "app-misc/hello-1.0")
            .into_iter()
            .map(|i| i.build_id)
            .collect();
        assert_eq!(ids, [None, Some(1), Some(12)]);
        let built = Built {
            cpv: "app-misc/hello-1.0".into(),
            instance: Instance {
                build_id: Some(12),
                path: "app-misc/hello/hello-1.0-12.gpkg.tar".into(),
            },
        };
        assert_eq!(
            built.result_lines(),
            "CPV=app-misc/hello-1.0\nBINPKG=app-misc/hello/hello-1.0-12.gpkg.tar\nBUILD_ID=12\n"
        );
    }
}
