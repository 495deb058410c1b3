//! Logging set-up and one-line error messages.

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

/// Logs to stderr at `default` level, one step more per `-v`; `RUST_LOG` overrides.
pub fn init_logging(default: tracing::Level, verbose: u8) {
    use tracing::Level;
    const LEVELS: [Level; 5] = [
        Level::ERROR,
        Level::WARN,
        Level::INFO,
        Level::DEBUG,
        Level::TRACE,
    ];
    let start = LEVELS.iter().position(|l| *l == default).unwrap_or(2);
    let level = LEVELS[(start + usize::from(verbose)).min(LEVELS.len() - 1)];
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // Parsing filter directives costs more than a short client run needs: only for RUST_LOG.
    match EnvFilter::try_from_default_env() {
        Ok(filter) => fmt.with_env_filter(filter).init(),
        Err(_) => fmt.with_max_level(level).init(),
    }
}

/// Prints `program: message` (and a hint) on one line of stderr and returns `code`.
pub fn fail(
    program: &str,
    message: impl std::fmt::Display,
    hint: Option<&str>,
    code: u8,
) -> ExitCode {
    match hint {
        Some(hint) => say(program, format_args!("{message} ({hint})")),
        None => say(program, message),
    }
    ExitCode::from(code)
}

/// Prints `program: message` on stderr with a single write, so that the lines of several
/// clients sharing a terminal or log do not interleave mid-line.
pub fn say(program: &str, message: impl std::fmt::Display) {
    use std::io::Write;
    let line = format!(
        "{program}: {message}
"
    );
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The hint for a client-side MUNGE failure, where the fix is on this host.
pub const MUNGED_HINT: &str =
    "start munged (systemctl start munge, or rc-service munged start) or pass --munge-socket";
