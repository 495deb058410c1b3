//! A job's output as the engine serves it ([`EngineHandle::output`]): what its log holds
//! from the start, then, when following, what it writes while it runs, then how it ended.
//!
//! Whoever reads it does not learn where the output is kept: a job on another host's worker
//! has its output sent to the engine, which keeps it like a local job's. The log is the
//! authority; the live feed only says that there is more.

use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::broadcast;

use super::handle::{Caller, EngineHandle, JobResult, JobTicket, LogAccess, SubmitError};
use crate::executor::LogChunk;
use crate::job::JobId;

/// Bytes per [`OutputPiece::Data`] at most.
pub const OUTPUT_PIECE: usize = 64 * 1024;

/// A piece of a job's output, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutputPiece {
    /// Bytes of its output.
    Data(Vec<u8>),
    /// The job ended while it was followed, and this is how (limited as the reader may see
    /// it); nothing follows.
    Finished(JobResult),
    /// There is no more to read: the output was not followed, or the job had already ended,
    /// or the engine stopped before it did. Nothing follows.
    End,
}

/// A job's output, read piece by piece with [`next`](Self::next).
#[derive(Debug)]
pub struct JobOutput {
    engine: EngineHandle,
    by: Caller,
    id: JobId,
    follow: bool,
    path: Option<PathBuf>,
    file: Option<tokio::fs::File>,
    /// Bytes of the log read so far.
    read: u64,
    live: Option<broadcast::Receiver<LogChunk>>,
    ticket: Option<JobTicket>,
    step: Step,
}

/// Where the reader is.
#[derive(Debug)]
enum Step {
    /// Following a queued job: its output begins once it starts.
    AwaitStart,
    /// Reading what the log holds, then going on as `then` says.
    Reading(Then),
    /// Waiting for more output, or the job's end.
    Following,
    Done,
}

#[derive(Debug)]
enum Then {
    Follow,
    Finish(Option<JobResult>),
}

impl JobOutput {
    pub(super) fn new(
        engine: EngineHandle,
        by: Caller,
        id: JobId,
        follow: bool,
        access: LogAccess,
    ) -> Self {
        let step = match (&access.ticket, &access.live) {
            // A queued job has no output yet.
            (Some(_), None) if follow => Step::AwaitStart,
            (Some(_), _) if follow => Step::Reading(Then::Follow),
            _ => Step::Reading(Then::Finish(None)),
        };
        Self {
            engine,
            by,
            id,
            follow,
            path: access.path,
            file: None,
            read: 0,
            live: access.live,
            ticket: access.ticket,
            step,
        }
    }

    /// The next piece; `None` after [`OutputPiece::Finished`] or [`OutputPiece::End`].
    ///
    /// Cancel-safe: a caller may stop waiting (to wait for something else) and call again;
    /// nothing is lost.
    pub async fn next(&mut self) -> Option<OutputPiece> {
        loop {
            match &self.step {
                Step::Done => return None,
                Step::AwaitStart => {
                    let started = match self.ticket.as_mut() {
                        Some(ticket) => ticket.started().await.is_ok(),
                        None => false,
                    };
                    // Asked again: it runs now (with a live feed), or it already ended.
                    let access = match started {
                        true => self.engine.open_log(self.id, self.by.clone()).await.ok(),
                        false => None,
                    };
                    let Some(access) = access else {
                        self.step = Step::Done;
                        return Some(OutputPiece::End);
                    };
                    self.step = match access.ticket.is_some() && self.follow {
                        true => Step::Reading(Then::Follow),
                        false => Step::Reading(Then::Finish(None)),
                    };
                    self.path = access.path;
                    self.live = access.live;
                    self.ticket = access.ticket;
                }
                Step::Reading(_) => {
                    if let Some(data) = self.read_more().await {
                        return Some(OutputPiece::Data(data));
                    }
                    let Step::Reading(then) = std::mem::replace(&mut self.step, Step::Done) else {
                        unreachable!("the step is what the match found");
                    };
                    match then {
                        Then::Follow => self.step = Step::Following,
                        Then::Finish(Some(result)) => return Some(OutputPiece::Finished(result)),
                        Then::Finish(None) => return Some(OutputPiece::End),
                    }
                }
                Step::Following => {
                    let Some(ticket) = self.ticket.as_mut() else {
                        self.step = Step::Done;
                        return Some(OutputPiece::End);
                    };
                    let live = &mut self.live;
                    let more = async {
                        match live.as_mut() {
                            Some(feed) => feed
                                .recv()
                                .await
                                .map(|chunk| chunk.offset + chunk.data.len() as u64)
                                .ok(),
                            None => std::future::pending().await,
                        }
                    };
                    let event = tokio::select! {
                        end = more => Ok(end),
                        ended = ticket.finished() => Err(ended.ok()),
                    };
                    self.step = match event {
                        Ok(Some(end)) if end <= self.read => Step::Following,
                        Ok(Some(_)) => Step::Reading(Then::Follow),
                        // The feed lagged or closed: the log has it all.
                        Ok(None) => {
                            self.live = None;
                            Step::Reading(Then::Follow)
                        }
                        // What the job wrote last, then how it ended.
                        Err(ended) => Step::Reading(Then::Finish(ended)),
                    };
                }
            }
        }
    }

    /// Up to [`OUTPUT_PIECE`] bytes of the log past what was read, if there are any.
    async fn read_more(&mut self) -> Option<Vec<u8>> {
        if self.file.is_none() {
            // The log directory is the engine's own, but a link there is never followed.
            // (A job that wrote nothing yet has no log yet.)
            let mut file = tokio::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(self.path.as_ref()?)
                .await
                .ok()?;
            file.seek(std::io::SeekFrom::Start(self.read)).await.ok()?;
            self.file = Some(file);
        }
        let file = self.file.as_mut()?;
        let mut data = vec![0; OUTPUT_PIECE];
        match file.read(&mut data).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                data.truncate(n);
                self.read += n as u64;
                Some(data)
            }
        }
    }
}

impl EngineHandle {
    /// Job `id`'s output for `by`, who must be its owner or an admin: what it wrote so far
    /// and, with `follow`, what it writes until it ends (a queued job's from when it starts),
    /// and how it ended.
    ///
    /// # Errors
    ///
    /// [`SubmitError::NotPermitted`] or [`SubmitError::UnknownJob`];
    /// [`SubmitError::Stopped`] when the engine has stopped.
    pub async fn output(
        &self,
        id: JobId,
        by: Caller,
        follow: bool,
    ) -> Result<JobOutput, SubmitError> {
        let access = self.open_log(id, by.clone()).await?;
        Ok(JobOutput::new(self.clone(), by, id, follow, access))
    }
}
