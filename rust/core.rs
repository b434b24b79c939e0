//! The watcher core: one worker thread that owns the notify backends, keeps a
//! per-path state machine and hands READY events to the Python side.
//!
//! Flow: notify backend thread -> channel -> worker (`Core::handle`) -> per-path
//! `Entry` (writing / settling / closing / done) -> deadline heap -> `Outbox`.
//! Python only ever sees the `Outbox`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, Flag, ModifyKind, RenameMode};
use notify::{Config, Event, RecommendedWatcher, RecursiveMode, Watcher};
use rustc_hash::{FxBuildHasher, FxHashMap};

use crate::deadlines::{Clock, Deadlines, Tick};
use crate::fanotify::{self as fan, FanWatch};
use crate::filter::Filter;
use crate::fsinfo::{network_fs_name, MountTable};
use crate::inotify::{self as ino, EventBuf, Inotify};
use crate::keys::{fk, k, FileKey, Key};
use crate::poll::{default_full_sweep, PollChange, Poller};
use crate::tree::{rebase, Kids};
use crate::walk::{read_entries, walk_parallel, walk_threads, FileStat, Found, Listed};

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
    /// notify's own recommended watcher on every OS (inotify on Linux): the adapter macOS
    /// and Windows use for `Native`, run where CI can reach it.
    Notify,
    Poll,
    /// One fanotify filesystem mark (Linux, CAP_SYS_ADMIN): see fanotify.rs.
    Fanotify,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Native,
    Notify,
    Poll,
    Fanotify,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Native => "native",
            Backend::Notify => "notify",
            Backend::Poll => "poll",
            Backend::Fanotify => "fanotify",
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
    /// Every how often the poll backend lists and looks at everything (None: [`default_full_sweep`]).
    pub full_sweep: Option<Duration>,
    pub initial_scan: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Created,
    Modified,
    Deleted,
    Moved,
}

#[derive(Clone, Debug)]
pub struct OutEvent {
    pub kind: Kind,
    /// Shared with the core's own key for the path: reporting a file allocates nothing.
    pub path: Arc<Path>,
    pub src: Option<Arc<Path>>,
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
    /// (root, backend name) for every root, then (mount point, backend name) for every mount
    /// inside a root that is followed as a subtree of its own.
    pub backends: Vec<(PathBuf, &'static str)>,
    /// Wake the consumer once this many events wait (its block size; 0 = only the first event).
    /// A consumer with events pending waits on its own debounce timer, so every other flush
    /// would only cost it a context switch.
    pub wake_at: usize,
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
    /// Just created by a kernel event, no write yet. Without IN_OPEN we cannot tell a writer's
    /// open(O_CREAT) from link()/symlink(), which never close: look after `settle`.
    Created,
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
    /// Nanoseconds since the epoch.
    mtime: i64,
    /// When the current phase ends (NONE: it does not).
    deadline: Tick,
    /// The earliest time this path sits in the queue for; a later `deadline` is re-queued
    /// when that comes, so a stream of writes costs no pushes. (Ticks keep the entry and its
    /// key within one 64-byte cache line.)
    queued: Tick,
    /// Look at the file when its close grace ends, even though a close-after-write was seen:
    /// it was moved in or had its times set, so its mtime says nothing about when it was
    /// written (see [`Entry::estimated`]).
    look: bool,
    /// fanotify merged a write with the close-after-write (one record says both, not in
    /// which order): when the grace ends, ask whether a writer still holds the file.
    writers: bool,
}

impl Entry {
    /// READY: done, and reported from now on; the event's kind.
    fn complete(&mut self) -> Kind {
        let kind = if self.reported {
            Kind::Modified
        } else {
            Kind::Created
        };
        self.phase = Phase::Done;
        self.reported = true;
        self.deadline = Tick::NONE;
        kind
    }

    /// A file reported after a close-after-write is not looked at (one `lstat` per file was a
    /// third of a burst's cost). What it was is then recorded as an upper bound of its mtime
    /// (`mtime`, with `size == UNKNOWN_SIZE`): its last write came before the close, the close
    /// at least a grace period before the report. A rescan takes a later mtime as a rewrite.
    fn estimated(&self) -> bool {
        self.size == UNKNOWN_SIZE && self.phase == Phase::Done
    }
}

/// Size of a file we have not looked at yet (created and still being written).
const UNKNOWN_SIZE: u64 = u64::MAX;

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

/// What happened, from whichever backend: the state machine's input.
enum Change {
    Created {
        path: PathBuf,
        is_dir: Option<bool>,
    },
    Written(PathBuf),
    Metadata(PathBuf),
    Opened(PathBuf),
    ClosedWrite(PathBuf),
    MovedFrom {
        path: PathBuf,
        cookie: usize,
    },
    MovedTo {
        path: PathBuf,
        cookie: usize,
        /// What the kernel said it is (IN_ISDIR); the path may have moved on since.
        is_dir: Option<bool>,
    },
    Renamed {
        from: PathBuf,
        to: PathBuf,
    },
    /// A rename without halves (FSEvents, Windows): look at what is there now.
    RenamedSomehow(PathBuf),
    Removed(PathBuf),
    Rescan,
}

/// A directory without an inotify watch of its own (polling, a recursive backend, or a watch
/// the kernel dropped before the directory's removal reached us).
const NO_WD: i32 = -1;

/// Descriptors below this live in a vector (see [`WdTable`]).
const DENSE_WDS: usize = 1 << 20;

/// Watch descriptor -> directory. The kernel hands out descriptors counting up from 1, so a
/// vector indexed by descriptor costs 16 bytes a directory where a hash map costs 25; the
/// descriptors of a long-running service whose directories came and went pass `DENSE_WDS`
/// one day, and those go to a map.
#[derive(Default)]
struct WdTable {
    dense: Vec<Option<Key>>,
    /// fanotify's pseudo descriptors (counting down from `fan::FIRST_WD`, reused), by
    /// [`fan::wd_index`].
    fan: Vec<Option<Key>>,
    sparse: FxHashMap<i32, Key>,
}

/// Where a descriptor lives in [`WdTable`].
enum Slot {
    Dense(usize),
    Fan(usize),
    Sparse,
}

fn slot(wd: i32) -> Slot {
    match usize::try_from(wd) {
        Ok(i) if i < DENSE_WDS => Slot::Dense(i),
        _ => match fan::wd_index(wd) {
            Some(i) if i < DENSE_WDS => Slot::Fan(i),
            _ => Slot::Sparse,
        },
    }
}

impl WdTable {
    fn get(&self, wd: i32) -> Option<&Key> {
        match slot(wd) {
            Slot::Dense(i) => self.dense.get(i).and_then(Option::as_ref),
            Slot::Fan(i) => self.fan.get(i).and_then(Option::as_ref),
            Slot::Sparse => self.sparse.get(&wd),
        }
    }

    fn insert(&mut self, wd: i32, dir: Key) {
        let (table, i) = match slot(wd) {
            Slot::Dense(i) => (&mut self.dense, i),
            Slot::Fan(i) => (&mut self.fan, i),
            Slot::Sparse => {
                self.sparse.insert(wd, dir);
                return;
            }
        };
        if i >= table.len() {
            table.resize(i + 1, None);
        }
        table[i] = Some(dir);
    }

    fn remove(&mut self, wd: i32) -> Option<Key> {
        match slot(wd) {
            Slot::Dense(i) => self.dense.get_mut(i).and_then(Option::take),
            Slot::Fan(i) => self.fan.get_mut(i).and_then(Option::take),
            Slot::Sparse => self.sparse.remove(&wd),
        }
    }

    /// Remove every directory at or below `top`; returns their descriptors.
    fn remove_under(&mut self, top: &Path) -> Vec<i32> {
        let mut gone = Vec::new();
        for (i, slot) in self.dense.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|d| d.starts_with(top)) {
                *slot = None;
                gone.push(i as i32);
            }
        }
        for (i, slot) in self.fan.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|d| d.starts_with(top)) {
                *slot = None;
                gone.push(fan::FIRST_WD - i as i32);
            }
        }
        self.sparse.retain(|wd, d| {
            let under = d.starts_with(top);
            if under {
                gone.push(*wd);
            }
            !under
        });
        gone
    }

    fn shrink_to_fit(&mut self) {
        for table in [&mut self.dense, &mut self.fan] {
            while table.last().is_some_and(Option::is_none) {
                table.pop();
            }
            table.shrink_to_fit();
        }
    }
}

/// What became of a mount point met by a walk.
enum Entered {
    /// Followed as a root of its own: its index.
    Own(usize),
    /// Left to its parent's backend (a polled or recursive parent: nothing would do better).
    Parent,
    /// Could not be watched (said in the log): not followed.
    Unwatched,
}

struct Root {
    path: PathBuf,
    backend: Backend,
    /// One watch per directory (inotify, polling) rather than one recursive watch (FSEvents, Windows).
    per_dir: bool,
    /// A mount point inside a root, followed as a root of its own with the backend chosen for
    /// its filesystem (see [`Core::enter_mount`]); not one of the roots asked for.
    mount: bool,
    /// False once a mount's subtree is left (unmounted): its slot stays, unused, so that the
    /// indices of the others hold.
    live: bool,
}

type NotifyResult = notify::Result<Event>;

pub struct Core {
    opts: Options,
    shared: Arc<Shared>,
    tx: crossbeam_channel::Sender<NotifyResult>,
    rx: Receiver<NotifyResult>,
    /// notify's recommended watcher: FSEvents, Windows, or inotify for backend `notify`
    /// (recursive watches).
    native: Option<RecommendedWatcher>,
    /// Our own inotify (Linux): one watch per directory.
    inotify: Option<Inotify>,
    inotify_buf: EventBuf,
    /// Our fanotify group and the directories it follows by handle (backend `fanotify`).
    fanotify: Option<FanWatch>,
    fanotify_buf: fan::EventBuf,
    /// Our poller (poll.rs): one per core, for every polled directory of every root.
    poller: Option<Poller>,
    roots: Vec<Root>,
    /// Every watched directory and its inotify descriptor ([`NO_WD`] if none); `wd_dirs` is
    /// the reverse. Kept until the directory's removal or move is heard of, even when the
    /// kernel dropped its watch before (IN_IGNORED comes before the parent's IN_DELETE).
    dirs: hashbrown::HashMap<Key, i32, FxBuildHasher>,
    /// Tracked files and directories by parent directory, so that a directory's move or
    /// removal finds what lies below it without looking at every tracked file (see [`Kids`]).
    kids: hashbrown::HashMap<Key, Kids, FxBuildHasher>,
    wd_dirs: WdTable,
    denied: HashMap<PathBuf, usize>,
    /// hashbrown's map for `get_key_value_mut`: one lookup per state change.
    files: hashbrown::HashMap<FileKey, Entry, FxBuildHasher>,
    deadlines: Deadlines<FileKey>,
    clock: Clock,
    pending_from: HashMap<usize, (PathBuf, Instant)>,
    /// Directories renamed under notify's inotify lately (from, to, when): see [`Core::current_name`].
    renamed_dirs: Vec<(PathBuf, PathBuf, Instant)>,
    // Directories moved under notify's recursive watch, listed again at the given time.
    relist_after: Vec<(PathBuf, Instant)>,
    rescan_needed: bool,
    out: Vec<OutEvent>,
    logs: Vec<(u8, String)>,
    stats: Stats,
    last_denied_retry: Instant,
    setting_up: bool,
    /// The time of the events being handled: one clock read per read(2), not per event.
    now: Instant,
    /// Where event paths are assembled for a lookup.
    scratch: Vec<u8>,
    /// The mount table, followed for mounts inside the roots (None: not Linux, no /proc).
    mount_table: Option<MountTable>,
    /// Mount points inside the roots whose filesystem differs from their parent directory's:
    /// the boundaries where a subtree gets a backend of its own.
    boundaries: HashSet<PathBuf>,
    last_mount_check: Instant,
}

const DENIED_RETRY: Duration = Duration::from_secs(5);
const UNPAIRED_RENAME: Duration = Duration::from_millis(50);
/// How long events naming a renamed directory's old path are taken for its new one (notify's
/// inotify re-watches it within the read that brought the move; this is ample).
const STALE_NAMES: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(100);
const DRAIN_MAX: usize = 20_000;
/// read(2) calls per wake-up before deadlines are looked at again (each up to ~4,000 events).
const DRAIN_READS: usize = 16;
/// Fewer events than this per wake-up is a trickle ...
const TRICKLE: u64 = 512;
/// ... worth gathering for this long before the next read.
const GATHER: Duration = Duration::from_millis(2);
/// Longest wait on inotify while notify's polling thread may also have events for us.
const MIXED_WAIT: Duration = Duration::from_millis(20);
const COUNTS_EVERY: Duration = Duration::from_secs(1);
/// Shortest close grace for which a closed file is reported without looking at it: half of
/// it must exceed the kernel clock's tick (see [`written_before`]).
const MIN_GRACE_TO_ESTIMATE: Duration = Duration::from_millis(20);
/// A deadline this close is due: waking again for a few milliseconds of a 100 ms grace costs
/// more than it is worth (a create and its close often come in different reads).
const DUE_SLACK: Duration = Duration::from_millis(5);
/// How often the mount table is asked whether anything was mounted or unmounted (one
/// poll(2) without waiting; the table is read only when it changed).
const MOUNT_CHECK: Duration = Duration::from_secs(1);

fn classify_io(e: &io::Error) -> WatchFail {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => WatchFail::Limit(e.to_string()),
        Some(libc::EACCES) | Some(libc::EPERM) => WatchFail::Denied,
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => WatchFail::Gone,
        _ => WatchFail::Other(e.to_string()),
    }
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

/// Put `e` in `phase` until `now + after`. The queue only gets an entry when the new deadline
/// is earlier than the one already queued for the path; later ones are re-queued lazily.
fn schedule(
    deadlines: &mut Deadlines<FileKey>,
    clock: Clock,
    now: Instant,
    key: &FileKey,
    e: &mut Entry,
    phase: Phase,
    after: Duration,
) {
    let at = clock.tick(now + after);
    e.phase = phase;
    e.deadline = at;
    if e.queued != Tick::NONE && e.queued <= at {
        return;
    }
    e.queued = at;
    deadlines.push_after(now, after, key.clone());
}

/// Whether a backend reports close-after-write (our inotify, fanotify).
fn closing(backend: Backend) -> bool {
    (backend == Backend::Native && cfg!(target_os = "linux")) || backend == Backend::Fanotify
}

/// The longest root `path` lies under (roots may nest, and mounts inside roots are roots).
fn root_index(roots: &[Root], path: &Path) -> Option<usize> {
    roots
        .iter()
        .enumerate()
        .filter(|(_, r)| r.live && path.starts_with(&r.path))
        .max_by_key(|(_, r)| r.path.as_os_str().len())
        .map(|(i, _)| i)
}

/// Queue an event for Python if the options ask for its kind.
fn push_event(
    opts: &Options,
    out: &mut Vec<OutEvent>,
    kind: Kind,
    path: Arc<Path>,
    src: Option<Arc<Path>>,
    is_dir: bool,
) {
    if is_dir && opts.ignore_dir_events {
        return;
    }
    let t = opts.types;
    let wanted = match kind {
        Kind::Created => t.creation,
        Kind::Modified => t.modification,
        Kind::Deleted => t.deletion,
        Kind::Moved => t.creation || t.deletion,
    };
    if wanted {
        out.push(OutEvent {
            kind,
            path,
            src,
            is_dir,
        });
    }
}

/// How long a phase lasts before the file is looked at again.
fn phase_length(phase: Phase, settle: Duration, grace: Duration, write_timeout: Duration) -> Duration {
    match phase {
        Phase::Created | Phase::Settling => settle,
        Phase::Writing => write_timeout,
        Phase::Closing => grace,
        Phase::Done => Duration::ZERO,
    }
}

/// Whether a reported file differs on disk from what was reported.
/// `stat`: what a walk just found (else the file is looked at now).
fn changed_on_disk(path: &Path, e: &Entry, stat: Option<FileStat>) -> bool {
    let Some(now) = stat.or_else(|| std::fs::symlink_metadata(path).ok().map(|m| FileStat::of(&m))) else {
        return false;
    };
    if e.estimated() {
        now.mtime > e.mtime
    } else {
        now.size != e.size || now.mtime != e.mtime
    }
}

/// The bound recorded for a file reported without looking at it ([`Entry::estimated`]):
/// half a grace period before now. Its content was last written before the close, a whole
/// grace period ago; a later rewrite gets an mtime after this even from the kernel's coarse
/// clock, which lags by at most a tick (1-10 ms), as long as half the grace exceeds a tick.
fn written_before(grace: Duration) -> i64 {
    let bound = std::time::SystemTime::now()
        .checked_sub(grace / 2)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    i64::try_from(bound.as_nanos()).unwrap_or(i64::MAX)
}

/// A writer's create, writes and close-after-write of one file usually lie next to each
/// other in the kernel's queue. For the create or write of a file (`mask`), how many of the
/// events that follow (`ahead`) are further writes to it ending with its close, if they do.
/// Taken together they lead to the state the close alone leads to.
fn closed_after<'a>(
    mask: u32,
    wd: i32,
    name: &OsStr,
    ahead: impl Iterator<Item = (i32, u32, u32, &'a OsStr)>,
) -> Option<usize> {
    if mask & (ino::CREATE | ino::MODIFY) == 0 || mask & ino::ISDIR != 0 || name.is_empty() {
        return None;
    }
    let mut taken = 0;
    for (next_wd, next_mask, _, next_name) in ahead {
        if next_wd != wd || next_name != name {
            return None;
        }
        taken += 1;
        match next_mask {
            ino::MODIFY => continue,
            ino::CLOSE_WRITE => return Some(taken),
            _ => return None,
        }
    }
    None
}

/// Control characters in a message (a newline in a file name) shown as `\xNN`, so that a
/// name cannot forge log lines.
fn printable(msg: String) -> String {
    if !msg.chars().any(|c| c.is_control()) {
        return msg;
    }
    msg.chars()
        .map(|c| {
            if c.is_control() {
                format!("\\x{:02x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Hand memory freed after the start-up walk (listings, the walkers' malloc arenas) back to
/// the system, so the service's resident size is what it keeps, not what it once needed.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
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
        let deadlines = Deadlines::new(&[opts.settle, opts.close_grace, opts.write_timeout]);
        Core {
            opts,
            shared,
            tx,
            rx,
            native: None,
            inotify: None,
            inotify_buf: EventBuf::default(),
            fanotify: None,
            fanotify_buf: fan::EventBuf::default(),
            poller: None,
            roots: Vec::new(),
            dirs: hashbrown::HashMap::default(),
            kids: hashbrown::HashMap::default(),
            wd_dirs: WdTable::default(),
            denied: HashMap::new(),
            files: hashbrown::HashMap::default(),
            deadlines,
            clock: Clock::new(Instant::now()),
            pending_from: HashMap::new(),
            renamed_dirs: Vec::new(),
            relist_after: Vec::new(),
            rescan_needed: false,
            out: Vec::new(),
            logs: Vec::new(),
            stats: Stats::default(),
            last_denied_retry: Instant::now(),
            setting_up: true,
            now: Instant::now(),
            scratch: Vec::new(),
            mount_table: None,
            boundaries: HashSet::new(),
            last_mount_check: Instant::now(),
        }
    }

    fn log(&mut self, level: u8, msg: String) {
        self.logs.push((level, printable(msg)));
    }

    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    // ----------------------------------------------------------------- setup

    /// Place the watches and do the start-up walk. Errors name the path and the fix.
    pub fn setup(&mut self) -> Result<(), String> {
        let roots = self.opts.roots.clone();
        if self.opts.mode != Mode::Flat {
            self.mount_table = MountTable::open().ok();
            self.boundaries = self.find_boundaries();
        }
        for root in roots.iter() {
            // (Mounts inside earlier roots may have taken slots already.)
            let idx = self.roots.len();
            let backend = self.choose_backend(root)?;
            // (fanotify has no per-directory watch, but the core follows and books each
            // directory by its handle the same way.)
            let per_dir = backend == Backend::Poll
                || backend == Backend::Fanotify
                || (backend == Backend::Native && cfg!(target_os = "linux"));
            self.roots.push(Root {
                path: root.clone(),
                backend,
                per_dir,
                mount: false,
                live: true,
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
                // (notify's inotify places a watch on every directory below: it may hit the limit.)
                if let Err(e) = self.watcher_for(backend)?.watch(root, recursive) {
                    return Err(match classify(&e) {
                        WatchFail::Limit(msg) => self.limit_message(root, &msg),
                        _ => format!("cannot watch {}: {e}", root.display()),
                    });
                }
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
            self.setup_walk(idx, seen);
            self.enter_mounts_below(idx, seen);
        }
        self.setting_up = false;
        self.wd_dirs.shrink_to_fit();
        release_free_memory();
        Ok(())
    }

    fn choose_backend(&mut self, root: &Path) -> Result<Backend, String> {
        match self.opts.backend {
            BackendChoice::Poll => Ok(Backend::Poll),
            BackendChoice::Notify => {
                self.ensure_notify()
                    .map_err(|e| format!("notify's file watching is unavailable: {e}"))?;
                Ok(Backend::Notify)
            }
            BackendChoice::Native => {
                self.ensure_native()
                    .map_err(|e| format!("native file watching is unavailable: {e}"))?;
                Ok(Backend::Native)
            }
            BackendChoice::Fanotify => {
                self.ensure_fanotify(root).map_err(|e| {
                    format!(
                        "fanotify is unavailable for {} ({e}); it needs CAP_SYS_ADMIN, Linux 5.17 and a filesystem that reports file handles",
                        root.display()
                    )
                })?;
                Ok(Backend::Fanotify)
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
                match self.ensure_fanotify(root) {
                    Ok(()) => return Ok(Backend::Fanotify),
                    Err(e) => self.log(
                        LOG_INFO,
                        format!(
                            "fanotify is unavailable for {} ({e}); using inotify",
                            root.display()
                        ),
                    ),
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
        if cfg!(target_os = "linux") {
            if self.inotify.is_none() {
                self.inotify = Some(Inotify::new().map_err(|e| format!("inotify_init1 failed: {e}"))?);
            }
            return Ok(());
        }
        self.ensure_notify()
    }

    /// The fanotify group (made once) with `root`'s filesystem marked. Fails without
    /// CAP_SYS_ADMIN (EPERM), before Linux 5.17 (EINVAL), on filesystems that cannot report
    /// file handles (EOPNOTSUPP, ENODEV, EXDEV).
    fn ensure_fanotify(&mut self, root: &Path) -> Result<(), String> {
        if !cfg!(target_os = "linux") {
            return Err("fanotify is Linux only".into());
        }
        if self.fanotify.is_none() {
            self.fanotify = Some(FanWatch::new().map_err(|e| format!("fanotify_init failed: {e}"))?);
        }
        let Some(fw) = self.fanotify.as_mut() else {
            return Err("no fanotify group".into());
        };
        fw.book(root)
            .map(|_| ())
            .map_err(|e| format!("cannot mark its filesystem: {e}"))
    }

    /// notify's recommended watcher (FSEvents, Windows, kqueue; inotify on Linux), made once.
    fn ensure_notify(&mut self) -> Result<(), String> {
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
            // (Linux's own inotify watches per directory and never comes here.)
            Backend::Native | Backend::Notify => {
                self.ensure_notify()?;
                self.native
                    .as_mut()
                    .map(|w| w as &mut dyn Watcher)
                    .ok_or_else(|| "no native watcher".into())
            }
            // Polled and fanotify directories are followed one by one ([`Core::add_watch`]).
            Backend::Poll | Backend::Fanotify => Err("no recursive watcher".into()),
        }
    }

    /// The poller, made on first use.
    fn poller(&mut self) -> &mut Poller {
        let o = &self.opts;
        let full_sweep = o
            .full_sweep
            .unwrap_or_else(|| default_full_sweep(o.poll_interval));
        let (interval, settle, filter) = (o.poll_interval, o.settle, &o.filter);
        self.poller
            .get_or_insert_with(|| Poller::new(interval, full_sweep, settle, filter.clone(), Instant::now()))
    }

    /// Run a poll cycle when one is due and feed what it found to the state machine.
    fn poll_if_due(&mut self) {
        let now = Instant::now();
        let Some(poller) = self.poller.as_mut().filter(|p| p.due() <= now) else {
            return;
        };
        let changes = poller.cycle(now, &self.shared.stop);
        self.now = Instant::now();
        self.stats.raw_events += changes.len() as u64;
        for change in changes {
            let change = match change {
                PollChange::Created { path, is_dir } => Change::Created {
                    path,
                    is_dir: Some(is_dir),
                },
                PollChange::Written(path) => Change::Written(path),
                PollChange::Removed(path) => Change::Removed(path),
                PollChange::Renamed { from, to } => Change::Renamed { from, to },
            };
            self.apply(change, None);
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
        let mounts_below = self
            .roots
            .iter()
            .any(|r| r.live && r.mount && r.path != root_path && r.path.starts_with(&root_path));
        let moved = if mounts_below {
            // Only this root's own directories: the mounts inside it keep their backends.
            let mine: Vec<Key> = self
                .dirs
                .keys()
                .filter(|d| d.starts_with(&root_path) && self.root_of(d) == Some(idx))
                .cloned()
                .collect();
            self.unwatch(&mine);
            mine
        } else {
            self.remove_watches_under(&root_path)
        };
        if let Some(native) = self.native.as_mut() {
            for d in &moved {
                let _ = native.unwatch(d);
            }
        }
        self.roots[idx].backend = Backend::Poll;
        self.roots[idx].per_dir = true;
        if !self.roots[idx].mount {
            self.stats.poll_roots += 1;
        }
        for d in moved {
            let _ = self.add_watch(idx, &d);
        }
        self.rescan_needed = true;
    }

    fn add_watch(&mut self, idx: usize, dir: &Path) -> Result<(), WatchFail> {
        if self.dirs.contains_key(k(dir)) {
            return Ok(());
        }
        let (backend, per_dir) = (self.roots[idx].backend, self.roots[idx].per_dir);
        let dir = Key::new(dir);
        if per_dir && backend == Backend::Native {
            self.ensure_native().map_err(WatchFail::Other)?;
            let Some(inotify) = self.inotify.as_mut() else {
                return Err(WatchFail::Other("no inotify instance".into()));
            };
            let wd = inotify.add(&dir).map_err(|e| classify_io(&e))?;
            self.book_watch(wd, dir);
            return Ok(());
        } else if backend == Backend::Fanotify {
            let Some(fw) = self.fanotify.as_mut() else {
                return Err(WatchFail::Other("no fanotify group".into()));
            };
            let wd = fw.book(&dir).map_err(|e| classify_io(&e))?;
            self.book_watch(wd, dir);
            return Ok(());
        } else if per_dir {
            let poller = self.poller();
            poller.watch(&dir).map_err(|e| classify_io(&e))?;
        } else if cfg!(target_os = "linux") && !self.setting_up {
            // notify's inotify makes its recursive watch one watch per directory, placing a new
            // directory's watch only after handing us its create: a file written into it
            // meanwhile had no event and could come after our listing. Watching it ourselves,
            // before the listing, closes that gap (notify's reply says the watch is placed).
            if let Some(w) = self.native.as_mut() {
                match w.watch(&dir, RecursiveMode::Recursive) {
                    Ok(()) => {}
                    Err(e) => match classify(&e) {
                        WatchFail::Gone => return Err(WatchFail::Gone),
                        fail @ WatchFail::Limit(_) => return Err(fail),
                        _ => {}
                    },
                }
            }
        }
        // (Under a recursive watch this counts the directories followed, not the backend's own.)
        self.stats.watches += 1;
        self.track_dir(dir, NO_WD);
        Ok(())
    }

    /// Book a directory (and its place in its parent's [`Kids`]).
    fn track_dir(&mut self, dir: Key, wd: i32) {
        if self.dirs.insert(dir.clone(), wd).is_none() {
            self.index_child(dir.0);
        }
    }

    /// Note a newly tracked file or directory in its parent's list.
    fn index_child(&mut self, child: Arc<Path>) {
        let Some(parent) = child.parent() else { return };
        let (files, dirs) = (&self.files, &self.dirs);
        let live = |p: &Path| dirs.contains_key(k(p)) || files.contains_key(&fk(p));
        if let Some(kids) = self.kids.get_mut(k(parent)) {
            kids.push(child, live);
            return;
        }
        // The key shares the directory's own allocation when it is booked already.
        let key = match self.dirs.get_key_value(k(parent)) {
            Some((dir, _)) => dir.clone(),
            None => Key::new(parent),
        };
        let mut kids = Kids::default();
        kids.push(child, live);
        self.kids.insert(key, kids);
    }

    /// Every tracked directory at or below `top` (parents before their children) and every
    /// tracked file below it; their lists are taken out of `kids`. O(what lies below `top`).
    fn tree_under(&mut self, top: &Path) -> (Vec<Key>, Vec<Arc<Path>>) {
        let mut dirs_found: Vec<Key> = Vec::new();
        let mut files_found: Vec<Arc<Path>> = Vec::new();
        if let Some((dir, _)) = self.dirs.get_key_value(k(top)) {
            dirs_found.push(dir.clone());
        }
        let mut next = 0;
        let mut pending: Vec<Key> = vec![Key::new(top)];
        while next < pending.len() {
            let dir = pending[next].clone();
            next += 1;
            let Some(kids) = self.kids.remove(k(&dir)) else {
                continue;
            };
            let (files, dirs) = (&self.files, &self.dirs);
            for child in kids.take(|p| dirs.contains_key(k(p)) || files.contains_key(&fk(p))) {
                if let Some((d, _)) = self.dirs.get_key_value(k(&child)) {
                    dirs_found.push(d.clone());
                    pending.push(d.clone());
                } else {
                    files_found.push(child);
                }
            }
        }
        (dirs_found, files_found)
    }

    /// Record an inotify watch placed on `dir`.
    fn book_watch(&mut self, wd: i32, dir: Key) {
        if self.wd_dirs.get(wd).is_some_and(|old| **old != *dir) {
            // The same directory under a second name (a bind mount): keep the first.
            return;
        }
        self.wd_dirs.insert(wd, dir.clone());
        self.track_dir(dir, wd);
        self.stats.watches += 1;
    }

    /// Stop watching `top` and every directory below it; returns them. One pass over the
    /// tables however many there are (a root moving to polling); the lists of what lies
    /// below them stay, as the same directories are watched again.
    fn remove_watches_under(&mut self, top: &Path) -> Vec<Key> {
        let mut gone: Vec<Key> = Vec::new();
        self.dirs.retain(|d, _| {
            let under = d.starts_with(top);
            if under {
                gone.push(d.clone());
            }
            !under
        });
        if gone.is_empty() {
            return gone;
        }
        let wds = self.wd_dirs.remove_under(top);
        self.stats.watches = self.stats.watches.saturating_sub(wds.len() as u64);
        for wd in wds {
            self.release_wd(wd);
        }
        if let Some(idx) = self.root_of(top) {
            if self.counted_without_wd(idx) {
                self.stats.watches = self.stats.watches.saturating_sub(gone.len() as u64);
            }
            if self.roots[idx].per_dir && self.roots[idx].backend == Backend::Poll {
                if let Some(poller) = self.poller.as_mut() {
                    for d in &gone {
                        poller.unwatch(d);
                    }
                }
            }
        }
        gone
    }

    /// Stop watching these directories (found by [`Core::tree_under`]).
    fn unwatch(&mut self, gone: &[Key]) {
        for d in gone {
            let Some(wd) = self.dirs.remove(k(d)) else {
                continue;
            };
            if wd != NO_WD {
                if self.wd_dirs.get(wd).is_some_and(|booked| **booked == **d) {
                    self.wd_dirs.remove(wd);
                }
                self.stats.watches = self.stats.watches.saturating_sub(1);
                self.release_wd(wd);
                continue;
            }
            let Some(idx) = self.root_of(d) else { continue };
            if self.counted_without_wd(idx) {
                self.stats.watches = self.stats.watches.saturating_sub(1);
            }
            if self.roots[idx].backend == Backend::Poll {
                if let Some(poller) = self.poller.as_mut() {
                    poller.unwatch(d);
                }
            }
        }
    }

    /// Give back a directory's descriptor: an inotify watch (positive) or a fanotify handle
    /// booking (below `NO_WD`).
    fn release_wd(&mut self, wd: i32) {
        if wd > 0 {
            if let Some(inotify) = self.inotify.as_mut() {
                // The kernel drops watches of deleted directories itself; EINVAL then is expected.
                inotify.remove(wd);
            }
        } else if wd < NO_WD {
            if let Some(fw) = self.fanotify.as_mut() {
                fw.forget(wd);
            }
        }
    }

    fn root_of(&self, path: &Path) -> Option<usize> {
        root_index(&self.roots, path)
    }

    /// Whether root `idx`'s directories count as watches without an inotify descriptor of ours
    /// (polled, or under a recursive watch); an inotify directory's count follows its descriptor.
    fn counted_without_wd(&self, idx: usize) -> bool {
        let r = &self.roots[idx];
        !r.per_dir || r.backend == Backend::Poll
    }

    /// The backend reports close-after-write (our inotify, fanotify).
    fn closes(&self, idx: usize) -> bool {
        closing(self.roots[idx].backend)
    }

    // ------------------------------------------------------------------ walk

    /// Watch `start` and every allowed directory below it (as the mode permits) and
    /// register every file found with `seen`. Watches are placed before the listing,
    /// so a file created meanwhile is either listed or produces an event.
    /// A mount point met on the way is entered as a root of its own ([`Core::enter_mount`]);
    /// what lies below it is walked with its index.
    fn walk(&mut self, idx: usize, start: PathBuf, seen: Seen, emit_dirs: bool) {
        let mut stack = vec![(idx, start)];
        while let Some((idx, dir)) = stack.pop() {
            if self.stopped() {
                return;
            }
            let is_root = dir == self.roots[idx].path;
            if !is_root {
                if !self.opts.filter.child_dir_allowed(&dir) {
                    self.note_ignored_dir(&dir);
                    continue;
                }
                let follow = match self.opts.mode {
                    Mode::Flat => false,
                    // Recurse: only the directories that existed at start-up.
                    Mode::Recurse => self.setting_up || self.dirs.contains_key(k(dir.as_path())),
                    Mode::Follow => true,
                };
                if !follow {
                    continue;
                }
                if !self.boundaries.is_empty() && self.boundaries.contains(&dir) {
                    match self.enter_mount(idx, &dir) {
                        Entered::Own(sub) => {
                            stack.push((sub, dir));
                            continue;
                        }
                        Entered::Unwatched => continue,
                        Entered::Parent => {}
                    }
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
            let flat = self.opts.mode == Mode::Flat;
            let mut files = Vec::new();
            let listing = read_entries(&dir, |found| match found {
                Found::Dir(path) if !flat => stack.push((idx, path)),
                Found::Dir(_) => {}
                Found::File(path, stat) => files.push((path, stat)),
            });
            match listing {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    self.note_denied(idx, &dir);
                    continue;
                }
                Err(_) => continue,
            }
            if !self.denied.is_empty() && self.denied.remove(&dir).is_some() {
                self.stats.denied = self.denied.len() as u64;
                self.log(
                    LOG_INFO,
                    format!("{} is readable now; watching it", dir.display()),
                );
            }
            for (path, stat) in files {
                if self.opts.filter.child_file_allowed(&path) {
                    self.on_file_meta(idx, &path, seen, Some(stat));
                }
            }
        }
    }

    /// The start-up walk of root `idx`: in parallel where watches are per-directory inotify
    /// watches (see walk.rs), otherwise [`Core::walk`].
    fn setup_walk(&mut self, idx: usize, seen: Seen) {
        let root = self.roots[idx].path.clone();
        let backend = self.roots[idx].backend;
        let parallel = self.opts.mode != Mode::Flat
            && self.roots[idx].per_dir
            && (backend == Backend::Native || backend == Backend::Fanotify);
        // fanotify's mark covers every directory already: the walk only lists, and
        // `take_listed` books each directory's handle.
        let inotify = if parallel && backend == Backend::Native {
            self.inotify.take()
        } else {
            None
        };
        if !parallel || (backend == Backend::Native && inotify.is_none()) {
            self.walk(idx, root, seen, false);
            return;
        }
        let filter = self.opts.filter.clone();
        // Mounts inside the root are entered afterwards, each with its own backend
        // ([`Core::enter_mounts_below`]).
        let boundaries = self.boundaries.clone();
        let descend = move |p: &Path| filter.child_dir_allowed(p) && !boundaries.contains(p);
        let shared = self.shared.clone();
        let mut limit: Option<String> = None;
        walk_parallel(
            &root,
            inotify.as_ref(),
            walk_threads(),
            &descend,
            &shared.stop,
            |listed| self.take_listed(idx, listed, seen, &mut limit),
        );
        if inotify.is_some() {
            self.inotify = inotify;
        }
        if let Some(msg) = limit {
            if self.opts.backend == BackendChoice::Auto {
                self.fall_back_to_poll(idx, &msg);
            } else {
                let text = self.limit_message(&root, &msg);
                self.log(LOG_ERROR, text);
            }
            // Cover what the failed watches left out (already-known directories cost nothing).
            self.walk(idx, root, seen, false);
        }
    }

    // ---------------------------------------------------------------- mounts

    /// Mount points inside the roots whose device differs from their parent directory's
    /// (a bind mount of the same filesystem is an ordinary directory here). Roots given
    /// through symbolic links are matched by their real paths.
    fn find_boundaries(&mut self) -> HashSet<PathBuf> {
        let mut found = HashSet::new();
        let Some(table) = self.mount_table.as_mut() else {
            return found;
        };
        let points = match table.mount_points() {
            Ok(points) => points,
            Err(e) => {
                self.log(
                    LOG_WARNING,
                    format!("cannot read the mount table ({e}); mounts inside the roots are watched with their root's backend"),
                );
                return found;
            }
        };
        for root in &self.opts.roots {
            let real = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
            for point in &points {
                let Ok(rel) = point.strip_prefix(&real) else {
                    continue;
                };
                if rel.as_os_str().is_empty() {
                    continue; // the root itself
                }
                let path = root.join(rel);
                let Some(parent) = path.parent() else { continue };
                let dev = |p: &Path| std::fs::symlink_metadata(p).ok().map(|m| m.dev());
                match (dev(&path), dev(parent)) {
                    (Some(a), Some(b)) if a != b => {
                        found.insert(path);
                    }
                    _ => {}
                }
            }
        }
        found
    }

    /// After the start-up walk of root `idx`: enter the mounts below it that the walk left
    /// out, outermost first, where their parent directory is followed.
    fn enter_mounts_below(&mut self, idx: usize, seen: Seen) {
        let root = self.roots[idx].path.clone();
        let mut under: Vec<PathBuf> = self
            .boundaries
            .iter()
            .filter(|b| b.starts_with(&root) && **b != root)
            .cloned()
            .collect();
        under.sort_by_key(|b| b.components().count());
        for b in under {
            if self.mount_index(&b).is_some() {
                continue; // entered by a walk already
            }
            let Some(parent) = b.parent() else { continue };
            if !self.dirs.contains_key(k(parent)) {
                continue; // not followed: filtered, unreadable, or the mode says no
            }
            if let Some(pidx) = self.root_of(&b) {
                self.walk(pidx, b, seen, false);
            }
        }
    }

    /// The live mount root at exactly `path`.
    fn mount_index(&self, path: &Path) -> Option<usize> {
        self.roots
            .iter()
            .position(|r| r.live && r.mount && r.path == path)
    }

    /// Start following mount point `dir` (inside root `parent`) as a root of its own, with
    /// the backend its filesystem needs (see [`Entered`]).
    fn enter_mount(&mut self, parent: usize, dir: &Path) -> Entered {
        if let Some(sub) = self.mount_index(dir) {
            return Entered::Own(sub);
        }
        let parent_backend = self.roots[parent].backend;
        if !self.roots[parent].per_dir || !matches!(parent_backend, Backend::Native | Backend::Fanotify) {
            return Entered::Parent;
        }
        // What was followed at this path before the mount covered it is gone from view.
        self.detach_tree(dir);
        let backend = self.choose_for_mount(parent_backend, dir);
        let root = Root {
            path: dir.to_path_buf(),
            backend,
            per_dir: true,
            mount: true,
            live: true,
        };
        let sub = match self.roots.iter().position(|r| !r.live && r.path == dir) {
            Some(slot) => {
                self.roots[slot] = root;
                slot
            }
            None => {
                self.roots.push(root);
                self.roots.len() - 1
            }
        };
        match self.add_watch(sub, dir) {
            Ok(()) => Entered::Own(sub),
            Err(fail) => {
                self.roots[sub].live = false;
                match fail {
                    WatchFail::Denied => self.note_denied(parent, dir),
                    WatchFail::Gone => {}
                    WatchFail::Limit(msg) | WatchFail::Other(msg) => {
                        self.log(LOG_WARNING, format!("cannot watch {}: {msg}", dir.display()))
                    }
                }
                Entered::Unwatched
            }
        }
    }

    /// The backend for a mount inside a root served by `parent` (our inotify or fanotify):
    /// a network filesystem is polled, a filesystem fanotify cannot mark gets inotify.
    fn choose_for_mount(&mut self, parent: Backend, dir: &Path) -> Backend {
        if let Some(fs) = network_fs_name(dir) {
            self.log(
                LOG_WARNING,
                format!(
                    "{} is a mount of a network filesystem ({fs}) inside a watched folder; kernel events miss writes from other hosts, so it is polled every {:.1}s",
                    dir.display(),
                    self.opts.poll_interval.as_secs_f64()
                ),
            );
            return Backend::Poll;
        }
        if parent == Backend::Native {
            return Backend::Native;
        }
        let why = match self.fanotify.as_mut().map(|fw| fw.book(dir)) {
            Some(Ok(_)) => return Backend::Fanotify,
            Some(Err(e)) => e.to_string(),
            None => "no fanotify group".into(),
        };
        match self.ensure_native() {
            Ok(()) => {
                self.log(
                    LOG_INFO,
                    format!(
                        "fanotify cannot mark the filesystem mounted at {} ({why}); watching it with inotify",
                        dir.display()
                    ),
                );
                Backend::Native
            }
            Err(e) => {
                self.log(
                    LOG_WARNING,
                    format!(
                        "fanotify cannot mark the filesystem mounted at {} ({why}) and inotify is unavailable ({e}); polling it every {:.1}s",
                        dir.display(),
                        self.opts.poll_interval.as_secs_f64()
                    ),
                );
                Backend::Poll
            }
        }
    }

    /// Stop following `top` and everything below it, without a word about the directories:
    /// files reported before are reported deleted, mounts below are left.
    fn detach_tree(&mut self, top: &Path) {
        let (dirs, files) = self.tree_under(top);
        self.unwatch(&dirs);
        for f in files {
            self.forget_file(&f);
        }
        self.denied.retain(|d, _| !d.starts_with(top));
        self.stats.denied = self.denied.len() as u64;
        for r in self
            .roots
            .iter_mut()
            .filter(|r| r.mount && r.path.starts_with(top))
        {
            r.live = false;
        }
    }

    /// Mount `sub` is gone (unmounted): what it showed is gone, and the directory it covered
    /// is followed again with its parent's backend.
    fn leave_mount(&mut self, sub: usize) {
        let path = self.roots[sub].path.clone();
        self.detach_tree(&path);
        self.log(
            LOG_INFO,
            format!(
                "{} is no longer a mount point; watching it as part of its parent",
                path.display()
            ),
        );
        if self.root_of(&path).is_some() && path.parent().is_some_and(|p| self.dirs.contains_key(k(p))) {
            self.rewalk(&path);
        }
    }

    /// Follow mounts and unmounts inside the roots: asked of the mount table every
    /// [`MOUNT_CHECK`], read only when it changed (or `force`d, at a rescan).
    fn check_mounts(&mut self, force: bool) {
        self.last_mount_check = Instant::now();
        let Some(table) = self.mount_table.as_ref() else {
            return;
        };
        if !table.changed() && !force {
            return;
        }
        let now = self.find_boundaries();
        let mut left: Vec<usize> = (0..self.roots.len())
            .filter(|&i| self.roots[i].live && self.roots[i].mount && !now.contains(&self.roots[i].path))
            .collect();
        // Outermost first: leaving one leaves those below it too, and re-walks what is there.
        left.sort_by_key(|&i| self.roots[i].path.components().count());
        self.boundaries = now;
        for sub in left {
            if self.roots[sub].live {
                self.leave_mount(sub);
            }
        }
        let mut new: Vec<PathBuf> = self
            .boundaries
            .iter()
            .filter(|b| self.mount_index(b).is_none())
            .cloned()
            .collect();
        new.sort_by_key(|b| b.components().count());
        for b in new {
            if self.mount_index(&b).is_none() && b.parent().is_some_and(|p| self.dirs.contains_key(k(p))) {
                self.rewalk(&b);
            }
        }
    }

    /// Book one directory of the parallel walk.
    fn take_listed(&mut self, idx: usize, listed: Listed, seen: Seen, limit: &mut Option<String>) {
        let Listed {
            dir,
            watch,
            listing,
            skipped,
        } = listed;
        for sub in skipped {
            self.note_ignored_dir(&sub);
        }
        let fail = match watch {
            None if self.roots[idx].backend == Backend::Fanotify && dir != self.roots[idx].path => {
                self.add_watch(idx, &dir).err()
            }
            None => None,
            Some(Ok(wd)) => {
                self.book_watch(wd, Key::new(&dir));
                None
            }
            Some(Err(e)) => Some(classify_io(&e)),
        };
        if let Some(fail) = fail {
            match fail {
                WatchFail::Denied => self.note_denied(idx, &dir),
                WatchFail::Gone => {}
                WatchFail::Limit(msg) => *limit = Some(msg),
                WatchFail::Other(msg) => {
                    self.log(LOG_WARNING, format!("cannot watch {}: {msg}", dir.display()))
                }
            }
            return;
        }
        match listing {
            Ok(files) => {
                for (path, meta) in files {
                    if self.opts.filter.child_file_allowed(&path) {
                        self.on_file_meta(idx, &path, seen, Some(meta));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => self.note_denied(idx, &dir),
            Err(_) => {}
        }
    }

    /// A directory the filter turns down gets one log line saying why (its files never
    /// reach the engine, so this is the only trace an operator would find).
    fn note_ignored_dir(&mut self, dir: &Path) {
        if let Some(why) = self.opts.filter.why_dir_ignored(dir) {
            self.log(LOG_INFO, format!("Not watching {}: {why}", dir.display()));
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

    fn on_file(&mut self, idx: usize, path: &Path, seen: Seen) {
        self.on_file_meta(idx, path, seen, None);
    }

    /// [`Core::on_file`] with the file's metadata when the caller has it already.
    fn on_file_meta(&mut self, idx: usize, path: &Path, seen: Seen, stat: Option<FileStat>) {
        if !self.on_known_file(idx, path, seen, stat) {
            self.on_new_file(idx, path, seen, stat);
        }
    }

    /// Advance a tracked file's state; false when the path is not tracked. One map lookup:
    /// this runs two or three times per file of a burst.
    fn on_known_file(&mut self, idx: usize, path: &Path, seen: Seen, stat: Option<FileStat>) -> bool {
        let closes = self.closes(idx);
        let o = &self.opts;
        let (settle, grace, write_timeout) = (o.settle, o.close_grace, o.write_timeout);
        let Some((key, e)) = self.files.get_key_value_mut(&fk(path)) else {
            return false;
        };
        let phase = e.phase;
        let next = match seen {
            Seen::Baseline => None,
            // An open of a quiet file is a reader (the importer, an indexer), not a writer.
            Seen::Opened if phase == Phase::Settling && closes && !e.reported => Some(Phase::Writing),
            Seen::Opened => None,
            // Another write to a file being written: its deadline only moves later.
            Seen::Written if closes && phase == Phase::Writing => {
                e.deadline = self.clock.tick(self.now + write_timeout);
                None
            }
            Seen::Created | Seen::Written if closes => Some(Phase::Writing),
            Seen::Created | Seen::Written | Seen::Changed => Some(Phase::Settling),
            Seen::ClosedWrite => Some(Phase::Closing),
            Seen::MovedIn => {
                e.look = true;
                Some(if closes { Phase::Closing } else { Phase::Settling })
            }
            Seen::Scanned => {
                if phase == Phase::Done && changed_on_disk(path, e, stat) {
                    Some(Phase::Settling)
                } else if phase == Phase::Writing || phase == Phase::Created {
                    // A rescan means events were lost, the close among them perhaps:
                    // fall back to size/mtime stability (a live writer flips it back).
                    Some(Phase::Settling)
                } else {
                    None
                }
            }
        };
        if let Some(phase) = next {
            let after = phase_length(phase, settle, grace, write_timeout);
            schedule(&mut self.deadlines, self.clock, self.now, key, e, phase, after);
        }
        true
    }

    /// Start tracking a file.
    fn on_new_file(&mut self, idx: usize, path: &Path, seen: Seen, stat: Option<FileStat>) {
        let closes = self.closes(idx);
        // A kernel event on a closing backend says what the path is; the state is checked on
        // disk when its phase ends. Everything else is looked at now.
        let from_event = closes && matches!(seen, Seen::Created | Seen::Written | Seen::ClosedWrite);
        let (size, mtime) = if from_event {
            (UNKNOWN_SIZE, 0)
        } else if let Some(st) = stat {
            (st.size, st.mtime)
        } else {
            match std::fs::symlink_metadata(path) {
                Ok(m) if !m.is_dir() => (m.len(), FileStat::of(&m).mtime),
                _ => return,
            }
        };
        let (phase, reported) = match seen {
            Seen::Baseline => (Phase::Done, true),
            Seen::ClosedWrite => (Phase::Closing, false),
            Seen::MovedIn if closes => (Phase::Closing, false),
            Seen::Created if closes => (Phase::Created, false),
            Seen::Opened | Seen::Written if closes => (Phase::Writing, false),
            _ => (Phase::Settling, false),
        };
        let mut entry = Entry {
            phase,
            reported,
            size,
            mtime,
            deadline: Tick::NONE,
            queued: Tick::NONE,
            look: seen == Seen::MovedIn,
            writers: false,
        };
        let key = FileKey::new(path);
        let o = &self.opts;
        if phase == Phase::Created && o.close_grace < o.settle {
            // Its close usually follows within the same read: queue it for the close grace
            // now, so that the close needs no earlier deadline of its own. A file still
            // without a write then waits out `settle` (re-queued lazily).
            entry.deadline = self.clock.tick(self.now + o.settle);
            entry.queued = self.clock.tick(self.now + o.close_grace);
            self.deadlines.push_after(self.now, o.close_grace, key.clone());
        } else if phase != Phase::Done {
            let after = phase_length(phase, o.settle, o.close_grace, o.write_timeout);
            schedule(
                &mut self.deadlines,
                self.clock,
                self.now,
                &key,
                &mut entry,
                phase,
                after,
            );
        }
        let path = key.path.clone();
        self.files.insert(key, entry);
        self.index_child(path);
    }

    /// Metadata of a tracked file changed (chmod, or `cp -p`/`tar`/`rsync -t` setting its
    /// times after writing): its mtime no longer bounds when it was written, so an estimated
    /// identity ([`Entry::estimated`]) is replaced by what is on disk now.
    fn on_times_set(&mut self, path: &Path) {
        let rescan_pending = self.rescan_needed;
        let Some(e) = self.files.get_mut(&fk(path)) else {
            return;
        };
        if e.phase != Phase::Done {
            e.look = true;
        } else if e.estimated() && !rescan_pending {
            // (With a rescan pending, a rewrite may have been lost: let the rescan compare.)
            if let Ok(m) = std::fs::symlink_metadata(path) {
                let now = FileStat::of(&m);
                (e.size, e.mtime) = (now.size, now.mtime);
            }
        }
    }

    /// Handle every entry whose deadline has passed.
    fn process_deadlines(&mut self) {
        let now = Instant::now();
        self.now = now;
        let o = &self.opts;
        let (settle, grace, write_timeout) = (o.settle, o.close_grace, o.write_timeout);
        let mut gone: Vec<FileKey> = Vec::new();
        let mut estimate: Option<i64> = None;
        let mut quiet_bound: Option<i64> = None;
        while !self.stopped() {
            let Some((at, path)) = self.deadlines.pop_due(now) else {
                break;
            };
            let Some((key, e)) = self.files.get_key_value_mut(&path) else {
                continue;
            };
            if e.queued != self.clock.tick(at) {
                continue; // a stale entry: the path was re-queued earlier or renamed
            }
            e.queued = Tick::NONE;
            let Some(deadline) = self.clock.instant(e.deadline) else {
                continue;
            };
            if e.phase == Phase::Done {
                continue;
            }
            if deadline > now + DUE_SLACK {
                // Activity moved the deadline later: come back then.
                e.queued = e.deadline;
                self.deadlines.push_at(deadline, path);
                continue;
            }
            if e.phase == Phase::Closing && std::mem::replace(&mut e.writers, false) {
                // (A read lease is refused while anyone has the file open for writing.)
                match fan::open_for_writing(&path) {
                    Ok(Some(true)) => {
                        // Reopened after its close and still held: wait for the next close.
                        let phase = Phase::Writing;
                        schedule(&mut self.deadlines, self.clock, now, key, e, phase, write_timeout);
                        continue;
                    }
                    Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                        // Unlinked meanwhile: its close can be merged behind the delete's record.
                        gone.push(path);
                        continue;
                    }
                    _ => {}
                }
            }
            if e.phase == Phase::Closing && !e.look && grace >= MIN_GRACE_TO_ESTIMATE {
                // Closed after writing and quiet for the grace: complete, without an lstat.
                let bound = *estimate.get_or_insert_with(|| written_before(grace));
                let kind = e.complete();
                e.size = UNKNOWN_SIZE;
                e.mtime = bound;
                push_event(&self.opts, &mut self.out, kind, path.path, None, false);
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                gone.push(path);
                continue;
            };
            let FileStat { size, mtime } = FileStat::of(&meta);
            let phase = e.phase;
            // A writer's file reaches this deadline only when no event came for a whole write
            // timeout (each write moved it later). Its first look has nothing to compare with:
            // an mtime well before the timeout began (a write without events, through mmap,
            // would be later) says it is quiet, rather than one more timeout.
            let stable = (size == e.size && mtime == e.mtime)
                || (phase == Phase::Writing
                    && mtime <= *quiet_bound.get_or_insert_with(|| written_before(write_timeout)));
            e.size = size;
            e.mtime = mtime;
            e.look = false;
            let next = match phase {
                // A new link to existing data never gets a close: settle it. Anything else
                // has a writer that has not written yet: wait for its close.
                Phase::Created if meta.file_type().is_symlink() || meta.nlink() > 1 => Phase::Settling,
                Phase::Created => Phase::Writing,
                Phase::Closing => Phase::Done,
                Phase::Settling | Phase::Writing if stable => Phase::Done,
                other => other,
            };
            if next == Phase::Done {
                let kind = e.complete();
                push_event(&self.opts, &mut self.out, kind, path.path, None, false);
            } else {
                let after = match (phase, next) {
                    // Its create, `settle` ago, was its last event.
                    (Phase::Created, Phase::Writing) => write_timeout.saturating_sub(settle),
                    _ => phase_length(next, settle, grace, write_timeout),
                };
                schedule(&mut self.deadlines, self.clock, now, key, e, next, after);
            }
        }
        for path in gone {
            self.forget_file(&path);
        }
    }

    /// A file is gone: a pending one is dropped silently, a reported one is a deletion.
    fn forget_file(&mut self, path: &Path) {
        if let Some(e) = self.files.remove(&fk(path)) {
            if e.reported {
                self.emit(Kind::Deleted, path.to_path_buf(), None, false);
            }
        }
    }

    fn emit(&mut self, kind: Kind, path: impl Into<Arc<Path>>, src: Option<PathBuf>, is_dir: bool) {
        push_event(
            &self.opts,
            &mut self.out,
            kind,
            path.into(),
            src.map(Arc::from),
            is_dir,
        );
    }

    // ---------------------------------------------------- directory changes

    fn on_removed(&mut self, path: &Path) {
        let was_dir = self.dirs.contains_key(k(path));
        if was_dir {
            let (dirs, files) = self.tree_under(path);
            self.unwatch(&dirs);
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
                if self.file_allowed(&path) {
                    self.on_file(idx, &path, seen);
                }
            }
            Err(_) => {}
        }
    }

    /// Whether a file inside a watched directory is reported (its directory passed already).
    fn file_allowed(&self, path: &Path) -> bool {
        self.opts.filter.child_file_allowed(path)
    }

    /// Start tracking a file we had not seen (its create event may have been lost).
    fn track_if_allowed(&mut self, idx: usize, path: PathBuf, seen: Seen) {
        if !self.dirs.contains_key(k(path.as_path())) && self.in_scope(idx, &path) && self.file_allowed(&path)
        {
            self.on_file(idx, &path, seen);
        }
    }

    /// A path's parent must be a watched directory (flat mode: the root itself).
    fn in_scope(&self, idx: usize, path: &Path) -> bool {
        match path.parent() {
            Some(parent) => match self.opts.mode {
                Mode::Flat => parent == self.roots[idx].path,
                _ => self.dirs.contains_key(k(parent)),
            },
            None => false,
        }
    }

    /// `is_dir`: what the backend said `to` is. Without it `to` is looked at, and a path
    /// that moved on again meanwhile counts as gone.
    fn on_rename(&mut self, from: PathBuf, to: PathBuf, is_dir: Option<bool>) {
        let from_dir = self.dirs.contains_key(k(from.as_path()));
        let from_known = from_dir || self.files.contains_key(&fk(from.as_path()));
        let to_idx = self.root_of(&to);
        // A rename keeps what the path is: notify's halves do not say, and `to` may have moved
        // on already (renamed twice before we read the first).
        let is_dir = is_dir
            .or(from_known.then_some(from_dir))
            .or_else(|| std::fs::symlink_metadata(&to).ok().map(|m| m.is_dir()));
        let to_ok = to_idx.is_some_and(|i| {
            self.in_scope(i, &to)
                && match is_dir {
                    Some(true) => self.opts.filter.child_dir_allowed(&to),
                    Some(false) => self.opts.filter.child_file_allowed(&to),
                    None => false,
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
        if self.dirs.contains_key(k(from.as_path())) {
            self.rename_dir(&from, &to);
        } else if let Some(entry) = self.files.remove(&fk(from.as_path())) {
            self.rekey(from, to, entry);
        }
    }

    fn rekey(&mut self, from: PathBuf, to: PathBuf, mut entry: Entry) {
        let report = entry.reported && entry.phase == Phase::Done;
        let key = FileKey::new(&to);
        entry.queued = entry.deadline;
        if let Some(at) = self.clock.instant(entry.deadline) {
            self.deadlines.push_at(at, key.clone());
        }
        self.index_child(key.path.clone());
        if let Some(old) = self.files.insert(key, entry) {
            if old.reported && !report {
                self.emit(Kind::Deleted, to.clone(), None, false);
            }
        }
        if report {
            self.emit(Kind::Moved, to, Some(from), false);
        }
    }

    fn rename_dir(&mut self, from: &Path, to: &Path) {
        // Both sides under the same kernel backend: its watches (inotify) or handles
        // (fanotify) follow the directory, so only the names change.
        let kernel = |core: &Self, p: &Path| {
            core.root_of(p)
                .filter(|&i| core.closes(i))
                .map(|i| core.roots[i].backend)
        };
        if kernel(self, from).is_some() && kernel(self, from) == kernel(self, to) {
            return self.move_tree(from, to);
        }
        let recursive = |core: &Self, p: &Path| core.root_of(p).is_some_and(|i| !core.roots[i].per_dir);
        if recursive(self, from) && recursive(self, to) {
            // The recursive watch follows the move: rebook what lies below under the new names.
            self.move_tree(from, to);
            if cfg!(target_os = "linux") {
                // notify's inotify names the events queued inside the directory before it
                // read the move by the old paths until it re-watches the new ones ...
                self.renamed_dirs
                    .push((from.to_path_buf(), to.to_path_buf(), self.now));
                // ... and re-watches it only after handing us the move, so what happens in it
                // meanwhile may never be told: list it again once notify has caught up. (Adding
                // our own watch now races with notify removing the old name's watch, which
                // shares the inode's descriptor, and loses events for good.)
                self.relist_after.push((to.to_path_buf(), self.now + STALE_NAMES));
            }
            self.rewalk(to);
            return;
        }
        let (dirs, files) = self.tree_under(from);
        self.unwatch(&dirs);
        self.rekey_files(files, from, to);
        self.denied.retain(|d, _| !d.starts_with(from));
        self.emit(Kind::Moved, to.to_path_buf(), Some(from.to_path_buf()), true);
        // Re-watch under the new name and pick up anything created meanwhile.
        self.rewalk(to);
    }

    /// After a directory moved under notify's recursive watch: notify may drop the events
    /// queued inside it while it re-watches it (a file deleted there right after the move),
    /// so what is tracked below the new name but no longer on disk is forgotten, reported
    /// deleted if it was reported. O(tracked files); only the notify backend pays it.
    fn forget_vanished_under(&mut self, top: &Path) {
        let gone: Vec<FileKey> = self
            .files
            .keys()
            .filter(|p| p.starts_with(top) && std::fs::symlink_metadata(p).is_err())
            .cloned()
            .collect();
        for f in gone {
            self.forget_file(&f);
        }
    }

    /// Directories moved under notify's recursive watch whose re-listing is due.
    fn relist_moved_dirs(&mut self) {
        if self.relist_after.is_empty() {
            return;
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.relist_after)
            .into_iter()
            .partition(|(_, at)| *at <= now);
        self.relist_after = later;
        for (dir, _) in due {
            if self.dirs.contains_key(k(dir.as_path())) {
                self.rewalk(&dir);
                self.forget_vanished_under(&dir);
            }
        }
    }

    /// Walk a moved directory (directories known already are listed, not watched again).
    fn rewalk(&mut self, to: &Path) {
        if let Some(idx) = self.root_of(to) {
            if self.opts.mode == Mode::Follow || self.opts.mode == Mode::Recurse {
                let was_setting_up = self.setting_up;
                self.setting_up = self.opts.mode == Mode::Recurse;
                self.walk(idx, to.to_path_buf(), Seen::Scanned, false);
                self.setting_up = was_setting_up;
            }
        }
    }

    /// A directory moved within inotify-watched roots. Its watches follow it (a watch belongs
    /// to the inode), so the same descriptors are booked under the new names, and events the
    /// kernel queued on them before the move was read name the new paths. Costs
    /// O(tracked paths below `from`).
    fn move_tree(&mut self, from: &Path, to: &Path) {
        let (dirs, files) = self.tree_under(from);
        let mut refused: Vec<Key> = Vec::new();
        for old in &dirs {
            let Some(wd) = self.dirs.remove(k(old)) else {
                continue;
            };
            let new = Key::new(&rebase(old, from, to));
            if wd != NO_WD {
                self.wd_dirs.insert(wd, new.clone());
            }
            if *new != *to && !self.opts.filter.child_dir_allowed(&new) {
                refused.push(new.clone()); // moved under a blacklisted path
            }
            self.track_dir(new, wd);
        }
        self.rekey_files(files, from, to);
        if !self.denied.is_empty() {
            let moved: Vec<PathBuf> = self
                .denied
                .keys()
                .filter(|d| d.starts_with(from))
                .cloned()
                .collect();
            for d in moved {
                if let Some(idx) = self.denied.remove(&d) {
                    self.denied.insert(rebase(&d, from, to), idx);
                }
            }
        }
        for (path, _) in self.pending_from.values_mut() {
            if path.starts_with(from) {
                *path = rebase(path, from, to);
            }
        }
        self.emit(Kind::Moved, to.to_path_buf(), Some(from.to_path_buf()), true);
        for d in refused {
            self.on_removed(&d);
        }
        // A blacklisted directory inside the moved one was never watched and may be allowed
        // under its new name: only a walk finds it.
        if self.opts.filter.blacklist.iter().any(|b| b.starts_with(from)) {
            self.rewalk(to);
        }
    }

    fn rekey_files(&mut self, files: Vec<Arc<Path>>, from: &Path, to: &Path) {
        for old in files {
            if let Some(entry) = self.files.remove(&fk(&old)) {
                self.rekey(old.to_path_buf(), rebase(&old, from, to), entry);
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
        // Mounts and unmounts first: the walks enter the mounts inside the roots.
        self.check_mounts(true);
        for idx in 0..self.roots.len() {
            if self.roots[idx].mount || !self.roots[idx].live {
                continue;
            }
            let root = self.roots[idx].path.clone();
            self.walk(idx, root, Seen::Scanned, !self.opts.ignore_dir_events);
        }
        let gone_files: Vec<FileKey> = self
            .files
            .keys()
            .filter(|p| std::fs::symlink_metadata(p).is_err())
            .cloned()
            .collect();
        for f in gone_files {
            self.forget_file(&f);
        }
        let gone_dirs: Vec<Key> = self
            .dirs
            .keys()
            .filter(|d| !d.is_dir() && !self.roots.iter().any(|r| *r.path == ***d))
            .cloned()
            .collect();
        for d in gone_dirs {
            self.on_removed(&d);
        }
    }

    // ---------------------------------------------------------------- events

    /// An event from one of notify's backends (polling, FSEvents, Windows).
    fn handle_notify(&mut self, res: NotifyResult) {
        self.stats.raw_events += 1;
        self.now = Instant::now();
        let ev = match res {
            Ok(ev) => ev,
            Err(e) => {
                match classify(&e) {
                    WatchFail::Limit(msg) => {
                        let dir = e.paths.first().cloned().unwrap_or_default();
                        self.on_watch_limit(&dir, &msg);
                    }
                    _ => self.log(LOG_WARNING, format!("watch backend error: {e}")),
                }
                return;
            }
        };
        if ev.flag() == Some(Flag::Rescan) {
            self.apply(Change::Rescan, None);
            return;
        }
        let Some(path) = ev.paths.first().map(|p| self.current_name(p)) else {
            return;
        };
        let change = match ev.kind {
            EventKind::Create(kind) => Change::Created {
                path,
                is_dir: match kind {
                    CreateKind::Folder => Some(true),
                    CreateKind::File => Some(false),
                    _ => None,
                },
            },
            EventKind::Modify(ModifyKind::Name(mode)) => match (mode, ev.tracker()) {
                (RenameMode::From, Some(cookie)) => Change::MovedFrom { path, cookie },
                (RenameMode::To, Some(cookie)) => Change::MovedTo {
                    path,
                    cookie,
                    is_dir: None,
                },
                // notify's inotify follows its From and To halves (handled above by their
                // cookie) with a Both event of the same tracker: applying it too would make
                // the renamed file look moved in again.
                (RenameMode::Both, Some(_)) => return,
                (RenameMode::Both, None) => match ev.paths.get(1) {
                    Some(to) => Change::Renamed {
                        from: path,
                        to: self.current_name(to),
                    },
                    None => Change::RenamedSomehow(path),
                },
                _ => Change::RenamedSomehow(path),
            },
            EventKind::Modify(ModifyKind::Metadata(_)) => Change::Metadata(path),
            EventKind::Modify(_) => Change::Written(path),
            EventKind::Access(AccessKind::Open(_)) => Change::Opened(path),
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => Change::ClosedWrite(path),
            EventKind::Remove(_) => Change::Removed(path),
            _ => return,
        };
        self.apply(change, None);
    }

    /// `path` as it is named now. notify's inotify names events by the directory its watch
    /// was placed on until it watches the directory's new name, so an event queued inside a
    /// directory before its move was read names the old path: rebased to the new one (again
    /// for a directory moved twice), unless a directory of the old name is watched again.
    fn current_name(&mut self, path: &Path) -> PathBuf {
        if self.renamed_dirs.is_empty() {
            return path.to_path_buf();
        }
        let now = self.now;
        self.renamed_dirs
            .retain(|(_, _, at)| now.saturating_duration_since(*at) < STALE_NAMES);
        let mut path = path.to_path_buf();
        for (from, to, _) in &self.renamed_dirs {
            if path != *from && path.starts_with(from) && !self.dirs.contains_key(k(from.as_path())) {
                path = rebase(&path, from, to);
            }
        }
        path
    }

    /// Read and apply what our inotify instance has queued; false when it had nothing.
    fn read_inotify(&mut self) -> bool {
        let Some(inotify) = self.inotify.as_ref() else {
            return false;
        };
        let mut buf = std::mem::take(&mut self.inotify_buf);
        let got = match inotify.read(&mut buf) {
            Ok(got) => got,
            Err(e) => {
                self.log(LOG_ERROR, format!("reading inotify events failed: {e}"));
                false
            }
        };
        if got {
            self.now = Instant::now();
            let mut scratch = std::mem::take(&mut self.scratch);
            let mut events = buf.iter();
            while let Some((wd, mask, cookie, name)) = events.next() {
                self.stats.raw_events += 1;
                let mask = match closed_after(mask, wd, name, events.clone()) {
                    Some(taken) => {
                        // Its writes and close lie next to it: one state change, one lookup.
                        for _ in 0..taken {
                            events.next();
                        }
                        self.stats.raw_events += taken as u64;
                        (mask & ino::CREATE) | ino::CLOSE_WRITE
                    }
                    None => mask,
                };
                if self.burst_event(wd, mask, name, &mut scratch) {
                    continue;
                }
                if let Some((change, idx)) = self.inotify_change(wd, mask, cookie, name) {
                    self.apply(change, Some(idx));
                }
            }
            self.scratch = scratch;
        }
        self.inotify_buf = buf;
        got
    }

    /// Read and apply what our fanotify group has queued; false when it had nothing.
    fn read_fanotify(&mut self) -> bool {
        let Some(fw) = self.fanotify.as_ref() else {
            return false;
        };
        let mut buf = std::mem::take(&mut self.fanotify_buf);
        let got = match fw.fan.read(&mut buf) {
            Ok(got) => got,
            Err(e) => {
                self.log(LOG_ERROR, format!("reading fanotify events failed: {e}"));
                false
            }
        };
        if got {
            self.now = Instant::now();
            for rec in buf.iter() {
                self.stats.raw_events += 1;
                self.fanotify_record(&rec);
            }
        }
        self.fanotify_buf = buf;
        got
    }

    /// `name` in the directory with identifier `fid`, if that is a directory we follow.
    /// Identifiers we never booked are asked of the kernel (`open_by_handle_at`, when
    /// allowed) once; those that are not ours (events outside the roots) are remembered.
    fn fan_path(&mut self, fid: fan::Fid<'_>, name: &OsStr) -> Option<PathBuf> {
        if name.is_empty() {
            return None;
        }
        let dir = self.fan_dir(fid)?;
        let mut path = PathBuf::with_capacity(dir.as_os_str().len() + 1 + name.len());
        path.push(&*dir);
        path.push(name);
        Some(path)
    }

    /// The followed directory with identifier `fid` (see [`Core::fan_path`]).
    fn fan_dir(&mut self, fid: fan::Fid<'_>) -> Option<Key> {
        let fw = self.fanotify.as_mut()?;
        match fw.wd_of(fid) {
            Some(wd) => self.wd_dirs.get(wd).cloned(),
            None => {
                let found = fw.resolve(fid)?;
                match self.dirs.get_key_value(k(&found)) {
                    Some((dir, _)) => Some(dir.clone()),
                    None => {
                        fw.note_foreign(fid);
                        None
                    }
                }
            }
        }
    }

    /// Apply one fanotify record. The kernel merges the queued events of one object into
    /// one record, so a mask is a set: a create, writes and the close of a file usually
    /// come as one record, a delete after them ends it.
    fn fanotify_record(&mut self, rec: &fan::Record<'_>) {
        let mask = rec.mask;
        if mask & fan::Q_OVERFLOW != 0 {
            self.apply(Change::Rescan, None);
            return;
        }
        let is_dir = mask & fan::ONDIR != 0;
        if mask & fan::RENAME != 0 {
            // Never merged with other events: both places, in one record.
            let from = rec.old.and_then(|(fid, name)| self.fan_path(fid, name));
            let to = rec.new.and_then(|(fid, name)| self.fan_path(fid, name));
            match (from, to) {
                (Some(from), Some(to)) => self.on_rename(from, to, Some(is_dir)),
                (Some(from), None) => self.apply(Change::Removed(from), None),
                (None, Some(to)) => self.on_appeared(to, Seen::MovedIn),
                (None, None) => {}
            }
            return;
        }
        if rec.name == "." {
            // An event on a directory itself (not on an entry in it) names it as ".": its
            // DELETE_SELF / MOVE_SELF say what the parent's records say, but a chmod is how
            // a directory we could not read becomes readable.
            if mask & fan::ATTRIB != 0 {
                if let Some(dir) = rec.dir.and_then(|fid| self.fan_dir(fid)) {
                    self.apply(Change::Metadata(dir.to_path_buf()), None);
                }
            }
            return;
        }
        // (Records without a name, about a file itself, are skipped the same way.)
        let Some(path) = rec.dir.and_then(|fid| self.fan_path(fid, rec.name)) else {
            return;
        };
        if mask & fan::DELETE != 0 {
            // Whatever else was merged came before the delete (a name is unlinked last).
            self.apply(Change::Removed(path), None);
            return;
        }
        let wrote = mask & fan::MODIFY != 0;
        if mask & fan::CLOSE_WRITE != 0 {
            let times_set = mask & fan::ATTRIB != 0;
            self.apply(Change::ClosedWrite(path.clone()), None);
            if wrote {
                // The write may have come after the close (closed, reopened, appending): a
                // file still open for writing when its grace ends waits for its next close.
                if let Some(e) = self.files.get_mut(&fk(path.as_path())) {
                    e.writers = e.phase == Phase::Closing;
                }
            }
            if times_set {
                self.apply(Change::Metadata(path), None);
            }
            return;
        }
        if wrote {
            self.apply(Change::Written(path.clone()), None);
        } else if mask & fan::CREATE != 0 {
            self.apply(
                Change::Created {
                    path: path.clone(),
                    is_dir: Some(is_dir),
                },
                None,
            );
        }
        if mask & fan::ATTRIB != 0 {
            self.apply(Change::Metadata(path), None);
        }
    }

    /// The common case of a burst, without allocating: a file created, written or closed
    /// after writing in a watched directory. The watch descriptor says its parent is watched
    /// and in scope, and IN_ISDIR that it is no directory, so the checks the general path
    /// makes with two more lookups are skipped. The path is assembled in `scratch`.
    fn burst_event(&mut self, wd: i32, mask: u32, name: &OsStr, scratch: &mut Vec<u8>) -> bool {
        if name.is_empty() || mask & ino::ISDIR != 0 {
            return false;
        }
        let seen = if mask & ino::CLOSE_WRITE != 0 {
            Seen::ClosedWrite
        } else if mask & ino::MODIFY != 0 {
            Seen::Written
        } else if mask & ino::CREATE != 0 {
            Seen::Created
        } else {
            return false;
        };
        let Some(path) = self.event_path(wd, name, scratch) else {
            return false;
        };
        // (Several roots, or mounts inside one followed as roots of their own: its root.)
        let idx = if self.roots.len() == 1 {
            0
        } else {
            match self.root_of(path) {
                Some(idx) => idx,
                None => return false,
            }
        };
        if self.on_known_file(idx, path, seen, None) {
            return true;
        }
        if mask & ino::CREATE == 0 {
            return false; // written to a file we did not know: the general path decides
        }
        if self.file_allowed(path) {
            self.on_new_file(idx, path, seen, None);
        }
        true
    }

    /// The path an event names, assembled in `scratch` (no allocation).
    fn event_path<'a>(&self, wd: i32, name: &OsStr, scratch: &'a mut Vec<u8>) -> Option<&'a Path> {
        let dir = self.wd_dirs.get(wd)?;
        scratch.clear();
        scratch.extend_from_slice(k(dir));
        if scratch.last() != Some(&b'/') {
            scratch.push(b'/');
        }
        scratch.extend_from_slice(name.as_bytes());
        Some(Path::new(OsStr::from_bytes(scratch)))
    }

    /// Decode one kernel event; also returns the root it belongs to.
    fn inotify_change(&mut self, wd: i32, mask: u32, cookie: u32, name: &OsStr) -> Option<(Change, usize)> {
        if mask & ino::Q_OVERFLOW != 0 {
            return Some((Change::Rescan, 0));
        }
        if mask & ino::IGNORED != 0 {
            // The kernel dropped this watch (directory deleted, moved out of the filesystem's
            // reach, or unwatched). A descriptor still booked means we had not heard of it
            // otherwise (removals unbook their descriptors at once). The directory stays
            // booked, without its watch, until its parent's IN_DELETE (which comes after
            // this) or a rescan removes it, so that its removal is reported.
            if let Some(dir) = self.wd_dirs.remove(wd) {
                // (A directory moved over this one has its own watch booked under the name.)
                if let Some(booked) = self.dirs.get_mut(k(&dir)).filter(|booked| **booked == wd) {
                    *booked = NO_WD;
                }
                self.stats.watches = self.stats.watches.saturating_sub(1);
            }
            return None;
        }
        if name.is_empty() {
            // About the watched directory itself: its parent's events say the same.
            return None;
        }
        let dir = self.wd_dirs.get(wd)?;
        let mut path = PathBuf::with_capacity(dir.as_os_str().len() + 1 + name.len());
        path.push(&**dir);
        path.push(name);
        let idx = if self.roots.len() == 1 {
            0
        } else {
            self.root_of(&path)?
        };
        let is_dir = mask & ino::ISDIR != 0;
        // (A close first: `read_inotify` may have folded a create into it.)
        let change = if mask & ino::CLOSE_WRITE != 0 {
            Change::ClosedWrite(path)
        } else if mask & ino::CREATE != 0 {
            Change::Created {
                path,
                is_dir: Some(is_dir),
            }
        } else if mask & ino::MODIFY != 0 {
            Change::Written(path)
        } else if mask & ino::ATTRIB != 0 {
            Change::Metadata(path)
        } else if mask & ino::MOVED_FROM != 0 {
            Change::MovedFrom {
                path,
                cookie: cookie as usize,
            }
        } else if mask & ino::MOVED_TO != 0 {
            Change::MovedTo {
                path,
                cookie: cookie as usize,
                is_dir: Some(is_dir),
            }
        } else if mask & ino::DELETE != 0 {
            Change::Removed(path)
        } else {
            return None;
        };
        Some((change, idx))
    }

    fn on_watch_limit(&mut self, dir: &Path, msg: &str) {
        if let Some(idx) = self.root_of(dir) {
            if self.opts.backend == BackendChoice::Auto && self.roots[idx].backend == Backend::Native {
                self.fall_back_to_poll(idx, msg);
                return;
            }
        }
        let text = self.limit_message(dir, msg);
        self.log(LOG_ERROR, text);
    }

    /// The state machine's single entry point. `root`: the root index when the backend knows it.
    fn apply(&mut self, change: Change, root: Option<usize>) {
        let path = match &change {
            Change::Rescan => {
                self.stats.overflows += 1;
                self.rescan_needed = true;
                return;
            }
            Change::Created { path, .. }
            | Change::Written(path)
            | Change::Metadata(path)
            | Change::Opened(path)
            | Change::ClosedWrite(path)
            | Change::MovedFrom { path, .. }
            | Change::MovedTo { path, .. }
            | Change::Renamed { from: path, .. }
            | Change::RenamedSomehow(path)
            | Change::Removed(path) => path,
        };
        let Some(idx) = root.or_else(|| self.root_of(path)) else {
            return;
        };
        let poll = self.roots[idx].backend == Backend::Poll;
        match change {
            Change::Rescan => {}
            Change::Created { path, is_dir } => {
                let is_dir = is_dir.unwrap_or_else(|| {
                    std::fs::symlink_metadata(&path)
                        .map(|m| m.is_dir())
                        .unwrap_or(false)
                });
                if is_dir {
                    self.on_appeared(path, Seen::Scanned);
                } else {
                    self.track_if_allowed(idx, path, Seen::Created);
                }
            }
            Change::MovedFrom { path, cookie } => {
                self.pending_from.insert(cookie, (path, Instant::now()));
            }
            Change::MovedTo { path, cookie, is_dir } => match self.pending_from.remove(&cookie) {
                Some((from, _)) => self.on_rename(from, path, is_dir),
                None => self.on_appeared(path, Seen::MovedIn),
            },
            Change::Renamed { from, to } => self.on_rename(from, to, None),
            Change::RenamedSomehow(path) => {
                if std::fs::symlink_metadata(&path).is_ok() {
                    self.on_appeared(path, Seen::MovedIn);
                } else {
                    self.on_removed(&path);
                }
            }
            Change::Metadata(path) => {
                if self.denied.contains_key(&path) {
                    self.walk(idx, path, Seen::Scanned, !self.opts.ignore_dir_events);
                } else if poll && self.files.contains_key(&fk(path.as_path())) {
                    self.on_file(idx, &path, Seen::Changed);
                } else if !poll {
                    self.on_times_set(&path);
                }
                // chmod/chown/touch-without-write of a file is not new data: no re-report.
            }
            Change::Written(path) => {
                let seen = if poll { Seen::Changed } else { Seen::Written };
                if self.files.contains_key(&fk(path.as_path())) {
                    self.on_file(idx, &path, seen);
                } else {
                    self.track_if_allowed(idx, path, seen);
                }
            }
            Change::Opened(path) => {
                if self.files.contains_key(&fk(path.as_path())) {
                    self.on_file(idx, &path, Seen::Opened);
                }
            }
            Change::ClosedWrite(path) => {
                if self.files.contains_key(&fk(path.as_path())) {
                    self.on_file(idx, &path, Seen::ClosedWrite);
                } else {
                    self.track_if_allowed(idx, path, Seen::ClosedWrite);
                }
            }
            Change::Removed(path) => {
                // (A mount point removed after its unmount is an ordinary directory's removal.)
                if !self.roots.iter().any(|r| r.live && !r.mount && r.path == path) {
                    self.on_removed(&path);
                }
            }
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
        // One pass: with 100,000 files tracked this is most of an idle second's work.
        let (pending, reported) = self.files.values().fold((0, 0), |(p, r), e| {
            (p + u64::from(e.phase != Phase::Done), r + u64::from(e.reported))
        });
        (self.stats.pending, self.stats.reported) = (pending, reported);
        self.stats.tracked = self.files.len() as u64;
    }

    fn flush(&mut self) {
        let mut out = self.shared.lock();
        out.stats = self.stats;
        // The roots asked for, then the mounts inside them that are followed on their own.
        out.backends = (self.roots.iter().filter(|r| !r.mount))
            .chain(self.roots.iter().filter(|r| r.mount && r.live))
            .map(|r| (r.path.clone(), r.backend.name()))
            .collect();
        let mut wake = !self.logs.is_empty();
        if !self.out.is_empty() {
            let now = Instant::now();
            if out.events.is_empty() {
                out.first_at = Some(now);
                wake = true;
            }
            out.last_at = Some(now);
            out.events.extend(self.out.drain(..));
            wake |= out.wake_at > 0 && out.events.len() >= out.wake_at;
        }
        for log in self.logs.drain(..) {
            if out.logs.len() < MAX_BUFFERED_LOGS {
                out.logs.push(log);
            } else {
                out.dropped_logs += 1;
            }
        }
        drop(out);
        if wake {
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
                .deadlines
                .next_at()
                .map(|at| at.saturating_duration_since(Instant::now()))
                .unwrap_or(TICK)
                .clamp(Duration::from_millis(1), TICK);
            let wait = if self.pending_from.is_empty() {
                wait
            } else {
                wait.min(UNPAIRED_RENAME)
            };
            let wait = match self.relist_after.iter().map(|(_, at)| *at).min() {
                Some(at) => wait.min(at.saturating_duration_since(Instant::now())),
                None => wait,
            };
            let wait = match self.poller.as_ref() {
                Some(p) => wait.min(p.due().saturating_duration_since(Instant::now())),
                None => wait,
            };
            self.now = Instant::now();
            let mut fds = [-1; 2];
            let mut n_fds = 0;
            for fd in [
                self.inotify.as_ref().map(|i| i.raw_fd()),
                self.fanotify.as_ref().map(|f| f.fan.raw_fd()),
            ]
            .into_iter()
            .flatten()
            {
                fds[n_fds] = fd;
                n_fds += 1;
            }
            let kernel_fds = &fds[..n_fds];
            if !kernel_fds.is_empty() {
                // notify's threads (polling) cannot wake a poll(2) on our descriptor: look at
                // their channel at least every MIXED_WAIT.
                let step = if self.native.is_some() {
                    wait.min(MIXED_WAIT)
                } else {
                    wait
                };
                match fan::wait_any(kernel_fds, step).map(|ready| ready.contains(&true)) {
                    Ok(true) => {
                        let before = self.stats.raw_events;
                        for _ in 0..DRAIN_READS {
                            // (Both reads are non-blocking: one without events costs a syscall.)
                            let from_inotify = self.read_inotify();
                            let from_fanotify = self.read_fanotify();
                            if !from_inotify && !from_fanotify {
                                break;
                            }
                        }
                        // A trickle of events (one writer at full speed) would wake this thread
                        // per file: let them gather for a moment instead. The kernel queue
                        // holds far more than arrives meanwhile.
                        if self.stats.raw_events - before < TRICKLE {
                            std::thread::sleep(GATHER);
                        }
                    }
                    Ok(false) => {}
                    Err(e) => {
                        self.log(LOG_ERROR, format!("waiting for kernel events failed: {e}"));
                        std::thread::sleep(step);
                    }
                }
                for _ in 0..DRAIN_MAX {
                    match self.rx.try_recv() {
                        Ok(ev) => self.handle_notify(ev),
                        Err(_) => break,
                    }
                }
            } else {
                match self.rx.recv_timeout(wait) {
                    Ok(ev) => {
                        self.handle_notify(ev);
                        for _ in 0..DRAIN_MAX {
                            match self.rx.try_recv() {
                                Ok(ev) => self.handle_notify(ev),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            self.poll_if_due();
            if self.mount_table.is_some() && self.last_mount_check.elapsed() >= MOUNT_CHECK {
                self.check_mounts(false);
            }
            self.expire_unpaired_renames();
            self.relist_moved_dirs();
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
        // Dropping the watchers stops their threads and closes the inotify descriptor.
        self.native = None;
        self.inotify = None;
        self.fanotify = None;
        self.poller = None;
        self.refresh_counts();
        self.flush();
        self.shared.lock().finished = true;
        self.shared.cond.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::{printable, Entry, FileKey, Key, WdTable, DENSE_WDS};
    use std::path::Path;

    #[test]
    fn wd_table_keeps_small_and_large_descriptors_and_removes_subtrees() {
        let mut t = WdTable::default();
        let big = i32::try_from(DENSE_WDS).unwrap_or(i32::MAX) + 5;
        t.insert(1, Key::new(Path::new("/r/a")));
        t.insert(7, Key::new(Path::new("/r/a/b")));
        t.insert(big, Key::new(Path::new("/r/a/c")));
        t.insert(9, Key::new(Path::new("/r/ab")));
        assert_eq!(t.get(7).map(|k| k.to_path_buf()), Some("/r/a/b".into()));
        assert_eq!(t.get(big).map(|k| k.to_path_buf()), Some("/r/a/c".into()));
        assert!(t.get(3).is_none() && t.get(-1).is_none() && t.get(100).is_none());
        let mut gone = t.remove_under(Path::new("/r/a"));
        gone.sort();
        assert_eq!(gone, vec![1, 7, big], "/r/ab is not under /r/a");
        assert!(t.get(9).is_some());
        assert_eq!(t.remove(9).map(|k| k.to_path_buf()), Some("/r/ab".into()));
        assert!(t.remove(9).is_none());
        t.shrink_to_fit();
        assert!(t.dense.is_empty());
    }

    #[test]
    fn wd_table_keeps_fanotify_descriptors_apart_from_inotify_ones() {
        let mut t = WdTable::default();
        t.insert(2, Key::new(Path::new("/r/ino")));
        t.insert(-2, Key::new(Path::new("/r/fan")));
        t.insert(-3, Key::new(Path::new("/r/fan/sub")));
        assert_eq!(t.get(2).map(|k| k.to_path_buf()), Some("/r/ino".into()));
        assert_eq!(t.get(-2).map(|k| k.to_path_buf()), Some("/r/fan".into()));
        assert!(t.get(-1).is_none() && t.get(-4).is_none() && t.get(i32::MIN).is_none());
        assert!(t.sparse.is_empty(), "both kinds are dense");
        let mut gone = t.remove_under(Path::new("/r/fan"));
        gone.sort();
        assert_eq!(gone, vec![-3, -2]);
        assert_eq!(t.remove(2).map(|k| k.to_path_buf()), Some("/r/ino".into()));
        t.shrink_to_fit();
        assert!(t.dense.is_empty() && t.fan.is_empty());
    }

    #[test]
    fn a_tracked_file_fits_one_cache_line() {
        // The map holds one per file ever seen; a deadline's lookup then touches one line.
        assert!(std::mem::size_of::<FileKey>() + std::mem::size_of::<Entry>() <= 64);
    }

    #[test]
    fn control_characters_in_log_messages_are_escaped() {
        assert_eq!(printable("plain /a/b.tif".into()), "plain /a/b.tif");
        assert_eq!(
            printable("Not watching /d/evil\nINFO forged: it".into()),
            "Not watching /d/evil\\x0aINFO forged: it"
        );
    }
}
