//! What Slurm says of a job, read from `scontrol show job -o` and `sacct -c -P`.

use crate::outcome::Outcome;

/// Where a Slurm job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlurmState {
    /// Waiting for resources, starting, running, suspended or ending: not over yet.
    Active,
    /// Over, with what became of it.
    Ended(SlurmEnd),
}

/// How a Slurm job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlurmEnd {
    /// Its batch script ended: `ExitCode=CODE:SIGNAL` (a signal wins over the code).
    Finished { code: i32, signal: i32 },
    /// Cancelled (`scancel`, by cq or by an admin).
    Cancelled,
    /// Past its Slurm time limit.
    TimedOut,
    /// Slurm could not run it, or lost it (node failure, boot failure, preemption, memory).
    Failed(&'static str),
}

impl SlurmEnd {
    /// The job's outcome as cq reports it.
    pub(super) fn outcome(self) -> Outcome {
        match self {
            Self::Finished { signal, .. } if signal != 0 => Outcome::Signaled {
                signal,
                core_dumped: false,
            },
            Self::Finished { code, .. } => Outcome::Exited { code },
            Self::Cancelled => Outcome::Cancelled,
            Self::TimedOut => Outcome::TimedOut,
            Self::Failed(why) => Outcome::Failed {
                message: format!("Slurm: {why}"),
            },
        }
    }
}

/// The state named by Slurm's `JobState`/`State` word, with the `ExitCode` (`CODE:SIGNAL`).
/// `None` for a word this does not know (read as still active by the caller, who waits).
fn classify(state: &str, exit_code: Option<&str>) -> Option<SlurmState> {
    // sacct writes "CANCELLED by 0"; scontrol "CANCELLED".
    let word = state.split_whitespace().next().unwrap_or("");
    let (code, signal) = exit_code
        .and_then(|e| e.split_once(':'))
        .and_then(|(c, s)| Some((c.trim().parse().ok()?, s.trim().parse().ok()?)))
        .unwrap_or((0, 0));
    let end = match word {
        "PENDING" | "CONFIGURING" | "RUNNING" | "COMPLETING" | "SUSPENDED" | "REQUEUED"
        | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESIZING" | "SIGNALING" | "STAGE_OUT" | "STOPPED"
        | "RESV_DEL_HOLD" | "SPECIAL_EXIT" => return Some(SlurmState::Active),
        "COMPLETED" | "FAILED" => SlurmEnd::Finished { code, signal },
        "CANCELLED" => SlurmEnd::Cancelled,
        "TIMEOUT" | "DEADLINE" => SlurmEnd::TimedOut,
        "NODE_FAIL" => SlurmEnd::Failed("the node running the job failed"),
        "BOOT_FAIL" => SlurmEnd::Failed("the node for the job failed to boot"),
        "PREEMPTED" => SlurmEnd::Failed("the job was preempted"),
        "OUT_OF_MEMORY" => SlurmEnd::Failed("the job ran out of memory"),
        _ => return None,
    };
    Some(SlurmState::Ended(end))
}

/// The state in one line of `scontrol show job -o ID`.
pub(super) fn from_scontrol(line: &str) -> Option<SlurmState> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    };
    classify(field("JobState")?, field("ExitCode"))
}

/// The state in the last line of `sacct -c -n -P -o ExitCode,State` (the job's last record).
pub(super) fn from_sacct(output: &str) -> Option<SlurmState> {
    let line = output.lines().rev().find(|l| !l.trim().is_empty())?;
    let (exit_code, state) = line.split_once('|')?;
    classify(state, Some(exit_code))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as Slurm 22.05 writes them (recorded on the single-node cluster of the tests).
    const FAILED: &str = "JobId=1 JobName=cq-1 UserId=root(0) GroupId=root(0) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) ExitCode=3:0 RunTime=00:00:00";
    const SIGNALED: &str =
        "JobId=2 JobName=x JobState=FAILED Reason=RaisedSignal:11_Segmentation_fault ExitCode=0:11";
    const RUNNING: &str = "JobId=3 JobName=x JobState=RUNNING Reason=None ExitCode=0:0";

    #[test]
    fn exit_codes_and_signals_are_told_apart() {
        assert_eq!(
            from_scontrol(FAILED).map(|s| match s {
                SlurmState::Ended(end) => end.outcome(),
                SlurmState::Active => Outcome::Lost,
            }),
            Some(Outcome::Exited { code: 3 })
        );
        assert_eq!(
            from_scontrol(SIGNALED),
            Some(SlurmState::Ended(SlurmEnd::Finished {
                code: 0,
                signal: 11
            }))
        );
        assert_eq!(
            SlurmEnd::Finished {
                code: 0,
                signal: 11
            }
            .outcome(),
            Outcome::Signaled {
                signal: 11,
                core_dumped: false
            }
        );
        assert_eq!(from_scontrol(RUNNING), Some(SlurmState::Active));
    }

    #[test]
    fn sacct_records_are_read_from_their_last_line() {
        assert_eq!(
            from_sacct("0:0|CANCELLED by 0\n"),
            Some(SlurmState::Ended(SlurmEnd::Cancelled))
        );
        assert_eq!(
            from_sacct("0:0|RUNNING\n2:0|FAILED\n"),
            Some(SlurmState::Ended(SlurmEnd::Finished { code: 2, signal: 0 }))
        );
        assert_eq!(from_sacct(""), None);
        assert_eq!(
            from_sacct("0:0|TIMEOUT"),
            Some(SlurmState::Ended(SlurmEnd::TimedOut))
        );
    }

    #[test]
    fn unknown_words_and_missing_fields_are_not_an_end() {
        assert_eq!(
            from_scontrol("JobId=4 JobState=WHATEVER ExitCode=0:0"),
            None
        );
        assert_eq!(from_scontrol("JobId=4"), None);
        // A field named like the end of another is not that field.
        assert_eq!(from_scontrol("JobId=4 OldJobState=FAILED"), None);
    }
}
