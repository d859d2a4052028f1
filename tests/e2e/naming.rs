//! Template `name` with the seeds' variables, and HLS playlists cut by `hls_interval`.

use std::time::Duration;

use crate::common::*;

#[test]
fn a_template_name_places_files_and_hls_interval_cuts_playlists() {
    let src = fixture("naming", 10, true, true);
    let reel = Reel::start(
        "naming",
        r#"
[storage.local]
kind = "fs"
root = "recordings"
[template.named]
formats = ["flv", "hls"]
hls_segment = "2s"
hls_interval = "4s"
name = "{Domain}/{AppName}/{StreamName}/{Date}/{StartHour}h_{Sequence}"
storage = "local"
[[rule]]
template = "named"
"#,
    );
    let utc = || humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let before = utc();
    ffmpeg_publish(&src, &reel.url("live", "cam"), false);
    // {Date} and {StartHour} of the start (UTC); an hour may turn meanwhile.
    let base = reel.recordings().join("127.0.0.1/live/cam");
    let (_, _) = wait_files(&base, "flv", 1, Duration::from_secs(10));
    let date = std::fs::read_dir(&base).unwrap().next().unwrap().unwrap().file_name().to_string_lossy().into_owned();
    assert!(date == before[..10] || date == utc()[..10], "{date}");
    let dir = base.join(&date);
    let name = files(&dir, "flv")[0].file_name().unwrap().to_string_lossy().into_owned();
    let hour = name[..2].to_string();
    assert!(hour == before[11..13] || hour == utc()[11..13], "{name}");
    // `.{ext}` is added to a name without it.
    let (flv, _) = wait_files(&dir, "flv", 1, Duration::from_secs(10));
    assert_eq!(flv[0].file_name().unwrap().to_str().unwrap(), format!("{hour}h_0.flv"), "{flv:?}");
    // A playlist per 4 s: 0–4, 4–8, 8–10 s, each with its own segments, named after it.
    let (m3u8, _) = wait_files(&dir, "m3u8", 3, Duration::from_secs(10));
    let names: Vec<String> = m3u8.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let mut want: Vec<String> = (0..3).map(|i| format!("{hour}h_{i}.m3u8")).collect();
    want.sort();
    let mut got = names.clone();
    got.sort();
    assert_eq!(got, want, "{}", reel.log_text());
    let mut total = 0.0;
    for p in &m3u8 {
        let text = std::fs::read_to_string(p).unwrap();
        assert!(text.contains("#EXT-X-ENDLIST"), "{text}");
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        for uri in text.lines().filter(|l| l.ends_with(".ts")) {
            assert!(uri.starts_with(&format!("{stem}_")), "{uri} follows {stem}");
        }
        assert_eq!(decode_errors(p), "");
        total += text
            .lines()
            .filter_map(|l| l.strip_prefix("#EXTINF:"))
            .map(|l| l.trim_end_matches(',').parse::<f64>().unwrap())
            .sum::<f64>();
    }
    assert!((total - 10.0).abs() < 0.3, "{total} s in all");
}

#[test]
fn one_app_and_stream_under_two_domains_never_share_a_folder() {
    let src = fixture("domains", 2, true, true);
    let reel = Reel::start("domains", BASE_CONFIG);
    // To a host name (here through `domain=`, as a CDN forwards it): under the domain's folder.
    // To an IP address: no domain folder.
    ffmpeg_publish(&src, &format!("{}?domain=LocalHost.", reel.url("live", "same")), false);
    ffmpeg_publish(&src, &reel.url("live", "same"), false);
    let (named, _) = wait_files(&reel.recordings().join("localhost/live/same"), "flv", 1, Duration::from_secs(10));
    let (bare, _) = wait_files(&reel.recordings().join("live/same"), "flv", 1, Duration::from_secs(10));
    assert_eq!((named.len(), bare.len()), (1, 1), "{:?}", files(&reel.recordings(), "flv"));
    for f in [&named[0], &bare[0]] {
        assert_eq!(packets(f, "v").len(), packets(&src, "v").len());
    }
}
