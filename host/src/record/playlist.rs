//! The text of a live HLS playlist, kept out of memory while it records: its segments' lines
//! go to a file of their own under `data_dir/playlists/` (local, whatever the storage), and
//! each stored revision of the playlist is its header followed by that file read back. What a
//! publish holds in memory for its playlist is then the same after ten hours as after ten
//! seconds. The files are scratch: the stored playlist is what recovery reads, so the folder is
//! emptied when Reel starts.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// The folder of `data_dir` holding the live playlists' lines.
pub const PLAYLIST_DIR: &str = "playlists";

/// One live playlist's lines in a file.
#[derive(Clone, Debug)]
pub struct LiveText {
    path: PathBuf,
    /// Bytes of the file that hold whole lines (a write that failed midway may have left more:
    /// they are cut at the next).
    kept: u64,
}

impl LiveText {
    pub fn new(path: PathBuf) -> Self {
        Self { path, kept: 0 }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `lines` to the file and empties it; on error they stay in `lines`.
    pub fn append(&mut self, lines: &mut String) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let open = || OpenOptions::new().write(true).create(true).truncate(false).open(&self.path);
        let mut f = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = self.path.parent() {
                    fs::create_dir_all(dir)?;
                }
                open()?
            }
            r => r?,
        };
        if f.metadata()?.len() != self.kept {
            f.set_len(self.kept)?;
        }
        f.seek(SeekFrom::Start(self.kept))?;
        f.write_all(lines.as_bytes())?;
        self.kept += lines.len() as u64;
        lines.clear();
        Ok(())
    }

    /// The playlist's text: `header`, the lines in the file, then `unkept` (lines that could
    /// not be appended).
    pub fn text(&self, header: &str, unkept: &str) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(header.len() + self.kept as usize + unkept.len());
        out.extend_from_slice(header.as_bytes());
        if self.kept > 0 {
            File::open(&self.path)?.take(self.kept).read_to_end(&mut out)?;
            if out.len() as u64 != header.len() as u64 + self.kept {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the playlist's lines were cut short"));
            }
        }
        out.extend_from_slice(unkept.as_bytes());
        Ok(out)
    }

    /// The playlist ended: its lines are no longer needed.
    pub fn remove(&self) {
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = &e as &dyn std::error::Error, "live playlist lines not removed");
            }
        }
    }
}

/// Empties `data_dir/playlists` (at start: what a crash left is not needed).
pub fn clear(data_dir: &Path) {
    let dir = data_dir.join(PLAYLIST_DIR);
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %dir.display(), error = &e as &dyn std::error::Error, "live playlist lines not removed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_the_header_then_every_appended_line_in_order() {
        let dir = reel_test_support::ffmpeg::scratch_dir("live-text-order");
        // The folder is made at the first append.
        let mut t = LiveText::new(dir.join(PLAYLIST_DIR).join("a.m3u8"));
        assert_eq!(t.text("H\n", "").unwrap(), b"H\n");
        let mut lines = String::from("#EXTINF:6.000,\na.ts\n");
        t.append(&mut lines).unwrap();
        assert!(lines.is_empty());
        lines.push_str("#EXTINF:6.000,\nb.ts\n");
        t.append(&mut lines).unwrap();
        assert_eq!(t.text("H2\n", "x\n").unwrap(), b"H2\n#EXTINF:6.000,\na.ts\n#EXTINF:6.000,\nb.ts\nx\n");
        t.remove();
        assert!(!t.path().exists());
        t.remove();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_append_keeps_its_lines_and_what_it_left_in_the_file_is_cut() {
        let dir = reel_test_support::ffmpeg::scratch_dir("live-text-failed");
        let mut t = LiveText::new(dir.join("a.m3u8"));
        let mut lines = String::from("one\n");
        t.append(&mut lines).unwrap();
        // A write that stopped midway: bytes past what was kept.
        OpenOptions::new().append(true).open(t.path()).unwrap().write_all(b"tw").unwrap();
        assert_eq!(t.text("", "").unwrap(), b"one\n");
        // The folder gone (the disk failed): the lines stay with the caller, the text holds them.
        let mut gone = LiveText::new(dir.join("file-not-folder").join("b.m3u8"));
        fs::write(dir.join("file-not-folder"), b"").unwrap();
        let mut unkept = String::from("two\n");
        assert!(gone.append(&mut unkept).is_err());
        assert_eq!(unkept, "two\n");
        assert_eq!(gone.text("H\n", &unkept).unwrap(), b"H\ntwo\n");
        // The next append cuts the partial write and goes on.
        let mut lines = String::from("three\n");
        t.append(&mut lines).unwrap();
        assert_eq!(t.text("", "").unwrap(), b"one\nthree\n");
        // A file shorter than kept (someone cut it): an error, not a wrong playlist.
        fs::write(t.path(), b"on").unwrap();
        assert_eq!(t.text("", "").unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn clearing_at_start_empties_the_folder() {
        let dir = reel_test_support::ffmpeg::scratch_dir("live-text-clear");
        let mut t = LiveText::new(dir.join(PLAYLIST_DIR).join("a.m3u8"));
        t.append(&mut "x\n".to_string()).unwrap();
        clear(&dir);
        assert!(!dir.join(PLAYLIST_DIR).exists() && dir.exists());
        clear(&dir);
        let _ = fs::remove_dir_all(&dir);
    }
}
