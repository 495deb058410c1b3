//! Where cq_server logs: stderr, syslog, the journal, or a file that logrotate may move.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FormatFields;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// `--log`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard error.
    Stderr,
    /// The local syslog daemon, facility daemon: at `/dev/log` (or the other usual places)
    /// unless a socket is named.
    Syslog(Option<PathBuf>),
    /// systemd's journal, with structured fields.
    Journald,
    /// A file, appended to and reopened on `SIGHUP`.
    File(PathBuf),
}

impl LogTarget {
    /// Parses `stderr`, `syslog`, `syslog:SOCKET`, `journald` or `file:PATH`.
    ///
    /// # Errors
    ///
    /// Anything else, with the accepted forms.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "stderr" => Ok(Self::Stderr),
            "syslog" => Ok(Self::Syslog(None)),
            "journald" => Ok(Self::Journald),
            _ => {
                let (kind, path) = text.split_once(':').unwrap_or((text, ""));
                match (kind, path) {
                    ("file", path) if !path.is_empty() => Ok(Self::File(PathBuf::from(path))),
                    ("syslog", path) if !path.is_empty() => {
                        Ok(Self::Syslog(Some(PathBuf::from(path))))
                    }
                    _ => Err(format!(
                        "`{text}`: expected stderr, syslog, syslog:SOCKET, journald or file:PATH"
                    )),
                }
            }
        }
    }
}

impl std::fmt::Display for LogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stderr => f.write_str("stderr"),
            Self::Syslog(None) => f.write_str("syslog"),
            Self::Syslog(Some(path)) => write!(f, "syslog:{}", path.display()),
            Self::Journald => f.write_str("journald"),
            Self::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// The installed logger; [`reopen`](Self::reopen) is for `SIGHUP`.
#[derive(Debug, Default)]
pub struct LogHandle {
    file: Option<ReopenableFile>,
}

impl LogHandle {
    /// Reopens the log file (after logrotate moved it); nothing for other targets.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened again; logging goes on to the old one.
    pub fn reopen(&self) -> io::Result<()> {
        match &self.file {
            Some(file) => file.reopen(),
            None => Ok(()),
        }
    }
}

/// Installs the global logger for `target` at INFO, one step more per `verbose`; `RUST_LOG`
/// overrides.
///
/// # Errors
///
/// When the target cannot be opened (file, syslog socket, journal socket).
pub fn install(target: &LogTarget, verbose: u8) -> io::Result<LogHandle> {
    let level = [Level::INFO, Level::DEBUG, Level::TRACE][usize::from(verbose.min(2))];
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level.as_str()));
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = || tracing_subscriber::fmt::layer().fmt_fields(escaped_fields());
    let mut handle = LogHandle::default();
    match target {
        LogTarget::Stderr => {
            let ansi = io::IsTerminal::is_terminal(&io::stderr());
            registry
                .with(fmt().with_writer(io::stderr).with_ansi(ansi))
                .init();
        }
        LogTarget::File(path) => {
            let file = ReopenableFile::open(path)?;
            handle.file = Some(file.clone());
            registry
                .with(fmt().with_writer(file).with_ansi(false))
                .init();
        }
        LogTarget::Syslog(socket) => {
            let writer = SyslogWriter::connect(socket.as_deref())?;
            // syslog stamps the time and host itself.
            let layer = fmt()
                .with_writer(writer)
                .with_ansi(false)
                .without_time()
                .with_level(false)
                .with_target(false);
            registry.with(layer).init();
        }
        LogTarget::Journald => {
            let layer = tracing_journald::layer()?.with_syslog_identifier("cq_server".into());
            registry.with(layer).init();
        }
    }
    Ok(handle)
}

/// The most of one field's value a text log line holds: a longer one (a job's arguments)
/// is cut, so that a line always fits a syslog datagram and no reader splits it.
const FIELD_CAP: usize = 4096;

/// Field formatting for text logs. Names, commands, reasons and messages come from the
/// network, so every value is escaped (control and formatting characters, backslashes; see
/// [`cq_core::printable::printable`]), quoted when it holds a space, `=` or `"` (so that a
/// value cannot pose as more fields), and cut at [`FIELD_CAP`] bytes. (The journal keeps
/// fields apart by itself.)
fn escaped_fields() -> EscapedFields {
    EscapedFields
}

/// See [`escaped_fields`].
struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'w> {
    writer: tracing_subscriber::fmt::format::Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl EscapingVisitor<'_> {
    fn field(&mut self, field: &tracing::field::Field, text: &str) {
        if self.result.is_err() {
            return;
        }
        let separator = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        self.result = if field.name() == "message" {
            write!(self.writer, "{separator}{}", log_value(text, false))
        } else {
            write!(self.writer, "{separator}{field}={}", log_value(text, true))
        };
    }
}

impl tracing::field::Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.field(field, value);
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.field(field, &format!("{value:?}"));
    }
}

/// `text` escaped, cut at [`FIELD_CAP`], and (if `quote`) quoted where needed.
fn log_value(text: &str, quote: bool) -> String {
    let mut value = cq_core::printable::printable(text).into_owned();
    if value.len() > FIELD_CAP {
        let mut end = FIELD_CAP;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        let whole = value.len();
        value.truncate(end);
        value.push_str(&format!("...({whole} bytes)"));
    }
    if quote && (value.is_empty() || value.contains([' ', '=', '"'])) {
        value = format!("\"{}\"", value.replace('"', "\\\""));
    }
    value
}

/// An append-only log file that can be reopened under the same name.
#[derive(Clone, Debug)]
struct ReopenableFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl ReopenableFile {
    fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: Arc::new(Mutex::new(Self::open_file(path)?)),
        })
    }

    /// Opens the log for appending: created 0600 if missing, never through a symlink (a
    /// symlink planted where the log goes would make root write into any file). It holds
    /// every user's command lines, so it is private to the server's user.
    fn open_file(path: &Path) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    fn reopen(&self) -> io::Result<()> {
        let fresh = Self::open_file(&self.path)?;
        *self.file.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }
}

impl Write for &ReopenableFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // One event is one write_all of a whole line: O_APPEND keeps lines whole.
        self.file
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for ReopenableFile {
    type Writer = &'a ReopenableFile;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

type SyslogLogger = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

/// Sends each formatted event to syslog at the severity of its level.
#[derive(Clone)]
struct SyslogWriter {
    logger: Arc<Mutex<SyslogLogger>>,
}

impl SyslogWriter {
    fn connect(socket: Option<&Path>) -> io::Result<Self> {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: "cq_server".into(),
            pid: std::process::id(),
        };
        let logger = match socket {
            Some(path) => syslog::unix_custom(formatter, path),
            None => syslog::unix(formatter),
        }
        .map_err(|e| {
            io::Error::new(io::ErrorKind::NotFound, format!("cannot reach syslog: {e}"))
        })?;
        Ok(Self {
            logger: Arc::new(Mutex::new(logger)),
        })
    }
}

/// One event on its way to syslog.
struct SyslogEvent<'a> {
    logger: &'a Mutex<SyslogLogger>,
    level: Level,
}

impl Write for SyslogEvent<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        let line = line.trim_end();
        let mut logger = self.logger.lock().unwrap_or_else(PoisonError::into_inner);
        let sent = match self.level {
            Level::ERROR => logger.err(line),
            Level::WARN => logger.warning(line),
            Level::INFO => logger.info(line),
            _ => logger.debug(line),
        };
        if let Err(e) = sent {
            // Say that something was lost rather than lose it silently.
            let note = format!(
                "a log line of {} bytes could not be sent to syslog: {e}",
                line.len()
            );
            logger
                .err(&note)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SyslogWriter {
    type Writer = SyslogEvent<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        // Only for writes without an event; the formatter always says which event it writes.
        SyslogEvent {
            logger: &self.logger,
            level: Level::INFO,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        SyslogEvent {
            logger: &self.logger,
            level: *meta.level(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!(LogTarget::parse("syslog"), Ok(LogTarget::Syslog(None)));
        assert_eq!(
            LogTarget::parse("syslog:/run/log"),
            Ok(LogTarget::Syslog(Some("/run/log".into())))
        );
        assert_eq!(
            LogTarget::parse("file:/var/log/cq.log"),
            Ok(LogTarget::File("/var/log/cq.log".into()))
        );
        let err = LogTarget::parse("file:").unwrap_err();
        assert!(err.contains("file:PATH"), "{err}");
        assert!(LogTarget::parse("splunk").is_err());
    }

    #[test]
    fn a_value_with_newlines_and_escapes_stays_on_one_escaped_line() {
        let buffer = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buffer.clone();
        let writer = move || SharedBuffer(sink.clone());
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(escaped_fields())
                .with_writer(writer)
                .with_ansi(false),
        );
        tracing::subscriber::with_default(subscriber, || {
            let reason = "bad\n2026-11-29T00:00:00Z  INFO forged line\x1b[2J";
            tracing::info!(%reason, "refused by policy");
        });
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\x1b'), "{text}");
        assert!(
            text.contains(r#"reason="bad\n2026-11-29T00:00:00Z  INFO forged line\x1b[2J""#),
            "{text}"
        );
        assert!(text.contains("refused by policy"), "{text}");
    }

    /// Red team of Security III: a value with spaces and `=` posed as more fields; a huge
    /// one made syslog drop the whole line.
    #[test]
    fn values_cannot_pose_as_fields_and_are_cut_to_a_bounded_length() {
        assert_eq!(
            log_value("/x runtime_ms=0 owner=root(0)", true),
            r#""/x runtime_ms=0 owner=root(0)""#
        );
        assert_eq!(log_value(r#"say "hi""#, true), r#""say \"hi\"""#);
        assert_eq!(log_value("plain", true), "plain");
        assert_eq!(log_value(r"a\nb", true), r"a\\nb");
        let huge = log_value(&"x".repeat(100_000), true);
        assert!(huge.len() < FIELD_CAP + 32, "{}", huge.len());
        assert!(huge.ends_with("...(100000 bytes)\""), "{huge:.40}");
    }

    struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reopened_file_gets_the_lines_after_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cq.log");
        let file = ReopenableFile::open(&path).unwrap();
        (&file).write_all(b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("cq.log.1")).unwrap();
        (&file).write_all(b"two\n").unwrap();
        file.reopen().unwrap();
        (&file).write_all(b"three\n").unwrap();
        let rotated = std::fs::read_to_string(dir.path().join("cq.log.1")).unwrap();
        assert_eq!(rotated, "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
    }
}
