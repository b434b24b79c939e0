//! A fanotify backend for the worker thread (Linux, CAP_SYS_ADMIN).
//!
//! Why: inotify needs one watch per directory, so a large tree costs a watch (and kernel
//! memory) per directory, hits `max_user_watches`, and a directory created under a watched one
//! is unwatched until we have read its create. A fanotify *filesystem* mark reports every
//! change on the filesystem through one descriptor: no per-directory watch, no limit, no gap.
//! Events name the directory by its file handle (`FAN_REPORT_DFID_NAME`) plus the entry's
//! name; the core books a handle for every directory it follows (`name_to_handle_at`) and
//! turns handles back into paths through that table. Handles it has not booked are resolved
//! with `open_by_handle_at` when the process may (CAP_DAC_READ_SEARCH), and otherwise, like
//! everything outside the roots, dropped.
//!
//! Renames come as one `FAN_RENAME` record holding both the old and the new place, so no
//! cookie pairing is needed (this needs Linux 5.17; older kernels refuse the mark and `auto`
//! falls back to inotify).

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustc_hash::{FxHashMap, FxHashSet};

/// Event bits, from the kernel's uapi `linux/fanotify.h` (as the `libc` crate spells them).
pub const MODIFY: u64 = 0x0000_0002;
pub const ATTRIB: u64 = 0x0000_0004;
pub const CLOSE_WRITE: u64 = 0x0000_0008;
pub const CREATE: u64 = 0x0000_0100;
pub const DELETE: u64 = 0x0000_0200;
pub const DELETE_SELF: u64 = 0x0000_0400;
pub const MOVE_SELF: u64 = 0x0000_0800;
pub const Q_OVERFLOW: u64 = 0x0000_4000;
pub const RENAME: u64 = 0x1000_0000;
pub const ONDIR: u64 = 0x4000_0000;

/// The events the state machine uses. No FAN_OPEN / FAN_ACCESS / FAN_CLOSE_NOWRITE: readers
/// (our own listings, the importer, indexers) must cost nothing. FAN_MOVED_FROM/FAN_MOVED_TO
/// are left out too: FAN_RENAME reports the same move once, with both of its places, where
/// the halves would triple every rename. DELETE_SELF / MOVE_SELF are asked for (a directory
/// of ours going away) but the parent's DELETE / RENAME says the same, so the core skips them.
const MARK_MASK: u64 =
    CREATE | DELETE | RENAME | MODIFY | ATTRIB | CLOSE_WRITE | DELETE_SELF | MOVE_SELF | ONDIR;

/// Info record types.
const INFO_DFID_NAME: u8 = 2;
const INFO_DFID: u8 = 3;
const INFO_OLD_DFID_NAME: u8 = 10;
const INFO_NEW_DFID_NAME: u8 = 12;

/// Size of `struct fanotify_event_metadata` (event_len, vers, reserved, metadata_len, mask, fd, pid).
const META_LEN: usize = 24;
/// The metadata version this parser knows (FANOTIFY_METADATA_VERSION).
const METADATA_VERSION: u8 = 3;
/// Longest file handle the kernel hands out (MAX_HANDLE_SZ).
const MAX_HANDLE: usize = 128;

/// A file identifier as the kernel reports it: fsid (8 bytes), then `struct file_handle`
/// (handle_bytes: u32, handle_type: i32, the handle). Used as is for a map key, so that an
/// event's identifier is looked up without copying it.
pub type Fid<'a> = &'a [u8];

/// One decoded event record. Names are empty when the record has none.
#[derive(Debug, Default, Clone)]
pub struct Record<'a> {
    pub mask: u64,
    /// The directory the entry `name` is in (DFID_NAME), or the directory itself (DFID).
    pub dir: Option<Fid<'a>>,
    pub name: &'a OsStr,
    /// FAN_RENAME: where the entry was and where it is now.
    pub old: Option<(Fid<'a>, &'a OsStr)>,
    pub new: Option<(Fid<'a>, &'a OsStr)>,
}

/// The bytes of one read(2), decoded on demand.
#[derive(Default)]
pub struct EventBuf {
    bytes: Vec<u8>,
    len: usize,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut w = [0u8; 8];
    w.copy_from_slice(s);
    Some(u64::from_ne_bytes(w))
}

/// One info record's payload after its 4-byte header: fsid + file_handle [+ name].
/// Returns the identifier and the name (empty when `named` is false or there is none).
fn fid_and_name(body: &[u8], named: bool) -> Option<(Fid<'_>, &OsStr)> {
    // fsid (8) + handle_bytes (4) + handle_type (4) + handle
    let handle_len = u32_at(body, 8)? as usize;
    let fid_end = 16usize.checked_add(handle_len)?;
    let fid = body.get(..fid_end)?;
    let name = if named {
        let rest = body.get(fid_end..)?;
        // NUL-terminated, then padded.
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        OsStr::from_bytes(&rest[..end])
    } else {
        OsStr::new("")
    };
    Some((fid, name))
}

/// Decode one event (`ev`: exactly `event_len` bytes). Unknown info records are skipped;
/// a malformed one ends the record's decoding (what was decoded stays).
fn decode(ev: &[u8]) -> Option<Record<'_>> {
    let metadata_len = usize::from(u16_at(ev, 6)?);
    let mask = u64_at(ev, 8)?;
    let mut rec = Record {
        mask,
        ..Record::default()
    };
    let mut at = metadata_len.max(META_LEN);
    while at < ev.len() {
        let Some(info_type) = ev.get(at).copied() else {
            break;
        };
        let Some(len) = u16_at(ev, at + 2).map(usize::from) else {
            break;
        };
        // A record shorter than its own header would loop forever.
        let Some(end) = at.checked_add(len).filter(|&e| len >= 4 && e <= ev.len()) else {
            break;
        };
        let body = &ev[at + 4..end];
        match info_type {
            INFO_DFID_NAME => {
                if let Some((fid, name)) = fid_and_name(body, true) {
                    rec.dir = Some(fid);
                    rec.name = name;
                }
            }
            INFO_DFID => {
                if let Some((fid, _)) = fid_and_name(body, false) {
                    rec.dir = Some(fid);
                }
            }
            INFO_OLD_DFID_NAME => rec.old = fid_and_name(body, true),
            INFO_NEW_DFID_NAME => rec.new = fid_and_name(body, true),
            // FID (the object's own identifier, type 1) and anything newer: not needed.
            _ => {}
        }
        at = end;
    }
    Some(rec)
}

impl EventBuf {
    /// The records of the last read. Each is bounded by its own `event_len`, which is
    /// checked against what was read; a record that does not fit ends the iteration.
    pub fn iter(&self) -> impl Iterator<Item = Record<'_>> {
        let bytes = self.bytes.get(..self.len).unwrap_or(&[]);
        let mut at = 0usize;
        std::iter::from_fn(move || loop {
            let event_len = u32_at(bytes, at)? as usize;
            let end = at.checked_add(event_len)?;
            if event_len < META_LEN || end > bytes.len() {
                return None;
            }
            let ev = &bytes[at..end];
            at = end;
            if ev.get(4) != Some(&METADATA_VERSION) {
                continue; // a layout we do not know: skip it by its length
            }
            if let Some(rec) = decode(ev) {
                return Some(rec);
            }
        })
    }

    /// Test helper: decode `bytes` as if read from the kernel.
    #[cfg(test)]
    fn from_bytes(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        EventBuf { bytes, len }
    }
}

/// A directory's identifier from `name_to_handle_at`, in the layout events use ([`Fid`])
/// once its filesystem's fsid is put in front; and the mount it was found on.
pub struct Handle {
    pub mount_id: i32,
    /// handle_bytes (u32) + handle_type (i32) + handle.
    pub bytes: Vec<u8>,
}

#[cfg(target_os = "linux")]
mod imp {
    use super::*;
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, RawFd};
    use std::time::Duration;

    fn cpath(p: &Path) -> io::Result<CString> {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
    }

    pub struct Fanotify {
        fd: OwnedFd,
    }

    impl Fanotify {
        /// A notification group reporting directory handles, names and object handles.
        /// EPERM without CAP_SYS_ADMIN; EINVAL on kernels before 5.9.
        pub fn new() -> io::Result<Self> {
            let flags = libc::FAN_CLASS_NOTIF
                | libc::FAN_CLOEXEC
                | libc::FAN_NONBLOCK
                | libc::FAN_REPORT_DFID_NAME
                | libc::FAN_REPORT_FID;
            let f_flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_LARGEFILE) as libc::c_uint;
            // SAFETY: plain syscall; the result is checked before use.
            let fd = unsafe { libc::fanotify_init(flags, f_flags) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            Ok(Fanotify {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
            })
        }

        pub fn raw_fd(&self) -> RawFd {
            self.fd.as_raw_fd()
        }

        /// Mark the whole filesystem `path` lives on. Marking one twice is harmless.
        /// EXDEV/ENODEV/EOPNOTSUPP: the filesystem cannot report file handles (or is a
        /// subvolume/overlay that cannot be marked whole); EINVAL: FAN_RENAME unknown.
        pub fn mark_filesystem(&self, path: &Path) -> io::Result<()> {
            let c = cpath(path)?;
            let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM;
            // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
            let rc = unsafe {
                libc::fanotify_mark(self.fd.as_raw_fd(), flags, MARK_MASK, libc::AT_FDCWD, c.as_ptr())
            };
            if rc < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }

        /// Wait until events are readable or `timeout` passes.
        #[cfg(test)]
        pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
            wait_any(&[self.fd.as_raw_fd()], timeout).map(|r| r.first().copied().unwrap_or(false))
        }

        /// Read what is queued now (one read(2)) into `buf`; false when nothing is queued.
        pub fn read(&self, buf: &mut EventBuf) -> io::Result<bool> {
            buf.len = crate::inotify::read_queued(self.fd.as_raw_fd(), &mut buf.bytes)?;
            Ok(buf.len > 0)
        }
    }

    /// poll(2) on several descriptors; which of them are readable (all false on timeout or EINTR).
    pub fn wait_any(fds: &[RawFd], timeout: Duration) -> io::Result<Vec<bool>> {
        let mut pfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pfds` is valid for its length during the call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(vec![false; fds.len()])
            } else {
                Err(e)
            };
        }
        Ok(pfds.iter().map(|p| p.revents != 0).collect())
    }

    /// `name_to_handle_at` of a directory (symlinks not followed).
    pub fn handle_of(dir: &Path) -> io::Result<Handle> {
        let c = cpath(dir)?;
        // struct file_handle with room for the largest handle; u32 words keep it aligned.
        let mut raw = [0u32; 2 + MAX_HANDLE / 4];
        raw[0] = MAX_HANDLE as u32;
        let mut mount_id: libc::c_int = 0;
        // SAFETY: `raw` is a file_handle header followed by MAX_HANDLE bytes, as announced in
        // its handle_bytes; `c` and `mount_id` are valid for the call.
        let rc = unsafe {
            libc::name_to_handle_at(
                libc::AT_FDCWD,
                c.as_ptr(),
                raw.as_mut_ptr().cast::<libc::file_handle>(),
                &mut mount_id,
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let len = (raw[0] as usize).min(MAX_HANDLE);
        let mut bytes = Vec::with_capacity(8 + len);
        for w in &raw[..2 + len.div_ceil(4)] {
            bytes.extend_from_slice(&w.to_ne_bytes());
        }
        bytes.truncate(8 + len);
        Ok(Handle { mount_id, bytes })
    }

    /// The fsid events carry for the filesystem `path` lives on (statfs's f_fsid).
    pub fn fsid_of(path: &Path) -> io::Result<[u8; 8]> {
        let c = cpath(path)?;
        let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
        // SAFETY: `c` is NUL-terminated and `st` large enough.
        if unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: statfs returned 0, so it filled the struct.
        let st = unsafe { st.assume_init() };
        // __kernel_fsid_t is two ints; the kernel copies them as they are into events.
        // SAFETY: fsid_t is plain data of 8 bytes.
        let raw: [u8; 8] = unsafe { std::mem::transmute_copy(&st.f_fsid) };
        Ok(raw)
    }

    /// A descriptor for `open_by_handle_at`'s mount argument (which refuses O_PATH ones).
    pub fn open_path(dir: &Path) -> io::Result<OwnedFd> {
        let c = cpath(dir)?;
        // SAFETY: `c` is NUL-terminated; the result is checked.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Where the directory with this identifier is now: `open_by_handle_at` (needs
    /// CAP_DAC_READ_SEARCH, else EPERM) and the link in /proc/self/fd. `fid` is an event's
    /// identifier (fsid first), `mount` a descriptor on its filesystem.
    pub fn path_of(mount: &OwnedFd, fid: Fid<'_>) -> io::Result<PathBuf> {
        let handle = fid
            .get(8..)
            .filter(|h| h.len() >= 8 && h.len() <= 8 + MAX_HANDLE)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed file handle"))?;
        let mut raw = [0u32; 2 + MAX_HANDLE / 4];
        for (i, chunk) in handle.chunks(4).enumerate() {
            let mut w = [0u8; 4];
            w[..chunk.len()].copy_from_slice(chunk);
            raw[i] = u32::from_ne_bytes(w);
        }
        // SAFETY: `raw` holds a file_handle whose handle_bytes (checked above to fit) the
        // kernel reads from; the result is checked.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount.as_raw_fd(),
                raw.as_mut_ptr().cast::<libc::file_handle>(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns (closed when dropped).
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }

    /// Whether anyone has `path` open for writing (or mapped writable): a read lease is
    /// refused then (EAGAIN). None when it cannot be told (leases disabled, not a regular
    /// file); an error when the file cannot be opened (ENOENT: it is gone).
    pub fn open_for_writing(path: &Path) -> io::Result<Option<bool>> {
        let c = cpath(path)?;
        // SAFETY: `c` is NUL-terminated; the result is checked.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor; closing it also drops the lease.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain fcntl on our own descriptor.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) };
        if rc == 0 {
            return Ok(Some(false));
        }
        Ok(match io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => Some(true),
            _ => None,
        })
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;
    use std::time::Duration;

    fn unsupported() -> io::Error {
        io::Error::new(io::ErrorKind::Unsupported, "fanotify is Linux only")
    }

    /// Other platforms have no fanotify; this stub is never constructed.
    pub struct Fanotify;

    impl Fanotify {
        pub fn new() -> io::Result<Self> {
            Err(unsupported())
        }
        pub fn raw_fd(&self) -> i32 {
            -1
        }
        pub fn mark_filesystem(&self, _path: &Path) -> io::Result<()> {
            Err(unsupported())
        }
        pub fn read(&self, _buf: &mut EventBuf) -> io::Result<bool> {
            Ok(false)
        }
    }

    pub fn wait_any(fds: &[i32], timeout: Duration) -> io::Result<Vec<bool>> {
        std::thread::sleep(timeout);
        Ok(vec![false; fds.len()])
    }
    pub fn handle_of(_dir: &Path) -> io::Result<Handle> {
        Err(unsupported())
    }
    pub fn fsid_of(_path: &Path) -> io::Result<[u8; 8]> {
        Err(unsupported())
    }
    pub fn open_path(_dir: &Path) -> io::Result<OwnedFd> {
        Err(unsupported())
    }
    pub fn path_of(_mount: &OwnedFd, _fid: Fid<'_>) -> io::Result<PathBuf> {
        Err(unsupported())
    }
    pub fn open_for_writing(_path: &Path) -> io::Result<Option<bool>> {
        Ok(None)
    }
}

pub use imp::{fsid_of, handle_of, open_for_writing, open_path, path_of, wait_any, Fanotify};

/// Pseudo watch descriptors for fanotify directories count down from here, so that they
/// never meet inotify's (positive) descriptors or `NO_WD` (-1) in the core's one table.
/// Those of forgotten directories are handed out again, so the numbers stay dense.
pub const FIRST_WD: i32 = -2;

/// How many identifiers of directories that are not ours are remembered, so that events
/// outside the roots cost one hash lookup each rather than a system call.
const FOREIGN_MAX: usize = 65_536;

/// Identifiers up to this long (fsid + file_handle header + handle: 24 bytes on ext4, 28 on
/// tmpfs) are kept inside the table, without an allocation of their own.
const INLINE: usize = 40;

/// A followed directory: its identifier (inline) and its pseudo descriptor.
struct Booked {
    len: u8,
    fid: [u8; INLINE],
    wd: i32,
}

impl Booked {
    fn fid(&self) -> &[u8] {
        &self.fid[..usize::from(self.len)]
    }
}

/// The index of a pseudo descriptor in dense tables.
pub fn wd_index(wd: i32) -> Option<usize> {
    usize::try_from(i64::from(FIRST_WD) - i64::from(wd)).ok()
}

/// The fanotify group and the directories the core follows, by file handle.
pub struct FanWatch {
    pub fan: Fanotify,
    /// Identifier -> pseudo descriptor, hashed with `hash_fid`.
    table: hashbrown::HashTable<Booked>,
    /// The rare identifiers longer than [`INLINE`].
    long: FxHashMap<Box<[u8]>, i32>,
    /// By [`wd_index`]: the identifier's hash, to find its booking again (0: none).
    hashes: Vec<u64>,
    /// Pseudo descriptors of forgotten directories, handed out again first.
    free: Vec<i32>,
    /// Mount id -> fsid of every filesystem marked so far.
    marked: FxHashMap<i32, [u8; 8]>,
    /// One descriptor per marked filesystem, for `open_by_handle_at`.
    mount_fds: Vec<([u8; 8], OwnedFd)>,
    /// Identifiers `open_by_handle_at` could not place in a followed directory.
    foreign: FxHashSet<Box<[u8]>>,
    /// `open_by_handle_at` is allowed (until it says EPERM: no CAP_DAC_READ_SEARCH).
    may_open_handles: bool,
}

/// Never 0, which marks a free slot in `FanWatch::hashes`.
fn hash_fid(fid: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(fid).max(1)
}

impl FanWatch {
    pub fn new() -> io::Result<Self> {
        Ok(FanWatch {
            fan: Fanotify::new()?,
            table: hashbrown::HashTable::new(),
            long: FxHashMap::default(),
            hashes: Vec::new(),
            free: Vec::new(),
            marked: FxHashMap::default(),
            mount_fds: Vec::new(),
            foreign: FxHashSet::default(),
            may_open_handles: true,
        })
    }

    /// Follow directory `dir`: mark its filesystem when it is the first seen of that mount,
    /// book its handle; returns its pseudo descriptor (the same for the same directory).
    pub fn book(&mut self, dir: &Path) -> io::Result<i32> {
        let handle = handle_of(dir)?;
        let fsid = match self.marked.get(&handle.mount_id) {
            Some(fsid) => *fsid,
            None => {
                self.fan.mark_filesystem(dir)?;
                let fsid = fsid_of(dir)?;
                if let Ok(fd) = open_path(dir) {
                    self.mount_fds.push((fsid, fd));
                }
                self.marked.insert(handle.mount_id, fsid);
                fsid
            }
        };
        let mut fid = Vec::with_capacity(8 + handle.bytes.len());
        fid.extend_from_slice(&fsid);
        fid.extend_from_slice(&handle.bytes);
        if let Some(wd) = self.wd_of(&fid) {
            return Ok(wd);
        }
        let wd = match self.free.pop() {
            Some(wd) => wd,
            // (i32::MIN - FIRST_WD directories at once would be needed to run out.)
            None => FIRST_WD.saturating_sub(i32::try_from(self.hashes.len()).unwrap_or(i32::MAX)),
        };
        let idx = wd_index(wd).unwrap_or(0);
        if idx >= self.hashes.len() {
            self.hashes.resize(idx + 1, 0);
        }
        if !self.foreign.is_empty() {
            self.foreign.remove(fid.as_slice());
        }
        let hash = hash_fid(&fid);
        self.hashes[idx] = hash;
        if fid.len() <= INLINE {
            let mut booked = Booked {
                len: fid.len() as u8,
                fid: [0; INLINE],
                wd,
            };
            booked.fid[..fid.len()].copy_from_slice(&fid);
            self.table.insert_unique(hash, booked, |b| hash_fid(b.fid()));
        } else {
            self.long.insert(fid.into_boxed_slice(), wd);
        }
        Ok(wd)
    }

    /// The directory went away (or out of reach): forget its handle.
    pub fn forget(&mut self, wd: i32) {
        let Some(slot) = wd_index(wd).and_then(|i| self.hashes.get_mut(i)) else {
            return;
        };
        let hash = std::mem::replace(slot, 0);
        if hash == 0 {
            return; // not booked (or forgotten already)
        }
        match self.table.find_entry(hash, |b| b.wd == wd) {
            Ok(entry) => {
                entry.remove();
            }
            Err(_) => self.long.retain(|_, w| *w != wd),
        }
        self.free.push(wd);
    }

    /// The pseudo descriptor of a followed directory.
    pub fn wd_of(&self, fid: Fid<'_>) -> Option<i32> {
        if fid.len() <= INLINE {
            self.table.find(hash_fid(fid), |b| b.fid() == fid).map(|b| b.wd)
        } else {
            self.long.get(fid).copied()
        }
    }

    /// Where a directory we do not follow is, through `open_by_handle_at`; None (and
    /// remembered as foreign) when that is not allowed or fails.
    pub fn resolve(&mut self, fid: Fid<'_>) -> Option<PathBuf> {
        if !self.may_open_handles || self.foreign.contains(fid) {
            return None;
        }
        let fsid = fid.get(..8)?;
        let (_, mount) = self.mount_fds.iter().find(|(f, _)| f.as_slice() == fsid)?;
        match path_of(mount, fid) {
            Ok(path) => Some(path),
            Err(e) => {
                if e.raw_os_error() == Some(libc::EPERM) {
                    self.may_open_handles = false;
                }
                self.note_foreign(fid);
                None
            }
        }
    }

    /// Remember a directory's identifier as not ours.
    pub fn note_foreign(&mut self, fid: Fid<'_>) {
        if self.foreign.len() >= FOREIGN_MAX {
            self.foreign.clear();
        }
        self.foreign.insert(fid.into());
    }

    /// Directories followed (for tests).
    #[cfg(test)]
    pub fn followed(&self) -> usize {
        self.table.len() + self.long.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One info record: header, fsid, file_handle, name (NUL-padded to 4 bytes).
    fn info(kind: u8, fsid: [u8; 8], handle: &[u8], name: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&fsid);
        body.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        body.extend_from_slice(&1i32.to_ne_bytes());
        body.extend_from_slice(handle);
        if !name.is_empty() {
            body.extend_from_slice(name);
            body.push(0);
        }
        while (body.len() + 4) % 4 != 0 {
            body.push(0);
        }
        let mut rec = vec![kind, 0];
        rec.extend_from_slice(&((body.len() + 4) as u16).to_ne_bytes());
        rec.extend_from_slice(&body);
        rec
    }

    fn event(mask: u64, infos: &[Vec<u8>]) -> Vec<u8> {
        let len = META_LEN + infos.iter().map(Vec::len).sum::<usize>();
        let mut ev = Vec::new();
        ev.extend_from_slice(&(len as u32).to_ne_bytes());
        ev.push(METADATA_VERSION);
        ev.push(0);
        ev.extend_from_slice(&(META_LEN as u16).to_ne_bytes());
        ev.extend_from_slice(&mask.to_ne_bytes());
        ev.extend_from_slice(&(-1i32).to_ne_bytes()); // FAN_NOFD
        ev.extend_from_slice(&42i32.to_ne_bytes());
        for i in infos {
            ev.extend_from_slice(i);
        }
        ev
    }

    #[test]
    fn decodes_named_records_and_renames() {
        let fsid = [1, 2, 3, 4, 5, 6, 7, 8];
        let mut bytes = event(
            CREATE | CLOSE_WRITE,
            &[
                info(INFO_DFID_NAME, fsid, &[9; 8], b"a.tif"),
                info(1, fsid, &[7; 8], b""),
            ],
        );
        bytes.extend(event(
            RENAME | ONDIR,
            &[
                info(INFO_OLD_DFID_NAME, fsid, &[9; 8], b"old"),
                info(INFO_NEW_DFID_NAME, fsid, &[8; 12], b"new"),
            ],
        ));
        let buf = EventBuf::from_bytes(bytes);
        let recs: Vec<Record<'_>> = buf.iter().collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].mask, CREATE | CLOSE_WRITE);
        assert_eq!(recs[0].name, "a.tif");
        let dir = recs[0].dir.unwrap_or_default();
        assert_eq!(&dir[..8], &fsid);
        assert_eq!(dir.len(), 16 + 8, "fsid, handle_bytes, handle_type, handle");
        let (old_dir, old_name) = recs[1].old.unwrap_or_default();
        let (new_dir, new_name) = recs[1].new.unwrap_or_default();
        assert_eq!((old_name, new_name), (OsStr::new("old"), OsStr::new("new")));
        assert_eq!(old_dir, dir, "the same directory has the same identifier");
        assert_eq!(new_dir.len(), 16 + 12);
    }

    #[test]
    fn malformed_records_end_decoding_without_reading_past_the_buffer() {
        let fsid = [0; 8];
        let good = event(MODIFY, &[info(INFO_DFID_NAME, fsid, &[1; 8], b"f")]);
        // Truncated anywhere: never a panic, and never a record that does not fit.
        for cut in 0..good.len() {
            let buf = EventBuf::from_bytes(good[..cut].to_vec());
            assert_eq!(buf.iter().count(), 0, "cut at {cut}");
        }
        // An info record claiming more than the event holds, or less than its header.
        for bad_len in [0u16, 2, 3, 200, u16::MAX] {
            let mut ev = good.clone();
            ev[META_LEN + 2..META_LEN + 4].copy_from_slice(&bad_len.to_ne_bytes());
            let buf = EventBuf::from_bytes(ev);
            let recs: Vec<Record<'_>> = buf.iter().collect();
            assert_eq!(recs.len(), 1);
            assert!(recs[0].dir.is_none(), "len {bad_len}");
        }
        // A handle longer than its record.
        let mut ev = good.clone();
        ev[META_LEN + 12..META_LEN + 16].copy_from_slice(&1000u32.to_ne_bytes());
        let buf = EventBuf::from_bytes(ev);
        assert!(buf.iter().all(|r| r.dir.is_none()));
        // An event_len below the metadata size, or an unknown version, is skipped or ends it.
        let mut short = good.clone();
        short[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(EventBuf::from_bytes(short).iter().count(), 0);
        let mut other = good.clone();
        other[4] = METADATA_VERSION + 1;
        other.extend_from_slice(&good);
        assert_eq!(EventBuf::from_bytes(other).iter().count(), 1);
    }

    /// A live group, or None (with the reason printed) where fanotify cannot run here.
    fn live() -> Option<FanWatch> {
        match FanWatch::new() {
            Ok(fw) => Some(fw),
            Err(e) => {
                eprintln!("skipped: fanotify_init failed ({e}); needs CAP_SYS_ADMIN");
                None
            }
        }
    }

    /// mask, directory identifier (the new one for a rename), name, old name.
    type Seen = (u64, Option<Vec<u8>>, String, Option<String>);

    fn read_all(fw: &FanWatch) -> io::Result<Vec<Seen>> {
        let mut buf = EventBuf::default();
        let mut got = Vec::new();
        while fw.fan.wait(std::time::Duration::from_millis(200))? && fw.fan.read(&mut buf)? {
            for r in buf.iter() {
                let name = r.new.map(|(_, n)| n).unwrap_or(r.name);
                got.push((
                    r.mask,
                    r.new.or(r.old).map(|(d, _)| d).or(r.dir).map(<[u8]>::to_vec),
                    name.to_string_lossy().into_owned(),
                    r.old.map(|(_, n)| n.to_string_lossy().into_owned()),
                ));
            }
        }
        Ok(got)
    }

    #[test]
    fn a_filesystem_mark_reports_named_events_by_directory_handle() -> io::Result<()> {
        let Some(mut fw) = live() else { return Ok(()) };
        let base = if Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        };
        let dir = tempfile::tempdir_in(base)?;
        let wd = match fw.book(dir.path()) {
            Ok(wd) => wd,
            Err(e) => {
                eprintln!("skipped: cannot mark {base} ({e})");
                return Ok(());
            }
        };
        assert!(wd < -1);
        assert_eq!(
            fw.book(dir.path())?,
            wd,
            "the same directory, the same descriptor"
        );
        std::fs::write(dir.path().join("a.tif"), b"x")?;
        std::fs::rename(dir.path().join("a.tif"), dir.path().join("b.tif"))?;
        std::fs::create_dir(dir.path().join("sub"))?;
        // A directory nobody booked still reports (no watch to place first) ...
        std::fs::write(dir.path().join("sub/c.tif"), b"y")?;
        // (An event on a directory itself names it as ".".)
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path().join("sub"), std::fs::Permissions::from_mode(0o700))?;
        let got = read_all(&fw)?;
        let ours: Vec<_> = got
            .iter()
            .filter(|(_, d, _, _)| d.as_deref().and_then(|d| fw.wd_of(d)) == Some(wd))
            .collect();
        // (A create names the directory's entry; writes and the close are the file's own
        // events, merged into one record while queued.)
        assert!(ours.iter().any(|(m, _, n, _)| *m == CREATE && n == "a.tif"));
        assert!(ours
            .iter()
            .any(|(m, _, n, _)| *m == MODIFY | CLOSE_WRITE && n == "a.tif"));
        assert!(ours
            .iter()
            .any(|(m, _, n, old)| m & RENAME != 0 && n == "b.tif" && old.as_deref() == Some("a.tif")));
        assert!(ours
            .iter()
            .any(|(m, _, n, _)| m & CREATE != 0 && m & ONDIR != 0 && n == "sub"));
        // ... by a handle the table does not know; `open_by_handle_at` finds where it is.
        let (_, sub_fid, _, _) = got
            .iter()
            .find(|(_, _, n, _)| n == "c.tif")
            .ok_or_else(|| io::Error::other("no event for sub/c.tif"))?;
        let sub_fid = sub_fid.clone().unwrap_or_default();
        assert_eq!(fw.wd_of(&sub_fid), None);
        assert!(got
            .iter()
            .any(|(m, d, n, _)| *m == ATTRIB | ONDIR && n == "." && d.as_deref() == Some(&sub_fid[..])));
        assert_eq!(fw.resolve(&sub_fid), Some(dir.path().join("sub")));
        let sub_wd = fw.book(&dir.path().join("sub"))?;
        assert_eq!(
            fw.wd_of(&sub_fid),
            Some(sub_wd),
            "booking gives the event's identifier"
        );
        fw.forget(sub_wd);
        fw.forget(sub_wd); // twice: harmless
        assert_eq!(fw.wd_of(&sub_fid), None);
        assert_eq!(fw.followed(), 1);
        std::fs::create_dir(dir.path().join("other"))?;
        assert_eq!(
            fw.book(&dir.path().join("other"))?,
            sub_wd,
            "descriptors are reused"
        );
        assert_eq!(fw.book(dir.path())?, wd);
        Ok(())
    }

    #[test]
    fn a_read_lease_tells_whether_a_file_is_open_for_writing() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        let file = std::fs::File::create(&path)?;
        if open_for_writing(&path)?.is_none() {
            eprintln!("skipped: leases are not available here");
            return Ok(());
        }
        assert_eq!(open_for_writing(&path)?, Some(true));
        drop(file);
        assert_eq!(open_for_writing(&path)?, Some(false));
        let _reader = std::fs::File::open(&path)?;
        assert_eq!(open_for_writing(&path)?, Some(false), "readers do not count");
        std::fs::remove_file(&path)?;
        assert_eq!(
            open_for_writing(&path).map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
        Ok(())
    }
}
