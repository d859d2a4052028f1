//! The faststart file at close: `ftyp` + final `moov` + `mdat` header as the head, then the
//! fragments' `mdat` payloads, from the tables the writer (or recovery) collected.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::boxes::{write_final_moov, write_ftyp, BoxWriter};
use super::table::{TrackInfo, TrackTable};
use crate::mux::{MuxError, Rewrite};

/// Builds the faststart file: `ftyp` + `moov` + `mdat` header as the head, then the fragments'
/// `mdat` payloads (`ranges` of the fragmented file, `payload_len` bytes in all).
/// Tracks without samples are left out. `Ok(None)` when no track has a sample.
pub(crate) fn finalize(
    tracks: &[(&TrackInfo, &TrackTable)],
    payload_len: u64,
    ranges: &[Range<u64>],
) -> Result<Option<Rewrite>, MuxError> {
    let tracks: Vec<(&TrackInfo, &TrackTable)> = tracks.iter().copied().filter(|(_, t)| t.sample_count() > 0).collect();
    if tracks.is_empty() {
        return Ok(None);
    }
    debug_assert_eq!(payload_len, ranges.iter().map(|r| r.end - r.start).sum::<u64>());
    let mdat_header: u64 = if payload_len + 8 > u64::from(u32::MAX) { 16 } else { 8 };
    let mut ftyp = BytesMut::new();
    let mut w = BoxWriter::new(&mut ftyp);
    write_ftyp(&mut w);
    w.done()?;
    let last_chunk = tracks.iter().filter_map(|(_, t)| t.chunks.last().map(|c| c.0)).max().unwrap_or(0);

    // The moov size depends on the choice of stco/co64, not on the offset values.
    let moov_len = |co64: bool| -> Result<u64, MuxError> {
        let mut b = BytesMut::new();
        let mut w = BoxWriter::new(&mut b);
        write_final_moov(&mut w, &tracks, 0, co64);
        w.done()?;
        Ok(b.len() as u64)
    };
    let mut co64 = false;
    let mut base = ftyp.len() as u64 + moov_len(false)? + mdat_header;
    if base + last_chunk > u64::from(u32::MAX) {
        co64 = true;
        base = ftyp.len() as u64 + moov_len(true)? + mdat_header;
    }

    let mut head = ftyp;
    let mut w = BoxWriter::new(&mut head);
    write_final_moov(&mut w, &tracks, base, co64);
    w.done()?;
    if mdat_header == 16 {
        head.extend_from_slice(&1u32.to_be_bytes());
        head.extend_from_slice(b"mdat");
        head.extend_from_slice(&(payload_len + 16).to_be_bytes());
    } else {
        head.extend_from_slice(&((payload_len + 8) as u32).to_be_bytes());
        head.extend_from_slice(b"mdat");
    }
    debug_assert_eq!(head.len() as u64, base);

    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges.iter().filter(|r| r.end > r.start) {
        match merged.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => merged.push(r.clone()),
        }
    }
    Ok(Some(Rewrite { head: head.freeze(), ranges: merged, tail: Bytes::new() }))
}
