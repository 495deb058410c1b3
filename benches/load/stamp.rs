//! cq-stamp: appends the wall-clock time in nanoseconds to the file named by `CQ_LOAD_STAMP`.
//!
//! cq-load uses it as the job and as the post script of the notification measurement: a
//! program with nothing but std, so that its own start-up (part of "the post script starting")
//! costs about what the floor's `/bin/true` does, and the figure is cq's path plus one lean exec.

use std::io::Write;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() -> ExitCode {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let Some(file) = std::env::var_os("CQ_LOAD_STAMP") else {
        eprintln!("cq-stamp: set CQ_LOAD_STAMP to the file to append the time to");
        return ExitCode::from(2);
    };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .and_then(|mut out| writeln!(out, "{now}"));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cq-stamp: {}: {e}", std::path::Path::new(&file).display());
            ExitCode::from(1)
        }
    }
}
