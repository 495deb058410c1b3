//! Authentication end to end: wrong keys, forged replies, unreachable munged.

use std::path::Path;

use cq_auth::munge::{MungeAuthenticator, MungeCredentialSource, MungeSocket};
use cq_core::protocol::{
    Envelope, Event, FrameCodec, HELLO_LEN, Reply, RequestDigest, server_greeting,
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
        err.contains("another MUNGE key")
            && err.contains("copy the build host's")
            && err.contains("auth-failed"),
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
/// `replies` makes from the request's digest, authenticated as `sign` says.
async fn fake_server(
    sign: Signing,
    replies: impl Fn(RequestDigest) -> Vec<Reply> + Send + 'static,
) -> std::net::SocketAddr {
    fake_server_as(server_greeting(), sign, replies).await
}

/// [`fake_server`] with its own greeting (e.g. naming another server uid).
async fn fake_server_as(
    greeting: [u8; HELLO_LEN + 4],
    sign: Signing,
    replies: impl Fn(RequestDigest) -> Vec<Reply> + Send + 'static,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(&greeting).await.unwrap();
        let mut hello = [0; HELLO_LEN];
        stream.read_exact(&mut hello).await.unwrap();
        let mut framed = Framed::new(stream, FrameCodec::<Envelope, Envelope>::new());
        let envelope = framed.next().await.unwrap().unwrap();
        let digest = RequestDigest::of(&envelope.body, &envelope.credential);
        let sealed = match &sign {
            Signing::Tags { socket, .. } => {
                // The tests run as root, the uid the client seals its key for by default.
                let key = MungeAuthenticator::new(MungeSocket::at(socket))
                    .verify_request(
                        &envelope.body,
                        &Credential(envelope.credential),
                        &PeerInfo::default(),
                    )
                    .await
                    .unwrap()
                    .reply_key;
                Some(key.expect("the client seals a reply key for a root server"))
            }
            _ => None,
        };
        for (i, reply) in replies(digest).into_iter().enumerate() {
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

fn finished(request: RequestDigest) -> Vec<Reply> {
    finished_job(request, JobId(1), JobId(1))
}

/// An acceptance of job `accepted` and a notice that job `ended` exited 0.
fn finished_job(request: RequestDigest, accepted: JobId, ended: JobId) -> Vec<Reply> {
    vec![
        Reply {
            request,
            event: Event::Accepted {
                job: accepted,
                ahead: 0,
                merged: false,
            },
        },
        Reply {
            request,
            event: Event::Finished {
                job: ended,
                outcome: Outcome::Exited { code: 0 },
                runtime_ms: 1,
                results: Vec::new(),
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
    let addr = fake_server_as(
        greeting_of_an_untrusted_uid(),
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

/// A greeting that names a server uid the client does not seal keys for: its replies are
/// then checked one credential each.
fn greeting_of_an_untrusted_uid() -> [u8; HELLO_LEN + 4] {
    let mut greeting = server_greeting();
    greeting[HELLO_LEN..].copy_from_slice(&4242u32.to_be_bytes());
    greeting
}

#[tokio::test]
async fn a_genuine_notice_for_another_request_is_not_believed() {
    let munged = Munged::start();
    // Signed with the right key, but made for another request.
    let addr = fake_server_as(
        greeting_of_an_untrusted_uid(),
        Signing::Credential(MungeCredentialSource::new(munged.daemon.socket())),
        |_| finished(RequestDigest([7; 32])),
    )
    .await;
    assert_not_believed(addr, &munged, "another request").await;
}

#[tokio::test]
async fn a_notice_about_another_job_is_not_believed() {
    let munged = Munged::start();
    // Bound to the request, but the job that "finished" is not the one accepted.
    let addr = fake_server_as(
        greeting_of_an_untrusted_uid(),
        Signing::Credential(MungeCredentialSource::new(munged.daemon.socket())),
        |request| finished_job(request, JobId(1), JobId(2)),
    )
    .await;
    assert_not_believed(addr, &munged, "about job 2, not job 1").await;
}

#[tokio::test]
async fn once_a_key_is_sealed_a_signed_notice_is_not_enough() {
    let munged = Munged::start();
    // The server named root, so the client sealed a key: a notice with a credential (which
    // any user can make the real server produce) instead of the key's tag is refused, even
    // bound to the right request.
    let addr = fake_server(
        Signing::Credential(MungeCredentialSource::new(munged.daemon.socket())),
        finished,
    )
    .await;
    assert_not_believed(addr, &munged, "could not be authenticated").await;
}

/// The attack of a server the victim dials (or a relay on its path) that hands it replies
/// the genuine server signed for a request of the attacker's own: before replies were bound
/// to the request's digest, the attacker chose the nonce they carried.
#[tokio::test]
async fn the_genuine_servers_replies_to_someone_elses_request_are_not_believed() {
    let munged = Munged::start();
    let genuine = TestServer::start(&munged).await;
    let socket = munged.socket();
    let genuine_addr = genuine.addr;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut victim, _) = listener.accept().await.unwrap();
        victim
            .write_all(&greeting_of_an_untrusted_uid())
            .await
            .unwrap();
        let mut hello = [0; HELLO_LEN];
        victim.read_exact(&mut hello).await.unwrap();
        let mut victim = Framed::new(victim, FrameCodec::<Envelope, Envelope>::new());
        let _victims_request = victim.next().await.unwrap().unwrap();
        // The attacker's own request to the genuine server, for a job that succeeds.
        let mut upstream = tokio::net::TcpStream::connect(genuine_addr).await.unwrap();
        let mut greeting = [0; HELLO_LEN + 4];
        upstream.read_exact(&mut greeting).await.unwrap();
        upstream
            .write_all(&cq_core::protocol::Hello::new(cq_core::protocol::Role::Client).encode())
            .await
            .unwrap();
        let request = cq_core::protocol::Request {
            destination: Some(genuine_addr),
            nonce: cq_core::protocol::Nonce::random(),
            action: cq_core::protocol::Action::Submit {
                job: cq_core::CommandJob::new(["true"]),
                key: cq_core::SubmitKey::random(),
            },
        };
        let body = postcard::to_allocvec(&request).unwrap();
        let credential = MungeCredentialSource::new(MungeSocket::at(&socket))
            .credential_for(&body)
            .await
            .unwrap()
            .0;
        let mut upstream = Framed::new(upstream, FrameCodec::<Envelope, Envelope>::new());
        upstream.send(Envelope { body, credential }).await.unwrap();
        while let Some(Ok(reply)) = upstream.next().await {
            if victim.send(reply).await.is_err() {
                break;
            }
        }
    });
    assert_not_believed(relay, &munged, "another request").await;
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
