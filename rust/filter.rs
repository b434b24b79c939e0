//! Which paths the watcher ignores: system files, the whitelist and the blacklist.
//!
//! The system-file rules are one data table (`SYSTEM_FILE_RULES`) so that the
//! documentation and the Python side can list exactly what is filtered.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// How a rule matches a file or directory name (case-insensitive, ASCII).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// The name starts with the pattern.
    Prefix,
    /// The name ends with the pattern.
    Suffix,
    /// The name is exactly the pattern.
    Exact,
}

impl Match {
    pub fn as_str(self) -> &'static str {
        match self {
            Match::Prefix => "prefix",
            Match::Suffix => "suffix",
            Match::Exact => "exact",
        }
    }
}

/// One system-file rule: how it matches, the pattern, and why the file is ignored.
pub struct Rule {
    pub how: Match,
    pub pattern: &'static str,
    pub why: &'static str,
    /// Never image data, whatever `ignore_sys_files` says: grouping refuses such a file
    /// even when the watcher reports it (the OMERO importer skips dot files as well).
    pub never_data: bool,
}

/// Names that are never image data: editor and OS droppings, partial downloads
/// and transfers, placeholder folders. Applied to every path component below a
/// root when `ignore_sys_files` is on.
pub const SYSTEM_FILE_RULES: &[Rule] = &[
    Rule {
        how: Match::Prefix,
        pattern: ".",
        why: "hidden file (dotfile); Bio-Formats skips these too",
        never_data: true,
    },
    Rule {
        how: Match::Suffix,
        pattern: "~",
        why: "editor backup",
        never_data: false,
    },
    Rule {
        how: Match::Suffix,
        pattern: ".part",
        why: "partial download or transfer",
        never_data: false,
    },
    Rule {
        how: Match::Suffix,
        pattern: ".partial",
        why: "partial download or transfer",
        never_data: false,
    },
    Rule {
        how: Match::Suffix,
        pattern: ".tmp",
        why: "temporary file",
        never_data: false,
    },
    Rule {
        how: Match::Suffix,
        pattern: ".temp",
        why: "temporary file",
        never_data: false,
    },
    Rule {
        how: Match::Suffix,
        pattern: ".crdownload",
        why: "Chrome partial download",
        never_data: false,
    },
    Rule {
        how: Match::Suffix,
        pattern: ".download",
        why: "Safari partial download",
        never_data: false,
    },
    Rule {
        how: Match::Suffix,
        pattern: ".swp",
        why: "vim swap file",
        never_data: false,
    },
    Rule {
        how: Match::Prefix,
        pattern: "~$",
        why: "Microsoft Office lock file",
        never_data: false,
    },
    Rule {
        how: Match::Exact,
        pattern: "thumbs.db",
        why: "Windows thumbnail cache",
        never_data: true,
    },
    Rule {
        how: Match::Exact,
        pattern: "desktop.ini",
        why: "Windows folder settings",
        never_data: true,
    },
    Rule {
        how: Match::Exact,
        pattern: "ehthumbs.db",
        why: "Windows Media Center thumbnail cache",
        never_data: true,
    },
    Rule {
        how: Match::Exact,
        pattern: "icon\r",
        why: "macOS custom folder icon",
        never_data: true,
    },
    Rule {
        how: Match::Exact,
        pattern: "__macosx",
        why: "resource forks unpacked from a macOS zip archive",
        never_data: true,
    },
    Rule {
        how: Match::Exact,
        pattern: "$recycle.bin",
        why: "Windows recycle bin",
        never_data: false,
    },
    Rule {
        how: Match::Exact,
        pattern: "system volume information",
        why: "Windows system folder",
        never_data: false,
    },
    Rule {
        how: Match::Exact,
        pattern: "untitled folder",
        why: "placeholder folder about to be renamed (macOS)",
        never_data: false,
    },
    Rule {
        how: Match::Exact,
        pattern: "new folder",
        why: "placeholder folder about to be renamed (Windows)",
        never_data: false,
    },
    Rule {
        how: Match::Exact,
        pattern: "lost+found",
        why: "filesystem recovery folder",
        never_data: false,
    },
];
// `.DS_Store`, AppleDouble `._*`, `.nfs*` silly-renames and `.Trashes` are all covered
// by the dotfile rule; they are listed in the documentation by name.

fn lower(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_ascii_lowercase()
}

/// What a name must show for any rule to match it, taken from the table once: a prefix
/// rule's first byte, a suffix rule's last two bytes (or last byte), an exact rule's length
/// and first byte.
/// Most names of image data show none of these, and are let through without trying each rule.
struct Hints {
    first: [bool; 256],
    last: [bool; 256],
    last_two: Vec<[u8; 2]>,
    exact: Vec<(usize, u8)>,
}

fn hints() -> &'static Hints {
    static HINTS: std::sync::OnceLock<Hints> = std::sync::OnceLock::new();
    HINTS.get_or_init(|| {
        let mut h = Hints {
            first: [false; 256],
            last: [false; 256],
            last_two: Vec::new(),
            exact: Vec::new(),
        };
        for rule in SYSTEM_FILE_RULES {
            let pat = rule.pattern.as_bytes();
            match (rule.how, pat) {
                (_, []) => {}
                (Match::Prefix, [first, ..]) => h.first[usize::from(*first)] = true,
                (Match::Suffix, [last]) => h.last[usize::from(*last)] = true,
                (Match::Suffix, [.., a, b]) => h.last_two.push([*a, *b]),
                (Match::Exact, [first, ..]) => h.exact.push((pat.len(), *first)),
            }
        }
        h
    })
}

/// Whether some rule could match `name` (false means none does).
fn may_be_system(name: &[u8]) -> bool {
    let h = hints();
    let lower = |b: &u8| usize::from(b.to_ascii_lowercase());
    name.first().is_some_and(|b| h.first[lower(b)])
        || name.last().is_some_and(|b| h.last[lower(b)])
        || match name {
            [.., a, b] => h
                .last_two
                .contains(&[a.to_ascii_lowercase(), b.to_ascii_lowercase()]),
            _ => false,
        }
        || name
            .first()
            .is_some_and(|b| h.exact.contains(&(name.len(), b.to_ascii_lowercase())))
}

/// The rule that makes `name` a system file, if any. Patterns are lower case; names are
/// compared without allocating (this runs for every file event).
pub fn system_rule(name: &OsStr) -> Option<&'static Rule> {
    let name = name.as_bytes();
    if !may_be_system(name) {
        return None;
    }
    SYSTEM_FILE_RULES.iter().find(|rule| {
        let pat = rule.pattern.as_bytes();
        match rule.how {
            Match::Prefix => name.len() >= pat.len() && name[..pat.len()].eq_ignore_ascii_case(pat),
            Match::Suffix => {
                name.len() > pat.len() && name[name.len() - pat.len()..].eq_ignore_ascii_case(pat)
            }
            Match::Exact => name.eq_ignore_ascii_case(pat),
        }
    })
}

/// Whether a file is never image data, whatever `ignore_sys_files` says: its own name
/// matches a rule marked `never_data`, or a folder between `below` and it (every folder when
/// `below` is None or not an ancestor) is named as an exact `never_data` rule (`__MACOSX`).
/// Folders are not matched by prefix: a dot folder above the DropBox is the operator's.
pub fn never_data(path: &Path, below: Option<&Path>) -> bool {
    let never = |name: &OsStr| system_rule(name).is_some_and(|r| r.never_data);
    if path.file_name().is_some_and(never) {
        return true;
    }
    let rel = below.and_then(|b| path.strip_prefix(b).ok()).unwrap_or(path);
    let Some(folders) = rel.parent() else {
        return false;
    };
    folders.components().any(|c| match c {
        Component::Normal(name) => system_rule(name).is_some_and(|r| r.never_data && r.how == Match::Exact),
        _ => false,
    })
}

/// Path filter for one watcher.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub ignore_sys_files: bool,
    /// Lower-case suffixes with a leading dot; empty means every file.
    pub whitelist: Vec<Vec<u8>>,
    /// Absolute subtrees that are never watched nor reported.
    pub blacklist: Vec<PathBuf>,
}

impl Filter {
    /// Normalise whitelist entries: `tif`, `.TIF` and `*.tif` all mean the suffix `.tif`.
    pub fn normalise_suffix(entry: &str) -> Option<Vec<u8>> {
        let trimmed = entry.trim().trim_start_matches('*');
        if trimmed.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(trimmed.len() + 1);
        if !trimmed.starts_with('.') {
            out.push(b'.');
        }
        out.extend(trimmed.as_bytes().iter().map(u8::to_ascii_lowercase));
        Some(out)
    }

    pub fn is_blacklisted(&self, path: &Path) -> bool {
        self.blacklist.iter().any(|b| path.starts_with(b))
    }

    /// Whether a directory is watched, given that its parent is (the watcher only meets paths
    /// inside watched directories, so only the path's own name and the blacklist are checked).
    pub fn child_dir_allowed(&self, path: &Path) -> bool {
        let system = self.ignore_sys_files && self.own_name_is_system(path);
        !system && !self.is_blacklisted(path)
    }

    /// Whether a file is reported, given that its directory is watched.
    pub fn child_file_allowed(&self, path: &Path) -> bool {
        if !self.child_dir_allowed(path) {
            return false;
        }
        if self.whitelist.is_empty() {
            return true;
        }
        let name = match path.file_name() {
            Some(n) => lower(n),
            None => return false,
        };
        self.whitelist.iter().any(|suffix| name.ends_with(suffix))
    }

    /// Whether a file at `path` would be reported from `root`, by its path alone: it lies below
    /// `root` (directly, unless `recursive`), no directory between them is filtered out (the
    /// watcher never enters one), and the file itself is allowed.
    pub fn reaches_file(&self, root: &Path, path: &Path, recursive: bool) -> bool {
        let Ok(rel) = path.strip_prefix(root) else {
            return false;
        };
        let parts: Vec<Component<'_>> = rel.components().collect();
        let Some((_file, dirs)) = parts.split_last() else {
            return false; // the root itself
        };
        if parts.iter().any(|p| !matches!(p, Component::Normal(_))) {
            return false; // `..` or `.`: not a path the watcher produces
        }
        if !dirs.is_empty() && !recursive {
            return false;
        }
        let mut dir = root.to_path_buf();
        for part in dirs {
            dir.push(part);
            if !self.child_dir_allowed(&dir) {
                return false;
            }
        }
        self.child_file_allowed(path)
    }

    /// Why a directory (whose parent is watched) is not watched, for the log; None if it is.
    pub fn why_dir_ignored(&self, path: &Path) -> Option<String> {
        if self.is_blacklisted(path) {
            return Some("it is in omero.fs.blacklist".into());
        }
        if !self.ignore_sys_files {
            return None;
        }
        let rule = path.file_name().and_then(system_rule)?;
        Some(format!(
            "its name marks a system folder ({}); rename it, or set omero.fs.ignoreSysFiles=false, \
             to have its files imported",
            rule.why
        ))
    }

    fn own_name_is_system(&self, path: &Path) -> bool {
        path.file_name().is_some_and(|n| system_rule(n).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn never_data_is_the_name_or_a_named_folder_below_the_root() {
        let p = Path::new;
        assert!(never_data(p("/d/amy/.DS_Store"), None));
        assert!(never_data(p("/d/amy/Thumbs.db"), None));
        assert!(never_data(p("/d/amy/ehthumbs.db"), None));
        assert!(never_data(p("/d/amy/Icon\r"), None));
        assert!(never_data(p("/d/amy/__MACOSX/run/a.tif"), None));
        assert!(!never_data(p("/d/amy/run/a.tif"), None));
        assert!(
            !never_data(p("/d/amy/a.tmp"), None),
            "ignored by the watcher only"
        );
        // A dot folder is not data-free by itself; above the root it is the operator's.
        assert!(!never_data(p("/d/amy/.run/a.tif"), None));
        assert!(!never_data(p("/__MACOSX/d/amy/a.tif"), Some(p("/__MACOSX/d"))));
        assert!(never_data(
            p("/__MACOSX/d/amy/__macosx/a.tif"),
            Some(p("/__MACOSX/d"))
        ));
    }

    #[test]
    fn rule_patterns_are_lower_case_ascii_as_the_matcher_assumes() {
        for rule in SYSTEM_FILE_RULES {
            assert!(rule.pattern.is_ascii(), "{}", rule.pattern);
            assert_eq!(rule.pattern, rule.pattern.to_ascii_lowercase());
        }
    }

    #[test]
    fn the_quick_look_never_lets_a_system_name_through() {
        // Every pattern itself, in both cases, and embedded as each rule allows.
        for rule in SYSTEM_FILE_RULES {
            let pat = rule.pattern;
            let names = match rule.how {
                Match::Prefix => vec![format!("{pat}x.tif"), pat.to_uppercase() + "X.TIF"],
                Match::Suffix => vec![format!("x{pat}"), "X".to_string() + &pat.to_uppercase()],
                Match::Exact => vec![pat.to_string(), pat.to_uppercase()],
            };
            for name in names {
                assert!(may_be_system(name.as_bytes()), "{name}");
                assert!(system_rule(os(&name)).is_some(), "{name}");
            }
        }
        for name in ["f3.dat", "image.ome.tiff", "scan.czi", "s.nd2", "x.ics", "a"] {
            assert!(!may_be_system(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn a_file_is_in_reach_only_if_it_and_every_directory_above_it_pass() {
        let f = Filter {
            ignore_sys_files: true,
            whitelist: Vec::new(),
            blacklist: vec![PathBuf::from("/r/amy/skip")],
        };
        let root = Path::new("/r");
        let reach = |p: &str, recursive: bool| f.reaches_file(root, Path::new(p), recursive);
        assert!(reach("/r/amy/a/b.ics", true));
        assert!(!reach("/r/amy/a/.hidden.ics", true), "a system file");
        assert!(!reach("/r/amy/.snapshot/b.ics", true), "inside a system folder");
        assert!(!reach("/r/amy/skip/b.ics", true), "inside a blacklisted folder");
        assert!(!reach("/other/amy/b.ics", true), "outside the root");
        assert!(
            !reach("/r/amy/../zak/b.ics", true),
            "not a path the watcher produces"
        );
        assert!(!reach("/r", true), "the root itself");
        assert!(
            reach("/r/b.ics", false) && !reach("/r/amy/b.ics", false),
            "flat: the root's files only"
        );
        let tif_only = Filter {
            whitelist: vec![b".tif".to_vec()],
            ..f.clone()
        };
        assert!(tif_only.reaches_file(root, Path::new("/r/amy/x.TIF"), true));
        assert!(!tif_only.reaches_file(root, Path::new("/r/amy/x.ics"), true));
        let no_sys = Filter {
            ignore_sys_files: false,
            ..f
        };
        assert!(no_sys.reaches_file(root, Path::new("/r/amy/.snapshot/.hidden.ics"), true));
    }

    #[test]
    fn ignored_directories_say_why() {
        let f = Filter {
            ignore_sys_files: true,
            whitelist: Vec::new(),
            blacklist: vec![PathBuf::from("/r/skip")],
        };
        assert!(f
            .why_dir_ignored(Path::new("/r/skip"))
            .is_some_and(|w| w.contains("blacklist")));
        assert!(f
            .why_dir_ignored(Path::new("/r/.hidden"))
            .is_some_and(|w| w.contains("ignoreSysFiles")));
        assert!(f.why_dir_ignored(Path::new("/r/amy")).is_none());
    }

    #[test]
    fn system_rules_match_expected_names() {
        for name in [
            ".DS_Store",
            "._image.tif",
            ".nfs000123",
            "a.tif~",
            "x.PART",
            "Thumbs.db",
            "desktop.ini",
            "data.crdownload",
            "untitled folder",
            "New Folder",
            "~$report.docx",
        ] {
            assert!(system_rule(os(name)).is_some(), "{name} should be a system file");
        }
        for name in [
            "image.tif",
            "plate.ome.tiff",
            "a~b.tif",
            "partial_scan.tif",
            "tmpdata.ics",
        ] {
            assert!(
                system_rule(os(name)).is_none(),
                "{name} should not be a system file"
            );
        }
    }

    #[test]
    fn whitelist_is_case_insensitive_and_multi_part() {
        let f = Filter {
            ignore_sys_files: true,
            whitelist: ["ome.tiff", ".ICS", "*.dv"]
                .iter()
                .filter_map(|s| Filter::normalise_suffix(s))
                .collect(),
            blacklist: vec![PathBuf::from("/r/skip")],
        };
        assert!(f.child_file_allowed(Path::new("/r/a/B.OME.TIFF")));
        assert!(f.child_file_allowed(Path::new("/r/a/x.ics")));
        assert!(f.child_file_allowed(Path::new("/r/a/x.dv")));
        assert!(!f.child_file_allowed(Path::new("/r/a/x.tiff")));
        assert!(!f.child_file_allowed(Path::new("/r/a/.x.ics")));
        assert!(!f.child_dir_allowed(Path::new("/r/skip")));
        assert!(!f.child_file_allowed(Path::new("/r/skip/x.ics")));
        assert!(!f.child_dir_allowed(Path::new("/r/.hidden")));
        assert!(!f.child_dir_allowed(Path::new("/r/untitled folder")));
        assert!(f.child_dir_allowed(Path::new("/r/amy")));
    }
}
