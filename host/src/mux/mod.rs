//! Pure container writers. A muxer takes frames and appends the bytes to write to an output
//! list of `Bytes`: headers it builds, plus slices of the frames' own payloads (no copy).
//! Nothing here touches files or sockets.

pub mod aac;
pub mod flv;
pub mod hls;
pub mod mp4;
pub mod ts;

use bytes::Bytes;

use crate::media::{Frame, MediaError};

/// A muxer's output for one call: byte chunks in file order, written with vectored I/O.
pub type Chunks = Vec<Bytes>;

/// How to turn the file written so far (the "body") into the final file at close:
/// `head` ++ body[ranges...] ++ `tail`. Used to put an index (FLV `onMetaData` with keyframes,
/// MP4 `moov`) before the media data once the data is complete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    pub head: Bytes,
    /// Byte ranges of the file written so far, copied in order after `head`.
    pub ranges: Vec<std::ops::Range<u64>>,
    pub tail: Bytes,
    /// The muxer kept no index of what it wrote (so that its memory does not grow with the
    /// file): the caller makes the rewrite from the file itself once every byte is in it
    /// (MP4: [`mp4::recover_from`], which reads only the fragments' headers). `head`, `ranges`
    /// and `tail` are then empty.
    pub from_file: bool,
    /// With `from_file`: where the last of the file's MP4 `moof`s is, each naming the one
    /// before it ([`mp4::recover_chain`]: one read per `moof`, from the last to the first).
    pub last_moof: Option<u64>,
}

/// Errors a muxer reports. A muxer error ends that file; the recording goes on.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error("{container} cannot carry {codec}")]
    UnsupportedCodec { container: &'static str, codec: &'static str },
    #[error("{0}")]
    Invalid(String),
}

/// A writer of one file.
pub trait Muxer: Send + Sync {
    /// Container name, for logs (`flv`, `mp4`, ...).
    fn container(&self) -> &'static str;
    /// Appends the bytes for `frame` (sequence headers included) to `out`.
    fn push(&mut self, frame: &Frame, out: &mut Chunks) -> Result<(), MuxError>;
    /// Ends the file: appends trailing bytes to `out` and returns how to finalise the file,
    /// if it needs an index up front.
    fn finish(&mut self, out: &mut Chunks) -> Result<Option<Rewrite>, MuxError>;
    /// Appends what the muxer holds back for its own framing (MP4: the samples of the fragment
    /// being built), so that a recorder's flush writes them now.
    fn drain(&mut self, _out: &mut Chunks) -> Result<(), MuxError> {
        Ok(())
    }
    /// After `finish`, readies the muxer for the next segment of the same stream (MPEG-TS:
    /// continuity counters and codec configuration carry over). Others start anew instead.
    fn next_segment(&mut self) {}
}
