//! MPEG-TS writer (ISO/IEC 13818-1) for HLS segments: one program, H.264 or H.265 video on
//! PID 0x100, AAC (ADTS) audio on PID 0x101, PMT on PID 0x1000.
//!
//! - Each file starts with PAT + PMT; they are repeated before every video keyframe and
//!   whenever the set of streams changes (the PMT version is bumped then).
//! - Timestamps are the frame's own, converted to 90 kHz (`pts = (dts + cts) * 90`) and
//!   wrapped to 33 bits. Nothing is rebased, so consecutive segments line up.
//! - The PCR rides on the video PID (the audio PID when there is no video), in the first packet
//!   of each PES, [`PCR_LEAD_MS`] before the frame's decode time, so every access unit (audio
//!   held in a batch, or sent late by its publisher, included) is in the decoder's buffer
//!   before it is decoded. The PCR only moves forward: frames sharing a decode time get PCRs one
//!   tick apart, a gap of more than [`MAX_PCR_INTERVAL_MS`] is filled with PCR-only packets
//!   (ISO/IEC 13818-1 §2.7.2 asks for at most 100 ms), and a jump of more than
//!   [`PCR_JUMP_MS`] either way is flagged as a discontinuity. At the very start of a stream
//!   the PCR is below zero: it wraps, as the 33-bit clock does.
//! - Video: AVCC/HVCC length prefixes become Annex-B start codes, an access unit delimiter
//!   opens every access unit, and the parameter sets of the last sequence header go in front of
//!   every keyframe (unless the frame carries its own).
//! - Audio: each raw AAC frame gets an ADTS header; contiguous frames share a PES (at most
//!   [`AUDIO_PES_MAX_FRAMES`] and 100 ms of audio) to cut packet overhead. Batched frames are
//!   written by a later push or by `finish`.
//!
//! This is the one writer that copies payload bytes: each byte is copied once, straight from
//! the frame into TS packets built in a reusable buffer.
//!
//! Consecutive segments of one playlist should be written by muxers chained with
//! [`TsMuxer::continue_from`] (or [`TsMuxer::reset_for_next_segment`]): continuity counters,
//! the PMT version and the codec configuration carry over, so the segments concatenate into a
//! valid stream.

use bytes::{BufMut, Bytes, BytesMut};

use super::aac::{AdtsConfig, ADTS_HEADER_LEN};
use super::{Chunks, MuxError, Muxer, Rewrite};
use crate::media::aac::AacConfig;
use crate::media::avc::{nal_units, AvcConfig, HevcConfig};
use crate::media::{Codec, Frame, FrameKind};

pub const PACKET_LEN: usize = 188;
const PAYLOAD_LEN: usize = PACKET_LEN - 4;
const SYNC: u8 = 0x47;

pub const PID_PAT: u16 = 0;
pub const PID_PMT: u16 = 0x1000;
pub const PID_VIDEO: u16 = 0x100;
pub const PID_AUDIO: u16 = 0x101;

pub const STREAM_TYPE_AAC: u8 = 0x0f;
pub const STREAM_TYPE_H264: u8 = 0x1b;
pub const STREAM_TYPE_HEVC: u8 = 0x24;

const STREAM_ID_VIDEO: u8 = 0xe0;
const STREAM_ID_AUDIO: u8 = 0xc0;
const PROGRAM_NUMBER: u16 = 1;
const TRANSPORT_STREAM_ID: u16 = 1;

/// PTS, DTS and PCR base are 33-bit counters of a 90 kHz clock.
const TS_MASK: u64 = (1 << 33) - 1;

/// How far the PCR runs ahead of the decode time of the PES that carries it: the time the
/// T-STD model gives a frame's bytes to arrive before they are decoded. It covers the audio a
/// PES batches (up to 100 ms) and publishers that send audio a few hundred ms behind video.
pub const PCR_LEAD_MS: i64 = 400;
/// Longest stream time between two PCRs before PCR-only packets fill the gap.
pub const MAX_PCR_INTERVAL_MS: i64 = 90;
/// A PCR step longer than this (forward or back) is a timeline discontinuity, not a gap.
pub const PCR_JUMP_MS: i64 = 1_000;

/// Most AAC frames batched into one PES. At common sample rates the 100 ms span limit binds
/// first (4 frames at 44.1 and 48 kHz).
pub const AUDIO_PES_MAX_FRAMES: usize = 5;
/// Most audio time one PES spans; keeps the PCR of audio-only streams within the 100 ms that
/// ISO/IEC 13818-1 asks for.
const AUDIO_PES_MAX_MS: f64 = 100.0;
/// A frame whose timestamp is further than this from where the batch expects it starts a new
/// PES (the decoder derives the timestamps of batched frames from the frame duration).
const AUDIO_JITTER_MS: f64 = 2.0;

/// Packets are built into blocks of at least this size; each push splits its packets off as
/// one chunk, so small frames share an allocation. A block lives until every chunk cut from
/// it is written: a live recorder writes about this much at a time, so no larger.
const BUF_BLOCK: usize = 16 * 1024;

fn reserve(buf: &mut BytesMut, n: usize) {
    if buf.capacity() - buf.len() < n {
        buf.reserve(n.max(BUF_BLOCK));
    }
}

// Continuity counter slots.
const CC_PAT: usize = 0;
const CC_PMT: usize = 1;
const CC_VIDEO: usize = 2;
const CC_AUDIO: usize = 3;

/// MPEG-2 CRC-32 (polynomial 0x04C11DB7, initial value all ones, no reflection, no final XOR),
/// as used by PSI sections. Running it over a section including its CRC yields 0.
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_MPEG_2);
    CRC.checksum(data)
}

/// Milliseconds to a 33-bit 90 kHz timestamp. Wrapping arithmetic keeps the result right
/// modulo 2^33 for any input.
fn ts90(ms: i64) -> u64 {
    (ms.wrapping_mul(90) as u64) & TS_MASK
}

/// A PCR value: the 90 kHz base (any integer, wrapped to 33 bits) and whether it starts a new
/// timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pcr {
    base: u64,
    discontinuity: bool,
}

/// The adaptation field's PCR bytes (base, 6 reserved bits, extension 0).
fn pcr_bytes(p: u64) -> [u8; 6] {
    [(p >> 25) as u8, (p >> 17) as u8, (p >> 9) as u8, (p >> 1) as u8, (((p & 1) as u8) << 7) | 0x7e, 0]
}

/// The 5-byte PTS/DTS field with its 4-bit prefix and marker bits.
fn put_timestamp(b: &mut [u8], prefix: u8, v: u64) {
    b[0] = (prefix << 4) | ((((v >> 30) & 7) as u8) << 1) | 1;
    b[1] = (v >> 22) as u8;
    b[2] = (((v >> 14) & 0xfe) as u8) | 1;
    b[3] = (v >> 7) as u8;
    b[4] = (((v << 1) & 0xfe) as u8) | 1;
}

/// A PES header: at most 19 bytes (PTS and DTS), returned with its length.
fn pes_header(stream_id: u8, pts: u64, dts: Option<u64>, payload_len: usize, bounded: bool) -> ([u8; 19], usize) {
    let mut h = [0u8; 19];
    h[2] = 1;
    h[3] = stream_id;
    let header_data = if dts.is_some() { 10 } else { 5 };
    // Video PES may leave the length at 0 (unbounded); audio must give it.
    let len = if bounded { 3 + header_data + payload_len } else { 0 };
    h[4] = (len >> 8) as u8;
    h[5] = len as u8;
    h[6] = 0x84; // '10', not scrambled, no priority, data_alignment_indicator
    h[7] = if dts.is_some() { 0xc0 } else { 0x80 };
    h[8] = header_data as u8;
    match dts {
        Some(d) => {
            put_timestamp(&mut h[9..14], 3, pts);
            put_timestamp(&mut h[14..19], 1, d);
        }
        None => put_timestamp(&mut h[9..14], 2, pts),
    }
    (h, 9 + header_data)
}

/// Writes one PES as TS packets, streaming the payload pieces straight into the buffer.
/// The total length must be known up front: the last packet is padded with adaptation field
/// stuffing in front of its payload.
struct PesWriter<'a> {
    buf: &'a mut BytesMut,
    pid: u16,
    cc: &'a mut u8,
    /// PES bytes not yet written.
    left: usize,
    /// Payload room left in the current packet.
    room: usize,
    pcr: Option<Pcr>,
    random_access: bool,
    packets: u64,
}

impl<'a> PesWriter<'a> {
    fn new(
        buf: &'a mut BytesMut,
        pid: u16,
        cc: &'a mut u8,
        total: usize,
        pcr: Option<Pcr>,
        random_access: bool,
    ) -> Self {
        reserve(buf, (total / PAYLOAD_LEN + 2) * PACKET_LEN);
        Self { buf, pid, cc, left: total, room: 0, pcr, random_access, packets: 0 }
    }

    fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.room == 0 {
                self.start_packet();
            }
            let n = self.room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            self.room -= n;
            self.left = self.left.saturating_sub(n);
            data = &data[n..];
        }
    }

    fn start_packet(&mut self) {
        let first = self.packets == 0;
        let pcr = if first { self.pcr } else { None };
        let rai = first && self.random_access;
        let needed = if pcr.is_some() {
            8
        } else if rai {
            2
        } else {
            0
        };
        // Stuff the packet that would otherwise be left short.
        let af = if self.left < PAYLOAD_LEN - needed { PAYLOAD_LEN - self.left } else { needed };
        self.buf.put_u8(SYNC);
        self.buf.put_u8(if first { 0x40 } else { 0 } | (self.pid >> 8) as u8);
        self.buf.put_u8(self.pid as u8);
        self.buf.put_u8(if af > 0 { 0x30 } else { 0x10 } | *self.cc);
        *self.cc = (*self.cc + 1) & 0x0f;
        if af == 1 {
            self.buf.put_u8(0);
        } else if af >= 2 {
            self.buf.put_u8((af - 1) as u8);
            let disc = pcr.is_some_and(|p| p.discontinuity);
            self.buf.put_u8(
                if disc { 0x80 } else { 0 } | if rai { 0x40 } else { 0 } | if pcr.is_some() { 0x10 } else { 0 },
            );
            let mut used = 2;
            if let Some(p) = pcr {
                self.buf.put_slice(&pcr_bytes(p.base));
                used += 6;
            }
            self.buf.put_bytes(0xff, af - used);
        }
        self.room = PAYLOAD_LEN - af;
        self.packets += 1;
    }

    /// Completes the last packet. The caller's length and the bytes written always agree; the
    /// padding only guards packet alignment if they ever did not.
    fn finish(self) {
        debug_assert_eq!((self.left, self.room), (0, 0), "PES length mismatch");
        self.buf.put_bytes(0xff, self.room);
    }
}

/// Appends one PSI section (PAT or PMT) as a single packet; `section` excludes the CRC.
fn put_section(buf: &mut BytesMut, pid: u16, cc: &mut u8, section: &[u8]) {
    reserve(buf, PACKET_LEN);
    let start = buf.len();
    buf.put_slice(&[SYNC, 0x40 | (pid >> 8) as u8, pid as u8, 0x10 | *cc, 0]);
    *cc = (*cc + 1) & 0x0f;
    buf.put_slice(section);
    buf.put_u32(crc32_mpeg2(section));
    let used = buf.len() - start;
    buf.put_bytes(0xff, PACKET_LEN - used);
}

/// What the PMT lists: the video stream type (if any) and whether there is audio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Streams {
    video: Option<u8>,
    audio: bool,
}

impl Streams {
    fn pcr_pid(self) -> u16 {
        if self.video.is_some() || !self.audio {
            PID_VIDEO
        } else {
            PID_AUDIO
        }
    }
}

#[derive(Clone, Debug)]
struct VideoTrack {
    codec: Codec,
    nal_length_size: u8,
    /// The parameter sets of the last sequence header, as Annex-B NAL units.
    params: Vec<u8>,
}

impl VideoTrack {
    fn from_frame(f: &Frame) -> Result<Self, MuxError> {
        let mut params = Vec::new();
        let mut put = |nal: &[u8]| {
            if !nal.is_empty() {
                params.extend_from_slice(&START_CODE);
                params.extend_from_slice(nal);
            }
        };
        let nal_length_size = match f.codec {
            Codec::H264 => {
                let c = AvcConfig::parse(f.payload_ref())?;
                c.sps.iter().chain(&c.pps).for_each(|n| put(n));
                c.nal_length_size
            }
            _ => {
                let c = HevcConfig::parse(f.payload_ref())?;
                // Decoding order: VPS, SPS, PPS, then prefix SEI.
                for ty in [HEVC_VPS, HEVC_SPS, HEVC_PPS, HEVC_PREFIX_SEI] {
                    c.arrays.iter().filter(|(t, _)| *t == ty).flat_map(|(_, units)| units).for_each(|n| put(n));
                }
                c.nal_length_size
            }
        };
        if !matches!(nal_length_size, 1 | 2 | 4) {
            return Err(MuxError::Invalid(format!("NAL length size {nal_length_size}")));
        }
        Ok(Self { codec: f.codec, nal_length_size, params })
    }

    fn stream_type(&self) -> u8 {
        if self.codec == Codec::Hevc {
            STREAM_TYPE_HEVC
        } else {
            STREAM_TYPE_H264
        }
    }
}

const START_CODE: [u8; 4] = [0, 0, 0, 1];
/// Annex-B access unit delimiters: H.264 primary_pic_type 7 (any slice), H.265 pic_type 2.
const AUD_H264: [u8; 6] = [0, 0, 0, 1, 0x09, 0xf0];
const AUD_HEVC: [u8; 7] = [0, 0, 0, 1, 0x46, 0x01, 0x50];

const H264_IDR: u8 = 5;
const H264_SPS: u8 = 7;
const H264_PPS: u8 = 8;
const H264_AUD: u8 = 9;
const HEVC_VPS: u8 = 32;
const HEVC_SPS: u8 = 33;
const HEVC_PPS: u8 = 34;
const HEVC_AUD: u8 = 35;
const HEVC_PREFIX_SEI: u8 = 39;

/// Time covered by the frames of one track in a file, in the stream's milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// Lowest presentation time.
    pub start_ms: i64,
    /// Highest presentation time plus that frame's duration (video: the last decode-time
    /// step; audio: 1024 samples).
    pub end_ms: i64,
    pub frames: u64,
}

impl Span {
    fn add(span: &mut Option<Span>, pts: i64, dur: i64) {
        let s = span.get_or_insert(Span { start_ms: pts, end_ms: pts, frames: 0 });
        s.start_ms = s.start_ms.min(pts);
        s.end_ms = s.end_ms.max(pts + dur);
        s.frames += 1;
    }
}

/// What a [`TsMuxer`] has written into the current file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TsStats {
    pub video: Option<Span>,
    /// Audio frames accepted (some may still be batched until the next push or `finish`).
    pub audio: Option<Span>,
    /// Bytes handed out so far (the file's length).
    pub bytes: u64,
}

impl TsStats {
    /// Start of the file: the video's first presentation time, or the audio's without video.
    pub fn start_ms(&self) -> Option<i64> {
        self.video.or(self.audio).map(|s| s.start_ms)
    }

    /// End of the file on the same track as [`TsStats::start_ms`].
    pub fn end_ms(&self) -> Option<i64> {
        self.video.or(self.audio).map(|s| s.end_ms)
    }

    /// `end_ms - start_ms`: the segment duration when no later segment follows. Between
    /// segments, prefer the difference of consecutive `start_ms`.
    pub fn duration_ms(&self) -> i64 {
        match (self.start_ms(), self.end_ms()) {
            (Some(s), Some(e)) => (e - s).max(0),
            _ => 0,
        }
    }
}

/// Writes one MPEG-TS file; see the module documentation.
pub struct TsMuxer {
    /// Packets are built here and split off as frozen chunks.
    buf: BytesMut,
    cc: [u8; 4],
    video: Option<VideoTrack>,
    audio: Option<AdtsConfig>,
    /// The PMT content last written (in this or an earlier segment) and its version.
    pmt: Option<Streams>,
    pmt_version: u8,
    /// PAT/PMT written in this file, and whether a PES followed them.
    psi_in_file: bool,
    pes_since_psi: bool,
    /// Pending audio frames: ADTS header and raw frame.
    batch: Vec<([u8; ADTS_HEADER_LEN], Bytes)>,
    /// Leading frames of `batch` already copied out of their frames by a drain.
    batch_owned: usize,
    batch_bytes: usize,
    batch_start_ms: i64,
    batch_next_ms: f64,
    last_video_dts: Option<i64>,
    video_frame_ms: i64,
    /// The last PCR written, in 90 kHz ticks before wrapping (below zero at a stream's start).
    last_pcr: Option<i64>,
    stats: TsStats,
}

impl Default for TsMuxer {
    fn default() -> Self {
        Self::new()
    }
}

impl TsMuxer {
    pub fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            cc: [0; 4],
            video: None,
            audio: None,
            pmt: None,
            pmt_version: 0,
            psi_in_file: false,
            pes_since_psi: false,
            batch: Vec::with_capacity(AUDIO_PES_MAX_FRAMES),
            batch_owned: 0,
            batch_bytes: 0,
            batch_start_ms: 0,
            batch_next_ms: 0.0,
            last_video_dts: None,
            video_frame_ms: 0,
            last_pcr: None,
            stats: TsStats::default(),
        }
    }

    /// A muxer for the next segment of the same playlist: continuity counters, PMT version,
    /// codec configuration (sequence headers need not be pushed again) and any audio frames
    /// still batched in `prev` carry over. Call `prev.finish()` first to close `prev`'s file
    /// with its batched audio.
    pub fn continue_from(prev: &TsMuxer) -> Self {
        Self {
            buf: BytesMut::new(),
            cc: prev.cc,
            video: prev.video.clone(),
            audio: prev.audio.clone(),
            pmt: prev.pmt,
            pmt_version: prev.pmt_version,
            psi_in_file: false,
            pes_since_psi: false,
            batch: prev.batch.clone(),
            batch_owned: prev.batch_owned,
            batch_bytes: prev.batch_bytes,
            batch_start_ms: prev.batch_start_ms,
            batch_next_ms: prev.batch_next_ms,
            last_video_dts: prev.last_video_dts,
            video_frame_ms: prev.video_frame_ms,
            last_pcr: prev.last_pcr,
            stats: TsStats::default(),
        }
    }

    /// In-place [`TsMuxer::continue_from`]: after `finish`, readies this muxer for the next
    /// segment of the playlist.
    pub fn reset_for_next_segment(&mut self) {
        *self = Self::continue_from(self);
    }

    /// What the current file holds so far.
    pub fn stats(&self) -> TsStats {
        self.stats
    }

    fn streams(&self) -> Streams {
        Streams { video: self.video.as_ref().map(VideoTrack::stream_type), audio: self.audio.is_some() }
    }

    /// PAT and PMT at the start of a file, before keyframes, and when the streams change.
    fn write_psi(&mut self, keyframe: bool) {
        let streams = self.streams();
        let changed = self.pmt != Some(streams);
        if changed && self.pmt.is_some() {
            self.pmt_version = (self.pmt_version + 1) & 0x1f;
        }
        if !(changed || !self.psi_in_file || (keyframe && self.pes_since_psi)) {
            return;
        }
        // PAT: one program.
        let mut pat = [0u8; 12];
        pat[0] = 0x00;
        pat[1] = 0xb0;
        pat[2] = 13; // section length: 9 bytes after it + 4-byte CRC
        pat[3..5].copy_from_slice(&TRANSPORT_STREAM_ID.to_be_bytes());
        pat[5] = 0xc1; // version 0, current
        pat[8..10].copy_from_slice(&PROGRAM_NUMBER.to_be_bytes());
        pat[10] = 0xe0 | (PID_PMT >> 8) as u8;
        pat[11] = PID_PMT as u8;
        put_section(&mut self.buf, PID_PAT, &mut self.cc[CC_PAT], &pat);

        // PMT: the PCR PID and up to two elementary streams, no descriptors.
        let mut pmt = [0u8; 22];
        let mut n = 12;
        let pcr_pid = streams.pcr_pid();
        pmt[0] = 0x02;
        pmt[3..5].copy_from_slice(&PROGRAM_NUMBER.to_be_bytes());
        pmt[5] = 0xc1 | (self.pmt_version << 1);
        pmt[8] = 0xe0 | (pcr_pid >> 8) as u8;
        pmt[9] = pcr_pid as u8;
        pmt[10] = 0xf0;
        let es = [(streams.video, PID_VIDEO), (streams.audio.then_some(STREAM_TYPE_AAC), PID_AUDIO)];
        for (ty, pid) in es {
            if let Some(ty) = ty {
                pmt[n..n + 5].copy_from_slice(&[ty, 0xe0 | (pid >> 8) as u8, pid as u8, 0xf0, 0]);
                n += 5;
            }
        }
        let section_len = n - 3 + 4;
        pmt[1] = 0xb0 | (section_len >> 8) as u8;
        pmt[2] = section_len as u8;
        put_section(&mut self.buf, PID_PMT, &mut self.cc[CC_PMT], &pmt[..n]);

        self.pmt = Some(streams);
        self.psi_in_file = true;
        self.pes_since_psi = false;
    }

    fn push_video(&mut self, f: &Frame) -> Result<(), MuxError> {
        match f.codec {
            Codec::H264 | Codec::Hevc => {}
            Codec::Other if is_avc_or_hevc_control(f) => return Ok(()),
            c => return Err(MuxError::UnsupportedCodec { container: "ts", codec: c.name() }),
        }
        if f.config {
            self.video = Some(VideoTrack::from_frame(f)?);
            return Ok(());
        }
        let track = match &self.video {
            Some(t) if t.codec == f.codec => t,
            _ => {
                return Err(MuxError::Invalid(format!("{} frame before its sequence header", f.codec.name())));
            }
        };
        let hevc = f.codec == Codec::Hevc;
        let ls = track.nal_length_size;
        let sample = f.payload_ref();
        let nal_type = |n: &[u8]| if hevc { (n[0] >> 1) & 0x3f } else { n[0] & 0x1f };

        // First pass: validate the length prefixes and size the PES.
        let aud: &[u8] = if hevc { &AUD_HEVC } else { &AUD_H264 };
        let (mut consumed, mut body, mut irap, mut has_params) = (0, aud.len(), false, false);
        for nal in nal_units(sample, ls) {
            consumed += usize::from(ls) + nal.len();
            if nal.is_empty() {
                continue;
            }
            match (hevc, nal_type(nal)) {
                (false, H264_AUD) | (true, HEVC_AUD) => continue,
                (false, H264_IDR) | (true, 16..=23) => irap = true,
                (false, H264_SPS | H264_PPS) | (true, HEVC_VPS | HEVC_SPS | HEVC_PPS) => has_params = true,
                _ => {}
            }
            body += START_CODE.len() + nal.len();
        }
        if consumed != sample.len() {
            return Err(MuxError::Invalid(format!(
                "{} frame at {} ms: NAL unit lengths do not add up to the {} byte sample",
                f.codec.name(),
                f.dts,
                sample.len()
            )));
        }
        if body == aud.len() {
            return Ok(());
        }
        let key = f.keyframe || irap;
        let inject = key && !has_params;
        if inject {
            body += track.params.len();
        }

        // Batched audio that this frame's clock would overtake (a timeline jump, audio far
        // behind) goes first.
        if !self.batch.is_empty() && self.batch_start_ms < f.dts - PCR_LEAD_MS {
            self.flush_audio();
        }
        self.write_psi(key);
        let pts = ts90(f.pts());
        let dts = ts90(f.dts);
        let (hdr, hl) = pes_header(STREAM_ID_VIDEO, pts, (pts != dts).then_some(dts), body, false);
        let pcr = (self.streams().pcr_pid() == PID_VIDEO).then(|| self.next_pcr(PID_VIDEO, f.dts));
        let Self { buf, cc, video, .. } = self;
        let Some(track) = video.as_ref() else { return Ok(()) };
        let mut w = PesWriter::new(buf, PID_VIDEO, &mut cc[CC_VIDEO], hl + body, pcr, key);
        w.write(&hdr[..hl]);
        w.write(aud);
        if inject {
            w.write(&track.params);
        }
        for nal in nal_units(sample, ls) {
            if nal.is_empty() || matches!((hevc, nal_type(nal)), (false, H264_AUD) | (true, HEVC_AUD)) {
                continue;
            }
            w.write(&START_CODE);
            w.write(nal);
        }
        w.finish();
        self.pes_since_psi = true;

        if let Some(prev) = self.last_video_dts {
            if f.dts > prev {
                self.video_frame_ms = f.dts - prev;
            }
        }
        self.last_video_dts = Some(f.dts);
        Span::add(&mut self.stats.video, f.pts(), self.video_frame_ms);
        Ok(())
    }

    fn push_audio(&mut self, f: &Frame) -> Result<(), MuxError> {
        if f.codec != Codec::Aac {
            return Err(MuxError::UnsupportedCodec { container: "ts", codec: f.codec.name() });
        }
        if f.config {
            let cfg = AdtsConfig::new(AacConfig::parse(f.payload_ref())?, "ts")?;
            if self.audio.as_ref() != Some(&cfg) {
                // Batched frames take the header of the config they were coded with.
                self.flush_audio();
                self.audio = Some(cfg);
            }
            return Ok(());
        }
        let Some(cfg) = &self.audio else {
            return Err(MuxError::Invalid("AAC frame before its AudioSpecificConfig".into()));
        };
        let payload = f.payload();
        if payload.is_empty() {
            return Ok(());
        }
        let header = cfg.header(payload.len())?;
        let dur = cfg.frame_ms();
        let pts = f.pts();
        if !self.batch.is_empty()
            && (self.batch.len() >= AUDIO_PES_MAX_FRAMES
                || (pts as f64 - self.batch_next_ms).abs() > AUDIO_JITTER_MS
                || pts as f64 + dur - self.batch_start_ms as f64 > AUDIO_PES_MAX_MS)
        {
            self.flush_audio();
        }
        if self.batch.is_empty() {
            self.batch_start_ms = pts;
            self.batch_next_ms = pts as f64;
        }
        self.batch_bytes += ADTS_HEADER_LEN + payload.len();
        self.batch.push((header, payload));
        self.batch_next_ms += dur;
        Span::add(&mut self.stats.audio, pts, dur.round() as i64);
        if self.batch.len() >= AUDIO_PES_MAX_FRAMES {
            self.flush_audio();
        }
        Ok(())
    }

    /// Writes the batched audio frames as one PES.
    fn flush_audio(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        self.write_psi(false);
        let streams = self.streams();
        let pts = ts90(self.batch_start_ms);
        // At most AUDIO_PES_MAX_FRAMES frames of at most 8191 bytes: within the 16-bit length.
        let (hdr, hl) = pes_header(STREAM_ID_AUDIO, pts, None, self.batch_bytes, true);
        let audio_clock = streams.pcr_pid() == PID_AUDIO;
        let pcr = if audio_clock {
            Some(self.next_pcr(PID_AUDIO, self.batch_start_ms))
        } else {
            // The video PID keeps the clock: fill a long wait for the next video frame.
            self.fill_pcr_gap(PID_VIDEO, self.batch_start_ms);
            None
        };
        let mut w =
            PesWriter::new(&mut self.buf, PID_AUDIO, &mut self.cc[CC_AUDIO], hl + self.batch_bytes, pcr, audio_clock);
        w.write(&hdr[..hl]);
        for (h, raw) in self.batch.drain(..) {
            w.write(&h);
            w.write(&raw);
        }
        w.finish();
        self.batch_bytes = 0;
        self.batch_owned = 0;
        self.pes_since_psi = true;
    }

    /// The PCR for a PES on `pid` decoded at `dts_ms`: [`PCR_LEAD_MS`] before it, never at or
    /// behind the last one (unless the timeline jumped), gaps filled first.
    fn next_pcr(&mut self, pid: u16, dts_ms: i64) -> Pcr {
        let target = (dts_ms - PCR_LEAD_MS) * 90;
        let jump = PCR_JUMP_MS * 90;
        let (t, discontinuity) = match self.last_pcr {
            None => (target, false),
            Some(last) if target - last > jump || last - target > jump => (target, true),
            Some(last) if target <= last => (last + 1, false),
            Some(_) => {
                self.fill_pcr_gap(pid, dts_ms);
                (target, false)
            }
        };
        self.last_pcr = Some(t);
        Pcr { base: (t as u64) & TS_MASK, discontinuity }
    }

    /// Writes PCR-only packets on `pid` so that no two PCRs are more than
    /// [`MAX_PCR_INTERVAL_MS`] apart up to the PCR a PES decoded at `dts_ms` would get.
    /// Nothing for a jump (that is a discontinuity) or before the first PCR.
    fn fill_pcr_gap(&mut self, pid: u16, dts_ms: i64) {
        let Some(mut last) = self.last_pcr else { return };
        let target = (dts_ms - PCR_LEAD_MS) * 90;
        let step = MAX_PCR_INTERVAL_MS * 90;
        if target - last > PCR_JUMP_MS * 90 {
            return;
        }
        let cc_slot = if pid == PID_VIDEO { CC_VIDEO } else { CC_AUDIO };
        while target - last > step {
            last += step;
            // Adaptation field only: the continuity counter stays that of the PID's last packet.
            reserve(&mut self.buf, PACKET_LEN);
            let cc = self.cc[cc_slot].wrapping_sub(1) & 0x0f;
            self.buf.put_slice(&[SYNC, (pid >> 8) as u8, pid as u8, 0x20 | cc, 183, 0x10]);
            self.buf.put_slice(&pcr_bytes((last as u64) & TS_MASK));
            self.buf.put_bytes(0xff, PACKET_LEN - 4 - 2 - 6);
        }
        self.last_pcr = Some(last);
    }

    fn emit(&mut self, out: &mut Chunks) {
        if !self.buf.is_empty() {
            self.stats.bytes += self.buf.len() as u64;
            out.push(self.buf.split().freeze());
        }
    }
}

/// An H.264/H.265 tag that carries no picture (end of sequence, command frame): parse_tag
/// marks these `Codec::Other`; they are dropped rather than refused.
fn is_avc_or_hevc_control(f: &Frame) -> bool {
    match f.tag.first() {
        Some(b0) if b0 & 0x80 != 0 => matches!(f.tag.get(1..5), Some(b"avc1" | b"hvc1")),
        Some(b0) => matches!(b0 & 0x0f, 7 | 12),
        None => false,
    }
}

impl Muxer for TsMuxer {
    fn container(&self) -> &'static str {
        "ts"
    }

    /// Errors leave the muxer consistent: the offending frame is not written, and a caller
    /// may go on pushing.
    fn push(&mut self, f: &Frame, out: &mut Chunks) -> Result<(), MuxError> {
        let r = match f.kind {
            FrameKind::Data => Ok(()),
            FrameKind::Video => self.push_video(f),
            FrameKind::Audio => self.push_audio(f),
        };
        self.emit(out);
        r
    }

    fn finish(&mut self, out: &mut Chunks) -> Result<Option<Rewrite>, MuxError> {
        self.flush_audio();
        self.emit(out);
        Ok(None)
    }

    /// Audio frames waiting for their PES are copied out of their frames, so they do not keep
    /// the read block of the frames just written alive (a few hundred bytes each).
    fn drain(&mut self, _out: &mut Chunks) -> Result<(), MuxError> {
        for (_, b) in &mut self.batch[self.batch_owned..] {
            *b = Bytes::copy_from_slice(b);
        }
        self.batch_owned = self.batch.len();
        Ok(())
    }

    fn next_segment(&mut self) {
        self.reset_for_next_segment();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::flv::{parse_tag, TAG_AUDIO, TAG_VIDEO};
    use reel_test_support::ts::{demux, Demuxed};

    // SPS/PPS of a 320x240 High profile stream made by libx264.
    const AVC_RECORD: &[u8] = &[
        0x01, 0x64, 0x00, 0x0d, 0xff, 0xe1, 0x00, 0x19, 0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01,
        0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99, 0x60, 0x01, 0x00, 0x06,
        0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0,
    ];

    fn avc_config_frame() -> Frame {
        let mut tag = vec![0x17, 0, 0, 0, 0];
        tag.extend_from_slice(AVC_RECORD);
        parse_tag(TAG_VIDEO, 0, Bytes::from(tag)).unwrap()
    }

    fn avc_frame(dts: i64, cts: i32, key: bool, nals: &[&[u8]]) -> Frame {
        let c = cts.to_be_bytes();
        let mut tag = vec![if key { 0x17 } else { 0x27 }, 1, c[1], c[2], c[3]];
        for n in nals {
            tag.extend_from_slice(&(n.len() as u32).to_be_bytes());
            tag.extend_from_slice(n);
        }
        parse_tag(TAG_VIDEO, dts, Bytes::from(tag)).unwrap()
    }

    fn aac_config_frame() -> Frame {
        parse_tag(TAG_AUDIO, 0, Bytes::from_static(&[0xaf, 0, 0x12, 0x10])).unwrap()
    }

    fn aac_frame(dts: i64, len: usize) -> Frame {
        let mut tag = vec![0xaf, 1];
        tag.extend((0..len).map(|i| i as u8));
        parse_tag(TAG_AUDIO, dts, Bytes::from(tag)).unwrap()
    }

    fn mux(m: &mut TsMuxer, frames: &[Frame]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            m.push(f, &mut out).unwrap();
        }
        m.finish(&mut out).unwrap();
        out.iter().flat_map(|b| b.iter().copied()).collect()
    }

    /// The PCR a PES decoded at `ms` carries: [`PCR_LEAD_MS`] before it, on the 33-bit clock.
    fn pcr_at(ms: i64) -> u64 {
        (((ms - PCR_LEAD_MS) * 90) as u64) & TS_MASK
    }

    fn read_ts(b: &[u8]) -> u64 {
        assert_eq!(b[0] & 1, 1);
        assert_eq!(b[2] & 1, 1);
        assert_eq!(b[4] & 1, 1);
        (u64::from(b[0] >> 1) & 7) << 30
            | u64::from(b[1]) << 22
            | u64::from(b[2] >> 1) << 15
            | u64::from(b[3]) << 7
            | u64::from(b[4] >> 1)
    }

    /// (stream id, PTS, DTS, payload) of a PES; checks the declared length if there is one.
    fn parse_pes(b: &[u8]) -> (u8, u64, Option<u64>, &[u8]) {
        assert_eq!(&b[..3], &[0, 0, 1]);
        let len = usize::from(u16::from_be_bytes([b[4], b[5]]));
        if len != 0 {
            assert_eq!(len, b.len() - 6, "PES_packet_length");
        }
        let flags = b[7] >> 6;
        let hl = usize::from(b[8]);
        let pts = read_ts(&b[9..14]);
        assert_eq!(b[9] >> 4, if flags == 3 { 3 } else { 2 });
        let dts = (flags == 3).then(|| {
            assert_eq!(b[14] >> 4, 1);
            read_ts(&b[14..19])
        });
        (b[3], pts, dts, &b[9 + hl..])
    }

    /// Signed difference `a - b` on the 33-bit clock.
    fn clock_diff(a: u64, b: u64) -> i64 {
        let d = (a.wrapping_sub(b)) & TS_MASK;
        if d >= 1 << 32 {
            d as i64 - (1 << 33)
        } else {
            d as i64
        }
    }

    /// The timing rules a strict validator checks (ISO/IEC 13818-1 2.7.2 and the T-STD): PCRs
    /// only move forward, at most 100 ms apart, unless flagged as a discontinuity; every PES is
    /// complete before its decode time by the clock. Returns (PCRs, PCR-only packets, least lead
    /// in ms of any PES).
    fn check_timing(d: &Demuxed) -> (usize, usize, f64) {
        assert!(!d.pcrs.is_empty(), "a PCR");
        for w in d.pcrs.windows(2) {
            let ((_, _, a, _), (_, _, b, disc)) = (w[0], w[1]);
            if disc {
                continue;
            }
            let step = clock_diff(b, a);
            assert!(step > 0, "PCR {b} does not move on from {a}");
            assert!(step <= 9000, "PCR gap of {} ms after {a}", step as f64 / 90.0);
        }
        let mut least = f64::MAX;
        for ((pid, pes, _, _), &end) in d.pes.iter().zip(&d.pes_end) {
            let (_, pts, dts, _) = parse_pes(pes);
            let dts = dts.unwrap_or(pts);
            let Some(&(_, _, pcr, _)) = d.pcrs.iter().rev().find(|(at, _, _, _)| *at <= end) else { continue };
            let lead = clock_diff(dts, pcr);
            assert!(lead >= 0, "PID {pid:#x}: DTS {dts} before the PCR {pcr} at its last byte");
            least = least.min(lead as f64 / 90.0);
        }
        (d.pcrs.len(), d.pcr_only, least)
    }

    /// 25 fps video (B-frame offsets) and 44.1 kHz audio, audio sent `audio_late_ms` behind.
    fn interleaved(video_ms: &[i64], audio_late_ms: i64, secs: i64) -> Vec<Frame> {
        let mut frames: Vec<(i64, Frame)> = Vec::new();
        for (i, &t) in video_ms.iter().enumerate() {
            frames.push((t, avc_frame(t, 80, i % 50 == 0, &[&[0x41, 1, 2, 3]])));
        }
        for k in 0..secs * 44100 / 1024 {
            let t = k * 1024 * 1000 / 44100;
            frames.push((t + audio_late_ms, aac_frame(t, 200)));
        }
        frames.sort_by_key(|(sent, _)| *sent);
        let mut v = vec![avc_config_frame(), aac_config_frame()];
        v.extend(frames.into_iter().map(|(_, f)| f));
        v
    }

    #[test]
    fn no_output_chunk_is_a_slice_of_a_frame() {
        let video: Vec<i64> = (0..100).map(|i| i * 40).collect();
        let frames = interleaved(&video, 67, 4);
        let mut m = TsMuxer::new();
        let mut out = Vec::new();
        for f in &frames {
            m.push(f, &mut out).unwrap();
            m.drain(&mut out).unwrap();
        }
        m.finish(&mut out).unwrap();
        assert!(out.len() > 10);
        for c in &out {
            let inside = |f: &Frame| f.tag.as_ptr_range().contains(&c.as_ptr());
            assert!(!frames.iter().any(inside), "a chunk points into a frame");
        }
    }

    #[test]
    fn the_clock_leads_every_access_unit_even_when_audio_comes_late() {
        let video: Vec<i64> = (0..250).map(|i| i * 40).collect();
        for late in [0, 67, 150, 250] {
            let ts = mux(&mut TsMuxer::new(), &interleaved(&video, late, 10));
            let (pcrs, _, least) = check_timing(&demux(&ts, &mut Default::default()));
            assert!(pcrs >= 250, "{pcrs}");
            assert!(least >= 0.0, "audio {late} ms late: least lead {least} ms");
        }
    }

    #[test]
    fn frames_sharing_a_decode_time_get_pcrs_that_still_move_on() {
        // GStreamer's rtmp2sink: the first three frames all at decode time 0.
        let video: Vec<i64> = [0, 0, 0].into_iter().chain((1..300).map(|i| i * 33)).collect();
        let ts = mux(&mut TsMuxer::new(), &interleaved(&video, 0, 10));
        check_timing(&demux(&ts, &mut Default::default()));
    }

    #[test]
    fn a_slow_frame_rate_is_filled_with_pcr_only_packets() {
        // 4 fps video: frames 250 ms apart, audio in between.
        let video: Vec<i64> = (0..40).map(|i| i * 250).collect();
        let ts = mux(&mut TsMuxer::new(), &interleaved(&video, 0, 10));
        let (_, pcr_only, _) = check_timing(&demux(&ts, &mut Default::default()));
        assert!(pcr_only >= 40 * 2, "{pcr_only} PCR-only packets");
    }

    #[test]
    fn a_timestamp_jump_is_a_flagged_discontinuity_and_segments_continue_the_clock() {
        let mut frames = interleaved(&(0..100).map(|i| i * 40).collect::<Vec<_>>(), 0, 4);
        frames.push(avc_frame(500_000, 80, true, &[&[0x41, 9]]));
        frames.push(avc_frame(500_040, 80, false, &[&[0x41, 9]]));
        let d = demux(&mux(&mut TsMuxer::new(), &frames), &mut Default::default());
        check_timing(&d);
        assert_eq!(d.pcrs.iter().filter(|p| p.3).count(), 1, "one discontinuity");
        // Two segments of one playlist: the clock carries on, as one stream.
        let mut m = TsMuxer::new();
        let mut out = Vec::new();
        let frames = interleaved(&(0..250).map(|i| i * 40).collect::<Vec<_>>(), 0, 10);
        let (a, b) = frames.split_at(frames.len() / 2);
        for f in a {
            m.push(f, &mut out).unwrap();
        }
        m.finish(&mut out).unwrap();
        m.next_segment();
        for f in b {
            m.push(f, &mut out).unwrap();
        }
        m.finish(&mut out).unwrap();
        let all: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        check_timing(&demux(&all, &mut Default::default()));
    }

    #[test]
    fn audio_only_keeps_its_own_clock() {
        let mut frames = vec![aac_config_frame()];
        frames.extend((0..400).map(|k| aac_frame(k * 1024 * 1000 / 48000, 100)));
        let (pcrs, _, _) = check_timing(&demux(&mux(&mut TsMuxer::new(), &frames), &mut Default::default()));
        assert!(pcrs >= 85, "{pcrs}");
    }

    #[test]
    fn crc32_mpeg2_check_value() {
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_e6e7);
    }

    #[test]
    fn psi_sections_have_valid_crc_and_list_the_streams() {
        let mut m = TsMuxer::new();
        let ts = mux(
            &mut m,
            &[avc_config_frame(), aac_config_frame(), avc_frame(0, 0, true, &[&[0x65, 1, 2]]), aac_frame(0, 10)],
        );
        let d = demux(&ts, &mut Default::default());
        assert_eq!(d.sections.len(), 2);
        let (pat_pid, pat) = &d.sections[0];
        let (pmt_pid, pmt) = &d.sections[1];
        assert_eq!((*pat_pid, *pmt_pid), (PID_PAT, PID_PMT));
        assert_eq!(crc32_mpeg2(pat), 0);
        assert_eq!(crc32_mpeg2(pmt), 0);
        assert_eq!(pat, &[0x00, 0xb0, 13, 0, 1, 0xc1, 0, 0, 0, 1, 0xf0, 0x00, 0x2a, 0xb1, 0x04, 0xb2]);
        assert_eq!(&pmt[..12], &[0x02, 0xb0, 23, 0, 1, 0xc1, 0, 0, 0xe1, 0x00, 0xf0, 0]);
        assert_eq!(&pmt[12..22], &[0x1b, 0xe1, 0x00, 0xf0, 0, 0x0f, 0xe1, 0x01, 0xf0, 0]);
    }

    #[test]
    fn packets_are_188_bytes_with_continuous_counters_for_every_payload_size() {
        // Sizes around the single-packet edges (183/184 bytes of payload), with and without
        // the 8-byte PCR adaptation field.
        let mut m = TsMuxer::new();
        let mut frames = vec![avc_config_frame(), aac_config_frame()];
        for (i, n) in (1..420).enumerate() {
            let nal: Vec<u8> = std::iter::once(0x41).chain((0..n).map(|b| b as u8)).collect();
            frames.push(avc_frame(i as i64 * 40, 0, i % 50 == 0, &[&nal]));
            frames.push(aac_frame(i as i64 * 40, n % 300 + 1));
        }
        let ts = mux(&mut m, &frames);
        let d = demux(&ts, &mut Default::default());
        let video: Vec<_> = d.pes.iter().filter(|p| p.0 == PID_VIDEO).collect();
        assert_eq!(video.len(), 419);
        for (i, (_, pes, rai, pcr)) in video.iter().enumerate() {
            let (sid, pts, dts, es) = parse_pes(pes);
            assert_eq!(sid, STREAM_ID_VIDEO);
            assert_eq!(pts, i as u64 * 40 * 90);
            assert_eq!(dts, None);
            assert_eq!(*rai, i % 50 == 0);
            assert_eq!(*pcr, Some(pcr_at(i as i64 * 40)));
            let body_len = i + 1 + 1;
            let params = if *rai { 4 + 25 + 4 + 6 } else { 0 };
            assert_eq!(es.len(), 6 + params + 4 + body_len, "frame {i}");
        }
        let audio: Vec<_> = d.pes.iter().filter(|p| p.0 == PID_AUDIO).collect();
        for (_, pes, rai, pcr) in &audio {
            assert!(!rai && pcr.is_none(), "no PCR on audio when there is video");
            let (sid, _, dts, _) = parse_pes(pes);
            assert_eq!((sid, dts), (STREAM_ID_AUDIO, None));
        }
        // PAT/PMT again before each keyframe after the first.
        assert_eq!(d.sections.len(), 2 * 9);
        assert_eq!(m.stats().bytes as usize, ts.len());
    }

    #[test]
    fn annex_b_with_aud_and_parameter_sets_before_idr() {
        let mut m = TsMuxer::new();
        let sei: &[u8] = &[0x06, 5, 1, 0x80];
        let idr: &[u8] = &[0x65, 0x88, 0x84];
        let p: &[u8] = &[0x41, 0x9a, 0x02];
        let ts = mux(
            &mut m,
            &[avc_config_frame(), avc_frame(0, 80, true, &[&[0x09, 0x10], sei, idr]), avc_frame(40, 120, false, &[p])],
        );
        let d = demux(&ts, &mut Default::default());
        let (_, pts, dts, es) = parse_pes(&d.pes[0].1);
        assert_eq!((pts, dts), (80 * 90, Some(0)));
        let mut want = vec![0, 0, 0, 1, 0x09, 0xf0];
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(&AVC_RECORD[8..8 + 25]);
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(&AVC_RECORD[36..42]);
        for n in [sei, idr] {
            want.extend_from_slice(&[0, 0, 0, 1]);
            want.extend_from_slice(n);
        }
        assert_eq!(es, &want[..], "the source AUD is replaced, SPS/PPS precede SEI and IDR");
        let (_, pts, dts, es) = parse_pes(&d.pes[1].1);
        assert_eq!((pts, dts), (160 * 90, Some(40 * 90)));
        assert_eq!(es, &[0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x41, 0x9a, 0x02]);
    }

    #[test]
    fn in_band_parameter_sets_are_not_duplicated() {
        let mut m = TsMuxer::new();
        let ts = mux(&mut m, &[avc_config_frame(), avc_frame(0, 0, true, &[&[0x67, 1], &[0x68, 2], &[0x65, 3]])]);
        let d = demux(&ts, &mut Default::default());
        let (_, _, _, es) = parse_pes(&d.pes[0].1);
        assert_eq!(es, &[0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x67, 1, 0, 0, 0, 1, 0x68, 2, 0, 0, 0, 1, 0x65, 3]);
    }

    #[test]
    fn b_frame_timestamps_negative_cts_and_33_bit_wrap() {
        let wrap_ms = (1i64 << 33) / 90; // 95443717 ms: the 90 kHz clock wraps just after this
        let mut m = TsMuxer::new();
        let frames = [
            avc_config_frame(),
            avc_frame(1000, 80, true, &[&[0x65, 1]]),
            avc_frame(1040, -40, false, &[&[0x01, 2]]), // pts before dts: kept as given
            avc_frame(wrap_ms - 10, 40, false, &[&[0x41, 3]]),
            avc_frame(-5, 0, false, &[&[0x41, 4]]),
        ];
        let ts = mux(&mut m, &frames);
        let d = demux(&ts, &mut Default::default());
        let got: Vec<_> = d.pes.iter().map(|p| parse_pes(&p.1)).map(|(_, p, d, _)| (p, d)).collect();
        assert_eq!(
            got,
            vec![
                (1080 * 90, Some(1000 * 90)),
                (1000 * 90, Some(1040 * 90)),
                (((wrap_ms + 30) * 90) as u64 & TS_MASK, Some(((wrap_ms - 10) * 90) as u64)),
                ((1u64 << 33) - 450, None),
            ]
        );
        assert_eq!(ts90(wrap_ms + 30), 30 * 90 - ((1 << 33) - wrap_ms as u64 * 90));
    }

    #[test]
    fn a_drain_copies_the_batched_audio_out_of_its_frames_and_changes_no_byte() {
        let mut frames = vec![aac_config_frame()];
        frames.extend((0..12).map(|i| aac_frame((i as f64 * 23.22).round() as i64, 100 + i)));
        let plain = mux(&mut TsMuxer::new(), &frames);
        let mut m = TsMuxer::new();
        let mut out = Vec::new();
        for f in &frames {
            m.push(f, &mut out).unwrap();
            m.drain(&mut out).unwrap();
            let pinned = m.batch.iter().any(|(_, b)| frames.iter().any(|f| f.tag.as_ptr_range().contains(&b.as_ptr())));
            assert!(!pinned, "a batched frame still points into its frame after a drain");
        }
        m.finish(&mut out).unwrap();
        assert_eq!(out.iter().flat_map(|b| b.iter().copied()).collect::<Vec<_>>(), plain);
    }

    #[test]
    fn audio_frames_are_batched_into_adts_pes_with_audio_pcr_when_audio_only() {
        let mut m = TsMuxer::new();
        // 44.1 kHz: 1024 samples = 23.22 ms. A gap after the 7th frame starts a new PES.
        let mut frames = vec![aac_config_frame()];
        frames.extend((0..7).map(|i| aac_frame((i as f64 * 23.22).round() as i64, 100 + i)));
        frames.push(aac_frame(1000, 50));
        let ts = mux(&mut m, &frames);
        let d = demux(&ts, &mut Default::default());
        let pmt = &d.sections[1].1;
        assert_eq!(u16::from_be_bytes([pmt[8] & 0x1f, pmt[9]]), PID_AUDIO, "PCR on the audio PID");
        assert_eq!(pmt[12], STREAM_TYPE_AAC);
        assert_eq!(d.pes.len(), 3);
        let counts: Vec<usize> = d
            .pes
            .iter()
            .map(|(_, pes, rai, pcr)| {
                assert!(rai);
                let (_, pts, _, es) = parse_pes(pes);
                assert_eq!(*pcr, Some(pcr_at(pts as i64 / 90)));
                // Walk the ADTS frames.
                let (mut pos, mut n) = (0, 0);
                while pos < es.len() {
                    assert_eq!(&es[pos..pos + 2], &[0xff, 0xf1]);
                    pos += (usize::from(es[pos + 3] & 3) << 11)
                        | (usize::from(es[pos + 4]) << 3)
                        | usize::from(es[pos + 5] >> 5);
                    n += 1;
                }
                assert_eq!(pos, es.len());
                n
            })
            .collect();
        // 4 frames span 92.9 ms; a fifth would take the PES past 100 ms.
        assert_eq!(counts, vec![4, 3, 1]);
        let (_, pts, _, es) = parse_pes(&d.pes[1].1);
        assert_eq!(pts, 93 * 90);
        assert_eq!(&es[7..10], &[0, 1, 2]);
        let s = m.stats().audio.unwrap();
        assert_eq!((s.start_ms, s.end_ms, s.frames), (0, 1023, 8));
    }

    #[test]
    fn continuity_counters_carry_across_segments() {
        let mut cc = std::collections::HashMap::new();
        let mut m = TsMuxer::new();
        for seg in 0..4i64 {
            let mut frames = Vec::new();
            if seg == 0 {
                frames.extend([avc_config_frame(), aac_config_frame()]);
            }
            for i in 0..10 {
                let t = seg * 400 + i * 40;
                frames.push(avc_frame(t, 0, i == 0, &[&[if i == 0 { 0x65 } else { 0x41 }; 300]]));
                frames.push(aac_frame(t, 200));
            }
            let ts = mux(&mut m, &frames);
            let d = demux(&ts, &mut cc);
            assert_eq!(d.sections.len(), 2, "each segment starts with PAT/PMT");
            assert_eq!(&ts[..4], &[SYNC, 0x40, 0, 0x10 | (seg as u8 & 0xf)]);
            let st = m.stats();
            assert_eq!(st.start_ms(), Some(seg * 400));
            assert_eq!(st.end_ms(), Some(seg * 400 + 400));
            assert_eq!(st.bytes as usize, ts.len());
            m.reset_for_next_segment();
        }
        let chained = TsMuxer::continue_from(&m);
        assert_eq!(chained.cc, m.cc);
    }

    #[test]
    fn unsupported_codecs_are_refused_and_control_tags_skipped() {
        let mut m = TsMuxer::new();
        let mut out = Vec::new();
        let av1 = parse_tag(TAG_VIDEO, 0, Bytes::from_static(&[0x91, b'a', b'v', b'0', b'1', 1, 2])).unwrap();
        assert!(matches!(m.push(&av1, &mut out), Err(MuxError::UnsupportedCodec { container: "ts", codec: "av1" })));
        let vp6 = parse_tag(TAG_VIDEO, 0, Bytes::from_static(&[0x14, 0, 0])).unwrap();
        assert!(matches!(m.push(&vp6, &mut out), Err(MuxError::UnsupportedCodec { codec: "other", .. })));
        let mp3 = parse_tag(TAG_AUDIO, 0, Bytes::from_static(&[0x2f, 0xff])).unwrap();
        assert!(matches!(m.push(&mp3, &mut out), Err(MuxError::UnsupportedCodec { codec: "mp3", .. })));
        let eos = parse_tag(TAG_VIDEO, 0, Bytes::from_static(&[0x17, 2, 0, 0, 0])).unwrap();
        m.push(&eos, &mut out).unwrap();
        let script = parse_tag(18, 0, Bytes::from_static(&[2, 0, 1, b'x'])).unwrap();
        m.push(&script, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_samples_and_missing_configs_are_errors_that_write_nothing() {
        let mut m = TsMuxer::new();
        let mut out = Vec::new();
        assert!(matches!(m.push(&avc_frame(0, 0, true, &[&[0x65]]), &mut out), Err(MuxError::Invalid(_))));
        assert!(matches!(m.push(&aac_frame(0, 4), &mut out), Err(MuxError::Invalid(_))));
        m.push(&avc_config_frame(), &mut out).unwrap();
        let bad = parse_tag(TAG_VIDEO, 0, Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 9, 0x65])).unwrap();
        assert!(matches!(m.push(&bad, &mut out), Err(MuxError::Invalid(_))));
        assert!(out.is_empty());
        // And the muxer goes on.
        m.push(&avc_frame(0, 0, true, &[&[0x65]]), &mut out).unwrap();
        assert_eq!(out.iter().map(|b| b.len()).sum::<usize>(), 3 * PACKET_LEN);
    }

    #[test]
    fn hevc_uses_stream_type_0x24_and_vps_sps_pps_before_irap() {
        // A minimal HVCC record: 22 bytes of header fields, lengthSizeMinusOne = 3, 3 arrays.
        let mut rec = vec![1u8; 21];
        rec.push(0xfc | 3);
        rec.push(3);
        for (ty, unit) in
            [(HEVC_PPS, &[0x44u8, 1, 0xc1][..]), (HEVC_VPS, &[0x40, 1, 0x0c]), (HEVC_SPS, &[0x42, 1, 0x01])]
        {
            rec.extend_from_slice(&[0x80 | ty, 0, 1, 0, unit.len() as u8]);
            rec.extend_from_slice(unit);
        }
        let mut tag = vec![0x90, b'h', b'v', b'c', b'1'];
        tag.extend_from_slice(&rec);
        let cfg = parse_tag(TAG_VIDEO, 0, Bytes::from(tag)).unwrap();
        let frame = |key: bool, nal: &[u8]| {
            let mut tag = vec![if key { 0x91 } else { 0xa1 }, b'h', b'v', b'c', b'1', 0, 0, 0];
            tag.extend_from_slice(&(nal.len() as u32).to_be_bytes());
            tag.extend_from_slice(nal);
            parse_tag(TAG_VIDEO, 0, Bytes::from(tag)).unwrap()
        };
        let mut m = TsMuxer::new();
        let ts = mux(&mut m, &[cfg, frame(true, &[0x26, 1, 0xaf]), frame(false, &[0x02, 1, 0xd0])]);
        let d = demux(&ts, &mut Default::default());
        assert_eq!(d.sections[1].1[12], STREAM_TYPE_HEVC);
        let (_, _, _, es) = parse_pes(&d.pes[0].1);
        assert_eq!(
            es,
            &[
                0, 0, 0, 1, 0x46, 1, 0x50, 0, 0, 0, 1, 0x40, 1, 0x0c, 0, 0, 0, 1, 0x42, 1, 0x01, 0, 0, 0, 1, 0x44, 1,
                0xc1, 0, 0, 0, 1, 0x26, 1, 0xaf
            ]
        );
        let (_, _, _, es) = parse_pes(&d.pes[1].1);
        assert_eq!(es, &[0, 0, 0, 1, 0x46, 1, 0x50, 0, 0, 0, 1, 0x02, 1, 0xd0]);
    }

    #[test]
    fn pmt_version_bumps_when_audio_appears_later() {
        let mut m = TsMuxer::new();
        let ts =
            mux(&mut m, &[avc_config_frame(), avc_frame(0, 0, true, &[&[0x65]]), aac_config_frame(), aac_frame(10, 5)]);
        let d = demux(&ts, &mut Default::default());
        let pmts: Vec<_> = d.sections.iter().filter(|s| s.0 == PID_PMT).map(|s| s.1.clone()).collect();
        assert_eq!(pmts.len(), 2);
        assert_eq!((pmts[0][5] >> 1) & 0x1f, 0);
        assert_eq!((pmts[1][5] >> 1) & 0x1f, 1);
        assert_eq!(pmts[1].len(), 12 + 10 + 4);
        assert!(pmts.iter().all(|s| crc32_mpeg2(s) == 0));
    }
}
