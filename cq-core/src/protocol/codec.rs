//! Typed framing: u32 length prefix (tokio-util) around a postcard body.

use std::io;
use std::marker::PhantomData;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::length_delimited::LengthDelimitedCodecError;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Largest frame body either side accepts. MUNGE payloads are capped at 1 MB anyway, and the
/// length codec reserves the announced length, so this bounds the memory a peer can make us
/// allocate per connection.
pub const MAX_FRAME: usize = 1024 * 1024;

/// Decodes frames into `In` and encodes `Out` into frames.
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    length: LengthDelimitedCodec,
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
            types: PhantomData,
        }
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
        match self.length.decode(src) {
            Ok(Some(frame)) => postcard::from_bytes(&frame)
                .map(Some)
                .map_err(FrameError::Malformed),
            Ok(None) => Ok(None),
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
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::job::{CommandJob, JobId};
    use crate::outcome::{Outcome, SpawnFailure};
    use crate::protocol::{Action, ErrorCode, Event, Nonce, Reply, Request};

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
        )
            .prop_map(|(argv, env, cwd, timeout_ms)| CommandJob {
                argv,
                env,
                cwd,
                tags: vec![],
                timeout_ms,
            });
        let action = prop_oneof![
            job.prop_map(|job| Action::Submit { job }),
            any::<u64>().prop_map(|id| Action::Watch { job: JobId(id) }),
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
            (any::<u64>(), arb_outcome(), any::<u64>()).prop_map(|(id, outcome, runtime_ms)| {
                Event::Finished {
                    job: JobId(id),
                    outcome,
                    runtime_ms,
                }
            }),
            any::<u64>().prop_map(|id| Event::Started { job: JobId(id) }),
        ];
        (any::<[u8; 16]>(), event).prop_map(|(nonce, event)| Reply {
            nonce: Nonce(nonce),
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
