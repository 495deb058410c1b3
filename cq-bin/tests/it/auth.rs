//! Authentication end to end: wrong keys, forged replies, unreachable munged.

use std::path::Path;

use cq_auth::munge::{MungeAuthenticator, MungeCredentialSource, MungeSocket};
use cq_core::protocol::{
    Envelope, Event, FrameCodec, HELLO_LEN, Nonce, Reply, Request, server_greeting,
};
use cq_core::{Authenticator, Credential, CredentialSource, JobId, Outcome, PeerInfo, ReplyKey};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

use crate::support::{LIMIT, Munged, TestServer, client_for, output, script, stderr};

#[tokio::test]
async fn a_client_with_another_munge_key_is_refused_and_the_server_says_why() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let other = Munged::start();
    let out = output(client_for(server.addr, &other.socket()).args(["--", "true"])).await;
    assert_eq!(out.status.code(), Some(255));
    let err = stderr(&out);
    assert!(
        err.contains("another MUNGE key") && err.contains("auth-failed"),
        "{err}"
    );
    let logged = server.wait_for_log("rejected a request").await;
    assert!(logged.contains("another MUNGE key"), "{logged}");
    // And the server still serves everybody else.
    assert!(
        output(server.client().args(["--", "true"]))
            .await
            .status
            .success()
    );
}

#[tokio::test]
async fn the_server_refuses_to_start_without_munged() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.socket");
    let out = output(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_cq_server"))
            .args(["-h", "127.0.0.1", "-p", "0", "--state-dir"])
            .arg(dir.path())
            .arg("--munge-socket")
            .arg(&socket),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&socket.display().to_string()) && err.contains("start munged"),
        "{err}"
    );
}

/// How the fake server authenticates its replies.
enum Signing {
    /// Not at all.
    Unsigned,
    /// A MUNGE credential per reply, from this source.
    Credential(MungeCredentialSource),
    /// Tags made with the key sealed in the request (read with munged at this socket), at
    /// the positions given, or with a key of its own when `own_key`.
    Tags {
        socket: std::path::PathBuf,
        positions: Vec<u64>,
        own_key: bool,
    },
}

/// A fake server that answers the hello, reads one request, and sends the replies that
/// `replies` makes from the request's nonce, authenticated as `sign` says.
async fn fake_server(
    sign: Signing,
    replies: impl Fn(Nonce) -> Vec<Reply> + Send + 'static,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(&server_greeting()).await.unwrap();
        let mut hello = [0; HELLO_LEN];
        stream.read_exact(&mut hello).await.unwrap();
        let mut framed = Framed::new(stream, FrameCodec::<Envelope, Envelope>::new());
        let envelope = framed.next().await.unwrap().unwrap();
        let request: Request = postcard::from_bytes(&envelope.body).unwrap();
        let sealed = match &sign {
            Signing::Tags { socket, .. } => {
                // The tests run as root, the uid the client seals its key for by default.
                let (_, key) = MungeAuthenticator::new(MungeSocket::at(socket))
                    .verify_with_key(
                        &envelope.body,
                        &Credential(envelope.credential),
                        &PeerInfo::default(),
                    )
                    .await
                    .unwrap();
                Some(key.expect("the client seals a reply key for a root server"))
            }
            _ => None,
        };
        for (i, reply) in replies(request.nonce).into_iter().enumerate() {
            let body = postcard::to_allocvec(&reply).unwrap();
            let credential = match &sign {
                Signing::Unsigned => Vec::new(),
                Signing::Credential(source) => source.credential_for(&body).await.unwrap().0,
                Signing::Tags {
                    positions, own_key, ..
                } => {
                    let key = if *own_key {
                        ReplyKey::random()
                    } else {
                        sealed.clone().unwrap()
                    };
                    key.tag(positions[i], &body).to_vec()
                }
            };
            if framed.send(Envelope { body, credential }).await.is_err() {
                break;
            }
        }
    });
    addr
}

fn finished(nonce: Nonce) -> Vec<Reply> {
    vec![
        Reply {
            nonce,
            event: Event::Accepted {
                job: JobId(1),
                ahead: 0,
                merged: false,
            },
        },
        Reply {
            nonce,
            event: Event::Finished {
                job: JobId(1),
                outcome: Outcome::Exited { code: 0 },
                runtime_ms: 1,
            },
        },
    ]
}

/// Runs a job with a post script against `addr`; says whether the post script ran.
async fn run_with_post_script(
    addr: std::net::SocketAddr,
    munged: &Munged,
    marker_dir: &Path,
) -> (std::process::Output, bool) {
    let marker = marker_dir.join("installed");
    let post = script(marker_dir, "post", &format!("touch {}", marker.display()));
    let out = output(
        client_for(addr, &munged.socket())
            .arg("-P")
            .arg(&post)
            .args(["--", "true"]),
    )
    .await;
    (out, marker.exists())
}

/// Runs a job against `addr`, whose notice must not be believed: cq_client fails saying
/// `why`, and the post script does not run.
async fn assert_not_believed(addr: std::net::SocketAddr, munged: &Munged, why: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (out, ran) = run_with_post_script(addr, munged, dir.path()).await;
    assert!(
        !ran,
        "the post script must not run on an unauthenticated notice"
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr(&out).contains(why), "{}", stderr(&out));
}

#[tokio::test]
async fn an_unsigned_finished_notice_is_not_believed() {
    let munged = Munged::start();
    let addr = fake_server(Signing::Unsigned, finished).await;
    assert_not_believed(addr, &munged, "could not be authenticated").await;
}

#[tokio::test]
async fn a_notice_signed_by_another_key_is_not_believed() {
    let munged = Munged::start();
    let forger = Munged::start();
    let addr = fake_server(
        Signing::Credential(MungeCredentialSource::new(forger.daemon.socket())),
        finished,
    )
    .await;
    assert_not_believed(addr, &munged, "another MUNGE key").await;
}

/// Replies tagged with the key the client sealed into its request, at `positions`.
async fn tagged(munged: &Munged, positions: Vec<u64>, own_key: bool) -> std::net::SocketAddr {
    let sign = Signing::Tags {
        socket: munged.socket(),
        positions,
        own_key,
    };
    fake_server(sign, finished).await
}

#[tokio::test]
async fn replies_tagged_with_the_sealed_key_are_believed() {
    let munged = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    let addr = tagged(&munged, vec![0, 1], false).await;
    let (out, ran) = run_with_post_script(addr, &munged, dir.path()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(ran, "the post script ran");
}

#[tokio::test]
async fn a_replayed_or_foreign_tag_is_not_believed() {
    let munged = Munged::start();
    // The acceptance's tag again for the notice: a replay of an earlier reply.
    let replayed = tagged(&munged, vec![0, 0], false).await;
    // Tags from a key the client never sent.
    let foreign = tagged(&munged, vec![0, 1], true).await;
    for addr in [replayed, foreign] {
        assert_not_believed(addr, &munged, "could not be authenticated").await;
    }
}

#[tokio::test]
async fn a_genuine_notice_for_another_request_is_not_believed() {
    let munged = Munged::start();
    // Signed with the right key, but replayed from another request (another nonce).
    let addr = fake_server(
        Signing::Credential(MungeCredentialSource::new(munged.daemon.socket())),
        |_| finished(Nonce([7; 16])),
    )
    .await;
    assert_not_believed(addr, &munged, "another request").await;
}

#[tokio::test]
async fn replies_from_a_server_uid_the_client_does_not_expect_are_refused() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let unexpected = nix::unistd::getuid()
        .as_raw()
        .wrapping_add(4242)
        .to_string();
    let out = output(
        server
            .client()
            .args(["--server-uid", &unexpected, "--", "true"]),
    )
    .await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains(&format!("expected uid {unexpected}")),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn a_server_of_another_protocol_version_is_named() {
    let munged = Munged::start();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut newer = server_greeting();
        newer[4..6].copy_from_slice(&9u16.to_be_bytes());
        stream.write_all(&newer).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(LIMIT, stream.read_to_end(&mut rest)).await;
    });
    let out = output(client_for(addr, &munged.socket()).args(["--", "true"])).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains(&format!(
            "speaks cq protocol 9, this client speaks {}: upgrade the client",
            cq_core::protocol::PROTOCOL_VERSION
        )),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn something_that_is_not_cq_is_named() {
    let munged = Munged::start();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
    });
    let out = output(client_for(addr, &munged.socket()).args(["--", "true"])).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("does not speak the cq protocol (it sent SSH)"),
        "{}",
        stderr(&out)
    );
}
