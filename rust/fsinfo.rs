//! Filesystem facts the backend choice depends on.

use std::path::{Path, PathBuf};

/// The name of the network filesystem `path` lives on, if it is one.
///
/// Kernel change notification does not see writes made by other clients of a
/// network share, so such roots must be polled.
/// `statfs(2)` of `path`, or None when it cannot be asked.
#[cfg(any(target_os = "linux", target_os = "macos"))]
fn statfs_of(path: &Path) -> Option<libc::statfs> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: c_path is a valid NUL-terminated string and buf is large enough.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statfs returned 0, so it filled the struct.
    Some(unsafe { buf.assume_init() })
}

#[cfg(target_os = "linux")]
pub fn network_fs_name(path: &Path) -> Option<&'static str> {
    let stat = statfs_of(path)?;
    // f_type's integer type differs between libc targets; compare as u64.
    #[allow(clippy::unnecessary_cast)]
    let magic = stat.f_type as u64 & 0xffff_ffff;
    NETWORK_FS_MAGIC
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| *name)
}

#[cfg(target_os = "linux")]
const NETWORK_FS_MAGIC: &[(u64, &str)] = &[
    (0x6969, "nfs"),
    (0x517b, "smb"),
    (0xff53_4d42, "cifs"),
    (0xfe53_4d42, "smb2"),
    (0x5346_414f, "afs"),
    (0x0102_1997, "9p"),
    (0x6573_5546, "fuse"),
    (0x0bd0_0bd0, "lustre"),
    (0x4750_4653, "gpfs"),
    (0x00c3_6400, "ceph"),
];

#[cfg(target_os = "macos")]
pub fn network_fs_name(path: &Path) -> Option<&'static str> {
    use std::ffi::CStr;

    let stat = statfs_of(path)?;
    // SAFETY: f_fstypename is NUL-terminated by the kernel.
    let name = unsafe { CStr::from_ptr(stat.f_fstypename.as_ptr()) };
    match name.to_bytes() {
        b"nfs" => Some("nfs"),
        b"smbfs" => Some("smb"),
        b"afpfs" => Some("afp"),
        b"webdav" => Some("webdav"),
        _ => None,
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn network_fs_name(_path: &Path) -> Option<&'static str> {
    None
}

/// The mount table of this process's mount namespace (`/proc/self/mountinfo`), kept open so
/// that a mount or unmount anywhere can be noticed cheaply: the kernel flags the open file
/// with a priority event (POLLPRI) when the table changes.
#[cfg(target_os = "linux")]
pub struct MountTable {
    file: std::fs::File,
}

#[cfg(target_os = "linux")]
impl MountTable {
    pub fn open() -> std::io::Result<Self> {
        Ok(MountTable {
            file: std::fs::File::open("/proc/self/mountinfo")?,
        })
    }

    /// Whether a mount or unmount happened since the last call (or since opening); never
    /// waits. Errors count as a change (the caller then reads the table again).
    pub fn changed(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n != 0 && (n < 0 || pfd.revents & (libc::POLLPRI | libc::POLLERR) != 0)
    }

    /// Every mount point in the table (a path mounted over twice appears twice).
    pub fn mount_points(&mut self) -> std::io::Result<Vec<PathBuf>> {
        use std::io::{Read, Seek};
        let mut text = Vec::new();
        self.file.rewind()?;
        self.file.read_to_end(&mut text)?;
        Ok(parse_mountinfo(&text))
    }
}

/// Not Linux: no mount table is followed (mounts inside a root are watched like any directory).
#[cfg(not(target_os = "linux"))]
pub struct MountTable;

#[cfg(not(target_os = "linux"))]
impl MountTable {
    pub fn open() -> std::io::Result<Self> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
    pub fn changed(&self) -> bool {
        false
    }
    pub fn mount_points(&mut self) -> std::io::Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
}

/// The mount points (fifth field) of `/proc/self/mountinfo` text, with the kernel's octal
/// escapes (`\040` for a space, `\011`, `\012`, `\134`) undone.
pub fn parse_mountinfo(text: &[u8]) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    text.split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .filter(|field| field.first() == Some(&b'/'))
        .map(|field| PathBuf::from(std::ffi::OsString::from_vec(unescape_octal(field))))
        .collect()
}

fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let digits = field.get(i + 1..i + 4);
        let octal = digits.filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (field[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_mountinfo;
    use std::path::PathBuf;

    #[test]
    fn mountinfo_mount_points_are_read_with_their_escapes_undone() {
        let text = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
            40 22 0:35 / /data/Drop\\040Box/amy/micro\\134scope rw - fuse.sshfs host:/x rw\n\
            41 22 0:36 / /tmp/a\\011b rw - tmpfs tmpfs rw\n\
            \n";
        assert_eq!(
            parse_mountinfo(text),
            vec![
                PathBuf::from("/"),
                PathBuf::from("/data/Drop Box/amy/micro\\scope"),
                PathBuf::from("/tmp/a\tb"),
            ]
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_mount_table_of_this_process_lists_the_root() {
        let Ok(mut table) = super::MountTable::open() else {
            return; // no /proc here
        };
        let points = table.mount_points().unwrap_or_default();
        assert!(points.iter().any(|p| p == std::path::Path::new("/")));
    }
}
