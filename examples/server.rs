//! A server with an authenticator of the daemon's own, and a client talking to it: here a
//! shared secret (HMAC-SHA256 of each message and the sender's uid), over the in-memory
//! transport (a real daemon would use TCP or a Unix socket from the cq-transport crates).
//!
//! Run it with `cargo run -p cq-examples --example server`.

use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use cq_core::auth::AuthMethod;
use cq_core::transport::memory_transport;
use cq_core::{
    AuthError, Authenticator, Client, CommandJob, Credential, CredentialSource, Engine,
    EngineConfig, Executor, Identity, JobContext, Outcome, PeerInfo, Server, SubmitKey,
    async_trait,
};
use tokio_util::sync::CancellationToken;

/// Every message carries a keyed digest of itself. (A real authenticator must also refuse a
/// replayed credential, or say until when it could pass: see `Authenticator`.)
#[derive(Clone)]
struct SharedSecret {
    key: [u8; 32],
    /// Who the signer says it is.
    uid: u32,
}

impl SharedSecret {
    fn mac(&self, uid: u32, message: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(&uid.to_be_bytes());
        mac.update(message);
        mac
    }

    /// The credential: the uid, then the tag.
    fn tag(&self, message: &[u8]) -> Vec<u8> {
        let mut credential = self.uid.to_be_bytes().to_vec();
        credential.extend(self.mac(self.uid, message).finalize().into_bytes());
        credential
    }
}

#[async_trait]
impl CredentialSource for SharedSecret {
    async fn credential_for(&self, message: &[u8]) -> Result<Credential, AuthError> {
        Ok(Credential(self.tag(message)))
    }
}

#[async_trait]
impl Authenticator for SharedSecret {
    async fn verify(
        &self,
        message: &[u8],
        credential: &Credential,
        _peer: &PeerInfo,
    ) -> Result<Identity, AuthError> {
        if credential.0.len() < 4 {
            return Err(AuthError::Invalid("no credential".into()));
        }
        let (uid, tag) = credential.0.split_at(4);
        let uid = u32::from_be_bytes(uid.try_into().expect("four bytes"));
        // Constant-time comparison, by the hmac crate.
        self.mac(uid, message)
            .verify_slice(tag)
            .map_err(|_| AuthError::Mismatch("the tag does not fit the message".into()))?;
        Ok(Identity {
            uid,
            gid: uid,
            user: None,
            host: None,
            method: AuthMethod::Custom("shared-secret"),
            principal: None,
        })
    }
}

/// Pretends to run commands; says which ran.
#[derive(Default)]
struct Pretend(Mutex<Vec<String>>);

#[async_trait]
impl Executor for Pretend {
    async fn run(&self, job: &CommandJob, _ctx: JobContext) -> Outcome {
        self.0.lock().unwrap().push(job.argv.join(" "));
        Outcome::Exited { code: 0 }
    }
}

#[tokio::main]
async fn main() {
    let key = [7u8; 32];
    let ran = Arc::new(Pretend::default());
    let engine = Engine::new(EngineConfig::default())
        .with_executor(ran.clone())
        .start()
        .await
        .expect("the engine starts");
    let (listener, connector) = memory_transport();
    let server_auth = SharedSecret { key, uid: 0 };
    let stop = CancellationToken::new();
    let serving = tokio::spawn(
        Server::new(engine, server_auth.clone(), server_auth)
            .run(listener, stop.clone().cancelled_owned()),
    );

    let client = Client::new(
        connector.clone(),
        SharedSecret { key, uid: 1000 },
        SharedSecret { key, uid: 1000 },
    );
    let submission = client
        .submit(CommandJob::new(["make", "all"]), SubmitKey::random())
        .await
        .expect("accepted");
    let result = submission.wait().await.expect("it ends");
    println!("job ended: {}", result.outcome);
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });

    // Someone without the key is turned away.
    let stranger = Client::new(
        connector,
        SharedSecret {
            key: [0; 32],
            uid: 0,
        },
        SharedSecret {
            key: [0; 32],
            uid: 0,
        },
    );
    let refused = stranger
        .submit(CommandJob::new(["rm", "-rf", "/"]), SubmitKey::random())
        .await;
    println!(
        "a stranger: {}",
        refused
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(refused.is_err());
    assert_eq!(*ran.0.lock().unwrap(), ["make all"]);
    stop.cancel();
    serving.await.expect("the server stops");
}
