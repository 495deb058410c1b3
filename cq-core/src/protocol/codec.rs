//! Typed framing: u32 length prefix (tokio-util) around a postcard body.

use std::io;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::length_delimited::LengthDelimitedCodecError;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Largest frame body either side accepts. MUNGE payloads are capped at 1 MB anyway, and the
/// length codec reserves the announced length, so this bounds the memory a peer can make us
/// allocate per connection.
pub const MAX_FRAME: usize = 1024 * 1024;

/// How much a server buffers for frames it has not authenticated yet: frames up to `free`
/// bytes cost nothing, larger ones draw their announced length from one pool that all
/// connections share, before anything is allocated. A peer that announces a large frame and
/// sends it slowly holds its share of the pool, never more; when the pool is spent, large
/// frames are refused ([`FrameError::Busy`]) until shares come back.
#[derive(Clone, Debug)]
pub struct ReadBudget {
    free: usize,
    pool: Arc<Semaphore>,
}

impl ReadBudget {
    /// Frames up to `free` bytes are free; larger ones share `pool` bytes.
    pub fn new(free: usize, pool: usize) -> Self {
        Self {
            free,
            pool: Arc::new(Semaphore::new(pool.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Bytes of the pool not held now.
    pub fn available(&self) -> usize {
        self.pool.available_permits()
    }
}

/// Decodes frames into `In` and encodes `Out` into frames.
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    length: LengthDelimitedCodec,
    budget: Option<ReadBudget>,
    /// The share of the budget the frame being read holds.
    held: Option<OwnedSemaphorePermit>,
    /// Whether the length codec took the frame's header and waits for its body: what the
    /// buffer holds then is body, not a length.
    in_body: bool,
    /// Whether frames larger than the budget's free size are refused outright (the peer has
    /// no reason to send one now), instead of drawing on the shared pool.
    free_only: bool,
    types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    /// A codec with the protocol's [`MAX_FRAME`] limit.
    pub fn new() -> Self {
        Self::with_max_frame(MAX_FRAME)
    }

    /// A codec with another frame limit (tests, embedders with small messages).
    pub fn with_max_frame(max: usize) -> Self {
        let length = LengthDelimitedCodec::builder()
            .length_field_type::<u32>()
            .max_frame_length(max)
            .new_codec();
        Self {
            length,
            budget: None,
            held: None,
            in_body: false,
            free_only: false,
            types: PhantomData,
        }
    }

    /// Reads large frames only within `budget`.
    #[must_use]
    pub fn with_budget(mut self, budget: ReadBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Before the length codec reserves a large frame's announced length, takes that much
    /// from the budget.
    fn reserve_budget(&mut self, src: &BytesMut) -> Result<(), FrameError> {
        let (Some(budget), None, false, Some(header)) =
            (&self.budget, &self.held, self.in_body, src.get(..4))
        else {
            return Ok(());
        };
        let announced = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if announced <= budget.free || announced > self.max_frame() {
            // Free, or refused by the length codec below.
            return Ok(());
        }
        if self.free_only {
            return Err(FrameError::Busy);
        }
        let share = u32::try_from(announced).unwrap_or(u32::MAX);
        match budget.pool.clone().try_acquire_many_owned(share) {
            Ok(permit) => {
                self.held = Some(permit);
                Ok(())
            }
            Err(_) => Err(FrameError::Busy),
        }
    }

    /// Refuses (with [`FrameError::Busy`]) frames larger than the budget's free size while
    /// `on`: a peer that should be silent (a client waiting for its job) must not hold a
    /// share of the shared pool by announcing a large frame it never sends.
    pub fn free_frames_only(&mut self, on: bool) {
        self.free_only = on;
    }

    /// The frame limit in bytes.
    pub fn max_frame(&self) -> usize {
        self.length.max_frame_length()
    }

    fn map_length_error(&self, err: io::Error) -> FrameError {
        let too_large = err
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<LengthDelimitedCodecError>().is_some());
        if too_large {
            FrameError::TooLarge {
                limit: self.max_frame(),
            }
        } else {
            FrameError::Io(err)
        }
    }
}

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        Self::new()
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        self.reserve_budget(src)?;
        let before = src.len();
        match self.length.decode(src) {
            Ok(Some(frame)) => {
                let item = postcard::from_bytes(&frame).map_err(FrameError::Malformed);
                drop(frame);
                self.held = None;
                self.in_body = false;
                item.map(Some)
            }
            Ok(None) => {
                // The header was taken (the buffer shrank): the body is still to come.
                self.in_body |= src.len() < before;
                Ok(None)
            }
            Err(err) => Err(self.map_length_error(err)),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        let body = postcard::to_allocvec(&item).map_err(FrameError::Malformed)?;
        self.length
            .encode(Bytes::from(body), dst)
            .map_err(|e| self.map_length_error(e))
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer's body is not a valid message of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(#[source] postcard::Error),
    /// The frame announces more bytes than the limit; the stream cannot be resynchronised.
    #[error("frame larger than the {limit}-byte limit")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The connection ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes unread)")]
    Truncated {
        /// Bytes received of the incomplete frame.
        buffered: usize,
    },
    /// Reading or writing the connection failed.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// The server has no room for a frame this large now; try again later.
    #[error("the server is busy reading other large requests; try again later")]
    Busy,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::job::SubmitKey;
    use crate::job::{CommandJob, JobId};
    use crate::outcome::{Outcome, SpawnFailure};
    use crate::protocol::{Action, ErrorCode, Event, Nonce, Reply, Request, RequestDigest};

    fn encode<T: Serialize + Clone>(items: &[T]) -> BytesMut {
        let mut codec = FrameCodec::<(), T>::new();
        let mut buf = BytesMut::new();
        for item in items {
            codec.encode(item.clone(), &mut buf).unwrap();
        }
        buf
    }

    fn decode_all<T: DeserializeOwned>(chunks: &[&[u8]]) -> Result<Vec<T>, FrameError> {
        let mut codec = FrameCodec::<T, ()>::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(item) = codec.decode(&mut buf)? {
                out.push(item);
            }
        }
        while let Some(item) = codec.decode_eof(&mut buf)? {
            out.push(item);
        }
        Ok(out)
    }

    fn arb_outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Cancelled),
            any::<i32>().prop_map(|code| Outcome::Exited { code }),
            Just(Outcome::Lost),
            (any::<i32>(), any::<bool>()).prop_map(|(signal, core_dumped)| Outcome::Signaled {
                signal,
                core_dumped
            }),
            ".*".prop_map(|message| Outcome::SpawnFailed {
                reason: SpawnFailure::NotFound,
                message
            }),
            Just(Outcome::TimedOut),
        ]
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        let job = (
            proptest::collection::vec(".*", 0..4),
            proptest::collection::vec((".*", ".*"), 0..4),
            proptest::option::of(".*"),
            proptest::option::of(any::<u64>()),
            proptest::collection::vec(".*", 0..3),
            proptest::option::of(".*"),
        )
            .prop_map(|(argv, env, cwd, timeout_ms, tags, lane)| CommandJob {
                argv,
                env,
                cwd,
                tags,
                timeout_ms,
                lane,
            });
        let action = prop_oneof![
            (job, any::<[u8; 16]>()).prop_map(|(job, key)| Action::Submit {
                job,
                key: SubmitKey(key)
            }),
            any::<u64>().prop_map(|id| Action::Watch { job: JobId(id) }),
            Just(Action::Pause),
            Just(Action::Resume),
            any::<u64>().prop_map(|id| Action::Promote { job: JobId(id) }),
            Just(Action::QueueState),
        ];
        // Only address and port travel: serde drops IPv6 flow info and scope id.
        let addr =
            any::<std::net::SocketAddr>().prop_map(|a| std::net::SocketAddr::new(a.ip(), a.port()));
        (any::<[u8; 16]>(), proptest::option::of(addr), action).prop_map(
            |(nonce, destination, action)| Request {
                destination,
                nonce: Nonce(nonce),
                action,
            },
        )
    }

    fn arb_reply() -> impl Strategy<Value = Reply> {
        let event = prop_oneof![
            (any::<u64>(), any::<u32>(), any::<bool>()).prop_map(|(id, ahead, merged)| {
                Event::Accepted {
                    job: JobId(id),
                    ahead,
                    merged,
                }
            }),
            (any::<u16>(), ".*").prop_map(|(code, message)| Event::Error {
                code: ErrorCode(code),
                message
            }),
            (
                any::<u64>(),
                arb_outcome(),
                any::<u64>(),
                proptest::collection::vec(("[A-Z_]{1,8}", ".*"), 0..3)
            )
                .prop_map(|(id, outcome, runtime_ms, results)| Event::Finished {
                    job: JobId(id),
                    outcome,
                    runtime_ms,
                    results,
                }),
            any::<u64>().prop_map(|id| Event::Started { job: JobId(id) }),
            any::<u64>().prop_map(|id| Event::Withdrawn { job: JobId(id) }),
            (any::<bool>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
                |(paused, running, queued, waiters)| Event::Queue {
                    paused,
                    running,
                    queued,
                    waiters,
                }
            ),
        ];
        (any::<[u8; 32]>(), event).prop_map(|(digest, event)| Reply {
            request: RequestDigest(digest),
            event,
        })
    }

    proptest! {
        #[test]
        fn requests_round_trip(requests in proptest::collection::vec(arb_request(), 1..5)) {
            let buf = encode(&requests);
            prop_assert_eq!(decode_all::<Request>(&[&buf]).unwrap(), requests);
        }

        #[test]
        fn replies_round_trip_whatever_the_split(
            replies in proptest::collection::vec(arb_reply(), 1..5),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let buf = encode(&replies);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(buf.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for p in points {
                chunks.push(&buf[start..p]);
                start = p;
            }
            chunks.push(&buf[start..]);
            prop_assert_eq!(decode_all::<Reply>(&chunks).unwrap(), replies);
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut codec = FrameCodec::<Request, ()>::new();
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { limit: MAX_FRAME }),
            "{err}"
        );
        assert!(
            buf.capacity() < 1024,
            "the codec must not reserve the announced length"
        );
    }

    #[test]
    fn large_frames_draw_on_a_shared_budget_before_anything_is_reserved() {
        let budget = ReadBudget::new(100, 1000);
        let mut first = FrameCodec::<Request, ()>::new().with_budget(budget.clone());
        let mut second = FrameCodec::<Request, ()>::new().with_budget(budget.clone());
        let mut small = FrameCodec::<Request, ()>::new().with_budget(budget.clone());
        let header = |n: u32| BytesMut::from(&n.to_be_bytes()[..]);
        assert!(first.decode(&mut header(800)).unwrap().is_none());
        assert_eq!(budget.available(), 200, "the announced length is held");
        let mut refused = header(800);
        assert!(matches!(second.decode(&mut refused), Err(FrameError::Busy)));
        assert!(
            refused.capacity() < 800,
            "nothing reserved for a refused frame"
        );
        assert!(
            small.decode(&mut header(50)).unwrap().is_none(),
            "small frames are free"
        );
        drop(first);
        assert_eq!(
            budget.available(),
            1000,
            "a connection that goes returns its share"
        );
    }

    /// Red team: once the header of a small (free) frame was taken, the first bytes of its
    /// body were read as a length, and a busy pool refused the frame.
    #[test]
    fn a_small_frames_body_is_never_read_as_a_length() {
        let budget = ReadBudget::new(100, 10);
        let mut codec = FrameCodec::<[u8; 6], ()>::new().with_budget(budget.clone());
        // A free frame of six bytes whose first four read as 65,536: more than the pool.
        let body = [0u8, 1, 0, 0, 5, 5];
        let mut buf = BytesMut::from(&6u32.to_be_bytes()[..]);
        assert!(
            codec.decode(&mut buf).unwrap().is_none(),
            "the header alone"
        );
        buf.extend_from_slice(&body);
        let decoded = codec.decode(&mut buf);
        assert!(
            matches!(decoded, Ok(Some(b)) if b == body),
            "the frame's body was taken for a length: {decoded:?}"
        );
        assert_eq!(budget.available(), 10, "nothing held");
    }

    /// Red team: a client waiting for its job announced a large frame and never sent it,
    /// holding a share of the pool for hours; while waiting, large frames are refused.
    #[test]
    fn a_peer_that_should_be_silent_cannot_hold_the_pool() {
        let budget = ReadBudget::new(100, 1000);
        let mut codec = FrameCodec::<Request, ()>::new().with_budget(budget.clone());
        codec.free_frames_only(true);
        let mut header = BytesMut::from(&800u32.to_be_bytes()[..]);
        assert!(matches!(codec.decode(&mut header), Err(FrameError::Busy)));
        assert_eq!(budget.available(), 1000, "nothing held");
        codec.free_frames_only(false);
        assert!(codec.decode(&mut header).unwrap().is_none());
        assert_eq!(budget.available(), 200, "held again once it may speak");
    }

    #[test]
    fn truncated_and_garbage_frames_are_errors() {
        let frame = encode(&[Request {
            destination: None,
            nonce: Nonce::NONE,
            action: Action::Watch { job: JobId(1) },
        }]);
        let cut = &frame[..frame.len() - 1];
        assert!(matches!(
            decode_all::<Request>(&[cut]),
            Err(FrameError::Truncated { .. })
        ));

        let mut garbage = BytesMut::new();
        garbage.extend_from_slice(&3u32.to_be_bytes());
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(
            decode_all::<Request>(&[&garbage]),
            Err(FrameError::Malformed(_))
        ));
    }
}
