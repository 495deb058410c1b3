//! Bad input never crashes the server or stops it serving others; each gets a clear error.

use std::net::SocketAddr;

use bytes::BytesMut;
use cq_auth::munge::MungeCredentialSource;
use cq_core::protocol::{
    Action, Envelope, ErrorCode, Event, FrameCodec, HELLO_LEN, Hello, Nonce, PROTOCOL_VERSION,
    Reply, Request, Role, SERVER_UID_LEN,
};
use cq_core::{CommandJob, CredentialSource, SubmitKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use crate::support::{LIMIT, Munged, TestServer};

pub(crate) async fn connect(server: &TestServer) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut greeting = [0; HELLO_LEN + SERVER_UID_LEN];
    tokio::time::timeout(LIMIT, stream.read_exact(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        Hello::decode(&greeting[..HELLO_LEN].try_into().unwrap()).unwrap(),
        Hello::new(Role::Server),
        "the server greets first"
    );
    assert_eq!(
        greeting[HELLO_LEN..],
        nix::unistd::geteuid().as_raw().to_be_bytes(),
        "then says which uid it runs as"
    );
    stream
}

/// Reads until the server closes the connection and returns the replies it sent.
pub(crate) async fn replies(mut stream: TcpStream) -> Vec<Reply> {
    let mut bytes = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut bytes))
        .await
        .expect("the server closes the connection")
        .unwrap();
    let mut buf = BytesMut::from(&bytes[..]);
    let mut codec = FrameCodec::<Envelope, Envelope>::new();
    let mut out = Vec::new();
    while let Some(envelope) = codec.decode_eof(&mut buf).unwrap() {
        out.push(postcard::from_bytes(&envelope.body).unwrap());
    }
    out
}

/// The one error the server sent before closing.
pub(crate) async fn error(stream: TcpStream) -> (ErrorCode, String) {
    let replies = replies(stream).await;
    match replies.as_slice() {
        [
            ..,
            Reply {
                event: Event::Error { code, message },
                ..
            },
        ] => (*code, message.clone()),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

pub(crate) fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

pub(crate) async fn hello_and(server: &TestServer, bytes: &[u8]) -> TcpStream {
    let mut stream = connect(server).await;
    stream
        .write_all(&Hello::new(Role::Client).encode())
        .await
        .unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

pub(crate) fn request(destination: SocketAddr, argv: &[&str]) -> Vec<u8> {
    let request = Request {
        destination: Some(destination),
        nonce: Nonce::random(),
        action: Action::Submit {
            job: CommandJob::new(argv.iter().copied()),
            key: SubmitKey::random(),
        },
    };
    postcard::to_allocvec(&request).unwrap()
}

pub(crate) async fn signed(munged: &Munged, body: Vec<u8>) -> Vec<u8> {
    let credential = MungeCredentialSource::new(munged.daemon.socket())
        .credential_for(&body)
        .await
        .unwrap();
    postcard::to_allocvec(&Envelope {
        body,
        credential: credential.0,
    })
    .unwrap()
}

#[tokio::test]
async fn random_bytes_instead_of_a_hello() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let mut stream = connect(&server).await;
    stream
        .write_all(&[0x9e, 0x01, 0xff, 0x42, 0x00, 0x13, 0x37, 0x80, 0x11, 0x22])
        .await
        .unwrap();
    let (code, message) = error(stream).await;
    assert_eq!(code, ErrorCode::BAD_HELLO);
    assert!(
        message.contains("does not speak the cq protocol"),
        "{message}"
    );
    server.assert_serves().await;
}

#[tokio::test]
async fn wrong_protocol_versions_are_told_whom_to_upgrade() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    for (version, upgrade) in [
        (PROTOCOL_VERSION + 1, "upgrade the server"),
        (0, "upgrade the client"),
    ] {
        let mut stream = connect(&server).await;
        let mut hello = Hello::new(Role::Client).encode();
        hello[4..6].copy_from_slice(&version.to_be_bytes());
        stream.write_all(&hello).await.unwrap();
        let (code, message) = error(stream).await;
        assert_eq!(code, ErrorCode::VERSION_MISMATCH);
        assert!(
            message.contains(&format!("client speaks cq protocol {version}"))
                && message.contains(upgrade),
            "{message}"
        );
    }
    server.assert_serves().await;
}

#[tokio::test]
async fn a_length_prefix_over_the_limit() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let stream = hello_and(&server, &u32::MAX.to_be_bytes()).await;
    let (code, message) = error(stream).await;
    assert_eq!(code, ErrorCode::FRAME_TOO_LARGE);
    assert!(message.contains("limit"), "{message}");
    server.assert_serves().await;
}

#[tokio::test]
async fn a_truncated_frame() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let mut stream = hello_and(&server, &[0, 0, 0, 100, 1, 2, 3]).await;
    stream.shutdown().await.unwrap();
    assert!(
        replies(stream).await.is_empty(),
        "a cut stream gets no reply, just a close"
    );
    server
        .wait_for_log("connection closed in the middle of a frame")
        .await;
    server.assert_serves().await;
}

#[tokio::test]
async fn a_frame_that_is_not_an_envelope() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let stream = hello_and(&server, &frame(&[0xff, 0xff, 0xff])).await;
    assert_eq!(error(stream).await.0, ErrorCode::MALFORMED);
    server.assert_serves().await;
}

#[tokio::test]
async fn a_signed_body_that_is_not_a_request() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let envelope = signed(&munged, vec![0x05, 0xff, 0xff, 0xff]).await;
    let (code, message) = error(hello_and(&server, &frame(&envelope)).await).await;
    assert_eq!(code, ErrorCode::MALFORMED, "{message}");
    server.assert_serves().await;
}

#[tokio::test]
async fn a_credential_for_another_request_is_refused() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let harmless = request(server.addr, &["true"]);
    let credential = MungeCredentialSource::new(munged.daemon.socket())
        .credential_for(&harmless)
        .await
        .unwrap();
    let evil = request(server.addr, &["touch", marker.to_str().unwrap()]);
    let envelope = postcard::to_allocvec(&Envelope {
        body: evil,
        credential: credential.0,
    })
    .unwrap();
    let (code, message) = error(hello_and(&server, &frame(&envelope)).await).await;
    assert_eq!(code, ErrorCode::AUTH_FAILED);
    assert!(message.contains("made for another message"), "{message}");
    server.assert_serves().await;
    assert!(
        !marker.exists(),
        "the request with the borrowed credential must not run"
    );
}

#[tokio::test]
async fn a_replayed_request_is_refused() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let envelope = signed(&munged, request(server.addr, &["true"])).await;
    let first = hello_and(&server, &frame(&envelope)).await;
    let mut first = tokio_util::codec::Framed::new(first, FrameCodec::<Envelope, Envelope>::new());
    let finished = tokio::time::timeout(LIMIT, async {
        while let Some(envelope) = futures_util::StreamExt::next(&mut first).await {
            let reply: Reply = postcard::from_bytes(&envelope.unwrap().body).unwrap();
            if let Event::Finished { .. } = reply.event {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(finished, "the first use of the credential runs the job");
    let (code, message) = error(hello_and(&server, &frame(&envelope)).await).await;
    assert_eq!(code, ErrorCode::AUTH_FAILED);
    assert!(message.contains("replayed"), "{message}");
}

#[tokio::test]
async fn a_request_made_for_another_server_is_refused() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let elsewhere: SocketAddr = "127.0.0.1:48005".parse().unwrap();
    let envelope = signed(&munged, request(elsewhere, &["true"])).await;
    let (code, message) = error(hello_and(&server, &frame(&envelope)).await).await;
    assert_eq!(code, ErrorCode::WRONG_SERVER);
    assert!(message.contains("127.0.0.1:48005"), "{message}");
    server.assert_serves().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let munged = Munged::start();
    let server = TestServer::start_with(&munged, &["--handshake-timeout", "0.3"]).await;
    let silent = connect(&server).await;
    let (code, _) = error(silent).await;
    assert_eq!(code, ErrorCode::TIMEOUT);
    let hello_only = hello_and(&server, &[]).await;
    let (code, message) = error(hello_only).await;
    assert_eq!(code, ErrorCode::TIMEOUT);
    assert!(message.contains("no request"), "{message}");
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_connections_opened_and_dropped_at_once() {
    let munged = Munged::start();
    let server = TestServer::start(&munged).await;
    let addr = server.addr;
    let connections: Vec<_> = (0..500)
        .map(|i| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await?;
                if i % 2 == 0 {
                    // Half of them get as far as half a hello.
                    stream
                        .write_all(&Hello::new(Role::Client).encode()[..3])
                        .await?;
                }
                Ok::<_, std::io::Error>(stream)
            })
        })
        .collect();
    let mut open = Vec::new();
    for connection in connections {
        open.push(
            tokio::time::timeout(LIMIT, connection)
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    drop(open);
    server.assert_serves().await;
    assert!(server.stop().await.success());
}
