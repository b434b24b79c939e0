//! Filesystem facts the backend choice depends on.

use std::path::Path;

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
