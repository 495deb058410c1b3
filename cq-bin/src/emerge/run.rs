//! `cq-emerge`: what the local Portage would merge is built on the build host, one cq job
//! per package, and each package is installed here, in merge order, as soon as its build
//! and everything before it are done.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::Command;
use tokio::task::JoinSet;

use super::plan::{self, Planned, Source};

/// What cq-emerge was asked to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Options and atoms for emerge (`-uDN @world`).
    pub emerge_args: Vec<String>,
    /// Show the plan, submit nothing.
    pub pretend: bool,
    /// Build, but only print the install commands.
    pub dry_run_install: bool,
    /// At most this many builds submitted and not yet ended (none: all at once).
    pub jobs: Option<usize>,
    /// The cq_client to submit with.
    pub client: PathBuf,
    /// Options for cq_client (server, authentication).
    pub client_args: Vec<String>,
    /// The program the build host runs for each package.
    pub build_command: String,
    /// emerge options for installing a built package (`--usepkgonly` from a shared PKGDIR,
    /// `--getbinpkgonly` from a binhost).
    pub install_options: Vec<String>,
    /// Further variables passed to every build, with this machine's values.
    pub pass_variables: Vec<(String, String)>,
}

/// How one package's build ended, as cq_client reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Build {
    Waiting,
    Built { job: u64, build_id: Option<String> },
    Failed { job: Option<u64>, why: String },
}

/// Runs cq-emerge; returns its exit status.
pub async fn run(options: &Options) -> u8 {
    let plan = match pretend(&options.emerge_args).await {
        Ok(plan) => plan,
        Err((code, why)) => {
            eprintln!("cq-emerge: {why}");
            return code;
        }
    };
    if plan.is_empty() {
        eprintln!("cq-emerge: nothing to merge");
        return 0;
    }
    if options.pretend {
        for package in &plan {
            println!("{}", describe(package, options));
        }
        return 0;
    }
    let total = plan.len();
    let mut builds: Vec<Build> = plan
        .iter()
        .map(|p| match p.source {
            Source::Ebuild => Build::Waiting,
            Source::Binary => Build::Built {
                job: 0,
                build_id: None,
            },
        })
        .collect();
    let mut to_submit = plan
        .iter()
        .enumerate()
        .filter(|(_, p)| p.source == Source::Ebuild)
        .map(|(i, _)| i)
        .collect::<std::collections::VecDeque<_>>();
    let to_build = to_submit.len();
    let limit = options.jobs.unwrap_or(usize::MAX).max(1);
    let mut running = JoinSet::new();
    let mut built = 0;
    let mut installed = 0;
    let mut stopped_at: Option<usize> = None;
    loop {
        // One at a time, so that the build host's FIFO builds them in merge order.
        while running.len() < limit
            && let Some(i) = to_submit.pop_front()
        {
            match submit(&build_command(&plan[i], options), options).await {
                Ok(job) => {
                    running.spawn(wait(i, job, options.clone()));
                }
                Err(why) => {
                    eprintln!(
                        "cq-emerge: cannot submit the build of {}: {why}",
                        plan[i].cpv
                    );
                    builds[i] = Build::Failed { job: None, why };
                }
            }
        }
        // Install, in order, everything whose build (and all before it) is done.
        while stopped_at.is_none() && installed < total {
            match &builds[installed] {
                Build::Waiting => break,
                Build::Failed { .. } => stopped_at = Some(installed),
                Build::Built { build_id, .. } => {
                    let package = &plan[installed];
                    let atom = match build_id {
                        Some(id) => format!("{}-{id}", package.atom()),
                        None => package.atom(),
                    };
                    match install(&atom, options).await {
                        Ok(()) => {
                            installed += 1;
                            let verb = if options.dry_run_install {
                                "would install"
                            } else {
                                "installed"
                            };
                            eprintln!("cq-emerge: [{installed}/{total}] {verb} {atom}");
                        }
                        Err(why) => {
                            eprintln!("cq-emerge: {why}");
                            builds[installed] = Build::Failed { job: None, why };
                            stopped_at = Some(installed);
                        }
                    }
                }
            }
        }
        let Some(done) = running.join_next().await else {
            if to_submit.is_empty() {
                break;
            }
            continue;
        };
        let (i, build) = match done {
            Ok(done) => done,
            Err(e) => {
                eprintln!("cq-emerge: a build's waiter failed: {e}");
                return 1;
            }
        };
        match &build {
            Build::Built { job, build_id } => {
                built += 1;
                let id = build_id
                    .as_deref()
                    .map(|id| format!(", build id {id}"))
                    .unwrap_or_default();
                eprintln!(
                    "cq-emerge: [{built}/{to_build}] built {} (job {job}{id})",
                    plan[i].cpv
                );
            }
            Build::Failed { why, .. } => {
                eprintln!("cq-emerge: {} failed to build: {why}", plan[i].cpv);
            }
            Build::Waiting => {}
        }
        builds[i] = build;
    }
    let status = report(&plan, &builds, stopped_at);
    if status == 0
        && !oneshot(&options.emerge_args)
        && let Err(why) = record_in_world(options).await
    {
        eprintln!("cq-emerge: {why}");
        return 1;
    }
    status
}

/// Whether the emerge arguments say `--oneshot` (`-1`, also in a cluster like `-1v`).
fn oneshot(args: &[String]) -> bool {
    args.iter().any(|a| {
        a == "--oneshot" || (a.starts_with('-') && !a.starts_with("--") && a.contains('1'))
    })
}

/// Adds what was asked for to the world set, as emerge without `--oneshot` would (the
/// installs were `--oneshot`, one instance at a time): emerge again with the same arguments,
/// `--noreplace` (everything is installed) and `--usepkgonly --nodeps` (nothing to build),
/// which only records the atoms. Sets such as `@world` are left as they are.
async fn record_in_world(options: &Options) -> Result<(), String> {
    let mut args: Vec<String> = [
        "--noreplace",
        "--usepkgonly",
        "--nodeps",
        "--color=n",
        "--nospinner",
        "--quiet",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(options.emerge_args.iter().cloned());
    emerge(&args, options.dry_run_install).await.map_err(|why| {
        format!("everything is installed, but recording it in the world set failed: {why}")
    })
}

/// The summary at the end; the exit status.
fn report(plan: &[Planned], builds: &[Build], stopped_at: Option<usize>) -> u8 {
    let failed: Vec<String> = plan
        .iter()
        .zip(builds)
        .filter_map(|(package, build)| match build {
            Build::Failed { job: Some(job), .. } => {
                Some(format!("{} (see cq_client --log {job})", package.cpv))
            }
            Build::Failed { job: None, .. } => Some(package.cpv.clone()),
            _ => None,
        })
        .collect();
    let Some(stopped_at) = stopped_at else {
        eprintln!("cq-emerge: all {} packages done", plan.len());
        return 0;
    };
    eprintln!(
        "cq-emerge: {} failed: {}",
        if failed.len() == 1 {
            "1 package".to_owned()
        } else {
            format!("{} packages", failed.len())
        },
        failed.join(", ")
    );
    let left: Vec<&str> = plan[stopped_at + 1..]
        .iter()
        .map(|p| p.cpv.as_str())
        .collect();
    if !left.is_empty() {
        eprintln!(
            "cq-emerge: not installed, as they come after {} in merge order: {}",
            plan[stopped_at].cpv,
            left.join(", ")
        );
    }
    1
}

/// Asks the local Portage for the plan.
async fn pretend(emerge_args: &[String]) -> Result<Vec<Planned>, (u8, String)> {
    let out = Command::new("emerge")
        .args(["--pretend", "--verbose", "--color=n", "--nospinner"])
        .args(emerge_args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .map_err(|e| (1, format!("cannot run emerge: {e} (is Portage in PATH?)")))?;
    if !out.status.success() {
        let code = out
            .status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(1);
        print!("{}", String::from_utf8_lossy(&out.stdout));
        return Err((code, "emerge --pretend failed (its output is above)".into()));
    }
    plan::parse(&String::from_utf8_lossy(&out.stdout)).map_err(|e| (1, e.to_string()))
}

/// The variables a package's build gets: its flag variables as shown, then the
/// configured ones.
fn build_env(package: &Planned, options: &Options) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = package.flags.clone();
    for (name, value) in &options.pass_variables {
        env.entry(name.clone()).or_insert_with(|| value.clone());
    }
    env
}

/// The cq_client command line that builds `package`.
fn build_command(package: &Planned, options: &Options) -> Vec<String> {
    let mut args = options.client_args.clone();
    args.push("--detach".to_owned());
    // cq-emerge-build finds its package as the instance of its CATEGORY/PF that appeared in
    // PKGDIR while it ran: builds of one package (with other flags) must not overlap, even on
    // several build hosts sharing a PKGDIR; other packages may. A lane the user chose wins.
    if !options
        .client_args
        .iter()
        .any(|a| a == "--lane" || a.starts_with("--lane="))
    {
        args.push(format!("--lane=cq-emerge:{}", package.cpv));
    }
    for (name, value) in build_env(package, options) {
        args.extend(["-E".to_owned(), format!("{name}={value}")]);
    }
    args.extend([
        "--".to_owned(),
        options.build_command.clone(),
        package.atom(),
    ]);
    args
}

/// One plan line for `--pretend`.
fn describe(package: &Planned, options: &Options) -> String {
    match package.source {
        Source::Binary => format!("install {} (a binary package here)", package.atom()),
        Source::Ebuild => {
            let env: Vec<String> = build_env(package, options)
                .into_iter()
                .map(|(name, value)| format!("{name}=\"{value}\""))
                .collect();
            let mut line = format!("build   {}", package.atom());
            for variable in env {
                line.push(' ');
                line.push_str(&variable);
            }
            line
        }
    }
}

/// Submits one build with cq_client (`--detach`: back once the job is durably queued);
/// returns its job id.
async fn submit(args: &[String], options: &Options) -> Result<u64, String> {
    let out = Command::new(&options.client)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", options.client.display()))?;
    let id = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    match id {
        Some(id) if out.status.success() => Ok(id),
        _ => Err(format!(
            "cq_client failed ({}): {}",
            out.status,
            last_line(&out.stderr)
        )),
    }
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("it said nothing")
        .trim()
        .to_owned()
}

/// Waits with cq_client for build `job` of package `index`.
async fn wait(index: usize, job: u64, options: Options) -> (usize, Build) {
    let out = Command::new(&options.client)
        .args(&options.client_args)
        .args(["--json", "--quiet", "--wait", &job.to_string()])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            let why = format!("cannot run {}: {e}", options.client.display());
            return (
                index,
                Build::Failed {
                    job: Some(job),
                    why,
                },
            );
        }
    };
    let ended: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    let Some(ended) = ended else {
        let why = format!(
            "waiting for job {job}, cq_client failed ({}): {}",
            out.status,
            last_line(&out.stderr)
        );
        return (
            index,
            Build::Failed {
                job: Some(job),
                why,
            },
        );
    };
    if ended["outcome"] == "exited" && ended["exit_status"] == 0 {
        let build_id = ended["results"]["BUILD_ID"]
            .as_str()
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_owned);
        (index, Build::Built { job, build_id })
    } else {
        let outcome = ended["outcome"].as_str().unwrap_or("ended");
        let why = match ended["exit_status"].as_u64() {
            Some(status) if outcome == "exited" => format!("job {job} exited with status {status}"),
            _ => format!("job {job} {outcome}"),
        };
        (
            index,
            Build::Failed {
                job: Some(job),
                why,
            },
        )
    }
}

/// Installs `atom` (`=CATEGORY/PF-BUILD_ID`) from the built binary packages, or says how.
async fn install(atom: &str, options: &Options) -> Result<(), String> {
    let mut args: Vec<String> = [
        "--oneshot",
        "--nodeps",
        "--binpkg-respect-use=y",
        "--color=n",
        "--nospinner",
        "--quiet",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(options.install_options.iter().cloned());
    args.push(atom.to_owned());
    emerge(&args, options.dry_run_install).await
}

/// Runs `emerge ARGS` here (or, with `dry_run`, prints it instead).
async fn emerge(args: &[String], dry_run: bool) -> Result<(), String> {
    if dry_run {
        println!("emerge {}", args.join(" "));
        return Ok(());
    }
    let status = Command::new("emerge")
        .args(args)
        .stdin(Stdio::null())
        .status()
        .await
        .map_err(|e| format!("cannot run emerge: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("emerge {} failed ({status})", args.join(" ")))
    }
}

/// How cq-emerge's own options are told from emerge's.
pub const USAGE: &str = "\
Usage: cq-emerge [CQ-EMERGE OPTIONS] [EMERGE OPTIONS] ATOM|@SET...

Builds what `emerge --pretend` would merge here on the build host (one cq job per package,
with this machine's USE and USE_EXPAND flags), and installs each package here, in merge
order, as soon as it is built: exactly the instance built for it (its BUILD_ID). Then, as
emerge does, it adds what was asked for to the world set (not with --oneshot).

cq-emerge options (everything else goes to emerge):
  -p, --pretend           show the plan; submit nothing
      --dry-run-install   build, but print the install commands instead of running them
  -j, --jobs N            at most N builds submitted and not yet ended [default: all]
      --server HOST       the build host's cq_server (cq_client -h HOST)
      --client-arg ARG    pass ARG to cq_client (repeat: --client-arg=--auth=tls)
      --config FILE       cq.toml to read ([emerge], and [client] for cq_client)
      --help, --version

Configuration, [emerge] in /etc/cq/cq.toml: build_command (default cq-emerge-build),
install_options (default [\"--usepkgonly\"]; [\"--getbinpkgonly\"] with a binhost), jobs,
pass_variables (names of this machine's Portage variables every build gets), client
(the cq_client program), client_options.

Exit status: 0 when every package was built and installed; 1 otherwise, naming each
package that failed (see its output with cq_client --log ID); emerge's status when the
plan could not be made.
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emerge::plan::{Planned, Source};

    fn options(client_args: &[&str]) -> Options {
        Options {
            emerge_args: Vec::new(),
            pretend: false,
            dry_run_install: false,
            jobs: None,
            client: PathBuf::from("cq_client"),
            client_args: client_args.iter().map(|a| (*a).to_owned()).collect(),
            build_command: "/usr/bin/cq-emerge-build".to_owned(),
            install_options: Vec::new(),
            pass_variables: Vec::new(),
        }
    }

    #[test]
    fn builds_of_one_package_share_a_lane_unless_the_user_chose_one() {
        let package = Planned {
            source: Source::Ebuild,
            cpv: "app-misc/hello-1.0".to_owned(),
            flags: BTreeMap::from([("USE".to_owned(), "-bar foo".to_owned())]),
        };
        let args = build_command(&package, &options(&["-h", "buildhost"]));
        assert_eq!(
            args,
            [
                "-h",
                "buildhost",
                "--detach",
                "--lane=cq-emerge:app-misc/hello-1.0",
                "-E",
                "USE=-bar foo",
                "--",
                "/usr/bin/cq-emerge-build",
                "=app-misc/hello-1.0"
            ]
        );
        let chosen = build_command(&package, &options(&["--lane=pkgdir"]));
        assert_eq!(chosen.iter().filter(|a| a.starts_with("--lane")).count(), 1);
        assert!(chosen.contains(&"--lane=pkgdir".to_owned()));
    }
}
