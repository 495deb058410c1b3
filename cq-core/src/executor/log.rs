//! Where a job's output goes: its log file, capped, and to anyone following it live.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

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

/// A job's output: appended to its log file up to a limit, and offered to live followers.
///
/// The file holds exactly the chunks that were offered, in order, so a follower can read the
/// file up to some offset and continue with the chunks after it.
#[derive(Debug)]
pub struct LogSink {
    file: File,
    limit: u64,
    written: u64,
    truncated: bool,
    live: broadcast::Sender<LogChunk>,
}

impl LogSink {
    /// Creates (or truncates) the log file at `path`, readable by the server's user only, that
    /// keeps at most `limit` bytes of output.
    ///
    /// # Errors
    ///
    /// The operating system's error creating the file.
    pub fn create(path: &Path, limit: u64) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self::new(file, limit))
    }

    /// A sink that throws output away (followers still see it).
    ///
    /// # Errors
    ///
    /// The operating system's error opening `/dev/null`.
    pub fn discard() -> io::Result<Self> {
        Ok(Self::new(
            OpenOptions::new().write(true).open("/dev/null")?,
            DEFAULT_LOG_LIMIT,
        ))
    }

    fn new(file: File, limit: u64) -> Self {
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

    /// Appends output, dropping what goes past the limit after writing a marker once.
    ///
    /// # Errors
    ///
    /// The error writing the file.
    pub fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let room = usize::try_from(self.limit.saturating_sub(self.written)).unwrap_or(usize::MAX);
        let keep = &data[..data.len().min(room)];
        if !keep.is_empty() {
            self.emit(keep)?;
        }
        if keep.len() < data.len() && !self.truncated {
            self.truncated = true;
            let marker = format!(
                "\n[cq: log truncated: it reached its limit of {} bytes]\n",
                self.limit
            );
            self.emit(marker.as_bytes())?;
        }
        Ok(())
    }

    fn emit(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        let chunk = LogChunk {
            offset: self.written,
            data: Bytes::copy_from_slice(data),
        };
        self.written += data.len() as u64;
        // No follower is not an error.
        let _ = self.live.send(chunk);
        Ok(())
    }

    /// Copies everything `output` yields into the log until it ends.
    ///
    /// # Errors
    ///
    /// The first read or write error.
    pub async fn pump(&mut self, mut output: impl AsyncRead + Unpin) -> io::Result<()> {
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = output.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            self.append(&buf[..n])?;
        }
    }

    /// The underlying file.
    pub fn into_file(self) -> File {
        self.file
    }
}

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.append(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_keeps_the_start_and_marks_the_cut_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut sink = LogSink::create(&path, 10).unwrap();
        let mut live = sink.subscribe();
        sink.append(b"0123456").unwrap();
        sink.append(b"789abcdef").unwrap();
        sink.append(b"more").unwrap();
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
}
