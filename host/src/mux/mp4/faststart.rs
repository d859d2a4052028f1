//! The head (and, when it does not fit, the tail) that finishes a recording, from the tables
//! the writer (or recovery) collected. The fragments stay where they were written.

use bytes::{BufMut, Bytes, BytesMut};

use super::boxes::{write_final_moov, write_ftyp, BoxWriter};
use super::table::{TrackInfo, TrackTable};
use crate::mux::{MuxError, Rewrite};

/// Where things are in the file being written.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    /// Length of the `ftyp` box at the start.
    pub ftyp_len: u64,
    /// End of the reserved region after it (where the first fragment starts).
    pub head_end: u64,
    /// End of the last complete fragment.
    pub end: u64,
    /// When the `moov` does not fit the reserved region: put it at the end (live: nothing is
    /// copied) rather than laying the file out anew behind a copy (offline).
    pub moov_at_end: bool,
}

fn moov(tracks: &[(&TrackInfo, &TrackTable)], shift: i64, co64: bool) -> Result<BytesMut, MuxError> {
    let mut b = BytesMut::new();
    let mut w = BoxWriter::new(&mut b);
    write_final_moov(&mut w, tracks, shift, co64);
    w.done()?;
    Ok(b)
}

/// A `free` box of `len` (≥ 8) bytes.
/// The header of a `free` box `len` bytes long. Its content is whatever the reserved region
/// held there (zeros, or the start of the init `moov`): a reader skips it, so the head is
/// written without it and nothing of the region's size is built in memory.
fn put_free(head: &mut BytesMut, len: u64) {
    head.put_u32(len as u32);
    head.put_slice(b"free");
}

/// How to finish the file: `head` over the start of `[0, head_end)` with `ftyp` + `moov` + the
/// header of a `free` box over the rest when the `moov` fits, else `ftyp` + `free` there and
/// the `moov` as the `tail` (or, offline, a new head before a copy of the fragments). Tracks without samples are left out.
/// `Ok(None)` when no track has a sample.
pub(crate) fn finalize(tracks: &[(&TrackInfo, &TrackTable)], at: Layout) -> Result<Option<Rewrite>, MuxError> {
    let tracks: Vec<(&TrackInfo, &TrackTable)> = tracks.iter().copied().filter(|(_, t)| t.sample_count() > 0).collect();
    if tracks.is_empty() {
        return Ok(None);
    }
    let mut head = BytesMut::new();
    let mut w = BoxWriter::new(&mut head);
    write_ftyp(&mut w);
    w.done()?;
    debug_assert_eq!(head.len() as u64, at.ftyp_len);
    let last_chunk = tracks.iter().filter_map(|(_, t)| t.chunks.last().map(|c| c.0)).max().unwrap_or(0);

    let in_place = moov(&tracks, 0, last_chunk > u64::from(u32::MAX))?;
    let room = at.head_end - at.ftyp_len;
    let len = in_place.len() as u64;
    if len == room || len + 8 <= room {
        head.extend_from_slice(&in_place);
        if len < room {
            put_free(&mut head, room - len);
        }
        let body: Vec<_> = std::iter::once(head.len() as u64..at.end).collect();
        return Ok(Some(Rewrite {
            head: head.freeze(),
            ranges: body,
            tail: Bytes::new(),
            from_file: false,
            last_moof: None,
        }));
    }
    if at.moov_at_end && room >= 8 {
        put_free(&mut head, room);
        let body: Vec<_> = std::iter::once(head.len() as u64..at.end).collect();
        return Ok(Some(Rewrite {
            head: head.freeze(),
            ranges: body,
            tail: in_place.freeze(),
            from_file: false,
            last_moof: None,
        }));
    }
    // Laid out anew: the fragments move by the difference between the heads. The moov's size
    // depends on stco/co64, not on the offset values.
    let shift_for = |moov_len: usize| (at.ftyp_len + moov_len as u64) as i64 - at.head_end as i64;
    let mut co64 = false;
    let mut shift = shift_for(moov(&tracks, 0, false)?.len());
    if last_chunk.saturating_add_signed(shift) > u64::from(u32::MAX) {
        co64 = true;
        shift = shift_for(moov(&tracks, 0, true)?.len());
    }
    head.extend_from_slice(&moov(&tracks, shift, co64)?);
    Ok(Some(Rewrite {
        head: head.freeze(),
        ranges: std::iter::once(at.head_end..at.end).collect(),
        tail: Bytes::new(),
        from_file: false,
        last_moof: None,
    }))
}
