//! How `cq_client --list`, `--status` and `--cancel` print jobs: a table for people, or
//! JSON with stable fields for scripts.

use std::fmt::Write as _;

use cq_core::printable::printable;
use cq_core::protocol::WorkerSummary;
use cq_core::{CommandJob, JobSummary, Outcome};
use serde::Serialize;

/// One job in `--json` output. Field names are stable; new fields may be added.
#[derive(Debug, Serialize)]
pub struct JobJson<'a> {
    /// Job id.
    pub id: u64,
    /// `queued`, `running` or `finished`.
    pub state: &'static str,
    /// Who submitted it (`user(uid)@host`).
    pub owner: &'a str,
    /// The submitter's uid.
    pub owner_uid: u32,
    /// Program and arguments.
    pub command: &'a [String],
    /// The variables given with `-E` (empty for others' jobs).
    pub env: std::collections::BTreeMap<&'a str, &'a str>,
    /// The working directory given with `--cwd` (null if none, and for others' jobs).
    pub cwd: Option<&'a str>,
    /// Accepted, started, finished: milliseconds since the Unix epoch.
    pub accepted_ms: u64,
    /// See `accepted_ms`; null until it started.
    pub started_ms: Option<u64>,
    /// See `accepted_ms`; null until it ended.
    pub finished_ms: Option<u64>,
    /// Run time in milliseconds; null until it ended.
    pub runtime_ms: Option<u64>,
    /// `exited`, `signaled`, `spawn-failed`, `timed-out`, `cancelled`, `lost`, `failed`; null until it ended.
    pub outcome: Option<&'static str>,
    /// The exit status scripts see (as the post script's second argument); null until it ended.
    pub exit_status: Option<u8>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Submissions merged into it.
    pub waiters: u32,
    /// What the job reported back (`KEY=VALUE` lines written to `$CQ_RESULT_FILE`); empty
    /// until it ended, and for others' jobs.
    pub results: std::collections::BTreeMap<&'a str, &'a str>,
    /// What a worker must offer to run it (`--tag`).
    pub tags: &'a [String],
    /// Its lane (`--lane`): no two jobs of one lane run at the same time.
    pub lane: Option<&'a str>,
    /// The worker it runs on (null unless running).
    pub worker: Option<&'a str>,
    /// Why it waits, when something other than the jobs ahead holds it back (null
    /// otherwise).
    pub waiting: Option<&'a str>,
    /// Where its executor runs it, in the executor's words (`slurm:123`: Slurm's job 123;
    /// null unless running).
    pub runner: Option<&'a str>,
}

impl<'a> From<&'a JobSummary> for JobJson<'a> {
    fn from(job: &'a JobSummary) -> Self {
        Self {
            id: job.id.0,
            state: job.phase.word(),
            owner: &job.owner,
            owner_uid: job.owner_uid,
            command: &job.command,
            env: job
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            cwd: job.cwd.as_deref(),
            accepted_ms: job.accepted_ms,
            started_ms: job.started_ms,
            finished_ms: job.finished_ms,
            runtime_ms: job.runtime_ms,
            outcome: job.outcome.as_ref().map(Outcome::word),
            exit_status: job.outcome.as_ref().map(Outcome::exit_status),
            signal: job.outcome.as_ref().and_then(Outcome::signal),
            waiters: job.waiters,
            results: pairs(&job.results),
            tags: &job.tags,
            lane: job.lane.as_deref(),
            worker: job.worker.as_deref(),
            waiting: job.waiting.as_deref(),
            runner: job.runner.as_deref(),
        }
    }
}

fn pairs(list: &[(String, String)]) -> std::collections::BTreeMap<&str, &str> {
    list.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// How a waited-for job ended, as one JSON object (`cq_client --wait --json`).
#[derive(Debug, serde::Serialize)]
pub struct EndJson<'a> {
    /// Job id.
    pub id: u64,
    /// Whether this submission was merged into an equal job (null when only waiting).
    pub merged: Option<bool>,
    /// As in the listing: `exited`, `signaled`, ...
    pub outcome: &'static str,
    /// The exit status scripts see.
    pub exit_status: u8,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Run time in milliseconds.
    pub runtime_ms: u64,
    /// What the job reported back.
    pub results: std::collections::BTreeMap<&'a str, &'a str>,
}

/// `result` of job `id` as a JSON object.
pub fn end_to_json(
    id: cq_core::JobId,
    merged: Option<bool>,
    result: &cq_core::JobResult,
) -> String {
    let end = EndJson {
        id: id.0,
        merged,
        outcome: result.outcome.word(),
        exit_status: result.outcome.exit_status(),
        signal: result.outcome.signal(),
        runtime_ms: u64::try_from(result.runtime.as_millis()).unwrap_or(u64::MAX),
        results: pairs(&result.results),
    };
    terminal_safe_json(serde_json::to_string_pretty(&end).unwrap_or_else(|_| "{}".to_owned()))
}

/// Jobs as a JSON array.
pub fn to_json(jobs: &[JobSummary]) -> String {
    let jobs: Vec<JobJson<'_>> = jobs.iter().map(JobJson::from).collect();
    terminal_safe_json(serde_json::to_string_pretty(&jobs).unwrap_or_else(|_| "[]".to_owned()))
}

/// One job as a JSON object.
pub fn one_to_json(job: &JobSummary) -> String {
    terminal_safe_json(
        serde_json::to_string_pretty(&JobJson::from(job)).unwrap_or_else(|_| "{}".to_owned()),
    )
}

/// `json` with the characters JSON allows raw but a terminal acts on (DEL, C1 controls,
/// bidirectional and invisible formatting characters) written as `\u` escapes, which every
/// JSON reader decodes back. (serde_json escapes only U+0000 to U+001F; such characters
/// occur only inside strings.)
fn terminal_safe_json(json: String) -> String {
    use std::fmt::Write as _;
    // Raw newlines and tabs can only be the layout between values.
    let unsafe_char =
        |c: char| cq_core::printable::is_unsafe(c) && !matches!(c, '\n' | '\t' | '\r');
    if !json.chars().any(unsafe_char) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if unsafe_char(c) {
            for unit in c.encode_utf16(&mut [0; 2]) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `job` belongs to `user` (if given; by name, as in `name(uid)@host`) and is in
/// one of `states` (if any).
pub fn matches(
    job: &JobSummary,
    user: Option<&str>,
    states: &[crate::client_run::StateFilter],
) -> bool {
    use crate::client_run::StateFilter;
    let owner_name = job.owner.split('(').next().unwrap_or_default();
    let state = match job.phase {
        cq_core::JobPhase::Queued => StateFilter::Queued,
        cq_core::JobPhase::Running => StateFilter::Running,
        _ => StateFilter::Finished,
    };
    user.is_none_or(|user| owner_name == user) && (states.is_empty() || states.contains(&state))
}

/// Jobs as a table, one line each.
pub fn to_table(jobs: &[JobSummary]) -> String {
    let mut out = format!(
        "{:>6}  {:<8}  {:<24}  {:<19}  {:>8}  {:<13}  {:>3}  COMMAND\n",
        "ID", "STATE", "OWNER", "ACCEPTED (UTC)", "RUNTIME", "OUTCOME", "W"
    );
    for job in jobs {
        let runtime = job
            .runtime_ms
            .map_or_else(String::new, |ms| format!("{:.1}s", ms as f64 / 1000.0));
        let outcome = job.outcome.as_ref().map_or_else(String::new, |o| match o {
            Outcome::Exited { code } => format!("exited {code}"),
            other => other.word().to_owned(),
        });
        let _ = writeln!(
            out,
            "{:>6}  {:<8}  {:<24}  {:<19}  {:>8}  {:<13}  {:>3}  {}",
            job.id.0,
            job.phase.word(),
            printable(&job.owner),
            utc(job.accepted_ms),
            runtime,
            outcome,
            job.waiters,
            command_line(job)
        );
    }
    out
}

/// One worker in `--workers --json` output. Field names are stable; new fields may be added.
#[derive(Debug, Serialize)]
pub struct WorkerJson<'a> {
    /// Its name.
    pub name: &'a str,
    /// What it offers.
    pub tags: &'a [String],
    /// The address it asks for work from (null for others than admins).
    pub address: Option<&'a str>,
    /// The job it runs (null when it runs none).
    pub job: Option<u64>,
    /// Milliseconds since it was last heard of.
    pub seen_ms_ago: u64,
}

/// Workers as a JSON array.
pub fn workers_to_json(workers: &[WorkerSummary]) -> String {
    let list: Vec<WorkerJson<'_>> = workers
        .iter()
        .map(|w| WorkerJson {
            name: &w.name,
            tags: &w.tags,
            address: w.address.as_deref(),
            job: w.job.map(|j| j.0),
            seen_ms_ago: w.seen_ms_ago,
        })
        .collect();
    terminal_safe_json(serde_json::to_string_pretty(&list).unwrap_or_default())
}

/// Workers as a table, one line each.
pub fn workers_to_table(workers: &[WorkerSummary]) -> String {
    if workers.is_empty() {
        return "no worker on another host has joined\n".to_owned();
    }
    let mut out = format!(
        "{:<16}  {:>6}  {:>8}  {:<15}  TAGS\n",
        "WORKER", "JOB", "SEEN", "ADDRESS"
    );
    for worker in workers {
        let _ = writeln!(
            out,
            "{:<16}  {:>6}  {:>7.1}s  {:<15}  {}",
            printable(&worker.name),
            worker
                .job
                .map_or_else(|| "-".to_owned(), |j| j.0.to_string()),
            worker.seen_ms_ago as f64 / 1000.0,
            printable(worker.address.as_deref().unwrap_or("-")),
            printable(&worker.tags.join(" "))
        );
    }
    out
}

/// The command as a shell would take it: the `-E` variables first (they tell apart two
/// builds of one package with other USE flags), then program and arguments; quoted where a
/// shell would split, control characters escaped, so that what the server sends never
/// reaches the terminal raw.
fn command_line(job: &JobSummary) -> String {
    let mut line = String::new();
    for (name, value) in &job.env {
        let assignment = CommandJob::new([format!("{name}={value}")]).summary();
        line.push_str(&assignment);
        line.push(' ');
    }
    line.push_str(&CommandJob::new(job.command.iter().cloned()).summary());
    if !job.tags.is_empty() {
        let _ = write!(line, "  [tags: {}]", printable(&job.tags.join(" ")));
    }
    if let Some(lane) = &job.lane {
        let _ = write!(line, "  [lane: {}]", printable(lane));
    }
    match (&job.worker, &job.runner) {
        (Some(worker), Some(runner)) => {
            let _ = write!(
                line,
                "  [on {} as {}]",
                printable(worker),
                printable(runner)
            );
        }
        (Some(worker), None) => {
            let _ = write!(line, "  [on {}]", printable(worker));
        }
        _ => {}
    }
    if let Some(why) = &job.waiting {
        let _ = write!(line, "  [waits: {}]", printable(why));
    }
    line
}

fn utc(ms: u64) -> String {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64) else {
        return String::new();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Red team of Security III: `--list --json` passed C1 controls and DEL raw.
    #[test]
    fn json_holds_no_character_a_terminal_acts_on_and_still_parses() {
        let text = "{\n  \"command\": \"prog\u{9b}2J\u{7f}\u{202e}x\u{e0001}\"\n}".to_owned();
        let safe = terminal_safe_json(text.clone());
        assert!(
            !safe
                .chars()
                .any(|c| cq_core::printable::is_unsafe(c) && c != '\n'),
            "{safe}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&safe).unwrap();
        let original: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, original);
    }
}
