//! The start-up walk, spread over a few threads.
//!
//! Placing a watch and listing a directory are system calls, and they are almost all of the
//! start-up time for a large tree. Workers share a stack of directories; each one places the
//! watch *before* listing (so a file created meanwhile is listed or produces an event) and
//! looks at files relative to the open directory. The worker thread of the core consumes the
//! results as they come and does all the bookkeeping, so the core's state stays single-threaded.

use std::fs::Metadata;
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
    /// Files found (with their metadata) when the listing worked.
    pub listing: io::Result<Vec<(PathBuf, Metadata)>>,
    /// Subdirectories `descend` turned down.
    pub skipped: Vec<PathBuf>,
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
) -> io::Result<Vec<(PathBuf, Metadata)>> {
    let mut files = Vec::new();
    let mut subdirs = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            let path = entry.path();
            if descend(&path) {
                subdirs.push(path);
            } else {
                skipped.push(path);
            }
        } else if let Ok(meta) = entry.metadata() {
            // DirEntry::metadata stats relative to the open directory: no path lookup.
            files.push((entry.path(), meta));
        }
    }
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
            assert!(l.watch.as_ref().map_or(true, |w| w.is_ok()));
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
