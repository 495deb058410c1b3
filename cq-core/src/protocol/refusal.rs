//! A refusal a transport can send before the cq protocol proper starts.

use super::codec::FrameCodec;
use super::hello::server_greeting;
use super::message::{Envelope, ErrorCode, Event, Reply, RequestDigest};

/// The bytes of a server greeting followed by one unsigned error frame: what a server sends to a
/// peer it will not serve at all, e.g. a plain-text cq client that reached a TLS port. The
/// client shows the message (marked unverified) instead of a bare closed connection.
pub fn plain_refusal(code: ErrorCode, message: &str) -> Vec<u8> {
    use tokio_util::codec::Encoder;
    let mut out = bytes::BytesMut::from(&server_greeting()[..]);
    let reply = Reply {
        request: RequestDigest::NONE,
        event: Event::Error {
            code,
            message: message.to_owned(),
        },
    };
    let body = postcard::to_allocvec(&reply).unwrap_or_default();
    // An error message is far below the frame limit, so encoding cannot fail.
    let _ = FrameCodec::<Envelope, Envelope>::new().encode(
        Envelope {
            body,
            credential: Vec::new(),
        },
        &mut out,
    );
    out.to_vec()
}
