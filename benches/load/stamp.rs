//! cq-stamp: appends the wall-clock time in nanoseconds to the file named by `CQ_LOAD_STAMP`,
//! after its argument when it has one (`TAG TIME`).
//!
//! cq-load uses it as the job of every measurement (so that each job leaves proof that it ran,
//! and which one it was) and as the post script of the notification measurement: a program
//! with nothing but std, so that its own start-up costs about what `/bin/true`'s does, and
//! the same job runs in the floor, through cq and through the tools compared.

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
    let line = match std::env::args().nth(1) {
        Some(tag) => format!("{tag} {now}\n"),
        None => format!("{now}\n"),
    };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .and_then(|mut out| out.write_all(line.as_bytes()));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cq-stamp: {}: {e}", std::path::Path::new(&file).display());
            ExitCode::from(1)
        }
    }
}
