//! The result of an enqueued store operation.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::record::StoreError;

/// Resolves once the operation it stands for is committed (or failed).
#[derive(Debug)]
#[must_use = "a store operation may fail; await it or call log_failure"]
pub struct Pending<T> {
    result: oneshot::Receiver<Result<T, StoreError>>,
}

impl<T> Pending<T> {
    /// A pending result and the sender that completes it (for [`Store`](super::Store)
    /// implementations).
    pub fn channel() -> (oneshot::Sender<Result<T, StoreError>>, Self) {
        let (tx, result) = oneshot::channel();
        (tx, Self { result })
    }

    /// An already completed result.
    pub fn ready(value: Result<T, StoreError>) -> Self {
        let (tx, pending) = Self::channel();
        let _ = tx.send(value);
        pending
    }
}

impl<T: Send + 'static> Pending<T> {
    /// Lets the operation complete on its own, logging a failure.
    pub fn log_failure(self, what: &'static str) {
        tokio::spawn(async move {
            if let Err(e) = self.await {
                tracing::error!(error = %e, "store: cannot {what}");
            }
        });
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.result)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StoreError::Closed)))
    }
}
