//! The live line a waiting `cq_client` shows on a terminal: how many jobs are ahead, then how
//! long the job has been running. Nothing when standard error is not a terminal, or with -q.

use std::io::IsTerminal;
use std::time::Duration;

use cq_core::JobId;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};

/// The line (or nothing, where none is shown).
#[derive(Debug)]
pub struct WaitLine {
    id: JobId,
    bar: Option<ProgressBar>,
}

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
        let line = Self { id, bar };
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
