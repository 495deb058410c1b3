//! Where a job's output goes: its log file, capped, and to anyone following it live.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::broadcast;

/// Default cap of a job's log: past it the output is dropped (after a marker), so that a
/// runaway job cannot fill the disk.
pub const DEFAULT_LOG_LIMIT: u64 = 64 * 1024 * 1024;

/// How many chunks a slow follower may fall behind before it rereads the file instead.
const LIVE_CHUNKS: usize = 256;

/// A piece of a job's log, at its byte offset in the log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogChunk {
    /// Where the chunk starts in the log.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
}

/// The file behind a sink: created with the first output, so that silent jobs cost no file.
#[derive(Debug)]
enum LogFile {
    Dropped,
    Open(File),
    Unborn(PathBuf),
}

impl LogFile {
    /// Writes `data`; after the first failure (logged once) output only goes to followers,
    /// so that a full disk never makes the job itself fail.
    fn write(&mut self, data: &[u8]) {
        if let Self::Unborn(path) = self {
            use std::os::unix::fs::OpenOptionsExt;
            // A new file, never an existing one or a symlink: job ids are never reused, so
            // anything already there was put there by someone else.
            let created = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&*path);
            *self = match created {
                Ok(file) => Self::Open(file),
                Err(e) => {
                    tracing::warn!(log = %path.display(), error = %e, "cannot create a job's log; its output is dropped");
                    Self::Dropped
                }
            };
        }
        if let Self::Open(file) = self
            && let Err(e) = file.write_all(data)
        {
            tracing::warn!(error = %e, "cannot write a job's log; the rest of its output is dropped");
            *self = Self::Dropped;
        }
    }
}

/// A job's output: appended to its log file up to a limit, and offered to live followers.
///
/// The file holds exactly the chunks that were offered, in order, so a follower can read the
/// file up to some offset and continue with the chunks after it.
#[derive(Debug)]
pub struct LogSink {
    file: LogFile,
    limit: u64,
    written: u64,
    truncated: bool,
    live: broadcast::Sender<LogChunk>,
}

impl LogSink {
    /// A sink for the log file at `path`, which is created with the first output (mode 0600;
    /// never over an existing file or through a symlink: output is then dropped, with a
    /// warning), and keeps at most `limit` bytes of it.
    pub fn create(path: &Path, limit: u64) -> Self {
        Self::new(LogFile::Unborn(path.to_owned()), limit)
    }

    /// A sink that goes on with the log at `path` that an earlier run of this server began
    /// (the same job, found again after a restart): appends to it if it is a regular file of
    /// this user's (never through a symlink), starts it as [`create`](Self::create) does if
    /// there is none.
    pub fn reopen(path: &Path, limit: u64) -> Self {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let opened = OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .and_then(|file| {
                let meta = file.metadata()?;
                if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
                    return Err(io::Error::other("not a regular file of this user's"));
                }
                Ok((file, meta.len()))
            });
        match opened {
            Ok((file, len)) => {
                let mut sink = Self::new(LogFile::Open(file), limit);
                sink.written = len;
                sink.truncated = len >= limit;
                sink
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Self::create(path, limit),
            Err(e) => {
                tracing::warn!(log = %path.display(), error = %e, "cannot reopen a job's log; the rest of its output is dropped");
                Self::discard()
            }
        }
    }

    /// This sink, offering its output to `live`'s followers instead of its own.
    #[must_use]
    pub fn feeding(mut self, live: broadcast::Sender<LogChunk>) -> Self {
        self.live = live;
        self
    }

    /// A sink that keeps nothing (followers still see the output).
    pub fn discard() -> Self {
        Self::new(LogFile::Dropped, DEFAULT_LOG_LIMIT)
    }

    fn new(file: LogFile, limit: u64) -> Self {
        let (live, _) = broadcast::channel(LIVE_CHUNKS);
        Self {
            file,
            limit,
            written: 0,
            truncated: false,
            live,
        }
    }

    /// A live feed of the chunks appended from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LogChunk> {
        self.live.subscribe()
    }

    /// The sender of the live feed, to subscribe later while the sink is busy elsewhere.
    pub fn live(&self) -> broadcast::Sender<LogChunk> {
        self.live.clone()
    }

    /// Bytes in the log so far (the marker included, once the limit is reached).
    pub fn len(&self) -> u64 {
        self.written
    }

    /// Whether nothing has been logged.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Whether the log reached its limit: more output would be dropped.
    pub fn is_full(&self) -> bool {
        self.truncated
    }

    /// Appends output, dropping what goes past the limit after writing a marker once.
    pub fn append(&mut self, data: &[u8]) {
        let room = usize::try_from(self.limit.saturating_sub(self.written)).unwrap_or(usize::MAX);
        let keep = &data[..data.len().min(room)];
        if !keep.is_empty() {
            self.emit(keep);
        }
        if keep.len() < data.len() && !self.truncated {
            self.truncated = true;
            let marker = format!(
                "\n[cq: log truncated: it reached its limit of {} bytes]\n",
                self.limit
            );
            self.emit(marker.as_bytes());
        }
    }

    fn emit(&mut self, data: &[u8]) {
        self.file.write(data);
        let chunk = LogChunk {
            offset: self.written,
            data: Bytes::copy_from_slice(data),
        };
        self.written += data.len() as u64;
        // No follower is not an error.
        let _ = self.live.send(chunk);
    }

    /// Copies everything `output` yields into the log until it ends.
    ///
    /// # Errors
    ///
    /// The first read error.
    pub async fn pump(&mut self, mut output: impl AsyncRead + Unpin) -> io::Result<()> {
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = output.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            self.append(&buf[..n]);
        }
    }
}

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_keeps_the_start_and_marks_the_cut_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut sink = LogSink::create(&path, 10);
        assert!(!path.exists(), "no output, no file");
        let mut live = sink.subscribe();
        sink.append(b"0123456");
        sink.append(b"789abcdef");
        sink.append(b"more");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("0123456789\n[cq: log truncated"), "{text}");
        assert_eq!(text.matches("truncated").count(), 1);
        assert_eq!(sink.len(), text.len() as u64);
        // Followers see the same bytes at the same offsets.
        let mut seen = Vec::new();
        while let Ok(chunk) = live.try_recv() {
            assert_eq!(chunk.offset, seen.len() as u64);
            seen.extend_from_slice(&chunk.data);
        }
        assert_eq!(seen, text.as_bytes());
    }

    #[test]
    fn an_unwritable_log_drops_output_without_failing() {
        let mut sink = LogSink::create(Path::new("/nonexistent-dir/cq/1.log"), 100);
        let mut live = sink.subscribe();
        sink.append(b"still followed");
        assert_eq!(
            live.try_recv().unwrap().data,
            Bytes::from_static(b"still followed")
        );
    }
}
