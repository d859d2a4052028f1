//! A small MPEG-TS reader for assertions, independent of the muxer it judges: it checks packet
//! framing, continuity counters and stuffing as it goes (failing the test), and collects PSI
//! sections and PES packets per PID.

use std::collections::{HashMap, HashSet};

/// Bytes per transport packet.
pub const PACKET_LEN: usize = 188;
const SYNC: u8 = 0x47;
const PID_PAT: u16 = 0;

/// What [`demux`] read from a transport stream.
#[derive(Debug, Default)]
pub struct Demuxed {
    /// (PID, section from `table_id` to the end of its CRC) of each PAT and PMT, in order.
    pub sections: Vec<(u16, Vec<u8>)>,
    /// (pid, PES bytes, random access indicator, PCR base)
    pub pes: Vec<(u16, Vec<u8>, bool, Option<u64>)>,
    /// Index of the last packet of each PES (same order as `pes`).
    pub pes_end: Vec<usize>,
    /// Every PCR: (packet index, PID, PCR base, discontinuity indicator).
    pub pcrs: Vec<(usize, u16, u64, bool)>,
    /// Packets carrying only an adaptation field (PCR-only packets).
    pub pcr_only: usize,
    pub packets: usize,
}

/// Reads `ts`; `cc` holds the last continuity counter per PID (pass the previous file's map to
/// check continuity across files). The PMT PIDs are those the PAT lists.
pub fn demux(ts: &[u8], cc: &mut HashMap<u16, u8>) -> Demuxed {
    assert_eq!(ts.len() % PACKET_LEN, 0, "whole packets");
    let mut d = Demuxed::default();
    let mut open: HashMap<u16, usize> = HashMap::new();
    let mut pmt_pids: HashSet<u16> = HashSet::new();
    for p in ts.chunks(PACKET_LEN) {
        d.packets += 1;
        assert_eq!(p[0], SYNC);
        let pusi = p[1] & 0x40 != 0;
        let pid = u16::from_be_bytes([p[1] & 0x1f, p[2]]);
        let afc = (p[3] >> 4) & 3;
        let counter = p[3] & 0x0f;
        assert!(afc != 0, "reserved adaptation_field_control");
        if let Some(&last) = cc.get(&pid) {
            // A packet without payload keeps the counter (H.222.0 2.4.3.3).
            let want = if afc & 1 == 1 { (last + 1) & 0x0f } else { last };
            assert_eq!(counter, want, "continuity on PID {pid:#x}");
        }
        cc.insert(pid, counter);
        let index = d.packets - 1;
        let mut pos = 4;
        let (mut rai, mut pcr) = (false, None);
        if afc & 2 != 0 {
            let len = usize::from(p[4]);
            if len > 0 {
                rai = p[5] & 0x40 != 0;
                if p[5] & 0x10 != 0 {
                    pcr = Some(
                        (u64::from(p[6]) << 25)
                            | (u64::from(p[7]) << 17)
                            | (u64::from(p[8]) << 9)
                            | (u64::from(p[9]) << 1)
                            | u64::from(p[10] >> 7),
                    );
                }
                assert!(p[6 + if pcr.is_some() { 6 } else { 0 }..5 + len].iter().all(|&b| b == 0xff), "stuffing");
                if let Some(v) = pcr {
                    d.pcrs.push((index, pid, v, p[5] & 0x80 != 0));
                }
            }
            pos += 1 + len;
        }
        if afc & 1 == 0 {
            assert_eq!(pos, PACKET_LEN, "a packet without payload is all adaptation field");
            d.pcr_only += 1;
            continue;
        }
        let payload = &p[pos..];
        if pid == PID_PAT || pmt_pids.contains(&pid) {
            assert!(pusi);
            let s = &payload[1 + usize::from(payload[0])..];
            let len = 3 + (usize::from(s[1] & 0x0f) << 8 | usize::from(s[2]));
            if pid == PID_PAT {
                // After the 8-byte header, (program_number, PID) pairs up to the CRC.
                for e in s[8..len - 4].chunks(4) {
                    if u16::from_be_bytes([e[0], e[1]]) != 0 {
                        pmt_pids.insert(u16::from_be_bytes([e[2] & 0x1f, e[3]]));
                    }
                }
            }
            d.sections.push((pid, s[..len].to_vec()));
            assert!(s[len..].iter().all(|&b| b == 0xff));
        } else if pusi {
            open.insert(pid, d.pes.len());
            d.pes.push((pid, payload.to_vec(), rai, pcr));
            d.pes_end.push(index);
        } else {
            let i = *open.get(&pid).expect("PES continues an open PES");
            d.pes[i].1.extend_from_slice(payload);
            d.pes_end[i] = index;
        }
    }
    d
}
