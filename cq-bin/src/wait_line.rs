//! The live line a waiting `cq_client` shows on a terminal: how many jobs are ahead, then how
//! long the job has been running and the last line of its output (for those who may read
//! it). Nothing when standard error is not a terminal, or with -q.

use std::io::IsTerminal;
use std::time::Duration;

use cq_core::JobId;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};

/// The line (or nothing, where none is shown).
#[derive(Debug)]
pub struct WaitLine {
    id: JobId,
    bar: Option<ProgressBar>,
    /// The job's output since its last complete line, and that line.
    output: std::sync::Mutex<(Vec<u8>, String)>,
}

/// The most of an output line shown.
const SHOWN: usize = 60;

impl WaitLine {
    /// A line for job `id` with `ahead` jobs before it (when known), shown only when `show`
    /// and standard error is a terminal.
    pub fn new(id: JobId, ahead: Option<u32>, show: bool) -> Self {
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
                .with_finish(ProgressFinish::AndClear);
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_secs(1));
            bar
        });
        let line = Self {
            id,
            bar,
            output: std::sync::Mutex::default(),
        };
        line.say(match ahead {
            Some(0) | None => format!("job {id} waits for its turn"),
            Some(1) => format!("job {id} waits: 1 job ahead"),
            Some(n) => format!("job {id} waits: {n} jobs ahead"),
        });
        line
    }

    /// The job started.
    pub fn started(&self) {
        if let Some(bar) = &self.bar {
            bar.reset_elapsed();
        }
        self.say(format!("job {} runs", self.id));
    }

    /// Whether the line is shown (worth feeding with output).
    pub fn shown(&self) -> bool {
        self.bar.is_some()
    }

    /// More of the job's output: the line shows the last complete line of it, escaped.
    pub fn output(&self, data: &[u8]) {
        let Some(bar) = &self.bar else { return };
        let mut output = self
            .output
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (partial, last) = &mut *output;
        partial.extend_from_slice(data);
        let Some(end) = partial.iter().rposition(|b| *b == b'\n') else {
            // A line longer than anything shown is cut here.
            partial.truncate(4096);
            return;
        };
        let complete = String::from_utf8_lossy(&partial[..end]).into_owned();
        partial.drain(..=end);
        let Some(line) = complete.lines().rev().find(|l| !l.trim().is_empty()) else {
            return;
        };
        let shown: String = cq_core::printable::printable(line.trim())
            .chars()
            .take(SHOWN)
            .collect();
        if *last != shown {
            bar.set_message(format!("job {} runs: {shown}", self.id));
            *last = shown;
        }
    }

    /// Prints `message` (a whole line on standard error) above the live line.
    pub fn print(&self, message: impl FnOnce()) {
        match &self.bar {
            Some(bar) => bar.suspend(message),
            None => message(),
        }
    }

    fn say(&self, message: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(message);
        }
    }
}
