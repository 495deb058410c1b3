//! The tools people would use instead, doing the same jobs serially.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::measure::{STAMP_VAR, Work};
use crate::report::{Peer, Rate};

/// Installs task-spooler and nq (Debian packages) and pueue 4.0.4 (crates.io).
pub(crate) fn install() -> anyhow::Result<()> {
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    if !apt(&["update", "-qq"])?.success()
        || !apt(&["install", "-y", "-qq", "task-spooler", "nq"])?.success()
    {
        bail!("apt-get install task-spooler nq failed (run as root)");
    }
    if !Command::new("cargo")
        .args(["install", "--locked", "pueue@4.0.4"])
        .status()?
        .success()
    {
        bail!("cargo install pueue failed");
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Runs a peer (if installed) on the job, `jobs` times, and checks from the stamps that each
/// ran exactly once.
fn peer(
    name: &str,
    program: &str,
    jobs: usize,
    work: &Path,
    run: impl FnOnce(&Work) -> anyhow::Result<Duration>,
) -> Peer {
    if !on_path(program) {
        return Peer {
            name: name.to_owned(),
            rate: None,
            note: Some(format!("{program} not installed (--install-peers)")),
        };
    }
    let measured = Work::new(work, program).and_then(|job| {
        let elapsed = run(&job)?;
        let ran = job.verify(jobs)?;
        Ok((elapsed, ran))
    });
    match measured {
        Ok((elapsed, ran)) => Peer {
            name: name.to_owned(),
            rate: Some(Rate::new(name, jobs, ran, elapsed)),
            note: None,
        },
        Err(e) => Peer {
            name: name.to_owned(),
            rate: None,
            note: Some(format!("failed: {e:#}")),
        },
    }
}

fn check(status: std::io::Result<std::process::ExitStatus>, what: &str) -> anyhow::Result<()> {
    if status.with_context(|| what.to_owned())?.success() {
        Ok(())
    } else {
        bail!("{what} failed")
    }
}

/// The job's program and its tag as arguments.
fn job_args(job: &Work, tag: usize) -> [String; 2] {
    [job.program().display().to_string(), tag.to_string()]
}

/// task-spooler: `tsp JOB` N times, then `tsp -w` for the last one.
pub(crate) fn task_spooler(jobs: usize, work: &Path) -> Peer {
    peer("task-spooler (tsp)", "tsp", jobs, work, |job| {
        let socket = work.join("tsp.socket");
        let tsp = |args: &[&str]| {
            let mut cmd = Command::new("tsp");
            cmd.args(args)
                .env("TS_SOCKET", &socket)
                .env("TS_MAXFINISHED", (jobs + 10).to_string())
                .env(STAMP_VAR, &job.file)
                .stdout(Stdio::null());
            cmd
        };
        let start = Instant::now();
        for tag in 0..jobs {
            let [program, tag] = job_args(job, tag);
            check(tsp(&[&program, &tag]).status(), "tsp JOB")?;
        }
        check(tsp(&["-w"]).status(), "tsp -w")?;
        let elapsed = start.elapsed();
        let _ = tsp(&["-K"]).status();
        Ok(elapsed)
    })
}

/// nq: `nq JOB` N times, then `nq -w` for all of them.
pub(crate) fn nq(jobs: usize, work: &Path) -> Peer {
    peer("nq", "nq", jobs, work, |job| {
        let dir = work.join("nq");
        std::fs::create_dir_all(&dir)?;
        let nq = |args: &[&str]| {
            let mut cmd = Command::new("nq");
            cmd.args(args)
                .env("NQDIR", &dir)
                .env(STAMP_VAR, &job.file)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd
        };
        let start = Instant::now();
        for tag in 0..jobs {
            let [program, tag] = job_args(job, tag);
            check(nq(&[&program, &tag]).status(), "nq JOB")?;
        }
        check(nq(&["-w"]).status(), "nq -w")?;
        Ok(start.elapsed())
    })
}

/// pueue: a private pueued, `pueue add -- JOB` N times, then `pueue wait`.
pub(crate) fn pueue(jobs: usize, work: &Path) -> Peer {
    peer("pueue", "pueued", jobs, work, |job| {
        let dir = work.join("pueue");
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("pueue.yml");
        std::fs::write(
            &config,
            format!(
                "shared:\n  pueue_directory: {d}\n  runtime_directory: {d}\n  use_unix_socket: true\n  unix_socket_path: {d}/pueue.socket\n",
                d = dir.display()
            ),
        )?;
        let mut daemon = Command::new("pueued")
            .arg("-c")
            .arg(&config)
            .env(STAMP_VAR, &job.file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pueue = |args: &[&str]| {
            let mut cmd = Command::new("pueue");
            cmd.arg("-c")
                .arg(&config)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd
        };
        // pueued gives no readiness signal: ask until it answers (bounded, set-up only).
        let mut ready = false;
        for _ in 0..100 {
            if pueue(&["status"]).status().is_ok_and(|s| s.success()) {
                ready = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let result = (|| {
            if !ready {
                bail!("pueued did not start");
            }
            let start = Instant::now();
            for tag in 0..jobs {
                let [program, tag] = job_args(job, tag);
                check(pueue(&["add", "--", &program, &tag]).status(), "pueue add")?;
            }
            check(pueue(&["wait"]).status(), "pueue wait")?;
            Ok(start.elapsed())
        })();
        let _ = pueue(&["shutdown"]).status();
        let _ = daemon.kill();
        let _ = daemon.wait();
        result
    })
}
