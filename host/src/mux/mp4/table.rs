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

/// Bytes of each full block of a [`Blocks`] list: a page with the allocator's header.
const BLOCK_BYTES: usize = 4096 - 16;

/// A list that only grows, kept in blocks of [`BLOCK_BYTES`]: a push never moves what is
/// stored (no copy of a long table at each doubling) and every full block is the same size,
/// so the blocks a finished file frees are what the next file's tables take, where a
/// doubling `Vec` left a hole of each size behind it. A short list stays one small block,
/// grown as a `Vec` until it is full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Blocks<T> {
    /// Every block but the last is full.
    blocks: Vec<Vec<T>>,
}

impl<T> Default for Blocks<T> {
    fn default() -> Self {
        Self { blocks: Vec::new() }
    }
}

impl<T: Copy> Blocks<T> {
    /// Items in a full block.
    const PER_BLOCK: usize = {
        assert!(size_of::<T>() > 0 && size_of::<T>() <= BLOCK_BYTES);
        BLOCK_BYTES / size_of::<T>()
    };

    pub fn push(&mut self, v: T) {
        match self.blocks.last_mut() {
            Some(b) if b.len() < Self::PER_BLOCK => {
                if b.len() == b.capacity() {
                    // Only the first block grows: double, up to a full block.
                    let cap = b.capacity();
                    b.reserve_exact(cap.max(4).min(Self::PER_BLOCK - cap));
                }
                b.push(v);
            }
            _ => {
                let mut b = Vec::with_capacity(if self.blocks.is_empty() { 4 } else { Self::PER_BLOCK });
                b.push(v);
                self.blocks.push(b);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.blocks.last().map_or(0, |last| (self.blocks.len() - 1) * Self::PER_BLOCK + last.len())
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn last(&self) -> Option<&T> {
        self.blocks.last().and_then(|b| b.last())
    }

    pub fn last_mut(&mut self) -> Option<&mut T> {
        self.blocks.last_mut().and_then(|b| b.last_mut())
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> + Clone {
        self.blocks.iter().flatten()
    }

    /// Bytes held (capacity), for tests of the layout.
    #[cfg(test)]
    pub fn held_bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.capacity() * size_of::<T>()).sum()
    }
}

impl<T: Copy> Extend<T> for Blocks<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, items: I) {
        items.into_iter().for_each(|v| self.push(v));
    }
}

impl<'a, T: Copy> IntoIterator for &'a Blocks<T> {
    type Item = &'a T;
    type IntoIter = std::iter::Flatten<std::slice::Iter<'a, Vec<T>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.blocks.iter().flatten()
    }
}

#[cfg(test)]
impl<T: Copy + PartialEq, const N: usize> PartialEq<[T; N]> for Blocks<T> {
    fn eq(&self, other: &[T; N]) -> bool {
        self.len() == N && self.iter().eq(other.iter())
    }
}

/// The samples of one track, in the run-length form of `stts`/`ctts`/`stss`/`stsc`.
/// About 4 bytes per sample plus one entry per change of duration or composition offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TrackTable {
    /// Decode time of the first sample (the first fragment's `tfdt`), track timescale.
    pub start: u64,
    /// Sum of the sample durations, track timescale.
    pub duration: u64,
    pub sizes: Blocks<u32>,
    /// (sample count, duration).
    pub stts: Blocks<(u32, u32)>,
    /// (sample count, composition offset).
    pub ctts: Blocks<(u32, i32)>,
    /// 1-based numbers of the sync samples, once a sample is not one ([`Self::all_sync`]):
    /// an audio track (every sample sync, no `stss`) keeps nothing here.
    pub sync: Blocks<u32>,
    /// A sample that is not a sync sample was pushed.
    pub some_not_sync: bool,
    /// (offset in the file being written, sample count): one chunk per fragment run.
    pub chunks: Blocks<(u64, u32)>,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_table_is_kept_in_equal_blocks_that_never_move() {
        let mut b = Blocks::<u32>::default();
        assert!(b.is_empty() && b.last().is_none() && b.held_bytes() == 0);
        let per = Blocks::<u32>::PER_BLOCK;
        (0..3).for_each(|v| b.push(v));
        // A short list: one small block.
        assert!(b.held_bytes() < 64, "{}", b.held_bytes());
        (3..per as u32).for_each(|v| b.push(v));
        assert_eq!(b.held_bytes(), BLOCK_BYTES - BLOCK_BYTES % 4, "the first block grew to a full one");
        let first = b.iter().next().unwrap() as *const u32;
        b.extend(per as u32..(3 * per + 5) as u32);
        assert_eq!(b.iter().next().unwrap() as *const u32, first, "stored items never move");
        assert_eq!(b.len(), 3 * per + 5);
        assert_eq!(b.blocks.len(), 4);
        assert!(b.blocks[..3].iter().all(|x| x.len() == per && x.capacity() == per));
        assert_eq!(b.blocks[3].capacity(), per, "later blocks start full size");
        assert!(b.iter().copied().eq(0..(3 * per + 5) as u32));
        assert_eq!((&b).into_iter().count(), b.len());
        assert_eq!(b.last(), Some(&((3 * per + 4) as u32)));
        *b.last_mut().unwrap() = 7;
        assert_eq!(b.last(), Some(&7));
        let pairs: Blocks<(u64, u32)> = {
            let mut p = Blocks::default();
            p.extend([(1, 2), (3, 4)]);
            p
        };
        assert_eq!(pairs, [(1, 2), (3, 4)]);
        assert_eq!(Blocks::<(u64, u32)>::PER_BLOCK, BLOCK_BYTES / 16);
    }
}
