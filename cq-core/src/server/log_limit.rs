//! Rate-limited log lines: a flood of bad connections must not flood the log too.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines allowed per window; the rest are counted and reported once the window ends.
const LINES_PER_WINDOW: u32 = 20;

/// The window.
const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

/// Allows a few lines per window and says how many it held back.
#[derive(Debug)]
pub(super) struct LogLimiter(Mutex<Window>);

impl LogLimiter {
    pub(super) fn new() -> Self {
        Self(Mutex::new(Window {
            started: Instant::now(),
            logged: 0,
            suppressed: 0,
        }))
    }

    /// Whether a line may be logged now. A new window first reports how many lines the last
    /// one held back.
    pub(super) fn allow(&self) -> bool {
        let mut window = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if window.started.elapsed() >= WINDOW {
            if window.suppressed > 0 {
                tracing::warn!(
                    suppressed = window.suppressed,
                    "more connections failed before authentication than were logged"
                );
            }
            *window = Window {
                started: Instant::now(),
                logged: 0,
                suppressed: 0,
            };
        }
        if window.logged < LINES_PER_WINDOW {
            window.logged += 1;
            true
        } else {
            window.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_to_the_window_allowance() {
        let limiter = LogLimiter::new();
        let allowed = (0..1000).filter(|_| limiter.allow()).count();
        assert_eq!(allowed, LINES_PER_WINDOW as usize);
    }
}
