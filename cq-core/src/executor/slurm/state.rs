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

/// What a look at a job found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reading {
    /// The job as cq submitted it, in this state.
    Seen(SlurmState),
    /// The job is not as cq submitted it (its owner renamed or requeued it, or it is not
    /// the requester's): it is stopped, and this says why.
    Tampered(&'static str),
    /// Nothing usable (no such job, an answer of another shape).
    Unknown,
}

/// The fields read from `scontrol --oneliner show job`, each once in a real line: a forged
/// copy in the job's name repeats them.
const ONCE: [&str; 6] = [
    "UserId",
    "MCS_label",
    "JobState",
    "Restarts",
    "BatchFlag",
    "ExitCode",
];

/// The job ids of `squeue --format="%i %U"` lines whose numeric owner is `uid`.
pub(super) fn owned_ids(listed: &str, uid: u32) -> Vec<u64> {
    listed
        .lines()
        .filter_map(|line| {
            let (id, owner) = line.trim().split_once(' ')?;
            let id = id.parse().ok()?;
            (owner.trim().parse::<u32>().ok()? == uid).then_some(id)
        })
        .collect()
}

/// The state named by a bare state word (`squeue -o %T`); `None` for one this does not know.
pub(super) fn classify_word(state: &str) -> Option<SlurmState> {
    classify(state, None)
}

/// One line of `scontrol --oneliner show job ID`, for the job cq submitted as `name` for
/// `uid`.
///
/// The job's owner may rename it to anything, spaces and `JobState=` included, and the name
/// comes before the state in the line: the line must begin with exactly the name cq gave
/// (a renamed job is tampered with), and only the fields after it, whose forms Slurm fixes,
/// are read.
pub(super) fn from_scontrol(line: &str, slurm_id: u64, name: &str, uid: u32) -> Reading {
    let line = line.trim();
    let Some(rest) = line.strip_prefix(&format!("JobId={slurm_id} ")) else {
        return Reading::Unknown;
    };
    if !rest.starts_with(&format!("JobName={name} ")) {
        return Reading::Tampered("the Slurm job was renamed outside cq");
    }
    // Only the keys read here count; other fields (WCKey, FailedNode, ... by version and
    // configuration) may come between them.
    let mut seen = std::collections::HashMap::new();
    for token in line.split_whitespace() {
        if let Some((key, value)) = token.split_once('=')
            && let Some(key) = ONCE.iter().find(|k| **k == key)
        {
            seen.entry(*key).or_insert(value);
        }
    }
    // A name `<cq's name> UserId=... ExitCode=0:0` would pass the prefix with its own
    // values; the real fields then follow it, and these keys show twice. (So would an
    // argument of the command spelling one out: the job is then stopped too, failing safe.)
    for key in ONCE {
        if line
            .split_whitespace()
            .filter(|w| w.strip_prefix(key).is_some_and(|v| v.starts_with('=')))
            .count()
            != 1
        {
            return Reading::Tampered("the Slurm job's fields were forged (in its name?)");
        }
    }
    // `name(uid)`; the name is the account database's, the uid in parentheses is Slurm's.
    let owner = seen
        .get("UserId")
        .and_then(|user| user.rsplit_once('('))
        .and_then(|(_, uid)| uid.strip_suffix(')'))
        .and_then(|uid| uid.parse::<u32>().ok());
    if owner != Some(uid) {
        return Reading::Tampered("the Slurm job is not the requester's");
    }
    if seen.get("Restarts").is_some_and(|n| *n != "0") {
        return Reading::Tampered("the Slurm job was requeued outside cq (cq runs a job once)");
    }
    let field = |key: &str| seen.get(key).copied();
    match field("JobState") {
        Some(state) => {
            Reading::Seen(classify(state, field("ExitCode")).unwrap_or(SlurmState::Active))
        }
        None => Reading::Unknown,
    }
}

/// The job's accounting record: the output of `sacct -X -n -P -o
/// ExitCode,State,UID,JobName` (the name last, since it may hold the separator), its first
/// line (a name may hold a newline, and a forged line after it).
pub(super) fn from_sacct(output: &str, name: &str, uid: u32) -> Reading {
    let Some(line) = output.lines().next() else {
        return Reading::Unknown;
    };
    let mut fields = line.splitn(4, '|');
    let (Some(exit_code), Some(state), Some(owner), Some(job_name)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Reading::Unknown;
    };
    if owner.trim().parse::<u32>().ok() != Some(uid) {
        return Reading::Tampered("the Slurm job is not the requester's");
    }
    if job_name.trim_end() != name {
        return Reading::Tampered("the Slurm job was renamed outside cq");
    }
    match classify(state, Some(exit_code)) {
        Some(state) => Reading::Seen(state),
        None => Reading::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "cq-1-0123456789abcdef";

    // Lines as Slurm 22.05 writes them (recorded on the single-node cluster of the tests).
    fn line(name: &str, user: &str, state: &str, restarts: u32, exit: &str) -> String {
        format!(
            "JobId=5 JobName={name} UserId={user} GroupId=nobody(1001) MCS_label=N/A Priority=4294901755 Nice=0 Account=(null) QOS=(null) JobState={state} Reason=NonZeroExitCode Dependency=(null) Requeue=0 Restarts={restarts} BatchFlag=1 Reboot=0 ExitCode={exit} RunTime=00:00:00 TimeLimit=365-00:00:00 WorkDir=/tmp/JobState=COMPLETED x"
        )
    }

    fn ended(reading: Reading) -> Outcome {
        match reading {
            Reading::Seen(SlurmState::Ended(end)) => end.outcome(),
            other => panic!("not an end: {other:?}"),
        }
    }

    #[test]
    fn exit_codes_and_signals_are_told_apart() {
        let read =
            |state, exit| from_scontrol(&line(NAME, "alice(1001)", state, 0, exit), 5, NAME, 1001);
        assert_eq!(ended(read("FAILED", "3:0")), Outcome::Exited { code: 3 });
        assert_eq!(
            ended(read("FAILED", "0:11")),
            Outcome::Signaled {
                signal: 11,
                core_dumped: false
            }
        );
        assert_eq!(ended(read("COMPLETED", "0:0")), Outcome::Exited { code: 0 });
        assert_eq!(ended(read("TIMEOUT", "0:15")), Outcome::TimedOut);
        assert_eq!(ended(read("CANCELLED", "0:15")), Outcome::Cancelled);
        assert_eq!(read("RUNNING", "0:0"), Reading::Seen(SlurmState::Active));
        // A state this does not know is waited on, not taken for an end.
        assert_eq!(read("WHATEVER", "0:0"), Reading::Seen(SlurmState::Active));
    }

    #[test]
    fn a_name_that_spells_out_an_end_is_a_renamed_job_not_an_end() {
        // The owner renamed the running job (`scontrol update JobName=...`).
        let forged = line(
            "x JobState=FAILED ExitCode=0:9",
            "alice(1001)",
            "RUNNING",
            0,
            "0:0",
        );
        assert_eq!(
            from_scontrol(&forged, 5, NAME, 1001),
            Reading::Tampered("the Slurm job was renamed outside cq")
        );
        let prefixed = line(
            &format!("{NAME} JobState=COMPLETED"),
            "alice(1001)",
            "RUNNING",
            0,
            "0:0",
        );
        assert!(matches!(
            from_scontrol(&prefixed, 5, NAME, 1001),
            Reading::Tampered(_)
        ));
    }

    #[test]
    fn a_name_that_repeats_cqs_own_prefix_and_forges_the_fields_is_caught() {
        // `<cq's name> UserId=... JobState=COMPLETED ...` passes the prefix; the real fields
        // follow it.
        let forged = line(
            &format!("{NAME} UserId=alice(1001) JobState=COMPLETED ExitCode=0:0 Restarts=0"),
            "alice(1001)",
            "RUNNING",
            0,
            "0:0",
        );
        assert!(matches!(
            from_scontrol(&forged, 5, NAME, 1001),
            Reading::Tampered(_)
        ));
    }

    #[test]
    fn jobs_are_the_requesters_by_number_whatever_accounts_are_named() {
        // squeue --user=1004 would mean an account *named* 1004, if there is one.
        assert_eq!(
            owned_ids("54 1004\n55 1006\n56 1004\nx 1004\n", 1004),
            [54, 56]
        );
        assert_eq!(owned_ids("", 1004), Vec::<u64>::new());
    }

    #[test]
    fn fields_a_configuration_adds_between_them_do_not_matter() {
        let with_wckey = line(NAME, "alice(1001)", "FAILED", 0, "2:0")
            .replace(" QOS=(null) ", " QOS=(null) WCKey=*build ")
            .replace(" Reason=", " FailedNode=n1 Reason=");
        assert_eq!(
            ended(from_scontrol(&with_wckey, 5, NAME, 1001)),
            Outcome::Exited { code: 2 }
        );
    }

    #[test]
    fn another_users_job_or_a_requeued_one_is_not_followed() {
        assert!(matches!(
            from_scontrol(&line(NAME, "bob(1002)", "RUNNING", 0, "0:0"), 5, NAME, 1001),
            Reading::Tampered(_)
        ));
        assert!(matches!(
            from_scontrol(
                &line(NAME, "alice(1001)", "PENDING", 1, "0:0"),
                5,
                NAME,
                1001
            ),
            Reading::Tampered(_)
        ));
        // Another job's line, or none.
        assert_eq!(
            from_scontrol(
                &line(NAME, "alice(1001)", "RUNNING", 0, "0:0"),
                6,
                NAME,
                1001
            ),
            Reading::Unknown
        );
        assert_eq!(from_scontrol("", 5, NAME, 1001), Reading::Unknown);
    }

    #[test]
    fn sacct_records_are_read_from_their_first_line_with_the_name_last() {
        assert_eq!(
            ended(from_sacct(
                &format!("0:0|CANCELLED by 0|1001|{NAME}\n"),
                NAME,
                1001
            )),
            Outcome::Cancelled
        );
        // A name with a newline and a forged record after it.
        assert_eq!(
            ended(from_sacct(
                &format!("2:0|FAILED|1001|{NAME}\n0:0|COMPLETED|1001|{NAME}\n"),
                NAME,
                1001
            )),
            Outcome::Exited { code: 2 }
        );
        assert_eq!(from_sacct("", NAME, 1001), Reading::Unknown);
        assert!(matches!(
            from_sacct(&format!("0:0|COMPLETED|1002|{NAME}"), NAME, 1001),
            Reading::Tampered(_)
        ));
        assert!(matches!(
            from_sacct("0:0|COMPLETED|1001|a|b", NAME, 1001),
            Reading::Tampered(_)
        ));
    }
}
