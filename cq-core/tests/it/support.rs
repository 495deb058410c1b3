//! A test authenticator and a controllable executor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cq_core::{
    AuthError, AuthMethod, Authenticator, CommandJob, Credential, CredentialSource, Executor,
    Identity, JobContext, Outcome, PeerInfo,
};
use tokio::sync::oneshot;

pub(crate) const LIMIT: Duration = Duration::from_secs(30);

/// "Signs" a message by copying it: enough to check that credentials are bound to messages.
#[derive(Debug)]
pub(crate) struct CopyAuth;

#[async_trait]
impl CredentialSource for CopyAuth {
    async fn credential_for(&self, message: &[u8]) -> Result<Credential, AuthError> {
        Ok(Credential(message.to_vec()))
    }
}

#[async_trait]
impl Authenticator for CopyAuth {
    async fn verify(
        &self,
        message: &[u8],
        credential: &Credential,
        _: &PeerInfo,
    ) -> Result<Identity, AuthError> {
        if credential.0 != message {
            return Err(AuthError::Mismatch("copy differs".into()));
        }
        Ok(Identity {
            uid: 1000,
            gid: 1000,
            user: Some("tester".into()),
            host: None,
            method: AuthMethod::Custom("copy"),
            principal: None,
        })
    }
}

/// Runs each command until the test releases it by its first argument.
#[derive(Clone, Default)]
pub(crate) struct GatedExecutor {
    started: Arc<Mutex<HashMap<String, oneshot::Sender<oneshot::Sender<Outcome>>>>>,
    waiting: Arc<Mutex<HashMap<String, oneshot::Receiver<oneshot::Sender<Outcome>>>>>,
}

impl GatedExecutor {
    /// Prepares a gate for the command whose argv[0] is `name`.
    pub(crate) fn gate(&self, name: &str) {
        let (tx, rx) = oneshot::channel();
        self.started.lock().unwrap().insert(name.to_owned(), tx);
        self.waiting.lock().unwrap().insert(name.to_owned(), rx);
    }

    /// Waits until `name` runs, and returns the handle that ends it.
    pub(crate) async fn running(&self, name: &str) -> oneshot::Sender<Outcome> {
        let rx = self
            .waiting
            .lock()
            .unwrap()
            .remove(name)
            .expect("gate prepared");
        tokio::time::timeout(LIMIT, rx)
            .await
            .expect("the job starts")
            .unwrap()
    }
}

#[async_trait]
impl Executor for GatedExecutor {
    async fn run(&self, job: &CommandJob, ctx: JobContext) -> Outcome {
        let Some(started) = self.started.lock().unwrap().remove(&job.argv[0]) else {
            return Outcome::Exited { code: 0 };
        };
        let (end, ended) = oneshot::channel();
        let _ = started.send(end);
        tokio::select! {
            outcome = ended => outcome.unwrap_or(Outcome::Lost),
            () = ctx.cancel.cancelled() => Outcome::Cancelled,
        }
    }
}
