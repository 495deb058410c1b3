//! Authentication end to end: wrong keys, forged replies, unreachable munged.

use std::path::Path;

use cq_auth::munge::MungeCredentialSource;
use cq_core::protocol::{
    Envelope, Event, FrameCodec, HELLO_LEN, Hello, Nonce, Reply, Request, Role,
};
use cq_core::{CredentialSource, JobId, Outcome};
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

/// A fake server that answers the hello, reads one request, and sends the replies that
/// `replies` makes from the request's nonce, signed by `sign` (None: unsigned).
async fn fake_server(
    sign: Option<MungeCredentialSource>,
    replies: impl Fn(Nonce) -> Vec<Reply> + Send + 'static,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream
            .write_all(&Hello::new(Role::Server).encode())
            .await
            .unwrap();
        let mut hello = [0; HELLO_LEN];
        stream.read_exact(&mut hello).await.unwrap();
        let mut framed = Framed::new(stream, FrameCodec::<Envelope, Envelope>::new());
        let request = framed.next().await.unwrap().unwrap();
        let request: Request = postcard::from_bytes(&request.body).unwrap();
        for reply in replies(request.nonce) {
            let body = postcard::to_allocvec(&reply).unwrap();
            let credential = match &sign {
                Some(source) => source.credential_for(&body).await.unwrap().0,
                None => Vec::new(),
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

async fn run_against(
    addr: std::net::SocketAddr,
    munged: &Munged,
    marker_dir: &Path,
) -> std::process::Output {
    let marker = marker_dir.join("installed");
    let post = script(marker_dir, "post", &format!("touch {}", marker.display()));
    let out = output(
        client_for(addr, &munged.socket())
            .arg("-P")
            .arg(&post)
            .args(["--", "true"]),
    )
    .await;
    assert!(
        !marker.exists(),
        "the post script must not run on an unauthenticated notice"
    );
    out
}

#[tokio::test]
async fn an_unsigned_finished_notice_is_not_believed() {
    let munged = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    let addr = fake_server(None, finished).await;
    let out = run_against(addr, &munged, dir.path()).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("could not be authenticated"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn a_notice_signed_by_another_key_is_not_believed() {
    let munged = Munged::start();
    let forger = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    let addr = fake_server(
        Some(MungeCredentialSource::new(forger.daemon.socket())),
        finished,
    )
    .await;
    let out = run_against(addr, &munged, dir.path()).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("another MUNGE key"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn a_genuine_notice_for_another_request_is_not_believed() {
    let munged = Munged::start();
    let dir = tempfile::tempdir().unwrap();
    // Signed with the right key, but replayed from another request (another nonce).
    let addr = fake_server(
        Some(MungeCredentialSource::new(munged.daemon.socket())),
        |_| finished(Nonce([7; 16])),
    )
    .await;
    let out = run_against(addr, &munged, dir.path()).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr(&out).contains("another request"), "{}", stderr(&out));
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
        let mut newer = Hello::new(Role::Server).encode();
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
