//! HLS media playlists (RFC 8216): the model of the `.m3u8` Reel writes next to its MPEG-TS
//! segments, its rendering, and a parser for playlists Reel wrote (to append to one after a
//! reconnect).
//!
//! While recording the playlist is an `EVENT` playlist (segments are only appended); when the
//! recording ends `#EXT-X-ENDLIST` is added and the type stays `EVENT` (RFC 8216 §4.3.3.5,
//! §6.2.1). Every segment carries its `#EXT-X-PROGRAM-DATE-TIME` when known.

use std::fmt::Write as _;

use crate::media::time::rfc3339_ms;

/// Protocol version: 3 is the first with decimal `#EXTINF` durations.
pub const VERSION: u32 = 3;

/// One media segment of a playlist.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Segment {
    /// Written verbatim (CR and LF are percent-encoded so a URI cannot break the playlist).
    pub uri: String,
    pub duration_secs: f64,
    /// Wall-clock time of the segment's first sample, in Unix milliseconds.
    pub program_date_time_ms: Option<u64>,
    /// Timestamps or encoding parameters change at this segment (`#EXT-X-DISCONTINUITY`).
    pub discontinuity: bool,
}

/// An HLS media playlist.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Playlist {
    /// The intended maximum segment duration in seconds. The rendered
    /// `#EXT-X-TARGETDURATION` is never below any segment's duration rounded up, since
    /// RFC 8216 §4.3.3.1 makes a longer segment an error; see [`Playlist::target_duration_secs`].
    pub target_duration: u64,
    pub media_sequence: u64,
    pub segments: Vec<Segment>,
    /// The recording is over: `#EXT-X-ENDLIST` is written.
    pub ended: bool,
}

/// Why a playlist did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlaylistError {
    #[error("not an HLS playlist: the first line is not #EXTM3U")]
    NotAPlaylist,
    #[error("playlist has no #EXT-X-TARGETDURATION")]
    MissingTargetDuration,
    #[error("playlist line {line}: {why}")]
    Invalid { line: usize, why: String },
}

const ENDLIST: &str = "#EXT-X-ENDLIST\n";

/// The tags before the first segment.
fn render_header(s: &mut String, target_duration: u64, media_sequence: u64) {
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        "#EXTM3U\n#EXT-X-VERSION:{VERSION}\n#EXT-X-TARGETDURATION:{target_duration}\n#EXT-X-MEDIA-SEQUENCE:{media_sequence}\n#EXT-X-PLAYLIST-TYPE:EVENT\n",
    );
}

/// One segment's lines.
fn render_segment(s: &mut String, seg: &Segment) {
    if seg.discontinuity {
        s.push_str("#EXT-X-DISCONTINUITY\n");
    }
    if let Some(t) = seg.program_date_time_ms {
        let _ = writeln!(s, "#EXT-X-PROGRAM-DATE-TIME:{}", rfc3339_ms(t));
    }
    let d = if seg.duration_secs.is_finite() { seg.duration_secs.max(0.0) } else { 0.0 };
    let _ = writeln!(s, "#EXTINF:{d:.3},");
    for c in seg.uri.chars() {
        match c {
            '\r' => s.push_str("%0D"),
            '\n' => s.push_str("%0A"),
            c => s.push(c),
        }
    }
    s.push('\n');
}

/// An `EVENT` playlist being recorded, without its text: what its header needs, and the lines
/// of the segments pushed since the caller last [took](LivePlaylist::take_lines) them. The
/// caller keeps the text where it does not grow memory (the recorder: in a file), so what a
/// publish holds stays the same however long it runs; the text is [`header`](Self::header)
/// followed by every segment's lines in order.
#[derive(Clone, Debug)]
pub struct LivePlaylist {
    /// The configured target (a floor) and the one rendered.
    target_duration: u64,
    rendered_target: u64,
    segments: usize,
    /// Lines of segments not yet taken.
    lines: String,
}

impl LivePlaylist {
    pub fn new(target_duration: u64) -> Self {
        Self { target_duration, rendered_target: target_duration, segments: 0, lines: String::new() }
    }

    /// Appends a segment. One longer than the rendered `#EXT-X-TARGETDURATION` raises it
    /// (RFC 8216 §4.3.3.1).
    pub fn push(&mut self, seg: &Segment) {
        self.rendered_target = self.rendered_target.max(rendered(seg.duration_secs).ceil() as u64);
        render_segment(&mut self.lines, seg);
        self.segments += 1;
    }

    /// The tags before the first segment, as they stand now.
    pub fn header(&self) -> String {
        let mut s = String::with_capacity(128);
        render_header(&mut s, self.rendered_target, 0);
        s
    }

    /// The lines of the segments pushed since the last take (the buffer is the caller's until
    /// it [gives it back](Self::give_back)).
    pub fn take_lines(&mut self) -> String {
        std::mem::take(&mut self.lines)
    }

    /// Returns a taken buffer: what is left in it (lines the caller could not keep) goes before
    /// any pushed since, and its capacity is reused.
    pub fn give_back(&mut self, mut lines: String) {
        lines.push_str(&self.lines);
        self.lines = lines;
    }

    pub fn len(&self) -> usize {
        self.segments
    }

    pub fn is_empty(&self) -> bool {
        self.segments == 0
    }

    /// The configured target duration (what a new playlist of this output starts with).
    pub fn target_duration(&self) -> u64 {
        self.target_duration
    }
}

/// The duration as rendered (`%.3f`), so that rendering and re-parsing agree on rounding.
fn rendered(d: f64) -> f64 {
    let d = if d.is_finite() { d.max(0.0) } else { 0.0 };
    format!("{d:.3}").parse().unwrap_or(d)
}

impl Playlist {
    pub fn new(target_duration: u64) -> Self {
        Self { target_duration, ..Self::default() }
    }

    /// The `#EXT-X-TARGETDURATION` rendered: the configured target, raised to the longest
    /// segment's duration rounded up to whole seconds.
    pub fn target_duration_secs(&self) -> u64 {
        self.segments.iter().map(|s| rendered(s.duration_secs).ceil() as u64).fold(self.target_duration, u64::max)
    }

    /// Sum of the segment durations, in seconds.
    pub fn duration_secs(&self) -> f64 {
        self.segments.iter().map(|s| s.duration_secs).sum()
    }

    /// The playlist text.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(160 + self.segments.len() * 96);
        render_header(&mut s, self.target_duration_secs(), self.media_sequence);
        for seg in &self.segments {
            render_segment(&mut s, seg);
        }
        if self.ended {
            s.push_str(ENDLIST);
        }
        s
    }

    /// Parses a media playlist. Reads what [`Playlist::render`] writes and tolerates what
    /// other writers commonly add (CRLF line ends, titles after the `#EXTINF` comma, unknown
    /// tags, which are skipped). `ended` is set by `#EXT-X-ENDLIST`.
    pub fn parse(text: &str) -> Result<Self, PlaylistError> {
        let mut lines =
            text.strip_prefix('\u{feff}').unwrap_or(text).lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
        match lines.by_ref().find(|(_, l)| !l.is_empty()) {
            Some((_, "#EXTM3U")) => {}
            _ => return Err(PlaylistError::NotAPlaylist),
        }
        let mut pl = Playlist::default();
        let mut target = None;
        // Attributes of the segment whose URI comes next.
        let mut next = Segment::default();
        let mut duration: Option<(usize, f64)> = None;
        for (line, l) in lines {
            let bad = |why: String| PlaylistError::Invalid { line, why };
            if l.is_empty() {
                continue;
            }
            if let Some(tag) = l.strip_prefix('#') {
                let (name, value) = tag.split_once(':').unwrap_or((tag, ""));
                match name {
                    "EXT-X-TARGETDURATION" => {
                        target = Some(value.parse().map_err(|_| bad(format!("target duration {value:?}")))?);
                    }
                    "EXT-X-MEDIA-SEQUENCE" => {
                        pl.media_sequence = value.parse().map_err(|_| bad(format!("media sequence {value:?}")))?;
                    }
                    "EXT-X-PLAYLIST-TYPE" if !matches!(value, "EVENT" | "VOD") => {
                        return Err(bad(format!("playlist type {value:?}")));
                    }
                    "EXT-X-ENDLIST" => pl.ended = true,
                    "EXT-X-DISCONTINUITY" => next.discontinuity = true,
                    "EXT-X-PROGRAM-DATE-TIME" => {
                        next.program_date_time_ms =
                            Some(parse_rfc3339_ms(value).ok_or_else(|| bad(format!("date-time {value:?}")))?);
                    }
                    "EXTINF" => {
                        let d = value.split(',').next().unwrap_or("").trim();
                        match d.parse::<f64>() {
                            Ok(d) if d.is_finite() && d >= 0.0 => duration = Some((line, d)),
                            _ => return Err(bad(format!("segment duration {d:?}"))),
                        }
                    }
                    // Other tags and comments.
                    _ => {}
                }
                continue;
            }
            let Some((_, d)) = duration.take() else {
                return Err(bad(format!("segment {l:?} has no #EXTINF")));
            };
            next.uri = l.to_string();
            next.duration_secs = d;
            pl.segments.push(std::mem::take(&mut next));
        }
        if let Some((line, _)) = duration {
            return Err(PlaylistError::Invalid { line, why: "#EXTINF without a segment URI".into() });
        }
        pl.target_duration = target.ok_or(PlaylistError::MissingTargetDuration)?;
        Ok(pl)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an RFC 3339 date-time (`2026-11-22T13:05:09.120Z`, `...+02:00`) to Unix ms.
/// Fractions beyond milliseconds are truncated. `None` if malformed or before 1970.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    fn num(s: &str) -> Option<i64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }
    let s = s.trim();
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let (y, mo, da) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    // Split off the zone: Z, or a sign that is not part of the date.
    let (clock, offset_min) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else {
        let i = time.rfind(['+', '-'])?;
        let (c, z) = time.split_at(i);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let z = &z[1..];
        let (zh, zm) = match z.split_once(':') {
            Some(p) => p,
            None => (z.get(..2)?, z.get(2..)?),
        };
        let (zh, zm) = (num(zh)?, num(zm)?);
        if zh > 23 || zm > 59 {
            return None;
        }
        (c, sign * (zh * 60 + zm))
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.splitn(3, ':');
    let (h, mi, se) = (num(t.next()?)?, num(t.next()?)?, num(t.next()?)?);
    let ms = if frac.is_empty() {
        0
    } else {
        let f = num(frac)?;
        let digits = frac.len() as u32;
        if digits >= 3 {
            f / 10i64.checked_pow(digits - 3)?
        } else {
            f * 10i64.pow(3 - digits)
        }
    };
    let days_in_month = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    // Seconds up to 60 for a leap second.
    if da < 1 || da > days_in_month || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se - offset_min * 60;
    u64::try_from(secs.checked_mul(1000)?.checked_add(ms)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_795_352_709_120; // 2026-11-22T13:05:09.120Z

    fn sample() -> Playlist {
        Playlist {
            target_duration: 2,
            media_sequence: 7,
            segments: vec![
                Segment {
                    uri: "seg7.ts".into(),
                    duration_secs: 2.0,
                    program_date_time_ms: Some(T0),
                    discontinuity: false,
                },
                Segment {
                    uri: "seg8.ts".into(),
                    duration_secs: 1.96,
                    program_date_time_ms: Some(T0 + 2000),
                    discontinuity: false,
                },
                Segment {
                    uri: "a/seg9.ts".into(),
                    duration_secs: 2.04,
                    program_date_time_ms: Some(T0 + 60_000),
                    discontinuity: true,
                },
            ],
            ended: false,
        }
    }

    #[test]
    fn renders_an_event_playlist() {
        let mut pl = sample();
        assert_eq!(
            pl.render(),
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:3\n#EXT-X-MEDIA-SEQUENCE:7\n#EXT-X-PLAYLIST-TYPE:EVENT\n\
             #EXT-X-PROGRAM-DATE-TIME:2026-11-22T13:05:09.120Z\n#EXTINF:2.000,\nseg7.ts\n\
             #EXT-X-PROGRAM-DATE-TIME:2026-11-22T13:05:11.120Z\n#EXTINF:1.960,\nseg8.ts\n\
             #EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM-DATE-TIME:2026-11-22T13:06:09.120Z\n#EXTINF:2.040,\na/seg9.ts\n"
        );
        pl.ended = true;
        assert!(pl.render().ends_with("a/seg9.ts\n#EXT-X-ENDLIST\n"));
        assert!(pl.render().contains("#EXT-X-PLAYLIST-TYPE:EVENT\n"));
    }

    #[test]
    fn render_parse_roundtrip() {
        for ended in [false, true] {
            let mut pl = sample();
            pl.ended = ended;
            pl.target_duration = pl.target_duration_secs();
            pl.segments[1].program_date_time_ms = None;
            assert_eq!(Playlist::parse(&pl.render()).unwrap(), pl);
        }
        let empty = Playlist::new(6);
        assert_eq!(Playlist::parse(&empty.render()).unwrap(), empty);
    }

    #[test]
    fn target_duration_is_the_ceiling_of_the_longest_segment() {
        let with = |target: u64, durs: &[f64]| {
            let mut pl = Playlist::new(target);
            for &d in durs {
                pl.segments.push(Segment { uri: "s.ts".into(), duration_secs: d, ..Segment::default() });
            }
            pl.target_duration_secs()
        };
        assert_eq!(with(2, &[1.5, 2.0]), 2);
        assert_eq!(with(2, &[2.001]), 3, "rounded up, never below a segment");
        assert_eq!(with(2, &[2.0004]), 2, "as rendered: 2.000");
        assert_eq!(with(1, &[2.5, 0.2]), 3);
        assert_eq!(with(6, &[2.0]), 6, "the configured target is a floor");
        assert_eq!(with(0, &[]), 0);
        assert_eq!(with(4, &[f64::NAN, -1.0]), 4);
    }

    #[test]
    fn parses_playlists_from_other_writers() {
        let text = "\u{feff}#EXTM3U\r\n#EXT-X-VERSION:6\r\n#EXT-X-TARGETDURATION:4\r\n# a comment\r\n\
                    #EXT-X-INDEPENDENT-SEGMENTS\r\n#EXT-X-PROGRAM-DATE-TIME:2026-11-22T15:05:09.12+02:00\r\n\
                    #EXTINF:4,title, with comma\r\nhttps://cdn.example/0.ts?x=1\r\n\r\n#EXTINF:3.5,\r\n1.ts\r\n\
                    #EXT-X-ENDLIST\r\n";
        let pl = Playlist::parse(text).unwrap();
        assert_eq!(pl.target_duration, 4);
        assert_eq!(pl.media_sequence, 0);
        assert!(pl.ended);
        assert_eq!(pl.segments.len(), 2);
        assert_eq!(pl.segments[0].uri, "https://cdn.example/0.ts?x=1");
        assert_eq!(pl.segments[0].duration_secs, 4.0);
        assert_eq!(pl.segments[0].program_date_time_ms, Some(T0));
        assert_eq!(pl.segments[1].program_date_time_ms, None);
        assert_eq!(pl.duration_secs(), 7.5);
    }

    #[test]
    fn rejects_malformed_playlists() {
        assert_eq!(Playlist::parse(""), Err(PlaylistError::NotAPlaylist));
        assert_eq!(Playlist::parse("#EXTINF:1,\na.ts\n"), Err(PlaylistError::NotAPlaylist));
        assert_eq!(Playlist::parse("#EXTM3U\n#EXTINF:1,\na.ts\n"), Err(PlaylistError::MissingTargetDuration));
        let err = |t: &str| match Playlist::parse(t) {
            Err(PlaylistError::Invalid { line, .. }) => line,
            other => panic!("{other:?}"),
        };
        assert_eq!(err("#EXTM3U\n#EXT-X-TARGETDURATION:2\na.ts\n"), 3);
        assert_eq!(err("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:1,\n"), 3);
        assert_eq!(err("#EXTM3U\n#EXT-X-TARGETDURATION:two\n"), 2);
        assert_eq!(err("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:-1,\na.ts"), 3);
        assert_eq!(err("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PROGRAM-DATE-TIME:2026-02-30T00:00:00Z\n"), 3);
        assert_eq!(err("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PLAYLIST-TYPE:LIVE\n"), 3);
    }

    /// The text a caller keeps: the header now, then every line taken so far.
    fn kept(live: &mut LivePlaylist, body: &mut String) -> String {
        let lines = live.take_lines();
        body.push_str(&lines);
        live.give_back(String::new());
        live.header() + body
    }

    #[test]
    fn a_live_playlist_is_the_rendered_playlist_with_each_segment_appended_once() {
        let model = sample();
        let mut live = LivePlaylist::new(model.target_duration);
        let mut body = String::new();
        assert!(live.is_empty());
        assert_eq!(kept(&mut live, &mut body), Playlist::new(2).render());
        let mut so_far = Playlist::new(model.target_duration);
        for seg in &model.segments {
            live.push(seg);
            so_far.segments.push(seg.clone());
            // The 2.04 s segment raises the target to 3 in the header, as `render` does.
            assert_eq!(kept(&mut live, &mut body), so_far.render());
        }
        assert!(live.header().contains("#EXT-X-TARGETDURATION:3\n"));
        assert_eq!((live.len(), live.target_duration()), (3, 2));
        let parsed = Playlist::parse(&kept(&mut live, &mut body)).unwrap();
        assert_eq!((parsed.segments, parsed.ended), (model.segments.clone(), false));
        // A target of two digits.
        let mut long = LivePlaylist::new(6);
        let mut body = String::new();
        long.push(&Segment { uri: "a.ts".into(), duration_secs: 6.0, ..Segment::default() });
        long.push(&Segment { uri: "b.ts".into(), duration_secs: 12.5, ..Segment::default() });
        let text = kept(&mut long, &mut body);
        let mut want = Playlist::new(6);
        want.segments = Playlist::parse(&text).unwrap().segments;
        assert_eq!(text, want.render());
        assert!(text.contains("#EXT-X-TARGETDURATION:13\n"));
    }

    #[test]
    fn a_live_playlist_holds_only_the_lines_not_yet_taken() {
        let mut live = LivePlaylist::new(6);
        let seg = Segment {
            uri: "rec/s_00001.ts".into(),
            duration_secs: 6.0,
            program_date_time_ms: Some(T0),
            ..Segment::default()
        };
        let mut body = String::new();
        let mut held = 0;
        for _ in 0..1000 {
            live.push(&seg);
            let lines = live.take_lines();
            body.push_str(&lines);
            // The taken buffer comes back emptied: its capacity serves the next segment.
            let mut lines = lines;
            lines.clear();
            live.give_back(lines);
            held = held.max(live.lines.capacity());
        }
        assert_eq!(live.len(), 1000);
        // One segment's lines, however long the publish: not the text (about 100 KB here).
        assert!(held < 256 && body.len() > 1000 * 60, "{held} bytes held, {} written", body.len());
        // Lines the caller could not keep go first when given back, before those pushed since.
        let kept_back = live.take_lines();
        assert!(kept_back.is_empty());
        live.push(&Segment { uri: "late.ts".into(), duration_secs: 6.0, ..Segment::default() });
        live.give_back("#EXTINF:6.000,\nfirst.ts\n".into());
        let lines = live.take_lines();
        assert!(lines.starts_with("#EXTINF:6.000,\nfirst.ts\n") && lines.ends_with("late.ts\n"), "{lines}");
    }

    #[test]
    fn uris_cannot_break_lines() {
        let mut pl = Playlist::new(2);
        pl.segments.push(Segment { uri: "a\nb.ts".into(), duration_secs: 1.0, ..Segment::default() });
        assert!(pl.render().ends_with("#EXTINF:1.000,\na%0Ab.ts\n"));
    }

    #[test]
    fn rfc3339_parse_inverts_rfc3339_ms() {
        let mut t = 0u64;
        while t < 4_102_444_800_000 {
            assert_eq!(parse_rfc3339_ms(&rfc3339_ms(t)), Some(t), "{}", rfc3339_ms(t));
            t += 86_399_999 * 7 + 13;
        }
        assert_eq!(parse_rfc3339_ms("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(parse_rfc3339_ms("2000-02-29T01:30:00.5+01:30"), Some(951_782_400_500));
        assert_eq!(parse_rfc3339_ms("2000-02-28T22:00:00.123456-02:00"), Some(951_782_400_123));
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59Z"), None);
        assert_eq!(parse_rfc3339_ms("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("2026-01-01"), None);
        assert_eq!(parse_rfc3339_ms("2026-01-01T00:00:00"), None);
    }
}
