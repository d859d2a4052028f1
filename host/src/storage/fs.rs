//! Local disk: files are written to `ROOT/.partial/HINT.part`, fsynced and renamed to
//! `ROOT/KEY` at close. A finalisation that puts an index first copies the written ranges
//! with the kernel's file-to-file copy, never through user space buffers of the whole file.
//!
//! A file's description (what recovery after a crash needs) is kept in an extended attribute
//! of the file itself ([`META_ATTR`]): no second file to create at each start and to remove at
//! each close, which cost more than the rest of a close on files cut together. A file system
//! without user attributes gets it beside the file instead (`HINT.part.meta`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{check_key, FileWriter, Finalize, Storage, StorageError, Stored};

/// Folder under the root holding files being written (recovered after a crash).
pub const PARTIAL_DIR: &str = ".partial";
/// Most iovecs per writev call (Linux IOV_MAX).
const MAX_IOV: usize = 1024;
/// Bytes written to a file after which their write-back to disk is started (not waited for):
/// a file reaches its close with at most this much not yet on its way to disk, so the fsync
/// of a close writes little, instead of the whole file — with files cut together (streams
/// that started together), every file's write-back in the same second. The write-back's cost
/// is then spread over the recording, where it was one burst at each cut.
const WRITE_BACK_BYTES: u64 = 256 << 10;
/// The extended attribute holding a file's description while it is written.
pub(super) const META_ATTR: &std::ffi::CStr = c"user.reel.partial";

pub struct FsStorage {
    root: PathBuf,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |source| StorageError::Io { op, path: path.display().to_string(), source }
}

impl FsStorage {
    pub fn new(root: &Path) -> Result<Self, StorageError> {
        let partial = root.join(PARTIAL_DIR);
        fs::create_dir_all(&partial).map_err(io_err("create directory", &partial))?;
        Ok(Self { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn final_path(&self, key: &str) -> Result<PathBuf, StorageError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    /// Runs `op` on `path`; when it fails because `path`'s folder does not exist yet, creates
    /// the folder and runs it again. The folders of a stream's files exist after its first
    /// file: a close then costs no `mkdir` (and no `stat` of every folder of its key).
    fn in_folder<T>(path: &Path, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot create directory {}: {e}", dir.display()))
                    })?;
                }
                op()
            }
            r => r,
        }
    }

    /// Publishes `staged` under `key`, or `stem_N.ext` when `key` is taken: two files named
    /// alike (e.g. within one second) never overwrite each other. A rename that refuses to
    /// replace (`RENAME_NOREPLACE`), or else a hard link, makes the "create only if absent"
    /// atomic even when two files close at once.
    fn publish(&self, staged: &Path, key: &str) -> Result<(String, PathBuf), StorageError> {
        let (stem, ext) = match key.rfind('.') {
            Some(i) if !key[i..].contains('/') => (&key[..i], &key[i..]),
            _ => (key, ""),
        };
        for n in 0..10_000 {
            let k = if n == 0 { key.to_string() } else { format!("{stem}_{n}{ext}") };
            let path = self.final_path(&k)?;
            match Self::in_folder(&path, || rename_no_replace(staged, &path)) {
                Ok(()) => return Ok((k, path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                // Not on this file system: a hard link.
                Err(_) => {}
            }
            match Self::in_folder(&path, || fs::hard_link(staged, &path)) {
                Ok(()) => {
                    fs::remove_file(staged).map_err(io_err("remove", staged))?;
                    return Ok((k, path));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(_) => {
                    // No hard links on this filesystem: check, then rename.
                    if path.exists() {
                        continue;
                    }
                    Self::in_folder(&path, || fs::rename(staged, &path)).map_err(io_err("rename", staged))?;
                    return Ok((k, path));
                }
            }
        }
        Err(StorageError::InvalidKey { key: key.into(), why: "too many files with this name" })
    }
}

fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Renames `from` to `to` unless `to` exists (`AlreadyExists` then).
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    let (from, to) = (c_path(from)?, c_path(to)?);
    // SAFETY: two NUL-terminated paths, relative to the working directory as `rename` takes them.
    check(unsafe {
        libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE)
    })
}

/// A libc call's result: 0, or the error it left in `errno`.
fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn sync_dir(dir: &Path) {
    // Best effort: makes the rename durable.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Storage for FsStorage {
    fn create(&self, hint: &str) -> Result<Box<dyn FileWriter>, StorageError> {
        let name: String =
            hint.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
        let path = self.root.join(PARTIAL_DIR).join(format!("{name}.part"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        Ok(Box::new(FsFile { file, path, written: 0, sent: 0, root: self.root.clone(), meta: None }))
    }

    fn create_described(&self, hint: &str, meta: &[u8]) -> Result<Box<dyn FileWriter>, StorageError> {
        let mut w = self.create(hint)?;
        let Some(f) = w.as_any().downcast_mut::<FsFile>() else { return Ok(w) };
        let described = match attr::set(&f.file, META_ATTR, meta) {
            Ok(()) => Ok(Described::Attr),
            // No user attributes here (or not one this long): the description goes beside it.
            Err(e) if attr::unsupported(&e) => {
                let meta_path = f.path.with_extension("part.meta");
                fs::write(&meta_path, meta)
                    .map(|()| Described::Beside(meta_path.clone()))
                    .map_err(io_err("write", &meta_path))
            }
            Err(e) => Err(io_err("describe", &f.path)(e)),
        };
        match described {
            Ok(d) => {
                f.meta = Some(d);
                Ok(w)
            }
            Err(e) => {
                w.abort();
                Err(e)
            }
        }
    }

    fn partials(&self) -> Vec<super::Partial> {
        let dir = self.root.join(PARTIAL_DIR);
        let Ok(rd) = fs::read_dir(&dir) else { return Vec::new() };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let found = e.path();
            let Some(name) = found.file_name().and_then(|n| n.to_str()) else { continue };
            if let Some(stem) = name.strip_suffix(".part.meta") {
                let path = dir.join(format!("{stem}.part"));
                match (fs::read(&found), path.is_file()) {
                    (Ok(meta), true) => out.push(super::Partial { path, meta, meta_path: Some(found) }),
                    // Its file was finished or given up: the description is stale.
                    _ => {
                        let _ = fs::remove_file(&found);
                    }
                }
            } else if name.ends_with(".part") {
                // Described by its attribute; one without (and without a `.part.meta`, found
                // above) is a file recovery gave up on, kept for `reel recover` by hand.
                if let Ok(meta) = attr::get(&found, META_ATTR) {
                    out.push(super::Partial { path: found, meta, meta_path: None });
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<Stored, StorageError> {
        let path = self.final_path(key)?;
        let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
        let mut f = Self::in_folder(&tmp, || File::create(&tmp)).map_err(io_err("create", &tmp))?;
        f.write_all(data).map_err(io_err("write", &tmp))?;
        f.sync_data().map_err(io_err("sync", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
        Ok(Stored {
            key: key.into(),
            size: data.len() as u64,
            location: std::path::absolute(&path).unwrap_or_else(|_| path.clone()).display().to_string(),
            etag: None,
            pending: false,
        })
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        check_key(key)?;
        let path = self.root.join(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    fn locate(&self, key: &str, _valid: std::time::Duration) -> Result<Option<super::Located>, StorageError> {
        check_key(key)?;
        let path = self.root.join(key);
        Ok(path.is_file().then_some(super::Located::File(path)))
    }

    fn get(&self, key: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, StorageError> {
        check_key(key)?;
        let path = self.root.join(key);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let mut data = Vec::new();
        f.take(max_bytes).read_to_end(&mut data).map_err(io_err("read", &path))?;
        Ok(Some(data))
    }
}

struct FsFile {
    file: File,
    path: PathBuf,
    root: PathBuf,
    written: u64,
    /// Bytes whose write-back has been started ([`WRITE_BACK_BYTES`]).
    sent: u64,
    /// Where the file's description is kept while it is written.
    meta: Option<Described>,
}

enum Described {
    /// In the file's [`META_ATTR`].
    Attr,
    /// In a file beside it.
    Beside(PathBuf),
}

/// Extended attributes (Linux).
pub(super) mod attr {
    use std::ffi::CStr;
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::path::Path;

    use super::{c_path, check};

    pub fn set(file: &File, name: &CStr, value: &[u8]) -> io::Result<()> {
        // SAFETY: a valid descriptor, a NUL-terminated name, and `value` valid for its length.
        check(unsafe { libc::fsetxattr(file.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
    }

    pub fn remove(file: &File, name: &CStr) -> io::Result<()> {
        // SAFETY: a valid descriptor and a NUL-terminated name.
        check(unsafe { libc::fremovexattr(file.as_raw_fd(), name.as_ptr()) })
    }

    pub fn remove_at(path: &Path, name: &CStr) -> io::Result<()> {
        let p = c_path(path)?;
        // SAFETY: NUL-terminated path and name.
        check(unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) })
    }

    pub fn get(path: &Path, name: &CStr) -> io::Result<Vec<u8>> {
        let p = c_path(path)?;
        // Its length first (the value can change in between: then asked again, a few times).
        for _ in 0..4 {
            // SAFETY: NUL-terminated path and name; a null buffer of length 0 asks for the size.
            let len = unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
            if len < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = vec![0u8; len as usize];
            // SAFETY: `buf` is valid for writes of its length.
            let got = unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            if got >= 0 {
                buf.truncate(got as usize);
                return Ok(buf);
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ERANGE) {
                return Err(e);
            }
        }
        Err(io::Error::other("extended attribute kept changing size"))
    }

    /// The file system keeps no user attributes, or none this long (ext4: `ENOSPC` when the
    /// value does not fit its inode or attribute block; a file beside it is tried then, which
    /// fails too if the disk itself is full).
    pub fn unsupported(e: &io::Error) -> bool {
        matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::E2BIG | libc::ERANGE | libc::ENOSPC))
    }
}

/// Writes every chunk with as few writev calls as possible.
fn write_all_vectored(file: &mut File, chunks: &[Bytes]) -> io::Result<u64> {
    let mut total = 0u64;
    let mut i = 0;
    let mut offset = 0usize; // into chunks[i]
    let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(chunks.len().min(MAX_IOV));
    while i < chunks.len() {
        if chunks[i].len() == offset {
            // Empty chunks (and finished ones) take no write.
            i += 1;
            offset = 0;
            continue;
        }
        iov.clear();
        iov.push(IoSlice::new(&chunks[i][offset..]));
        iov.extend(chunks[i + 1..].iter().take(MAX_IOV - 1).map(|c| IoSlice::new(c)));
        let n = file.write_vectored(&iov)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        total += n as u64;
        let mut left = n;
        while i < chunks.len() && left >= chunks[i].len() - offset {
            left -= chunks[i].len() - offset;
            offset = 0;
            i += 1;
        }
        offset += left;
    }
    Ok(total)
}

/// Starts writing `len` bytes at `from` of `file` back to disk and returns without waiting
/// for them (best effort: a file system that cannot leaves them to the kernel's own write-back,
/// and the fsync at close writes them).
fn start_write_back(file: &File, from: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor, plain integer arguments; nothing is read from memory.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

impl FileWriter for FsFile {
    fn local_path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn local_file(&self) -> Option<io::Result<File>> {
        Some(self.file.try_clone())
    }

    fn write(&mut self, chunks: &[Bytes]) -> Result<(), StorageError> {
        match write_all_vectored(&mut self.file, chunks) {
            Ok(n) => {
                self.written += n;
                if self.written - self.sent >= WRITE_BACK_BYTES {
                    start_write_back(&self.file, self.sent, self.written - self.sent);
                    self.sent = self.written;
                }
                Ok(())
            }
            Err(e) => {
                // A write cut short (a full disk) must not leave half a frame behind: the file
                // goes back to its last whole write.
                let _ = self.file.set_len(self.written);
                let _ = self.file.seek(SeekFrom::Start(self.written));
                Err(io_err("write", &self.path)(e))
            }
        }
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn finish(self: Box<Self>, key: &str, fin: Finalize<'_>) -> Result<Stored, StorageError> {
        let FsFile { file, path, root, written, meta, .. } = *self;
        let store = FsStorage { root };
        let size;
        let staged;
        // The file written, when it is the one published (its description is taken off it
        // once it is: a crash before that leaves it described for recovery).
        let mut published = None;
        // The final file keeps the written bytes where they are after a head of the same
        // length as what it replaces (an index written into room reserved for it).
        let in_place = matches!(fin.ranges, [r] if r.start == fin.head.len() as u64 && r.end == written);
        if fin.head.is_empty() && fin.ranges.is_empty() && fin.tail.is_empty() {
            file.sync_data().map_err(io_err("sync", &path))?;
            size = file.metadata().map_err(io_err("stat", &path))?.len();
            published = Some(file);
            staged = path;
        } else if in_place {
            use std::os::unix::fs::FileExt;
            file.write_all_at(fin.head, 0).map_err(io_err("write", &path))?;
            file.write_all_at(fin.tail, written).map_err(io_err("write", &path))?;
            file.sync_data().map_err(io_err("sync", &path))?;
            size = written + fin.tail.len() as u64;
            published = Some(file);
            staged = path;
        } else {
            staged = path.with_extension("final");
            let mut out = File::create(&staged).map_err(io_err("create", &staged))?;
            // Read through the descriptor it was written with (opened for reading too).
            let mut src = file;
            out.write_all(fin.head).map_err(io_err("write", &staged))?;
            for r in fin.ranges {
                src.seek(SeekFrom::Start(r.start)).map_err(io_err("seek", &path))?;
                let want = r.end - r.start;
                // File-to-file io::copy uses copy_file_range on Linux.
                let got = io::copy(&mut (&mut src).take(want), &mut out).map_err(io_err("copy", &path))?;
                if got != want {
                    return Err(StorageError::Io {
                        op: "copy",
                        path: path.display().to_string(),
                        source: io::Error::new(io::ErrorKind::UnexpectedEof, format!("range {r:?} past end of file")),
                    });
                }
            }
            out.write_all(fin.tail).map_err(io_err("write", &staged))?;
            out.sync_data().map_err(io_err("sync", &staged))?;
            size = out.metadata().map_err(io_err("stat", &staged))?.len();
            drop(out);
            let _ = fs::remove_file(&path);
        }
        let (key, dest) = store.publish(&staged, key)?;
        if let Some(dir) = dest.parent() {
            sync_dir(dir);
        }
        match (meta, published) {
            (Some(Described::Attr), Some(file)) => {
                let _ = attr::remove(&file, META_ATTR);
            }
            (Some(Described::Beside(m)), _) => {
                let _ = fs::remove_file(m);
            }
            _ => {}
        }
        Ok(Stored {
            key,
            size,
            location: std::path::absolute(&dest).unwrap_or_else(|_| dest.clone()).display().to_string(),
            etag: None,
            pending: false,
        })
    }

    fn abort(self: Box<Self>) {
        let _ = fs::remove_file(&self.path);
        if let Some(Described::Beside(m)) = &self.meta {
            let _ = fs::remove_file(m);
        }
    }

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("reel-fs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn writes_many_chunks_and_renames() {
        let root = tmpdir("plain");
        let s = FsStorage::new(&root).unwrap();
        let mut f = s.create("a/b c").unwrap();
        let chunks: Vec<Bytes> = (0..3000u32).map(|i| Bytes::from(i.to_be_bytes().to_vec())).collect();
        f.write(&chunks).unwrap();
        f.write(&[Bytes::new(), Bytes::new()]).unwrap();
        assert_eq!(f.written(), 12000);
        let st = f.finish("live/s/x.flv", Finalize::default()).unwrap();
        let data = fs::read(root.join("live/s/x.flv")).unwrap();
        assert_eq!(st.size, 12000);
        assert_eq!(&data[4..8], &1u32.to_be_bytes());
        assert_eq!(fs::read_dir(root.join(PARTIAL_DIR)).unwrap().count(), 0);
    }

    /// Which of the first `len` bytes of `path` the file system holds only in memory, not yet
    /// given a place on disk (FIEMAP's `DELALLOC` extents), or `None` where it cannot say
    /// (tmpfs and other file systems without FIEMAP or without delayed allocation).
    fn delayed_bytes(path: &Path, len: u64) -> Option<u64> {
        use std::os::fd::AsRawFd;
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Extent {
            logical: u64,
            physical: u64,
            length: u64,
            reserved64: [u64; 2],
            flags: u32,
            reserved: [u32; 3],
        }
        #[repr(C)]
        struct Fiemap {
            start: u64,
            length: u64,
            flags: u32,
            mapped: u32,
            count: u32,
            reserved: u32,
            extents: [Extent; 64],
        }
        const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
        const EXTENT_DELALLOC: u32 = 0x4;
        let mut map = Fiemap {
            start: 0,
            length: len,
            flags: 0,
            mapped: 0,
            count: 64,
            reserved: 0,
            extents: [Extent::default(); 64],
        };
        let f = File::open(path).unwrap();
        // SAFETY: `map` is a `struct fiemap` with room for `count` extents, as the call expects.
        if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP, &mut map as *mut Fiemap) } != 0 {
            return None;
        }
        let delayed = map.extents[..map.mapped.min(64) as usize].iter().filter(|e| e.flags & EXTENT_DELALLOC != 0);
        delayed.map(|e| e.length).reduce(|a, b| a + b)
    }

    #[test]
    fn a_file_being_written_goes_to_disk_as_it_grows_not_at_its_close() {
        let root = tmpdir("write-back");
        let s = FsStorage::new(&root).unwrap();
        // Whether this file system delays allocation at all (ext4, xfs, btrfs do; tmpfs has no
        // disk): a file written and left to the kernel shows it.
        let probe = root.join("probe");
        fs::write(&probe, vec![1u8; 1 << 20]).unwrap();
        if delayed_bytes(&probe, 1 << 20).is_none_or(|d| d == 0) {
            eprintln!("skipped: {} does not delay allocation (no disk behind it)", root.display());
            let _ = fs::remove_dir_all(&root);
            return;
        }
        let mut f = s.create("wb").unwrap();
        let chunk = Bytes::from(vec![7u8; 64 << 10]);
        for _ in 0..16 {
            f.write(std::slice::from_ref(&chunk)).unwrap();
        }
        let path = f.local_path().unwrap().to_path_buf();
        let waiting = delayed_bytes(&path, 1 << 20).unwrap_or(0);
        assert!(
            waiting <= WRITE_BACK_BYTES,
            "{waiting} of the 1 MiB written still waits for the kernel's write-back: a close would write it all"
        );
        f.finish("wb.bin", Finalize::default()).unwrap();
        assert_eq!(fs::read(root.join("wb.bin")).unwrap().len(), 1 << 20);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn finalize_puts_head_first() {
        let root = tmpdir("rewrite");
        let s = FsStorage::new(&root).unwrap();
        let mut f = s.create("x").unwrap();
        f.write(&[Bytes::from_static(b"0123456789")]).unwrap();
        let st = f.finish("k.bin", Finalize { head: b"HEAD", ranges: &[2..5, 7..10], tail: b"T" }).unwrap();
        assert_eq!(fs::read(root.join("k.bin")).unwrap(), b"HEAD234789T");
        assert_eq!(st.size, 11);
        assert!(s.put("../x", b"").is_err());
        let mut again = s.create("y").unwrap();
        again.write(&[Bytes::from_static(b"second")]).unwrap();
        let st2 = again.finish("k.bin", Finalize::default()).unwrap();
        assert_eq!(st2.key, "k_1.bin", "an existing file is never overwritten");
        assert_eq!(fs::read(root.join("k.bin")).unwrap(), b"HEAD234789T");
        s.put("p/l.m3u8", b"#EXTM3U\n").unwrap();
        assert_eq!(fs::read(root.join("p/l.m3u8")).unwrap(), b"#EXTM3U\n");
    }

    #[test]
    fn finalize_in_place_overwrites_the_reserved_head() {
        use std::os::unix::fs::MetadataExt;
        let root = tmpdir("in-place");
        let s = FsStorage::new(&root).unwrap();
        let mut f = s.create("z").unwrap();
        f.write(&[Bytes::from_static(b"....body")]).unwrap();
        let part = fs::read_dir(root.join(PARTIAL_DIR)).unwrap().next().unwrap().unwrap().path();
        let inode = fs::metadata(&part).unwrap().ino();
        #[allow(clippy::single_range_in_vec_init)] // one byte range of the file
        let st = f.finish("k.bin", Finalize { head: b"HEAD", ranges: &[4..8], tail: b"!" }).unwrap();
        assert_eq!(fs::read(root.join("k.bin")).unwrap(), b"HEADbody!");
        assert_eq!(st.size, 9);
        assert_eq!(fs::metadata(root.join("k.bin")).unwrap().ino(), inode, "the written file itself, not a copy");
        assert_eq!(fs::read_dir(root.join(PARTIAL_DIR)).unwrap().count(), 0);
    }

    /// Names in `.partial/`, sorted.
    fn partial_names(root: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(root.join(PARTIAL_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_described_file_carries_its_description_and_the_published_file_does_not() {
        let root = tmpdir("described");
        let s = FsStorage::new(&root).unwrap();
        // Whether this file system keeps user attributes (tmpfs since Linux 6.6, ext4, xfs).
        let probe = File::create(root.join("probe")).unwrap();
        let attrs = attr::set(&probe, META_ATTR, b"x").is_ok();
        drop(probe);
        fs::remove_file(root.join("probe")).unwrap();

        let mut f = s.create_described("cam-1", br#"{"stream":"cam"}"#).unwrap();
        f.write(&[Bytes::from_static(b"body")]).unwrap();
        let found = s.partials();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].meta, br#"{"stream":"cam"}"#);
        assert_eq!(found[0].path, root.join(PARTIAL_DIR).join("cam-1.part"));
        if attrs {
            assert_eq!(partial_names(&root), ["cam-1.part"], "no second file beside it");
            assert!(found[0].meta_path.is_none());
        } else {
            assert_eq!(partial_names(&root), ["cam-1.part", "cam-1.part.meta"]);
        }
        f.finish("out/cam.flv", Finalize::default()).unwrap();
        assert_eq!(fs::read(root.join("out/cam.flv")).unwrap(), b"body");
        assert!(attr::get(&root.join("out/cam.flv"), META_ATTR).is_err(), "the description stays off the recording");
        assert!(partial_names(&root).is_empty());
        assert!(s.partials().is_empty());

        // A file recovery gave up on is forgotten: kept, no longer listed.
        let mut g = s.create_described("cam-2", b"{}").unwrap();
        g.write(&[Bytes::from_static(b"x")]).unwrap();
        let left = s.partials();
        assert_eq!(left.len(), 1);
        left[0].forget();
        assert!(s.partials().is_empty());
        assert!(root.join(PARTIAL_DIR).join("cam-2.part").is_file());
        // Given up: the file and its description go.
        g.abort();
        assert!(partial_names(&root).is_empty());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn a_description_too_long_for_an_attribute_goes_beside_the_file() {
        let root = tmpdir("described-long");
        let s = FsStorage::new(&root).unwrap();
        // Past the kernel's 64 KiB limit for one attribute's value, on every file system.
        let meta = vec![b'm'; 70 << 10];
        let mut f = s.create_described("long", &meta).unwrap();
        f.write(&[Bytes::from_static(b"body")]).unwrap();
        assert_eq!(partial_names(&root), ["long.part", "long.part.meta"]);
        let found = s.partials();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].meta, meta);
        assert_eq!(found[0].meta_path.as_deref(), Some(root.join(PARTIAL_DIR).join("long.part.meta").as_path()));
        f.finish("long.bin", Finalize::default()).unwrap();
        assert!(partial_names(&root).is_empty(), "the description beside it goes with the close");
        // A description whose file is gone is stale: removed when listed.
        fs::write(root.join(PARTIAL_DIR).join("gone.part.meta"), b"{}").unwrap();
        assert!(s.partials().is_empty());
        assert!(partial_names(&root).is_empty());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn publishing_never_replaces_a_file_even_when_two_close_at_once() {
        let root = tmpdir("no-replace");
        let s = std::sync::Arc::new(FsStorage::new(&root).unwrap());
        let keys: Vec<String> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let s = s.clone();
                    sc.spawn(move || {
                        let mut f = s.create(&format!("f{i}")).unwrap();
                        f.write(&[Bytes::from(format!("file {i}"))]).unwrap();
                        f.finish("same/name.flv", Finalize::default()).unwrap().key
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 8, "{keys:?}");
        let mut bodies: Vec<String> =
            keys.iter().map(|k| String::from_utf8(fs::read(root.join(k)).unwrap()).unwrap()).collect();
        bodies.sort();
        assert_eq!(bodies, (0..8).map(|i| format!("file {i}")).collect::<Vec<_>>());
        let _ = fs::remove_dir_all(&root);
    }
}
