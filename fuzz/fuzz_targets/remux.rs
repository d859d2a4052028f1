//! `reel remux` on arbitrary bytes, in memory: an FLV file read into frames, cut by the
//! segmenter, written by every muxer. Nothing may panic; muxers may refuse frames.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use reel::media::flv::FileReader;
use reel::mux::{aac::AdtsMuxer, flv::FlvMuxer, mp4::Mp4Muxer, ts::TsMuxer, Muxer};
use reel::record::segmenter::{Layout, Segmenter};

fuzz_target!(|data: &[u8]| {
    let Ok(mut r) = FileReader::new(Bytes::copy_from_slice(data)) else { return };
    let mut seg = Segmenter::new(Layout { file_ms: 2000, segment_ms: Some(1000), split_on_config_change: true });
    let mut muxers: Vec<Box<dyn Muxer>> = vec![
        Box::new(FlvMuxer::new()),
        Box::new(TsMuxer::new()),
        Box::new(Mp4Muxer::new()),
        Box::new(AdtsMuxer::new()),
    ];
    let mut actions = Vec::new();
    let mut out = Vec::new();
    while let Ok(Some(f)) = r.next_frame() {
        seg.push(&f, &mut actions);
        for a in actions.drain(..) {
            if let Some(f) = a.frame() {
                for m in &mut muxers {
                    let _ = m.push(f, &mut out);
                }
            }
        }
        out.clear();
    }
    seg.finish(&mut actions);
    for m in &mut muxers {
        let _ = m.finish(&mut out);
    }
});
