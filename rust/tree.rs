//! Tracked paths by parent directory: what a directory's move or removal has to visit.
//!
//! The core keys files and directories by full path, so a directory's move re-keys everything
//! below it: O(tracked paths under the directory), found through these lists rather than by
//! looking at every tracked file. Removals leave stale entries behind (a removal costs
//! nothing); a list drops them when it is read, or when it is full before it grows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::keys::k;

/// Lists shorter than this are never compacted before they grow.
const MIN_COMPACT: usize = 32;

/// The tracked children of one directory, possibly with stale or repeated entries.
#[derive(Debug, Default)]
pub struct Kids {
    list: Vec<Arc<Path>>,
}

impl Kids {
    /// Add `child`. A full list first drops what `live` says is gone, and doubles its room when
    /// that freed less than half of it, so each entry is looked at O(1) times on average.
    pub fn push(&mut self, child: Arc<Path>, live: impl Fn(&Path) -> bool) {
        let full = self.list.len() == self.list.capacity();
        if full && self.list.len() >= MIN_COMPACT {
            self.compact(live);
            let room = self.list.capacity();
            if self.list.len() > room / 2 {
                self.list.reserve(room);
            }
        }
        self.list.push(child);
    }

    fn compact(&mut self, live: impl Fn(&Path) -> bool) {
        self.list.retain(|p| live(p));
        self.list.sort_unstable_by(|a, b| k(a).cmp(k(b)));
        self.list.dedup_by(|a, b| k(a) == k(b));
    }

    /// The children `live` says are still tracked, each once.
    pub fn take(mut self, live: impl Fn(&Path) -> bool) -> Vec<Arc<Path>> {
        self.compact(live);
        self.list
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.list.len()
    }
}

/// `path`, which lies at or below `from`, as it is named after `from` moved to `to`.
pub fn rebase(path: &Path, from: &Path, to: &Path) -> PathBuf {
    match path.strip_prefix(from) {
        Ok(rel) if rel.as_os_str().is_empty() => to.to_path_buf(),
        Ok(rel) => to.join(rel),
        Err(_) => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::{rebase, Kids};
    use std::cell::RefCell;
    use std::collections::HashSet;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    #[test]
    fn stale_and_repeated_children_are_dropped_and_a_list_stays_within_four_times_what_is_live() {
        let live: RefCell<HashSet<PathBuf>> = RefCell::default();
        let mut kids = Kids::default();
        // One file created and deleted over and over, beside 100 that stay.
        for n in 0..100 {
            let p = PathBuf::from(format!("/r/d/keep{n}"));
            live.borrow_mut().insert(p.clone());
            kids.push(Arc::from(p.as_path()), |p| live.borrow().contains(p));
        }
        for _ in 0..10_000 {
            let p = PathBuf::from("/r/d/tmp");
            live.borrow_mut().insert(p.clone());
            kids.push(Arc::from(p.as_path()), |p| live.borrow().contains(p));
            live.borrow_mut().remove(&p);
            assert!(kids.len() <= 4 * 101, "{}", kids.len());
        }
        live.borrow_mut().insert(PathBuf::from("/r/d/tmp"));
        let got = kids.take(|p| live.borrow().contains(p));
        assert_eq!(got.len(), 101, "each live child once");
    }

    #[test]
    fn a_list_of_live_children_grows_without_compacting_each_push() {
        let mut kids = Kids::default();
        let looked = std::cell::Cell::new(0usize);
        for n in 0..100_000 {
            let p = PathBuf::from(format!("/r/{n}"));
            kids.push(Arc::from(p.as_path()), |_| {
                looked.set(looked.get() + 1);
                true
            });
        }
        assert!(looked.get() < 300_000, "looked {} times", looked.get());
        assert_eq!(kids.take(|_| true).len(), 100_000);
    }

    #[test]
    fn paths_are_rebased_by_components() {
        let (from, to) = (Path::new("/r/a"), Path::new("/r/b"));
        assert_eq!(rebase(Path::new("/r/a"), from, to), PathBuf::from("/r/b"));
        assert_eq!(
            rebase(Path::new("/r/a/x/f.tif"), from, to),
            PathBuf::from("/r/b/x/f.tif")
        );
        assert_eq!(
            rebase(Path::new("/r/ab/f.tif"), from, to),
            PathBuf::from("/r/ab/f.tif")
        );
    }
}
