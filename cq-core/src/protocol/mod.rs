//! The wire protocol between `cq_client` and `cq_server`.
//!
//! A connection goes like this:
//!
//! 1. **Hello.** As soon as the connection is up, each side sends an 8-byte [`Hello`]:
//!    the magic `CQUE`, the protocol version (u16, big endian), its role and a reserved byte.
//!    It is fixed-layout on purpose, so that an old or new peer, or something that is not cq
//!    at all (a TLS client, a web browser), is recognised and told so in plain words. A
//!    server that refuses a hello still sends its own hello, then one error frame, and closes.
//!    A server follows its hello with the uid it runs as ([`SERVER_UID_LEN`] bytes).
//! 2. **Frames.** Everything after the hello is a frame: a u32 big-endian length and a
//!    [postcard](https://docs.rs/postcard) body of at most [`MAX_FRAME`] bytes. The length is
//!    checked before anything is allocated. Every frame is an [`Envelope`]: a body and a
//!    credential made for exactly those body bytes.
//! 3. **Request.** The client sends one [`Request`]: the server address it dialled, a fresh
//!    random [`Nonce`] and an [`Action`] (submit a job with its idempotency key, watch an
//!    existing one, ...). Its credential binds the whole request, so it cannot be attached
//!    to another request or replayed to another server; the server also refuses the same
//!    request (the same credential) a second time, across restarts, until the credential
//!    expires. The credential may carry a [`ReplyKey`](crate::auth::ReplyKey) that only the
//!    server's uid can read.
//! 4. **Replies.** The server answers with [`Reply`]s that carry the [`RequestDigest`] of
//!    the request they answer (its body and credential) and an [`Event`]: `Accepted`, then
//!    `Started`, then `Finished`, or an `Error` with a stable [`ErrorCode`]. Each reply is
//!    authenticated, so the client believes an outcome only if the server really sent it
//!    for this very request, about its own job: with the request's reply key, the
//!    credential field holds HMAC-SHA256 over the reply's position (0, 1, ...) and bytes,
//!    and nothing else is accepted; otherwise it is the server's own credential for the
//!    reply.
//! 5. The client may send another request on the same connection after `Finished`, or close.
//!
//! A dropped connection loses nothing on the server: the job keeps its place, and a client
//! can send `Watch` for its job id to get the outcome.
//!
//! Postcard is not self-describing: enum variants are append-only, and any change to a
//! message's fields comes with a new [`PROTOCOL_VERSION`].

mod codec;
mod hello;
mod message;
mod refusal;

pub use codec::{FrameCodec, FrameError, MAX_FRAME, ReadBudget};
pub use hello::{
    HELLO_LEN, Hello, HelloError, MAGIC, PROTOCOL_VERSION, Role, SERVER_UID_LEN, server_greeting,
};
pub use message::{
    Action, Envelope, ErrorCode, Event, MAX_RUNNER_SHOWN, Nonce, Reply, Request, RequestDigest,
    RunAs, WorkReport, WorkerSummary,
};
pub use refusal::plain_refusal;
