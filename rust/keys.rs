//! Path keys for the core's maps.
//!
//! Paths are hashed and compared as bytes: `Path`'s own `Hash` walks components, which cost
//! more than the rest of a lookup. Cloning a key shares its allocation.

use std::hash::{Hash, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use rustc_hash::FxHasher;

/// A directory path (watched directories, watch descriptors).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key(pub Arc<Path>);

impl Key {
    pub fn new(path: &Path) -> Self {
        Key(Arc::from(path))
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        k(&self.0).hash(state);
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        k(&self.0)
    }
}

impl std::ops::Deref for Key {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Key {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

/// The lookup form of a path for the maps keyed by [`Key`].
pub fn k(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

/// A tracked file's path with its hash kept beside it. The file map grows through every
/// burst, and rehashing it would otherwise read every path again (a cache miss each); a
/// deadline's lookup compares the shared allocation first and so never reads the path.
#[derive(Clone, Debug)]
pub struct FileKey {
    hash: u64,
    pub path: Arc<Path>,
}

impl FileKey {
    pub fn new(path: &Path) -> Self {
        FileKey {
            hash: hash_of(k(path)),
            path: Arc::from(path),
        }
    }
}

fn hash_of(bytes: &[u8]) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(bytes);
    hasher.finish()
}

impl Hash for FileKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialEq for FileKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && (Arc::ptr_eq(&self.path, &other.path) || k(&self.path) == k(&other.path))
    }
}

impl Eq for FileKey {}

impl std::ops::Deref for FileKey {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for FileKey {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// A path looked up in the file map ([`fk`]): hashed once, compared as bytes.
pub struct FileLookup<'a> {
    hash: u64,
    bytes: &'a [u8],
}

impl Hash for FileLookup<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl hashbrown::Equivalent<FileKey> for FileLookup<'_> {
    fn equivalent(&self, key: &FileKey) -> bool {
        self.hash == key.hash && self.bytes == k(&key.path)
    }
}

/// The lookup form of a path for the file map.
pub fn fk(path: &Path) -> FileLookup<'_> {
    let bytes = k(path);
    FileLookup {
        hash: hash_of(bytes),
        bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::{fk, FileKey};
    use std::path::Path;

    #[test]
    fn file_keys_are_found_by_path_and_by_a_clone() {
        let mut files: hashbrown::HashMap<FileKey, u32, rustc_hash::FxBuildHasher> = Default::default();
        let key = FileKey::new(Path::new("/r/a/f.tif"));
        files.insert(key.clone(), 1);
        files.insert(FileKey::new(Path::new("/r/a/g.tif")), 2);
        assert_eq!(files.get(&fk(Path::new("/r/a/f.tif"))), Some(&1));
        assert_eq!(files.get(&key), Some(&1));
        assert_eq!(files.get(&FileKey::new(Path::new("/r/a/g.tif"))), Some(&2));
        assert_eq!(files.get(&fk(Path::new("/r/a/h.tif"))), None);
        for n in 0..10_000 {
            files.insert(FileKey::new(Path::new(&format!("/r/b/{n}"))), n);
        }
        assert_eq!(files.get(&fk(Path::new("/r/b/9999"))), Some(&9999));
        assert_eq!(files.get(&key), Some(&1));
    }
}
