//! Where a job's output goes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// A job's output: a file the job's process writes to directly (no copying through cq).
#[derive(Debug)]
pub struct LogSink {
    file: File,
}

impl LogSink {
    /// Creates (or truncates) the log file at `path`, readable by the server's user only.
    ///
    /// # Errors
    ///
    /// The operating system's error creating the file.
    pub fn create(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self { file })
    }

    /// A sink that throws output away.
    ///
    /// # Errors
    ///
    /// The operating system's error opening `/dev/null`.
    pub fn discard() -> io::Result<Self> {
        Ok(Self {
            file: OpenOptions::new().write(true).open("/dev/null")?,
        })
    }

    /// The underlying file, e.g. to hand to a child process as stdout and stderr.
    pub fn into_file(self) -> File {
        self.file
    }
}

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
