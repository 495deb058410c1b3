//! cq-emerge against real Portage (issue "The Portage workflow"): a build host and VMs, each
//! a directory used as `PORTAGE_CONFIGROOT` and `ROOT`, sharing one PKGDIR, with Portage from
//! pip in the venv `.ci/install-deps` makes (`$CQ_PORTAGE_VENV`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;

use crate::durable::Gate;
use crate::support::{LIMIT, Munged, TestServer, output, stderr};

const FEATURES: &str = "binpkg-multi-instance -sandbox -usersandbox -userpriv -usersync -userfetch -ipc-sandbox -network-sandbox -pid-sandbox -mount-sandbox -news -preserve-libs nostrip";

/// The ebuilds: `hello` (its file says which of USE foo/bar it was built with), `world`
/// (needs hello), `broken` (fails to build) and `needs-broken`.
const EBUILDS: &[(&str, &str)] = &[
    (
        "app-misc/hello/hello-1.0.ebuild",
        r#"EAPI=8
DESCRIPTION="payload depends on USE"
HOMEPAGE="https://example.invalid"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
IUSE="foo bar"
S="${WORKDIR}"
src_install() {
	local flavour=plain
	use foo && flavour=foo
	use bar && flavour=bar
	use foo && use bar && flavour=foo+bar
	echo "hello built with ${flavour}" > "${T}/flavour.txt" || die
	insinto /usr/share/hello
	doins "${T}/flavour.txt"
}
"#,
    ),
    (
        "app-misc/world/world-1.0.ebuild",
        r#"EAPI=8
DESCRIPTION="needs hello"
HOMEPAGE="https://example.invalid"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
RDEPEND="app-misc/hello"
S="${WORKDIR}"
src_install() {
	echo world > "${T}/world.txt" || die
	insinto /usr/share/world
	doins "${T}/world.txt"
}
"#,
    ),
    (
        "app-misc/broken/broken-1.0.ebuild",
        r#"EAPI=8
DESCRIPTION="does not build"
HOMEPAGE="https://example.invalid"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
S="${WORKDIR}"
src_install() {
	die "broken on purpose"
}
"#,
    ),
    (
        "app-misc/needs-broken/needs-broken-1.0.ebuild",
        r#"EAPI=8
DESCRIPTION="needs broken"
HOMEPAGE="https://example.invalid"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
RDEPEND="app-misc/broken"
S="${WORKDIR}"
src_install() {
	echo x > "${T}/x.txt" || die
	insinto /usr/share/needs-broken
	doins "${T}/x.txt"
}
"#,
    ),
];

const MAKE_DEFAULTS: &str = r#"ARCH="amd64"
ACCEPT_KEYWORDS="amd64"
CHOST="x86_64-pc-linux-gnu"
ELIBC="glibc"
KERNEL="linux"
USERLAND="GNU"
IUSE_IMPLICIT="prefix prefix-guest prefix-stack"
USE_EXPAND="ELIBC KERNEL USERLAND"
USE_EXPAND_UNPREFIXED="ARCH"
USE_EXPAND_IMPLICIT="ARCH ELIBC KERNEL USERLAND"
USE_EXPAND_VALUES_ARCH="amd64"
USE_EXPAND_VALUES_ELIBC="glibc"
USE_EXPAND_VALUES_KERNEL="linux"
USE_EXPAND_VALUES_USERLAND="GNU"
"#;

/// A build host, VMs, one ebuild repository and one PKGDIR under a temp dir.
struct Site {
    dir: tempfile::TempDir,
    venv: PathBuf,
}

impl Site {
    fn new(vms: &[(&str, &str)]) -> Self {
        let venv = std::env::var_os("CQ_PORTAGE_VENV").map_or_else(
            || PathBuf::from("/var/cache/cq-ci/portage-venv"),
            PathBuf::from,
        );
        assert!(
            venv.join("bin/emerge").is_file(),
            "no Portage in {} (run bash .ci/install-deps)",
            venv.display()
        );
        let site = Self {
            dir: tempfile::tempdir().unwrap(),
            venv,
        };
        let repo = site.path("repo");
        for (file, text) in [
            ("profiles/repo_name", "cqtest\n"),
            ("profiles/arch.list", "amd64\n"),
            ("profiles/categories", "app-misc\n"),
            ("profiles/default/eapi", "8\n"),
            ("profiles/default/make.defaults", MAKE_DEFAULTS),
            (
                "metadata/layout.conf",
                "masters =\nthin-manifests = true\nsign-manifests = false\ncache-formats =\n",
            ),
        ]
        .iter()
        .chain(EBUILDS)
        {
            let path = repo.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        site.config_root("broot", "");
        std::fs::create_dir_all(site.path("broot/share/portage")).unwrap();
        std::os::unix::fs::symlink(
            site.venv.join("share/portage/config"),
            site.path("broot/share/portage/config"),
        )
        .unwrap();
        site.config_root("host", "");
        for (vm, use_flags) in vms {
            site.config_root(vm, &format!("USE=\"{use_flags}\"\n"));
        }
        site
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config_root(&self, name: &str, extra: &str) {
        let root = self.path(name);
        std::fs::create_dir_all(root.join("etc/portage")).unwrap();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::os::unix::fs::symlink(
            self.path("repo/profiles/default"),
            root.join("etc/portage/make.profile"),
        )
        .unwrap();
        let conf = format!(
            "FEATURES=\"{FEATURES}\"\nPKGDIR=\"{}\"\nDISTDIR=\"{}\"\nPORTAGE_TMPDIR=\"{}\"\n\
             PORTAGE_USERNAME=\"root\"\nPORTAGE_GRPNAME=\"root\"\nACCEPT_LICENSE=\"*\"\n\
             EMERGE_WARNING_DELAY=\"0\"\nCLEAN_DELAY=\"0\"\n{extra}",
            self.path("pkgdir").display(),
            self.path("distdir").display(),
            root.join("tmp").display(),
        );
        std::fs::write(root.join("etc/portage/make.conf"), conf).unwrap();
    }

    /// The environment that makes Portage work on machine `name`.
    fn env(&self, name: &str) -> Vec<(String, String)> {
        let root = self.path(name).display().to_string();
        vec![
            (
                "PATH".into(),
                format!(
                    "{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                    self.venv.join("bin").display()
                ),
            ),
            ("PORTAGE_CONFIGROOT".into(), root.clone()),
            ("ROOT".into(), root),
            ("EPREFIX".into(), String::new()),
            (
                "PORTAGE_OVERRIDE_EPREFIX".into(),
                self.path("broot").display().to_string(),
            ),
            ("PORTAGE_USERNAME".into(), "root".into()),
            ("PORTAGE_GRPNAME".into(), "root".into()),
            ("NOCOLOR".into(), "true".into()),
            (
                "PORTAGE_REPOSITORIES".into(),
                format!(
                    "[DEFAULT]\nmain-repo = cqtest\n[cqtest]\nlocation = {}\nauto-sync = no\n",
                    self.path("repo").display()
                ),
            ),
        ]
    }

    /// The build host's cq.toml: jobs get the host's Portage environment; only
    /// cq-emerge-build (and `cat`, for the test's gate) may run, with flag variables only.
    fn server_config(&self) -> PathBuf {
        let mut toml = String::from("[jobs.env]\n");
        for (name, value) in self.env("host") {
            toml.push_str(&format!("{name} = {}\n", toml_string(&value)));
        }
        let cat = std::fs::canonicalize(which("cat")).unwrap();
        toml.push_str(&format!(
            "[policy]\nallow_root = true\ncommands = [{}, {}]\nenv_allow = [\"USE\", \"ABI_X86\", \"CPU_FLAGS_X86\"]\n",
            toml_string(env!("CARGO_BIN_EXE_cq-emerge-build")),
            toml_string(&cat.display().to_string()),
        ));
        let path = self.path("server.toml");
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// cq-emerge on `vm`, for `server`, with `args`.
    fn cq_emerge(
        &self,
        vm: &str,
        server: &TestServer,
        munged: &Munged,
        args: &[&str],
    ) -> tokio::process::Command {
        let config = self.path(&format!("{vm}.toml"));
        std::fs::write(
            &config,
            format!(
                "[emerge]\nbuild_command = {}\nclient = {}\n",
                toml_string(env!("CARGO_BIN_EXE_cq-emerge-build")),
                toml_string(env!("CARGO_BIN_EXE_cq_client")),
            ),
        )
        .unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cq-emerge"));
        cmd.env_clear()
            .envs(self.env(vm))
            .arg(format!("--config={}", config.display()))
            .args([
                "--client-arg=-h".to_owned(),
                format!("--client-arg={}", server.addr.ip()),
                "--client-arg=-p".to_owned(),
                format!("--client-arg={}", server.addr.port()),
                format!("--client-arg=--munge-socket={}", munged.socket().display()),
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    fn read(&self, vm: &str, file: &str) -> Option<String> {
        std::fs::read_to_string(self.path(vm).join(file))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// The binary package instances of `pn` in PKGDIR.
    fn instances(&self, pn: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path("pkgdir/app-misc").join(pn))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} in PATH"))
}

async fn finish(child: tokio::process::Child) -> std::process::Output {
    tokio::time::timeout(LIMIT * 4, child.wait_with_output())
        .await
        .expect("cq-emerge finishes")
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Three VMs, two USE sets, run cq-emerge at once: each distinct (package, flags) is built
/// once, and every VM installs its own instance, dependencies first.
#[tokio::test]
async fn three_vms_get_their_own_builds_each_built_once() {
    let munged = Munged::start();
    let site = Site::new(&[("vm1", "foo"), ("vm2", "bar"), ("vm3", "foo")]);
    let config = site.server_config();
    let args: Vec<OsString> = vec![
        "--munge-socket".into(),
        munged.socket().into(),
        "--config".into(),
        config.into(),
    ];
    let client_args = vec!["--munge-socket".into(), munged.socket().into()];
    let server = TestServer::start_args(&args, client_args).await;

    // The plan alone submits nothing.
    let plan = site
        .cq_emerge("vm2", &server, &munged, &["--pretend", "app-misc/world"])
        .spawn()
        .unwrap();
    let plan = finish(plan).await;
    assert!(plan.status.success(), "{}", text(&plan.stderr));
    assert_eq!(
        text(&plan.stdout),
        "build   =app-misc/hello-1.0 USE=\"bar -foo\"\nbuild   =app-misc/world-1.0\n"
    );

    // Hold the queue so that all three VMs' builds wait together.
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = Gate::new(gate_dir.path());
    let gate_path = gate_dir.path().join("gate");
    let held = output(
        server
            .client()
            .args(["--detach", "--", "cat"])
            .arg(&gate_path),
    )
    .await;
    assert!(held.status.success(), "{}", stderr(&held));
    let vms: Vec<_> = ["vm1", "vm2", "vm3"]
        .iter()
        .map(|vm| {
            site.cq_emerge(vm, &server, &munged, &["app-misc/world"])
                .spawn()
                .unwrap()
        })
        .collect();
    // hello[foo] of vm3 into vm1's; world of vm2 and vm3 into vm1's.
    server.wait_for_log_count("merged into", 3).await;
    gate.open().await;
    let mut outputs = Vec::new();
    for vm in vms {
        outputs.push(finish(vm).await);
    }
    for (vm, out) in ["vm1", "vm2", "vm3"].iter().zip(&outputs) {
        assert!(out.status.success(), "{vm}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("all 2 packages done"),
            "{vm}: {}",
            text(&out.stderr)
        );
    }
    // One build per distinct (package, flags): two hellos, one world.
    assert_eq!(
        site.instances("hello"),
        ["hello-1.0-1.gpkg.tar", "hello-1.0-2.gpkg.tar"]
    );
    assert_eq!(site.instances("world"), ["world-1.0-1.gpkg.tar"]);
    let list = output(server.client().args(["--list", "--json"])).await;
    let jobs: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(
        jobs.as_array().unwrap().len(),
        4,
        "the gate and three builds: {jobs}"
    );

    // Each VM has the instance built with its own flags, and world after hello.
    let foo_id = site
        .read("vm1", "var/db/pkg/app-misc/hello-1.0/BUILD_ID")
        .unwrap();
    for (vm, flavour) in [("vm1", "foo"), ("vm2", "bar"), ("vm3", "foo")] {
        assert_eq!(
            site.read(vm, "usr/share/hello/flavour.txt").as_deref(),
            Some(format!("hello built with {flavour}").as_str()),
            "{vm}"
        );
        assert_eq!(
            site.read(vm, "usr/share/world/world.txt").as_deref(),
            Some("world")
        );
        let counter = |pkg: &str| -> u64 {
            site.read(vm, &format!("var/db/pkg/app-misc/{pkg}-1.0/COUNTER"))
                .unwrap()
                .parse()
                .unwrap()
        };
        assert!(
            counter("hello") < counter("world"),
            "{vm}: world before hello"
        );
        let id = site
            .read(vm, "var/db/pkg/app-misc/hello-1.0/BUILD_ID")
            .unwrap();
        assert_eq!(id == foo_id, flavour == "foo", "{vm}: build id {id}");
        // Asked for without --oneshot, world is in the world set (so depclean keeps it);
        // hello, a dependency, is not.
        assert_eq!(
            site.read(vm, "var/lib/portage/world").as_deref(),
            Some("app-misc/world"),
            "{vm}"
        );
    }
}

/// A package that fails to build is named with where its output is, and what needs it is
/// not installed; the exit status says so.
#[tokio::test]
async fn a_failed_build_is_named_and_what_needs_it_is_not_installed() {
    let munged = Munged::start();
    let site = Site::new(&[("vm1", "")]);
    let config = site.server_config();
    let args: Vec<OsString> = vec![
        "--munge-socket".into(),
        munged.socket().into(),
        "--config".into(),
        config.into(),
    ];
    let client_args = vec!["--munge-socket".into(), munged.socket().into()];
    let server = TestServer::start_args(&args, client_args).await;
    let run = site
        .cq_emerge("vm1", &server, &munged, &["app-misc/needs-broken"])
        .spawn()
        .unwrap();
    let out = finish(run).await;
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("1 package failed: app-misc/broken-1.0 (see cq_client --log 1)"),
        "{said}"
    );
    assert!(said.contains("not installed"), "{said}");
    assert!(said.contains("app-misc/needs-broken-1.0"), "{said}");
    assert!(
        !site
            .path("vm1/var/db/pkg/app-misc/needs-broken-1.0")
            .exists()
    );
    assert!(!site.path("vm1/var/db/pkg/app-misc/broken-1.0").exists());
    // The build host's log of it says why.
    let log = output(server.client().args(["--log", "1"])).await;
    assert!(
        text(&log.stdout).contains("broken on purpose"),
        "{}",
        text(&log.stdout)
    );

    // --dry-run-install builds, and shows the install of exactly the instance built.
    let run = site
        .cq_emerge(
            "vm1",
            &server,
            &munged,
            &["--dry-run-install", "app-misc/hello"],
        )
        .spawn()
        .unwrap();
    let out = finish(run).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let instances = site.instances("hello");
    let [instance] = &instances[..] else {
        panic!("{instances:?}");
    };
    let atom = format!("=app-misc/{}", instance.trim_end_matches(".gpkg.tar"));
    assert!(
        text(&out.stdout)
            .lines()
            .any(|l| l.ends_with(&format!("--usepkgonly {atom}"))),
        "{}",
        text(&out.stdout)
    );
    assert!(!site.path("vm1/var/db/pkg/app-misc/hello-1.0").exists());
}
