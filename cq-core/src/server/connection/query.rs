//! Answers that are job lists (`List`, `Status`, `Cancel`), cut into pages that each fit
//! well within a frame, however long the queue or large a job.

use std::ops::ControlFlow;

use super::Connection;
use crate::auth::{Authenticator, CredentialSource};
use crate::engine::SubmitError;
use crate::job::JobSummary;
use crate::protocol::Event;
use crate::transport::Stream;

/// Bytes of job summaries per page. A summary holds at most one job's
/// ([`MAX_JOB_BYTES`](crate::job::MAX_JOB_BYTES)) strings and a little more, so a page stays
/// below half the frame limit.
const PAGE_BYTES: usize = 192 * 1024;

impl<S, A, C> Connection<'_, S, A, C>
where
    S: Stream,
    A: Authenticator,
    C: CredentialSource,
{
    /// Answers a query with the jobs, page by page, or the error; the connection stays open
    /// for more requests.
    pub(super) async fn answer(
        &mut self,
        jobs: Result<Vec<JobSummary>, SubmitError>,
    ) -> ControlFlow<()> {
        let jobs = match jobs {
            Ok(jobs) => jobs,
            Err(e) => return self.refuse(&e).await,
        };
        let mut pages = paginate(jobs).into_iter().peekable();
        loop {
            let page = pages.next().unwrap_or_default();
            let more = pages.peek().is_some();
            self.send(Event::Jobs { jobs: page, more }).await?;
            if !more {
                return ControlFlow::Continue(());
            }
        }
    }
}

/// Cuts `jobs` into pages of at most [`PAGE_BYTES`] (a page holds at least one job).
fn paginate(jobs: Vec<JobSummary>) -> Vec<Vec<JobSummary>> {
    let mut pages = vec![Vec::new()];
    let mut bytes = 0;
    for job in jobs {
        let size = postcard::to_allocvec(&job).map_or(PAGE_BYTES, |b| b.len());
        let page = pages.last_mut().expect("pages is never empty");
        if !page.is_empty() && bytes + size > PAGE_BYTES {
            pages.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        pages.last_mut().expect("pages is never empty").push(job);
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobId, JobPhase};

    fn job(id: u64, arg_bytes: usize) -> JobSummary {
        JobSummary {
            id: JobId(id),
            owner: "alice(1000)".into(),
            owner_uid: 1000,
            command: vec!["x".repeat(arg_bytes)],
            env: Vec::new(),
            cwd: None,
            phase: JobPhase::Queued,
            accepted_ms: 0,
            started_ms: None,
            finished_ms: None,
            outcome: None,
            runtime_ms: None,
            waiters: 0,
            results: Vec::new(),
            tags: Vec::new(),
            lane: None,
            worker: None,
            waiting: None,
            runner: None,
        }
    }

    #[test]
    fn pages_stay_small_and_keep_every_job_in_order() {
        let jobs: Vec<JobSummary> = (0..100).map(|id| job(id, 20_000)).collect();
        let pages = paginate(jobs.clone());
        assert!(pages.len() > 5, "{} pages", pages.len());
        for page in &pages {
            assert!(postcard::to_allocvec(page).unwrap().len() <= PAGE_BYTES + 64);
        }
        assert_eq!(pages.concat(), jobs);
        assert_eq!(paginate(Vec::new()), vec![Vec::<JobSummary>::new()]);
        let huge = paginate(vec![job(1, 250_000), job(2, 1)]);
        assert_eq!(
            huge.len(),
            2,
            "a job larger than a page gets a page of its own"
        );
    }
}
