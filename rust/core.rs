//! The watcher core: one worker thread that owns the notify backends, keeps a
//! per-path state machine and hands READY events to the Python side.
//!
//! Flow: notify backend thread -> channel -> worker (`Core::handle`) -> per-path
//! `Entry` (writing / settling / closing / done) -> deadline heap -> `Outbox`.
//! Python only ever sees the `Outbox`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, Flag, ModifyKind, RenameMode};
use notify::{Config, Event, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};

use crate::filter::Filter;
use crate::fsinfo::network_fs_name;

/// Upstream `PathMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Flat,
    Recurse,
    Follow,
}

/// Which backend a watcher should use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Native,
    Poll,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Native,
    Poll,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Native => "native",
            Backend::Poll => "poll",
        }
    }
}

/// Upstream `WatchEventType`, as a set.
#[derive(Clone, Copy, Debug, Default)]
pub struct EventTypes {
    pub creation: bool,
    pub modification: bool,
    pub deletion: bool,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub roots: Vec<PathBuf>,
    pub mode: Mode,
    pub types: EventTypes,
    pub ignore_dir_events: bool,
    pub filter: Filter,
    pub settle: Duration,
    pub close_grace: Duration,
    pub write_timeout: Duration,
    pub backend: BackendChoice,
    pub poll_interval: Duration,
    pub initial_scan: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Created,
    Modified,
    Deleted,
    Moved,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Created => "created",
            Kind::Modified => "modified",
            Kind::Deleted => "deleted",
            Kind::Moved => "moved",
        }
    }
}

#[derive(Clone, Debug)]
pub struct OutEvent {
    pub kind: Kind,
    pub path: PathBuf,
    pub src: Option<PathBuf>,
    pub is_dir: bool,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub raw_events: u64,
    pub overflows: u64,
    pub rescans: u64,
    pub watches: u64,
    pub reported: u64,
    pub pending: u64,
    pub tracked: u64,
    pub denied: u64,
    pub poll_roots: u64,
}

pub const LOG_INFO: u8 = 20;
pub const LOG_WARNING: u8 = 30;
pub const LOG_ERROR: u8 = 40;
const MAX_BUFFERED_LOGS: usize = 10_000;

/// What the worker hands to Python, guarded by `Shared::out`.
#[derive(Default)]
pub struct Outbox {
    pub events: VecDeque<OutEvent>,
    pub logs: Vec<(u8, String)>,
    pub dropped_logs: u64,
    pub first_at: Option<Instant>,
    pub last_at: Option<Instant>,
    pub finished: bool,
    pub setup: Option<Result<(), String>>,
    pub stats: Stats,
    /// (root, "native" | "poll") for every root.
    pub backends: Vec<(PathBuf, &'static str)>,
}

#[derive(Default)]
pub struct Shared {
    pub out: Mutex<Outbox>,
    pub cond: Condvar,
    pub stop: AtomicBool,
}

impl Shared {
    /// Lock the outbox; a poisoned lock still holds consistent data (we only push).
    pub fn lock(&self) -> MutexGuard<'_, Outbox> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A writer has the file open (open or write seen, no close yet).
    Writing,
    /// No close event will come (or the file was found by a scan): wait for size and mtime to hold still.
    Settling,
    /// Closed after writing: READY after a short grace period unless written again.
    Closing,
    /// Reported (or part of the baseline); quiet.
    Done,
}

#[derive(Clone, Debug)]
struct Entry {
    phase: Phase,
    /// Reported to Python before (the next READY is a modification).
    reported: bool,
    size: u64,
    mtime: (i64, i64),
    deadline: Option<Instant>,
}

/// How a file came to our attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Created,
    Opened,
    Written,
    ClosedWrite,
    MovedIn,
    Scanned,
    Baseline,
    Changed,
}

enum WatchFail {
    Denied,
    Gone,
    Limit(String),
    Other(String),
}

struct Root {
    path: PathBuf,
    backend: Backend,
    /// One watch per directory (inotify, polling) rather than one recursive watch (FSEvents, Windows).
    per_dir: bool,
}

type NotifyResult = notify::Result<Event>;

pub struct Core {
    opts: Options,
    shared: Arc<Shared>,
    tx: crossbeam_channel::Sender<NotifyResult>,
    rx: Receiver<NotifyResult>,
    native: Option<RecommendedWatcher>,
    poll: Option<PollWatcher>,
    roots: Vec<Root>,
    dirs: HashSet<PathBuf>,
    denied: HashMap<PathBuf, usize>,
    files: HashMap<PathBuf, Entry>,
    heap: BinaryHeap<Reverse<(Instant, PathBuf)>>,
    pending_from: HashMap<usize, (PathBuf, Instant)>,
    rescan_needed: bool,
    out: Vec<OutEvent>,
    logs: Vec<(u8, String)>,
    stats: Stats,
    last_denied_retry: Instant,
    setting_up: bool,
}

const DENIED_RETRY: Duration = Duration::from_secs(5);
const UNPAIRED_RENAME: Duration = Duration::from_millis(50);
const TICK: Duration = Duration::from_millis(100);
const DRAIN_MAX: usize = 20_000;
const COUNTS_EVERY: Duration = Duration::from_secs(1);

fn mtime_of(meta: &std::fs::Metadata) -> (i64, i64) {
    (meta.mtime(), meta.mtime_nsec())
}

fn classify(err: &notify::Error) -> WatchFail {
    match &err.kind {
        notify::ErrorKind::PathNotFound | notify::ErrorKind::WatchNotFound => WatchFail::Gone,
        notify::ErrorKind::MaxFilesWatch => WatchFail::Limit(err.to_string()),
        notify::ErrorKind::Io(e) => match e.kind() {
            io::ErrorKind::PermissionDenied => WatchFail::Denied,
            io::ErrorKind::NotFound => WatchFail::Gone,
            _ if e.raw_os_error() == Some(libc::ENOSPC) => WatchFail::Limit(e.to_string()),
            _ => WatchFail::Other(e.to_string()),
        },
        _ => WatchFail::Other(err.to_string()),
    }
}

fn read_sysctl(name: &str) -> String {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".to_string())
}

impl Core {
    pub fn new(opts: Options, shared: Arc<Shared>) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Core {
            opts,
            shared,
            tx,
            rx,
            native: None,
            poll: None,
            roots: Vec::new(),
            dirs: HashSet::new(),
            denied: HashMap::new(),
            files: HashMap::new(),
            heap: BinaryHeap::new(),
            pending_from: HashMap::new(),
            rescan_needed: false,
            out: Vec::new(),
            logs: Vec::new(),
            stats: Stats::default(),
            last_denied_retry: Instant::now(),
            setting_up: true,
        }
    }

    fn log(&mut self, level: u8, msg: String) {
        self.logs.push((level, msg));
    }

    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    // ----------------------------------------------------------------- setup

    /// Place the watches and do the start-up walk. Errors name the path and the fix.
    pub fn setup(&mut self) -> Result<(), String> {
        let roots = self.opts.roots.clone();
        for (idx, root) in roots.iter().enumerate() {
            let backend = self.choose_backend(root)?;
            let per_dir = backend == Backend::Poll || cfg!(target_os = "linux");
            self.roots.push(Root {
                path: root.clone(),
                backend,
                per_dir,
            });
            if backend == Backend::Poll {
                self.stats.poll_roots += 1;
            }
            if !per_dir {
                let recursive = if self.opts.mode == Mode::Flat {
                    RecursiveMode::NonRecursive
                } else {
                    RecursiveMode::Recursive
                };
                let res = self.watcher_for(backend).and_then(|w| {
                    w.watch(root, recursive)
                        .map_err(|e| format!("cannot watch {}: {e}", root.display()))
                });
                res?;
            }
            match self.add_watch(idx, root) {
                Ok(()) => {}
                Err(WatchFail::Denied) => {
                    return Err(format!(
                    "permission denied watching {}: the service user needs read and execute permission on it",
                    root.display()
                ))
                }
                Err(WatchFail::Gone) => return Err(format!("watch root vanished: {}", root.display())),
                Err(WatchFail::Limit(msg)) => {
                    if self.opts.backend == BackendChoice::Auto {
                        self.fall_back_to_poll(idx, &msg);
                        self.add_watch(idx, root).map_err(|_| {
                            format!(
                                "cannot poll {} after the inotify watch limit was hit",
                                root.display()
                            )
                        })?;
                    } else {
                        return Err(self.limit_message(root, &msg));
                    }
                }
                Err(WatchFail::Other(msg)) => return Err(format!("cannot watch {}: {msg}", root.display())),
            }
            let seen = if self.opts.initial_scan {
                Seen::Scanned
            } else {
                Seen::Baseline
            };
            self.walk(idx, root.clone(), seen, false);
        }
        self.setting_up = false;
        Ok(())
    }

    fn choose_backend(&mut self, root: &Path) -> Result<Backend, String> {
        match self.opts.backend {
            BackendChoice::Poll => Ok(Backend::Poll),
            BackendChoice::Native => {
                self.ensure_native()
                    .map_err(|e| format!("native file watching is unavailable: {e}"))?;
                Ok(Backend::Native)
            }
            BackendChoice::Auto => {
                if let Some(fs) = network_fs_name(root) {
                    self.log(
                        LOG_WARNING,
                        format!(
                            "{} is on a network filesystem ({fs}); kernel events miss writes from other hosts, so it is polled every {:.1}s",
                            root.display(),
                            self.opts.poll_interval.as_secs_f64()
                        ),
                    );
                    return Ok(Backend::Poll);
                }
                match self.ensure_native() {
                    Ok(()) => Ok(Backend::Native),
                    Err(e) => {
                        self.log(
                            LOG_WARNING,
                            format!(
                                "native file watching is unavailable ({e}); polling {} instead",
                                root.display()
                            ),
                        );
                        Ok(Backend::Poll)
                    }
                }
            }
        }
    }

    fn ensure_native(&mut self) -> Result<(), String> {
        if self.native.is_none() {
            let tx = self.tx.clone();
            let handler = move |res: NotifyResult| {
                let _ = tx.send(res);
            };
            let w = RecommendedWatcher::new(handler, Config::default().with_follow_symlinks(false))
                .map_err(|e| e.to_string())?;
            self.native = Some(w);
        }
        Ok(())
    }

    fn watcher_for(&mut self, backend: Backend) -> Result<&mut dyn Watcher, String> {
        match backend {
            Backend::Native => {
                self.ensure_native()?;
                self.native
                    .as_mut()
                    .map(|w| w as &mut dyn Watcher)
                    .ok_or_else(|| "no native watcher".into())
            }
            Backend::Poll => {
                if self.poll.is_none() {
                    let tx = self.tx.clone();
                    let handler = move |res: NotifyResult| {
                        let _ = tx.send(res);
                    };
                    let config = Config::default()
                        .with_poll_interval(self.opts.poll_interval)
                        .with_follow_symlinks(false);
                    self.poll = Some(PollWatcher::new(handler, config).map_err(|e| e.to_string())?);
                }
                self.poll
                    .as_mut()
                    .map(|w| w as &mut dyn Watcher)
                    .ok_or_else(|| "no poll watcher".into())
            }
        }
    }

    fn limit_message(&self, dir: &Path, msg: &str) -> String {
        let current = read_sysctl("fs.inotify.max_user_watches");
        format!(
            "inotify watch limit reached while watching {} ({msg}); fs.inotify.max_user_watches is {current}. \
             Raise it (e.g. `sysctl fs.inotify.max_user_watches=1048576`) or use backend 'poll'",
            dir.display()
        )
    }

    /// Move every directory of root `idx` from the native backend to polling.
    fn fall_back_to_poll(&mut self, idx: usize, msg: &str) {
        let root_path = self.roots[idx].path.clone();
        let text = self.limit_message(&root_path, msg);
        self.log(
            LOG_WARNING,
            format!("{text}; falling back to polling for {}", root_path.display()),
        );
        let moved: Vec<PathBuf> = self
            .dirs
            .iter()
            .filter(|d| d.starts_with(&root_path))
            .cloned()
            .collect();
        if let Some(native) = self.native.as_mut() {
            for d in &moved {
                let _ = native.unwatch(d);
            }
        }
        self.roots[idx].backend = Backend::Poll;
        self.roots[idx].per_dir = true;
        self.stats.poll_roots += 1;
        for d in moved {
            self.dirs.remove(&d);
            self.stats.watches = self.stats.watches.saturating_sub(1);
            let _ = self.add_watch(idx, &d);
        }
        self.rescan_needed = true;
    }

    fn add_watch(&mut self, idx: usize, dir: &Path) -> Result<(), WatchFail> {
        if self.dirs.contains(dir) {
            return Ok(());
        }
        let (backend, per_dir) = (self.roots[idx].backend, self.roots[idx].per_dir);
        if per_dir {
            let w = self.watcher_for(backend).map_err(WatchFail::Other)?;
            if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
                return Err(classify(&e));
            }
            self.stats.watches += 1;
        }
        self.dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn remove_dir_watch(&mut self, dir: &Path) {
        if !self.dirs.remove(dir) {
            return;
        }
        if let Some(idx) = self.root_of(dir) {
            let (backend, per_dir) = (self.roots[idx].backend, self.roots[idx].per_dir);
            if per_dir {
                self.stats.watches = self.stats.watches.saturating_sub(1);
                let w = match backend {
                    Backend::Native => self.native.as_mut().map(|w| w as &mut dyn Watcher),
                    Backend::Poll => self.poll.as_mut().map(|w| w as &mut dyn Watcher),
                };
                // The kernel drops watches of deleted or moved directories itself; an error here is expected.
                if let Some(w) = w {
                    let _ = w.unwatch(dir);
                }
            }
        }
    }

    fn root_of(&self, path: &Path) -> Option<usize> {
        // The longest matching root wins (roots may nest).
        self.roots
            .iter()
            .enumerate()
            .filter(|(_, r)| path.starts_with(&r.path))
            .max_by_key(|(_, r)| r.path.as_os_str().len())
            .map(|(i, _)| i)
    }

    fn closes(&self, idx: usize) -> bool {
        self.roots[idx].backend == Backend::Native && cfg!(target_os = "linux")
    }

    // ------------------------------------------------------------------ walk

    /// Watch `start` and every allowed directory below it (as the mode permits) and
    /// register every file found with `seen`. Watches are placed before the listing,
    /// so a file created meanwhile is either listed or produces an event.
    fn walk(&mut self, idx: usize, start: PathBuf, seen: Seen, emit_dirs: bool) {
        let root = self.roots[idx].path.clone();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            if self.stopped() {
                return;
            }
            let is_root = dir == root;
            if !is_root {
                if !self.opts.filter.dir_allowed(&root, &dir) {
                    continue;
                }
                let follow = match self.opts.mode {
                    Mode::Flat => false,
                    // Recurse: only the directories that existed at start-up.
                    Mode::Recurse => self.setting_up || self.dirs.contains(&dir),
                    Mode::Follow => true,
                };
                if !follow {
                    continue;
                }
                match self.add_watch(idx, &dir) {
                    Ok(()) => {}
                    Err(WatchFail::Denied) => {
                        self.note_denied(idx, &dir);
                        continue;
                    }
                    Err(WatchFail::Gone) => continue,
                    Err(WatchFail::Limit(msg)) => {
                        if self.opts.backend == BackendChoice::Auto
                            && self.roots[idx].backend == Backend::Native
                        {
                            self.fall_back_to_poll(idx, &msg);
                            if self.add_watch(idx, &dir).is_err() {
                                continue;
                            }
                        } else {
                            let text = self.limit_message(&dir, &msg);
                            self.log(LOG_ERROR, text);
                            continue;
                        }
                    }
                    Err(WatchFail::Other(msg)) => {
                        self.log(LOG_WARNING, format!("cannot watch {}: {msg}", dir.display()));
                        continue;
                    }
                }
                if emit_dirs {
                    self.emit(Kind::Created, dir.clone(), None, true);
                }
            }
            let entries = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    self.note_denied(idx, &dir);
                    continue;
                }
                Err(_) => continue,
            };
            if self.denied.remove(&dir).is_some() {
                self.stats.denied = self.denied.len() as u64;
                self.log(
                    LOG_INFO,
                    format!("{} is readable now; watching it", dir.display()),
                );
            }
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    if self.opts.mode != Mode::Flat {
                        stack.push(path);
                    }
                } else if self.opts.filter.file_allowed(&root, &path) {
                    self.on_file(idx, path, seen);
                }
            }
        }
    }

    fn note_denied(&mut self, idx: usize, dir: &Path) {
        if self.denied.insert(dir.to_path_buf(), idx).is_none() {
            self.stats.denied = self.denied.len() as u64;
            self.log(
                LOG_WARNING,
                format!(
                    "permission denied: cannot read {}; its files are picked up as soon as it becomes readable",
                    dir.display()
                ),
            );
        }
    }

    fn retry_denied(&mut self) {
        let denied: Vec<(PathBuf, usize)> = self.denied.iter().map(|(p, i)| (p.clone(), *i)).collect();
        for (dir, idx) in denied {
            if !dir.exists() {
                self.denied.remove(&dir);
                continue;
            }
            if std::fs::read_dir(&dir).is_ok() {
                self.walk(idx, dir, Seen::Scanned, !self.opts.ignore_dir_events);
            }
        }
        self.stats.denied = self.denied.len() as u64;
    }

    // ---------------------------------------------------------- file states

    fn schedule(&mut self, path: &Path, after: Duration) -> Instant {
        let at = Instant::now() + after;
        self.heap.push(Reverse((at, path.to_path_buf())));
        at
    }

    fn on_file(&mut self, idx: usize, path: PathBuf, seen: Seen) {
        let closes = self.closes(idx);
        let (settle, grace, write_timeout) =
            (self.opts.settle, self.opts.close_grace, self.opts.write_timeout);
        let next = match self.files.get(&path) {
            None => {
                let meta = match std::fs::symlink_metadata(&path) {
                    Ok(m) if !m.is_dir() => m,
                    _ => return,
                };
                let (phase, reported) = match seen {
                    Seen::Baseline => (Phase::Done, true),
                    Seen::ClosedWrite => (Phase::Closing, false),
                    Seen::MovedIn if closes => (Phase::Closing, false),
                    Seen::Opened | Seen::Written if closes => (Phase::Writing, false),
                    _ => (Phase::Settling, false),
                };
                let entry = Entry {
                    phase,
                    reported,
                    size: meta.len(),
                    mtime: mtime_of(&meta),
                    deadline: None,
                };
                self.files.insert(path.clone(), entry);
                Some(phase)
            }
            Some(e) => {
                let phase = e.phase;
                match seen {
                    Seen::Baseline => None,
                    // An open of a quiet file is a reader (the importer, an indexer), not a writer.
                    Seen::Opened if phase == Phase::Settling && closes && !e.reported => Some(Phase::Writing),
                    Seen::Opened => None,
                    Seen::Created | Seen::Written if closes => Some(Phase::Writing),
                    Seen::Created | Seen::Written | Seen::Changed => Some(Phase::Settling),
                    Seen::ClosedWrite => Some(Phase::Closing),
                    Seen::MovedIn => Some(if closes { Phase::Closing } else { Phase::Settling }),
                    Seen::Scanned => {
                        if phase == Phase::Done && self.changed_on_disk(&path) {
                            Some(Phase::Settling)
                        } else if phase == Phase::Writing {
                            // A rescan means events were lost, the close among them perhaps:
                            // fall back to size/mtime stability (a live writer flips it back).
                            Some(Phase::Settling)
                        } else {
                            None
                        }
                    }
                }
            }
        };
        let Some(phase) = next else { return };
        let after = match phase {
            Phase::Done => return,
            Phase::Writing => write_timeout,
            Phase::Settling => settle,
            Phase::Closing => grace,
        };
        let at = self.schedule(&path, after);
        if let Some(e) = self.files.get_mut(&path) {
            e.phase = phase;
            e.deadline = Some(at);
        }
    }

    fn changed_on_disk(&self, path: &Path) -> bool {
        match (std::fs::symlink_metadata(path), self.files.get(path)) {
            (Ok(m), Some(e)) => m.len() != e.size || mtime_of(&m) != e.mtime,
            _ => false,
        }
    }

    /// Handle every entry whose deadline has passed.
    fn process_deadlines(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, _))) = self.heap.peek() {
            if *at > now || self.stopped() {
                break;
            }
            let Some(Reverse((at, path))) = self.heap.pop() else {
                break;
            };
            let Some(entry) = self.files.get(&path) else {
                continue;
            };
            if entry.deadline != Some(at) || entry.phase == Phase::Done {
                continue; // superseded by later activity
            }
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(_) => {
                    self.forget_file(&path);
                    continue;
                }
            };
            let (size, mtime) = (meta.len(), mtime_of(&meta));
            let stable = size == entry.size && mtime == entry.mtime;
            let ready = match entry.phase {
                Phase::Closing => true,
                Phase::Settling | Phase::Writing => stable,
                Phase::Done => false,
            };
            let after = if entry.phase == Phase::Writing {
                self.opts.write_timeout
            } else {
                self.opts.settle
            };
            if ready {
                let was_reported = entry.reported;
                if let Some(e) = self.files.get_mut(&path) {
                    e.phase = Phase::Done;
                    e.reported = true;
                    e.size = size;
                    e.mtime = mtime;
                    e.deadline = None;
                }
                let kind = if was_reported {
                    Kind::Modified
                } else {
                    Kind::Created
                };
                self.emit(kind, path, None, false);
            } else {
                let at = self.schedule(&path, after);
                if let Some(e) = self.files.get_mut(&path) {
                    e.size = size;
                    e.mtime = mtime;
                    e.deadline = Some(at);
                }
            }
        }
    }

    /// A file is gone: a pending one is dropped silently, a reported one is a deletion.
    fn forget_file(&mut self, path: &Path) {
        if let Some(e) = self.files.remove(path) {
            if e.reported {
                self.emit(Kind::Deleted, path.to_path_buf(), None, false);
            }
        }
    }

    fn emit(&mut self, kind: Kind, path: PathBuf, src: Option<PathBuf>, is_dir: bool) {
        if is_dir && self.opts.ignore_dir_events {
            return;
        }
        let t = self.opts.types;
        let wanted = match kind {
            Kind::Created => t.creation,
            Kind::Modified => t.modification,
            Kind::Deleted => t.deletion,
            Kind::Moved => t.creation || t.deletion,
        };
        if wanted {
            self.out.push(OutEvent {
                kind,
                path,
                src,
                is_dir,
            });
        }
    }

    // ---------------------------------------------------- directory changes

    fn on_removed(&mut self, path: &Path) {
        let was_dir = self.dirs.contains(path);
        if was_dir {
            let sub: Vec<PathBuf> = self
                .dirs
                .iter()
                .filter(|d| d.starts_with(path))
                .cloned()
                .collect();
            for d in sub {
                self.remove_dir_watch(&d);
            }
            let files: Vec<PathBuf> = self
                .files
                .keys()
                .filter(|f| f.starts_with(path))
                .cloned()
                .collect();
            for f in files {
                self.forget_file(&f);
            }
            self.emit(Kind::Deleted, path.to_path_buf(), None, true);
        } else {
            self.forget_file(path);
        }
        self.denied.retain(|d, _| !d.starts_with(path));
    }

    fn on_appeared(&mut self, path: PathBuf, seen: Seen) {
        let Some(idx) = self.root_of(&path) else { return };
        if !self.in_scope(idx, &path) {
            return;
        }
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                if self.opts.mode == Mode::Follow {
                    self.walk(idx, path, Seen::Scanned, true);
                }
            }
            Ok(_) => {
                if self.file_allowed(idx, &path) {
                    self.on_file(idx, path, seen);
                }
            }
            Err(_) => {}
        }
    }

    fn file_allowed(&self, idx: usize, path: &Path) -> bool {
        self.opts.filter.file_allowed(&self.roots[idx].path, path)
    }

    /// Start tracking a file we had not seen (its create event may have been lost).
    fn track_if_allowed(&mut self, idx: usize, path: PathBuf, seen: Seen) {
        if !self.dirs.contains(&path) && self.in_scope(idx, &path) && self.file_allowed(idx, &path) {
            self.on_file(idx, path, seen);
        }
    }

    /// A path's parent must be a watched directory (flat mode: the root itself).
    fn in_scope(&self, idx: usize, path: &Path) -> bool {
        match path.parent() {
            Some(parent) => match self.opts.mode {
                Mode::Flat => parent == self.roots[idx].path,
                _ => self.dirs.contains(parent),
            },
            None => false,
        }
    }

    fn on_rename(&mut self, from: PathBuf, to: PathBuf) {
        let from_known = self.files.contains_key(&from) || self.dirs.contains(&from);
        let to_idx = self.root_of(&to);
        let to_ok = to_idx.is_some_and(|i| {
            let root = self.roots[i].path.clone();
            self.in_scope(i, &to)
                && match std::fs::symlink_metadata(&to) {
                    Ok(m) if m.is_dir() => self.opts.filter.dir_allowed(&root, &to),
                    Ok(_) => self.opts.filter.file_allowed(&root, &to),
                    Err(_) => false,
                }
        });
        if !from_known {
            // e.g. `scan.part` -> `scan.tif`, or `untitled folder` -> `exp1`: a move in.
            self.on_appeared(to, Seen::MovedIn);
            return;
        }
        if !to_ok {
            self.on_removed(&from);
            return;
        }
        if self.dirs.contains(&from) {
            self.rename_dir(&from, &to);
        } else if let Some(entry) = self.files.remove(&from) {
            self.rekey(from, to, entry);
        }
    }

    fn rekey(&mut self, from: PathBuf, to: PathBuf, entry: Entry) {
        let report = entry.reported && entry.phase == Phase::Done;
        if let Some(at) = entry.deadline {
            self.heap.push(Reverse((at, to.clone())));
        }
        if let Some(old) = self.files.insert(to.clone(), entry) {
            if old.reported && !report {
                self.emit(Kind::Deleted, to.clone(), None, false);
            }
        }
        if report {
            self.emit(Kind::Moved, to, Some(from), false);
        }
    }

    fn rename_dir(&mut self, from: &Path, to: &Path) {
        let sub: Vec<PathBuf> = self
            .dirs
            .iter()
            .filter(|d| d.starts_with(from))
            .cloned()
            .collect();
        for d in sub {
            self.remove_dir_watch(&d);
        }
        let moved: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|f| f.starts_with(from))
            .cloned()
            .collect();
        for old in moved {
            if let (Some(entry), Ok(rel)) = (self.files.remove(&old), old.strip_prefix(from)) {
                let new = to.join(rel);
                self.rekey(old, new, entry);
            }
        }
        self.denied.retain(|d, _| !d.starts_with(from));
        self.emit(Kind::Moved, to.to_path_buf(), Some(from.to_path_buf()), true);
        if let Some(idx) = self.root_of(to) {
            if self.opts.mode == Mode::Follow || self.opts.mode == Mode::Recurse {
                // Re-watch under the new name and pick up anything created meanwhile.
                let was_setting_up = self.setting_up;
                self.setting_up = self.opts.mode == Mode::Recurse;
                self.walk(idx, to.to_path_buf(), Seen::Scanned, false);
                self.setting_up = was_setting_up;
            }
        }
    }

    /// Walk every root again and reconcile: report what the kernel queue dropped,
    /// and forget what vanished. Files already reported and unchanged stay quiet.
    fn rescan(&mut self) {
        self.rescan_needed = false;
        self.stats.rescans += 1;
        self.log(
            LOG_WARNING,
            "event queue overflowed or the backend asked for a rescan; rescanning all roots".into(),
        );
        for idx in 0..self.roots.len() {
            let root = self.roots[idx].path.clone();
            self.walk(idx, root, Seen::Scanned, !self.opts.ignore_dir_events);
        }
        let gone_files: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| std::fs::symlink_metadata(p).is_err())
            .cloned()
            .collect();
        for f in gone_files {
            self.forget_file(&f);
        }
        let gone_dirs: Vec<PathBuf> = self
            .dirs
            .iter()
            .filter(|d| !d.is_dir() && !self.roots.iter().any(|r| &r.path == *d))
            .cloned()
            .collect();
        for d in gone_dirs {
            self.on_removed(&d);
        }
    }

    // ---------------------------------------------------------------- events

    fn handle(&mut self, res: NotifyResult) {
        self.stats.raw_events += 1;
        let ev = match res {
            Ok(ev) => ev,
            Err(e) => {
                match classify(&e) {
                    WatchFail::Limit(msg) => {
                        let dir = e.paths.first().cloned().unwrap_or_default();
                        if let Some(idx) = self.root_of(&dir) {
                            if self.opts.backend == BackendChoice::Auto
                                && self.roots[idx].backend == Backend::Native
                            {
                                self.fall_back_to_poll(idx, &msg);
                                return;
                            }
                        }
                        let text = self.limit_message(&dir, &msg);
                        self.log(LOG_ERROR, text);
                    }
                    _ => self.log(LOG_WARNING, format!("watch backend error: {e}")),
                }
                return;
            }
        };
        if ev.flag() == Some(Flag::Rescan) {
            self.stats.overflows += 1;
            self.rescan_needed = true;
            return;
        }
        let Some(path) = ev.paths.first().cloned() else {
            return;
        };
        let Some(idx) = self.root_of(&path) else { return };
        let poll = self.roots[idx].backend == Backend::Poll;
        match ev.kind {
            EventKind::Create(kind) => {
                let is_dir = match kind {
                    CreateKind::Folder => true,
                    CreateKind::File => false,
                    _ => std::fs::symlink_metadata(&path)
                        .map(|m| m.is_dir())
                        .unwrap_or(false),
                };
                if is_dir {
                    self.on_appeared(path, Seen::Scanned);
                } else {
                    self.track_if_allowed(idx, path, Seen::Created);
                }
            }
            EventKind::Modify(ModifyKind::Name(mode)) => match mode {
                RenameMode::From => {
                    if let Some(t) = ev.tracker() {
                        self.pending_from.insert(t, (path, Instant::now()));
                    }
                }
                RenameMode::To => {
                    let paired = ev.tracker().is_some_and(|t| self.pending_from.contains_key(&t));
                    if !paired {
                        self.on_appeared(path, Seen::MovedIn);
                    }
                }
                RenameMode::Both => {
                    if let Some(t) = ev.tracker() {
                        self.pending_from.remove(&t);
                    }
                    if let (Some(from), Some(to)) = (ev.paths.first(), ev.paths.get(1)) {
                        self.on_rename(from.clone(), to.clone());
                    }
                }
                _ => {
                    // Backends without rename pairs (FSEvents, Windows): look at what is there now.
                    if std::fs::symlink_metadata(&path).is_ok() {
                        self.on_appeared(path, Seen::MovedIn);
                    } else {
                        self.on_removed(&path);
                    }
                }
            },
            EventKind::Modify(ModifyKind::Metadata(_)) => {
                if self.denied.contains_key(&path) {
                    self.walk(idx, path, Seen::Scanned, !self.opts.ignore_dir_events);
                } else if poll && self.files.contains_key(&path) {
                    self.on_file(idx, path, Seen::Changed);
                }
                // chmod/chown/touch-without-write of a file is not new data: no re-report.
            }
            EventKind::Modify(_) => {
                if self.files.contains_key(&path) {
                    self.on_file(idx, path, if poll { Seen::Changed } else { Seen::Written });
                } else {
                    self.track_if_allowed(idx, path, if poll { Seen::Changed } else { Seen::Written });
                }
            }
            EventKind::Access(AccessKind::Open(_)) if self.files.contains_key(&path) => {
                self.on_file(idx, path, Seen::Opened);
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                if self.files.contains_key(&path) {
                    self.on_file(idx, path, Seen::ClosedWrite);
                } else {
                    self.track_if_allowed(idx, path, Seen::ClosedWrite);
                }
            }
            EventKind::Remove(_) if !self.roots.iter().any(|r| r.path == path) => {
                self.on_removed(&path);
            }
            _ => {}
        }
    }

    /// Renames whose other half never came: the file moved out of the tree.
    fn expire_unpaired_renames(&mut self) {
        if self.pending_from.is_empty() {
            return;
        }
        let now = Instant::now();
        let expired: Vec<usize> = self
            .pending_from
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= UNPAIRED_RENAME)
            .map(|(t, _)| *t)
            .collect();
        for t in expired {
            if let Some((path, _)) = self.pending_from.remove(&t) {
                self.on_removed(&path);
            }
        }
    }

    /// Counting is O(files), so it is refreshed at most once a second.
    fn refresh_counts(&mut self) {
        self.stats.pending = self.files.values().filter(|e| e.phase != Phase::Done).count() as u64;
        self.stats.reported = self.files.values().filter(|e| e.reported).count() as u64;
        self.stats.tracked = self.files.len() as u64;
    }

    fn flush(&mut self) {
        let mut out = self.shared.lock();
        out.stats = self.stats;
        out.backends = self
            .roots
            .iter()
            .map(|r| (r.path.clone(), r.backend.name()))
            .collect();
        let had = !self.out.is_empty() || !self.logs.is_empty();
        if !self.out.is_empty() {
            let now = Instant::now();
            if out.events.is_empty() {
                out.first_at = Some(now);
            }
            out.last_at = Some(now);
            out.events.extend(self.out.drain(..));
        }
        for log in self.logs.drain(..) {
            if out.logs.len() < MAX_BUFFERED_LOGS {
                out.logs.push(log);
            } else {
                out.dropped_logs += 1;
            }
        }
        drop(out);
        if had {
            self.shared.cond.notify_all();
        }
    }

    /// The worker loop: runs until `Shared::stop` is set.
    pub fn run(mut self) {
        let setup = self.setup();
        let ok = setup.is_ok();
        self.flush();
        {
            let mut out = self.shared.lock();
            out.setup = Some(setup);
        }
        self.shared.cond.notify_all();
        if !ok {
            return self.finish();
        }
        let mut last_flush_stats = Instant::now();
        let mut last_counts = Instant::now();
        while !self.stopped() {
            let wait = self
                .heap
                .peek()
                .map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()))
                .unwrap_or(TICK)
                .clamp(Duration::from_millis(1), TICK);
            let wait = if self.pending_from.is_empty() {
                wait
            } else {
                wait.min(UNPAIRED_RENAME)
            };
            match self.rx.recv_timeout(wait) {
                Ok(ev) => {
                    self.handle(ev);
                    for _ in 0..DRAIN_MAX {
                        match self.rx.try_recv() {
                            Ok(ev) => self.handle(ev),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.expire_unpaired_renames();
            if self.rescan_needed {
                self.rescan();
            }
            if !self.denied.is_empty() && self.last_denied_retry.elapsed() >= DENIED_RETRY {
                self.last_denied_retry = Instant::now();
                self.retry_denied();
            }
            self.process_deadlines();
            if last_counts.elapsed() >= COUNTS_EVERY {
                last_counts = Instant::now();
                self.refresh_counts();
            }
            if !self.out.is_empty() || !self.logs.is_empty() || last_flush_stats.elapsed() >= TICK {
                last_flush_stats = Instant::now();
                self.flush();
            }
        }
        self.finish();
    }

    fn finish(mut self) {
        // Dropping the watchers stops their threads.
        self.native = None;
        self.poll = None;
        self.refresh_counts();
        self.flush();
        self.shared.lock().finished = true;
        self.shared.cond.notify_all();
    }
}
