//! ADTS (`.aac`) from FLV audio.

use reel::mux::aac::AdtsMuxer;
use reel_test_support::ffmpeg::{
    assert_decodes_cleanly, assert_same_duration, assert_same_frames, Dir, AUDIO_ARGS, AV_ARGS,
};

use crate::mux_file;

#[test]
fn golden_adts_from_av_stream_decodes_identically() {
    let g = Dir::new("adts-av");
    let src = g.make_flv("src.flv", AV_ARGS);
    let out = g.path("out.aac");
    let mut m = AdtsMuxer::new();
    mux_file(&src, &out, &mut m);
    assert_decodes_cleanly(&out);
    assert_same_frames(&src, &out, "a");
    assert_same_duration(&src, "a", &out, "a", 0.05);
}

#[test]
fn golden_adts_from_audio_only_stream() {
    let g = Dir::new("adts-a");
    let src = g.make_flv("src.flv", AUDIO_ARGS);
    let out = g.path("out.aac");
    let mut m = AdtsMuxer::new();
    mux_file(&src, &out, &mut m);
    assert_decodes_cleanly(&out);
    assert_same_frames(&src, &out, "a");
}
