//! A full disk (a 1 MiB tmpfs as one storage's root): the recordings on it end with a clear
//! error, what is left there under a final name plays, the other storage's stream and the API
//! go on, and recording works again once there is room.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// `cmd` as root: directly when this is root, else through `sudo -n` (as tests/run installs
/// packages).
fn privileged(cmd: &str) -> Command {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        Command::new(cmd)
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", cmd]);
        c
    }
}

/// A tmpfs of `size` at `dir`, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = privileged("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=1777"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs (as root, or through passwordless sudo): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = privileged("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_ends_its_recordings_cleanly_and_nothing_else() {
    let dir = test_dir("disk-full");
    let small = dir.join("small-disk");
    let _fs = Tmpfs::mount(&small, "1m");
    let src = fixture("disk-full", 12, true, true);
    let (hook, events) = http_receiver("/events", |_| 200);
    let reel = Reel::start_in(
        dir,
        &format!(
            "[storage.small]\nkind = \"fs\"\nroot = \"{}\"\n[storage.local]\nkind = \"fs\"\nroot = \"recordings\"\n\
             [template.small]\nformats = [\"flv\", \"mp4\"]\nstorage = \"small\"\n\
             [template.t]\nformats = [\"flv\"]\nstorage = \"local\"\n\
             [[rule]]\napp = \"small\"\ntemplate = \"small\"\n[[rule]]\napp = \"live\"\ntemplate = \"t\"\n\
             [[callback]]\nurl = \"{hook}\"\nevents = [\"record_failed\"]\n",
            small.display()
        ),
    );
    let (u1, u2) = (reel.url("small", "cam"), reel.url("live", "ok"));
    let s1 = src.clone();
    let a = std::thread::spawn(move || ffmpeg_publish(&s1, &u1, true));
    let s2 = src.clone();
    let b = std::thread::spawn(move || ffmpeg_publish(&s2, &u2, true));
    a.join().unwrap();
    b.join().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let log = reel.log_text();
    assert!(log.contains("No space left on device"), "{log}");
    // The recording on the full disk is reported: a record_failed event with the reason; none
    // for the other storage's.
    let failed: Vec<serde_json::Value> = std::iter::from_fn(|| events.recv_timeout(Duration::from_secs(5)).ok())
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert!(!failed.is_empty(), "no record_failed event\n{log}");
    for e in &failed {
        assert_eq!((e["event"].as_str(), e["app"].as_str()), (Some("record_failed"), Some("small")), "{e}");
    }
    assert!(failed.iter().any(|e| e["reason"].as_str().unwrap_or("").contains("No space left")), "{failed:#?}");
    // The API answers and the other storage's recording is whole.
    let (status, _) = reel.api("GET", "/healthz", None);
    assert_eq!(status, 200);
    let ok = files(&reel.recordings(), "flv");
    assert_eq!(ok.len(), 1, "{log}");
    assert_eq!(decode_errors(&ok[0]), "");
    assert!(reel_test_support::ffmpeg::format_seconds(&ok[0], "duration") > 11.0);
    // Whatever is on the full disk under a final name plays.
    for ext in ["flv", "mp4"] {
        for f in files(&small, ext) {
            assert_eq!(decode_errors(&f), "", "{}", f.display());
        }
    }
    // Room again: the next publish records there.
    for ext in ["flv", "mp4", "part", "meta"] {
        for f in files(&small, ext) {
            std::fs::remove_file(f).unwrap();
        }
    }
    let _ = std::fs::remove_dir_all(small.join(".partial"));
    std::fs::create_dir_all(small.join(".partial")).unwrap();
    ffmpeg_publish(&fixture("disk-full-again", 2, true, true), &reel.url("small", "cam"), false);
    let (again, _) = wait_files(&small, "flv", 1, Duration::from_secs(10));
    assert_eq!(again.len(), 1, "{}", reel.log_text());
    assert_eq!(decode_errors(&again[0]), "");
}
