//! A job's output as the engine serves it ([`EngineHandle::output`]): what its log holds
//! from the start, then, when following, what it writes while it runs, then how it ended.
//!
//! Whoever reads it does not learn where the output is kept: a job on another host's worker
//! has its output sent to the engine, which keeps it like a local job's. The log is the
//! authority; the live feed only says that there is more.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::broadcast;

use futures_util::FutureExt;

use super::handle::{Caller, EngineHandle, JobResult, JobState, JobTicket, LogAccess, SubmitError};
use crate::executor::LogChunk;
use crate::job::JobId;

/// Bytes per [`OutputPiece::Data`] at most.
pub const OUTPUT_PIECE: usize = 64 * 1024;

/// What a follower reads when the job it follows was queued again (its worker went away
/// before it took it) and runs again: its output starts anew.
const QUEUED_AGAIN: &[u8] = b"\n[cq: the job was queued again; its output starts anew]\n";

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
    /// The log being read: held while following, so that a log replaced by a new run's is
    /// told apart from it (an open file's inode is not reused). Read at offsets, without a
    /// buffer of its own.
    file: Option<Arc<std::fs::File>>,
    /// Bytes of the log read so far.
    read: u64,
    live: Option<broadcast::Receiver<LogChunk>>,
    ticket: Option<JobTicket>,
    step: Step,
}

/// Where the reader is.
#[derive(Debug)]
enum Step {
    /// Following a queued job: its output begins once it starts (also once a run ended
    /// without the job ending: its worker went away before it took it).
    AwaitStart,
    /// Reading what the log holds, then going on as `then` says.
    Reading(Then),
    /// Waiting for more output, or the job's end.
    Following,
    Done,
}

/// What the live feed said.
enum Feed {
    /// The log holds this many bytes now.
    Upto(u64),
    /// Some chunks were missed.
    Missed,
    /// The run it fed ended.
    Closed,
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

    /// The next piece; `None` after [`OutputPiece::Finished`] or [`OutputPiece::End`] (or
    /// an error).
    ///
    /// Cancel-safe: a caller may stop waiting (to wait for something else) and call again;
    /// nothing is lost.
    ///
    /// # Errors
    ///
    /// As [`EngineHandle::output`], when the output of a queued job is asked for again once
    /// it starts (e.g. [`SubmitError::Stopped`]).
    pub async fn next(&mut self) -> Option<Result<OutputPiece, SubmitError>> {
        loop {
            match &self.step {
                Step::Done => return None,
                Step::AwaitStart => {
                    let started = match self.ticket.as_mut() {
                        Some(ticket) => ticket.started().await.is_ok(),
                        None => false,
                    };
                    if !started {
                        self.step = Step::Done;
                        return Some(Ok(OutputPiece::End));
                    }
                    // Asked again: it runs now (with a live feed), or it already ended.
                    let access = match self.engine.open_log(self.id, self.by.clone()).await {
                        Ok(access) => access,
                        Err(e) => {
                            self.step = Step::Done;
                            return Some(Err(e));
                        }
                    };
                    // A job that ended meanwhile: how, from the ticket that saw it.
                    let ended = match (&access.ticket, self.ticket.as_mut()) {
                        (None, Some(ticket)) => {
                            ticket.finished().now_or_never().and_then(Result::ok)
                        }
                        _ => None,
                    };
                    self.step = match access.ticket.is_some() && self.follow {
                        true => Step::Reading(Then::Follow),
                        false => Step::Reading(Then::Finish(ended)),
                    };
                    self.path = access.path;
                    self.live = access.live;
                    self.ticket = access.ticket;
                }
                Step::Reading(_) => {
                    if let Some(data) = self.read_more().await {
                        return Some(Ok(OutputPiece::Data(data)));
                    }
                    let Step::Reading(then) = std::mem::replace(&mut self.step, Step::Done) else {
                        unreachable!("the step is what the match found");
                    };
                    match then {
                        Then::Follow => self.step = Step::Following,
                        Then::Finish(Some(result)) => {
                            return Some(Ok(OutputPiece::Finished(result)));
                        }
                        Then::Finish(None) => return Some(Ok(OutputPiece::End)),
                    }
                }
                Step::Following => {
                    let Some(ticket) = self.ticket.as_mut() else {
                        self.step = Step::Done;
                        return Some(Ok(OutputPiece::End));
                    };
                    let live = &mut self.live;
                    let more = async {
                        match live.as_mut() {
                            Some(feed) => match feed.recv().await {
                                Ok(chunk) => Feed::Upto(chunk.offset + chunk.data.len() as u64),
                                // Behind the feed: the log has what was missed, and the feed
                                // goes on from the oldest chunk it kept.
                                Err(broadcast::error::RecvError::Lagged(_)) => Feed::Missed,
                                Err(broadcast::error::RecvError::Closed) => Feed::Closed,
                            },
                            None => std::future::pending().await,
                        }
                    };
                    // It ends, or goes back to the queue (its worker went away before it
                    // took it): whether it is queued again.
                    let state = &mut ticket.state;
                    let changed = async {
                        state
                            .wait_for(|s| !matches!(s, JobState::Running))
                            .await
                            .map(|s| matches!(*s, JobState::Queued))
                    };
                    let event = tokio::select! {
                        feed = more => Ok(feed),
                        queued = changed => Err(queued),
                    };
                    self.step = match event {
                        Ok(Feed::Upto(end)) if end <= self.read => Step::Following,
                        Ok(Feed::Upto(_) | Feed::Missed) => Step::Reading(Then::Follow),
                        // The run ended: the job did, or it was queued again.
                        Ok(Feed::Closed) | Err(Ok(true)) => {
                            self.live = None;
                            Step::AwaitStart
                        }
                        // What the job wrote last, then how it ended.
                        Err(_) => Step::Reading(Then::Finish(
                            ticket.finished().now_or_never().and_then(Result::ok),
                        )),
                    };
                }
            }
        }
    }

    /// Up to [`OUTPUT_PIECE`] bytes of the log past what was read, if there are any. A
    /// log that was replaced (the job was queued again, and its new run wrote a new one) is
    /// read anew from its start, after a line that says so.
    async fn read_more(&mut self) -> Option<Vec<u8>> {
        let file = match &self.file {
            Some(file) => file.clone(),
            None => {
                let file = open_log_file(self.path.clone()?).await?;
                self.file = Some(file.clone());
                file
            }
        };
        let at = self.read;
        let read = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::{FileExt, MetadataExt};
            let mut data = vec![0; OUTPUT_PIECE];
            let n = file.read_at(&mut data, at)?;
            data.truncate(n);
            // At its end: whether it is still the job's log, or was removed.
            let gone = n == 0 && file.metadata()?.nlink() == 0;
            std::io::Result::Ok((data, gone))
        })
        .await
        .ok()?;
        match read {
            Ok((data, false)) if !data.is_empty() => {
                self.read += data.len() as u64;
                Some(data)
            }
            Ok((_, true)) => {
                // The handle kept the old log's inode from being reused: a file at the path
                // now is a new log.
                self.file = None;
                let again = open_log_file(self.path.clone()?).await?;
                self.file = Some(again);
                self.read = 0;
                Some(QUEUED_AGAIN.to_vec())
            }
            Ok(_) | Err(_) => None,
        }
    }
}

/// Opens the log at `path` for reading; `None` when there is none (yet). The log directory is
/// the engine's own, but a link there is never followed.
async fn open_log_file(path: PathBuf) -> Option<Arc<std::fs::File>> {
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    })
    .await
    .ok()?
    .ok()
    .map(Arc::new)
}

impl EngineHandle {
    /// Job `id`'s output for `by`, who must be its owner or an admin: what it wrote so far
    /// and, with `follow`, what it writes until it ends (a queued job's from when it starts),
    /// and how it ended. Output is read from the job's log: an engine that keeps no logs
    /// ([`EngineConfig::log_dir`](super::EngineConfig::log_dir)) has none to give.
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
