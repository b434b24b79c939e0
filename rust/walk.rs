//! The start-up walk, spread over a few threads.
//!
//! Placing a watch and listing a directory are system calls, and they are almost all of the
//! start-up time for a large tree. Workers share a stack of directories; each one places the
//! watch *before* listing (so a file created meanwhile is listed or produces an event) and
//! looks at files relative to the open directory. The worker thread of the core consumes the
//! results as they come and does all the bookkeeping, so the core's state stays single-threaded.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use crate::inotify::Inotify;

/// One directory, watched (or not) and listed (or not).
pub struct Listed {
    pub dir: PathBuf,
    /// The watch descriptor; `None` when no inotify watch was asked for (the start directory).
    pub watch: Option<io::Result<i32>>,
    /// Files found (with their size and mtime) when the listing worked.
    pub listing: io::Result<Vec<(PathBuf, FileStat)>>,
    /// Subdirectories `descend` turned down.
    pub skipped: Vec<PathBuf>,
}

/// What the walk learns of a file: enough to tell later whether it changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    pub size: u64,
    /// Nanoseconds since the epoch.
    pub mtime: i64,
}

impl FileStat {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStat {
            size: meta.len(),
            mtime: nanos(meta.mtime(), meta.mtime_nsec()),
        }
    }
}

/// A time as nanoseconds since the epoch (saturating, ~292 years either way).
fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// What a directory holds: its subdirectories and its other entries (files, links, ...).
pub enum Found {
    Dir(PathBuf),
    File(PathBuf, FileStat),
}

struct Work {
    stack: Vec<PathBuf>,
    /// Workers holding a directory they have not finished.
    busy: usize,
}

/// Walk `start` (already watched by the caller) and every subdirectory `descend` accepts.
/// `sink` gets every directory as it is done, on the calling thread.
pub fn walk_parallel(
    start: &Path,
    inotify: Option<&Inotify>,
    threads: usize,
    descend: &(dyn Fn(&Path) -> bool + Sync),
    stop: &AtomicBool,
    mut sink: impl FnMut(Listed),
) {
    let work = Mutex::new(Work {
        stack: vec![start.to_path_buf()],
        busy: 0,
    });
    let more = Condvar::new();
    let (tx, rx) = crossbeam_channel::unbounded::<Listed>();
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            let tx = tx.clone();
            let (work, more) = (&work, &more);
            scope.spawn(move || {
                while let Some(dir) = next_dir(work, more, stop) {
                    let listed = visit(&dir, dir.as_path() != start, inotify, descend, work, more);
                    let _ = tx.send(listed);
                    let mut w = work.lock().unwrap_or_else(|e| e.into_inner());
                    w.busy -= 1;
                    if w.busy == 0 && w.stack.is_empty() {
                        more.notify_all();
                    }
                }
            });
        }
        drop(tx);
        for listed in rx {
            sink(listed);
        }
    });
}

/// The next directory to visit; None when the walk is over (or stopped).
fn next_dir(work: &Mutex<Work>, more: &Condvar, stop: &AtomicBool) -> Option<PathBuf> {
    let mut w = work.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(dir) = w.stack.pop() {
            w.busy += 1;
            return Some(dir);
        }
        if w.busy == 0 {
            return None;
        }
        w = more.wait(w).unwrap_or_else(|e| e.into_inner());
    }
}

fn visit(
    dir: &Path,
    place_watch: bool,
    inotify: Option<&Inotify>,
    descend: &(dyn Fn(&Path) -> bool + Sync),
    work: &Mutex<Work>,
    more: &Condvar,
) -> Listed {
    let watch = match (place_watch, inotify) {
        (true, Some(ino)) => Some(ino.add(dir)),
        _ => None,
    };
    let mut skipped = Vec::new();
    if matches!(watch, Some(Err(_))) {
        return Listed {
            dir: dir.to_path_buf(),
            watch,
            listing: Ok(Vec::new()),
            skipped,
        };
    }
    let listing = list(dir, descend, work, more, &mut skipped);
    Listed {
        dir: dir.to_path_buf(),
        watch,
        listing,
        skipped,
    }
}

fn list(
    dir: &Path,
    descend: &(dyn Fn(&Path) -> bool + Sync),
    work: &Mutex<Work>,
    more: &Condvar,
    skipped: &mut Vec<PathBuf>,
) -> io::Result<Vec<(PathBuf, FileStat)>> {
    let mut files = Vec::new();
    let mut subdirs = Vec::new();
    read_entries(dir, |found| match found {
        Found::Dir(path) if descend(&path) => subdirs.push(path),
        Found::Dir(path) => skipped.push(path),
        Found::File(path, stat) => files.push((path, stat)),
    })?;
    if !subdirs.is_empty() {
        let mut w = work.lock().unwrap_or_else(|e| e.into_inner());
        let n = subdirs.len();
        w.stack.append(&mut subdirs);
        drop(w);
        if n == 1 {
            more.notify_one();
        } else {
            more.notify_all();
        }
    }
    Ok(files)
}

/// Every entry of `dir` but `.` and `..`. Files are looked at relative to the open directory
/// (no path lookup). Entries that vanish meanwhile are left out.
#[cfg(target_os = "linux")]
pub fn read_entries(dir: &Path, mut found: impl FnMut(Found)) -> io::Result<()> {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    read_names(dir, |fd, c_name, _ino, d_type| {
        let stat = if d_type == libc::DT_DIR {
            None
        } else {
            match stat_at(fd, c_name) {
                Some(st) => Some(st),
                None => return, // vanished
            }
        };
        let path = dir.join(OsStr::from_bytes(c_name.to_bytes()));
        match stat {
            None => found(Found::Dir(path)),
            Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => found(Found::Dir(path)),
            Some(st) => found(Found::File(
                path,
                FileStat {
                    size: u64::try_from(st.st_size).unwrap_or(0),
                    mtime: nanos(st.st_mtime, st.st_mtime_nsec),
                },
            )),
        }
    })
}

/// Every name in `dir` but `.` and `..`, with the open directory's descriptor (for `*at`
/// calls), the inode number and the type (`DT_*`) the listing gives.
#[cfg(target_os = "linux")]
pub fn read_names(
    dir: &Path,
    mut name: impl FnMut(std::os::fd::RawFd, &std::ffi::CStr, u64, u8),
) -> io::Result<()> {
    use std::cell::RefCell;
    use std::ffi::{CStr, CString};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    // getdents64 straight into a buffer each thread keeps: glibc's opendir would fstat the
    // directory and allocate 32 KiB for every one of 100,000 directories.
    thread_local! {
        static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
    }
    let c_dir =
        CString::new(dir.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated path; the descriptor is owned (and closed) by `fd`.
    let raw = unsafe {
        libc::open(
            c_dir.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just opened and is not owned elsewhere.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        loop {
            // SAFETY: the buffer is valid for writes of its whole length.
            let n =
                unsafe { libc::syscall(libc::SYS_getdents64, fd.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let filled = usize::try_from(n).unwrap_or(0);
            if filled == 0 {
                return Ok(());
            }
            let mut at = 0;
            // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, NUL-terminated name.
            while at + 19 <= filled {
                let reclen = usize::from(u16::from_ne_bytes([buf[at + 16], buf[at + 17]]));
                if reclen == 0 || at + reclen > filled {
                    break;
                }
                let mut ino = [0u8; 8];
                ino.copy_from_slice(&buf[at..at + 8]);
                let d_type = buf[at + 18];
                let record = &buf[at + 19..at + reclen];
                at += reclen;
                // The kernel NUL-terminates the name inside the record: it is used in place.
                let Ok(c_name) = CStr::from_bytes_until_nul(record) else {
                    continue;
                };
                let bytes = c_name.to_bytes();
                if bytes == b"." || bytes == b".." {
                    continue;
                }
                name(fd.as_raw_fd(), c_name, u64::from_ne_bytes(ino), d_type);
            }
        }
    })
}

/// `lstat` of `name` inside the open directory `dir_fd`; None if it cannot be looked at.
#[cfg(target_os = "linux")]
pub fn stat_at(dir_fd: std::os::fd::RawFd, name: &std::ffi::CStr) -> Option<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid directory descriptor, a NUL-terminated name and room for the result.
    let rc = unsafe { libc::fstatat(dir_fd, name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    // SAFETY: fstatat filled the struct when it returned 0.
    (rc == 0).then(|| unsafe { st.assume_init() })
}

/// The portable version: std's directory reader.
#[cfg(not(target_os = "linux"))]
pub fn read_entries(dir: &Path, mut found: impl FnMut(Found)) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            found(Found::Dir(entry.path()));
        } else {
            found(Found::File(entry.path(), FileStat::of(&meta)));
        }
    }
    Ok(())
}

/// How many threads walk: the machine's cores, at most 4 (beyond that the kernel's locks win).
pub fn walk_threads() -> usize {
    if let Some(n) = std::env::var("OMERO_DROPBOX_WALK_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn entries_are_directories_or_files_with_their_lstat_size_and_mtime() -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir()?;
        let r = root.path();
        std::fs::create_dir(r.join("sub"))?;
        std::fs::write(r.join("a.tif"), b"12345")?;
        std::os::unix::fs::symlink(r.join("sub"), r.join("link-to-sub"))?;
        let odd = r.join(std::ffi::OsStr::from_bytes(b"caf\xe9.tif"));
        std::fs::write(&odd, b"x")?;
        let mut dirs = Vec::new();
        let mut files = Vec::new();
        read_entries(r, |found| match found {
            Found::Dir(p) => dirs.push(p),
            Found::File(p, st) => files.push((p, st)),
        })?;
        files.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            dirs,
            vec![r.join("sub")],
            "a link to a directory is not descended into"
        );
        let names: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
        let mut expected = vec![r.join("a.tif"), odd.clone(), r.join("link-to-sub")];
        expected.sort();
        assert_eq!(names, expected);
        let meta = std::fs::symlink_metadata(r.join("a.tif"))?;
        let a = files
            .iter()
            .find(|(p, _)| p == &r.join("a.tif"))
            .map(|(_, st)| *st);
        assert_eq!(
            a,
            Some(FileStat {
                size: 5,
                mtime: meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
            })
        );
        let missing = read_entries(&r.join("nope"), |_| {});
        assert_eq!(missing.err().map(|e| e.kind()), Some(io::ErrorKind::NotFound));
        Ok(())
    }

    #[test]
    fn visits_every_allowed_directory_once_and_lists_files() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        for i in 0..20 {
            for j in 0..5 {
                let d = root.path().join(format!("d{i}")).join(format!("e{j}"));
                std::fs::create_dir_all(&d)?;
                std::fs::write(d.join("f.tif"), b"x")?;
            }
        }
        std::fs::create_dir_all(root.path().join("skip/deeper"))?;
        let ino = Inotify::new()?;
        let stop = AtomicBool::new(false);
        let descend = |p: &Path| !p.ends_with("skip");
        let mut dirs = Vec::new();
        let mut files = 0;
        walk_parallel(root.path(), Some(&ino), 3, &descend, &stop, |l| {
            assert!(l.watch.as_ref().is_none_or(|w| w.is_ok()));
            files += l.listing.map(|f| f.len()).unwrap_or(0);
            dirs.push(l.dir);
        });
        dirs.sort();
        let before = dirs.len();
        dirs.dedup();
        assert_eq!(before, dirs.len(), "no directory twice");
        assert_eq!(dirs.len(), 1 + 20 + 100);
        assert_eq!(files, 100);
        assert!(!dirs.iter().any(|d| d.starts_with(root.path().join("skip"))));
        Ok(())
    }
}
