//! The sample table model shared by the live writer and crash recovery: what each track is
//! ([`TrackInfo`]) and what its fragments carried ([`TrackTable`], kept in `stbl` form so it
//! stays compact). A leaf of `mp4/`: `boxes` writes these, `faststart` turns them into the
//! final `moov`.

use bytes::Bytes;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TrackKind {
    Video,
    Audio,
}

/// What a track is: everything the `moov` says about it besides its samples. Written into the
/// init segment and read back from it by recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TrackInfo {
    pub id: u32,
    pub kind: TrackKind,
    pub timescale: u32,
    /// Display size (video), written to `tkhd`.
    pub width: u16,
    pub height: u16,
    /// The complete sample entry box (`avc1`, `hvc1`, `av01`, `mp4a`).
    pub sample_entry: Bytes,
}

/// The samples of one track, in the run-length form of `stts`/`ctts`/`stss`/`stsc`.
/// About 4 bytes per sample plus one entry per change of duration or composition offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TrackTable {
    /// Decode time of the first sample (the first fragment's `tfdt`), track timescale.
    pub start: u64,
    /// Sum of the sample durations, track timescale.
    pub duration: u64,
    pub sizes: Vec<u32>,
    /// (sample count, duration).
    pub stts: Vec<(u32, u32)>,
    /// (sample count, composition offset).
    pub ctts: Vec<(u32, i32)>,
    /// 1-based numbers of the sync samples, once a sample is not one ([`Self::all_sync`]):
    /// an audio track (every sample sync, no `stss`) keeps nothing here.
    pub sync: Vec<u32>,
    /// A sample that is not a sync sample was pushed.
    pub some_not_sync: bool,
    /// (offset in the file being written, sample count): one chunk per fragment run.
    pub chunks: Vec<(u64, u32)>,
}

impl TrackTable {
    pub fn sample_count(&self) -> usize {
        self.sizes.len()
    }

    /// Starts a chunk (a fragment's run) at `offset` in the file, decode time `time`.
    pub fn begin_chunk(&mut self, offset: u64, time: u64) {
        if self.sizes.is_empty() && self.chunks.is_empty() {
            self.start = time;
        }
        self.chunks.push((offset, 0));
    }

    /// Appends a sample to the current chunk.
    pub fn push(&mut self, size: u32, duration: u32, cts: i32, sync: bool) {
        self.sizes.push(size);
        self.duration += u64::from(duration);
        match self.stts.last_mut() {
            Some((n, d)) if *d == duration => *n += 1,
            _ => self.stts.push((1, duration)),
        }
        match self.ctts.last_mut() {
            Some((n, c)) if *c == cts => *n += 1,
            _ => self.ctts.push((1, cts)),
        }
        let n = self.sizes.len() as u32;
        if !sync && !self.some_not_sync {
            // The first sample that is not a sync sample: every one before it was.
            self.some_not_sync = true;
            self.sync.extend(1..n);
        } else if sync && self.some_not_sync {
            self.sync.push(n);
        }
        if let Some((_, n)) = self.chunks.last_mut() {
            *n += 1;
        }
    }

    /// Every sample is a sync sample (`stss` is left out).
    pub fn all_sync(&self) -> bool {
        !self.some_not_sync
    }

    /// The duration of the last sample, if any.
    pub fn last_duration(&self) -> Option<u32> {
        self.stts.last().map(|&(_, d)| d)
    }
}
