//! `cq_server --daemon`: run in the background once listening, without `fork` in a threaded
//! program. The command re-executes itself with `--daemon-child`; the child starts a new
//! session, starts the server and, once it listens, says so on stderr and lets go of the
//! terminal. Until then its stderr is relayed, so start-up errors still reach the caller and
//! make `cq_server --daemon` fail.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};

use crate::report::fail;

const READY: &str = "cq_server: ready, pid ";

/// In the parent: starts the background server and waits until it listens or fails.
pub fn launch(argv: &[OsString]) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            return fail(
                "cq_server",
                format!("cannot find my own program: {e}"),
                None,
                1,
            );
        }
    };
    let child = Command::new(exe)
        .args(&argv[1..])
        .arg("--daemon-child")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            return fail(
                "cq_server",
                format!("cannot start the daemon: {e}"),
                None,
                1,
            );
        }
    };
    let Some(stderr) = child.stderr.take() else {
        return fail("cq_server", "the daemon has no stderr pipe", None, 1);
    };
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if let Some(pid) = line.strip_prefix(READY) {
            println!("cq_server: running in the background, pid {pid}");
            return ExitCode::SUCCESS;
        }
        let _ = writeln!(std::io::stderr(), "{line}");
    }
    // Its error is already relayed.
    let _ = child.wait();
    ExitCode::from(1)
}

/// In the child, first thing: leave the caller's session (and its terminal's signals).
pub fn detach() {
    // Cannot fail: the child was started as no group's leader.
    let _ = nix::unistd::setsid();
}

/// In the child, once listening: tell the parent, then point stdout and stderr at
/// /dev/null so that the parent may go.
pub fn ready() {
    let _ = writeln!(std::io::stderr(), "{READY}{}", std::process::id());
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

/// `on_ready` for a server in the foreground.
pub fn foreground_ready() {}
