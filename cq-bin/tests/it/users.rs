//! Test accounts, and running the real programs as them.
//!
//! The tests run as root (as CI does) and play several parties: `cq-test-user` (with a
//! supplementary group `cq-test-extra`) and `cq-test-other` are two unprivileged users on a
//! client host; root on a client host can claim any uid and gid in its MUNGE credentials.
//! The accounts are created on first use and kept, as a build host's users would be
//! (`.ci/run` removes them at the end).

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::unistd::{Group, User};

pub(crate) const ALICE: &str = "cq-test-user";
pub(crate) const BOB: &str = "cq-test-other";
pub(crate) const EXTRA_GROUP: &str = "cq-test-extra";

/// The test accounts.
pub(crate) struct TestUsers {
    pub(crate) alice: User,
    pub(crate) bob: User,
    /// Alice's supplementary group.
    pub(crate) extra: Group,
}

/// The test accounts, created once.
pub(crate) fn users() -> &'static TestUsers {
    static MADE: OnceLock<TestUsers> = OnceLock::new();
    MADE.get_or_init(|| {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests switch users: run them as root (as .ci/run does)"
        );
        let run = |program: &str, args: &[&str]| {
            let status = std::process::Command::new(program)
                .args(args)
                .status()
                .unwrap_or_else(|e| panic!("{program}: {e} (install passwd)"));
            // 9: the user or group already exists (another test binary made it).
            assert!(
                status.success() || status.code() == Some(9),
                "{program} {args:?}: {status}"
            );
        };
        if Group::from_name(EXTRA_GROUP).unwrap().is_none() {
            run("groupadd", &[EXTRA_GROUP]);
        }
        for (name, groups) in [(ALICE, Some(EXTRA_GROUP)), (BOB, None)] {
            if User::from_name(name).unwrap().is_none() {
                let home = format!("/nonexistent/{name}");
                let mut args = vec![
                    "--no-create-home",
                    "--home-dir",
                    &home,
                    "--shell",
                    "/bin/sh",
                    "--user-group",
                ];
                if let Some(group) = groups {
                    args.extend(["--groups", group]);
                }
                args.push(name);
                run("useradd", &args);
            }
        }
        TestUsers {
            alice: User::from_name(ALICE).unwrap().unwrap(),
            bob: User::from_name(BOB).unwrap().unwrap(),
            extra: Group::from_name(EXTRA_GROUP).unwrap().unwrap(),
        }
    })
}

/// `setpriv` arguments that become `user` (its own groups), then run `program`.
pub(crate) fn as_user(user: &User, program: &Path) -> Vec<OsString> {
    vec![
        "setpriv".into(),
        format!("--reuid={}", user.uid).into(),
        format!("--regid={}", user.gid).into(),
        "--init-groups".into(),
        "--".into(),
        program.into(),
    ]
}

/// The programs where every user can run them: where they were built if every directory on
/// the way lets others through, otherwise copies in a directory that does (kept while this
/// lives).
pub(crate) struct PublicBinaries {
    dir: Option<tempfile::TempDir>,
}

impl PublicBinaries {
    pub(crate) fn new() -> Self {
        let built = Path::new(env!("CARGO_BIN_EXE_cq_client"));
        let reachable = built.ancestors().skip(1).all(|dir| {
            dir.metadata()
                .is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
        });
        if reachable {
            return Self { dir: None };
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for (name, from) in [
            ("cq_server", env!("CARGO_BIN_EXE_cq_server")),
            ("cq_client", env!("CARGO_BIN_EXE_cq_client")),
            ("cq_worker", env!("CARGO_BIN_EXE_cq_worker")),
        ] {
            let to = dir.path().join(name);
            if std::fs::hard_link(from, &to).is_err() {
                std::fs::copy(from, &to).unwrap();
            }
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Self { dir: Some(dir) }
    }

    fn path(&self, name: &str, built: &str) -> PathBuf {
        match &self.dir {
            Some(dir) => dir.path().join(name),
            None => PathBuf::from(built),
        }
    }

    pub(crate) fn client(&self) -> PathBuf {
        self.path("cq_client", env!("CARGO_BIN_EXE_cq_client"))
    }

    pub(crate) fn worker(&self) -> PathBuf {
        self.path("cq_worker", env!("CARGO_BIN_EXE_cq_worker"))
    }

    pub(crate) fn server(&self) -> PathBuf {
        self.path("cq_server", env!("CARGO_BIN_EXE_cq_server"))
    }
}

/// A directory every user may enter and write to (sticky, as /tmp is).
pub(crate) fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}
