//! `PathPolicy`: which paths under one root are reported, and why not, as one Python object.
//!
//! The watcher, the engine, the start-up scan of the Ice DropBox and grouping all ask this
//! object, so that "which paths are reported" is written once (the filter in `filter.rs`).

use std::path::{Component, Path, PathBuf};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::filter::{system_rule, Filter};

/// The filter of one watched root, as the watcher applies it.
#[pyclass(frozen, module = "omero_dropbox._native")]
pub struct PathPolicy {
    root: PathBuf,
    filter: Filter,
    recursive: bool,
}

/// Whether `mode` ("flat", "recurse", "follow") descends into sub-directories.
pub fn mode_is_recursive(mode: &str) -> PyResult<bool> {
    match mode.to_ascii_lowercase().as_str() {
        "flat" => Ok(false),
        "recurse" | "follow" => Ok(true),
        _ => Err(PyValueError::new_err(format!(
            "mode: unknown path mode '{mode}'; allowed: 'flat', 'recurse', 'follow'"
        ))),
    }
}

/// The filter for `roots`: relative blacklist entries are taken below every root.
pub fn build_filter(
    roots: &[PathBuf],
    ignore_sys_files: bool,
    whitelist: &[String],
    blacklist: &[PathBuf],
) -> Filter {
    let mut abs_blacklist = Vec::new();
    for entry in blacklist {
        if entry.is_absolute() {
            abs_blacklist.push(entry.clone());
        } else {
            abs_blacklist.extend(roots.iter().map(|r| r.join(entry)));
        }
    }
    Filter {
        ignore_sys_files,
        whitelist: whitelist
            .iter()
            .filter_map(|s| Filter::normalise_suffix(s))
            .collect(),
        blacklist: abs_blacklist,
    }
}

impl PathPolicy {
    /// The components of `path` below the root, or None if it is not strictly below it or
    /// holds `.`/`..` (never a path the watcher produces).
    fn below<'a>(&self, path: &'a Path) -> Option<Vec<Component<'a>>> {
        let rel = path.strip_prefix(&self.root).ok()?;
        let parts: Vec<Component<'a>> = rel.components().collect();
        if parts.is_empty() || parts.iter().any(|p| !matches!(p, Component::Normal(_))) {
            return None;
        }
        Some(parts)
    }
}

#[pymethods]
impl PathPolicy {
    #[new]
    #[pyo3(signature = (root, *, mode = "recurse", ignore_sys_files = true, whitelist = Vec::new(), blacklist = Vec::new()))]
    fn new(
        root: PathBuf,
        mode: &str,
        ignore_sys_files: bool,
        whitelist: Vec<String>,
        blacklist: Vec<PathBuf>,
    ) -> PyResult<Self> {
        let root = crate::absolute(&root)?;
        let filter = build_filter(
            std::slice::from_ref(&root),
            ignore_sys_files,
            &whitelist,
            &blacklist,
        );
        Ok(PathPolicy {
            root,
            filter,
            recursive: mode_is_recursive(mode)?,
        })
    }

    /// The root, absolute.
    #[getter]
    fn root(&self) -> PathBuf {
        self.root.clone()
    }

    /// Whether a file at `path` is reported once complete, by its path alone (it need not exist).
    fn reports(&self, path: PathBuf) -> PyResult<bool> {
        let path = crate::absolute(&path)?;
        Ok(self.filter.reaches_file(&self.root, &path, self.recursive))
    }

    /// Why a file at `path` is not reported, for a log line or a skip reason; None if it is.
    fn why(&self, path: PathBuf) -> PyResult<Option<String>> {
        let path = crate::absolute(&path)?;
        let Some(parts) = self.below(&path) else {
            return Ok(Some(format!(
                "it is not below the watched directory {}",
                self.root.display()
            )));
        };
        let dirs = &parts[..parts.len() - 1];
        if !dirs.is_empty() && !self.recursive {
            return Ok(Some(
                "it is in a sub-directory and the path mode is flat (omero.fs.pathMode)".into(),
            ));
        }
        let mut dir = self.root.clone();
        for part in dirs {
            dir.push(part);
            if let Some(why) = self.filter.why_dir_ignored(&dir) {
                return Ok(Some(format!(
                    "its folder {} is not watched: {why}",
                    dir.display()
                )));
            }
        }
        if self.filter.is_blacklisted(&path) {
            return Ok(Some("it is in omero.fs.blacklist".into()));
        }
        if self.filter.ignore_sys_files {
            if let Some(rule) = path.file_name().and_then(system_rule) {
                return Ok(Some(format!(
                    "its name marks a system file ({}); set omero.fs.ignoreSysFiles=false to have it imported",
                    rule.why
                )));
            }
        }
        if !self.filter.child_file_allowed(&path) {
            return Ok(Some("its suffix is not in omero.fs.whitelist".into()));
        }
        Ok(None)
    }

    /// Whether the watcher enters the directory at `path` (the root itself, or a directory
    /// below it that no filter drops, nor any directory above it).
    fn enters_dir(&self, path: PathBuf) -> PyResult<bool> {
        let path = crate::absolute(&path)?;
        if path == self.root {
            return Ok(true);
        }
        let Some(parts) = self.below(&path) else {
            return Ok(false);
        };
        if !self.recursive {
            return Ok(false);
        }
        let mut dir = self.root.clone();
        for part in &parts {
            dir.push(part);
            if !self.filter.child_dir_allowed(&dir) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether the file at `path` is never image data, whatever `ignore_sys_files` says (dot
    /// files, Thumbs.db, anything in a __MACOSX folder below the root...): grouping never
    /// claims nor imports such a file.
    fn never_data(&self, path: PathBuf) -> PyResult<bool> {
        let path = crate::absolute(&path)?;
        Ok(crate::filter::never_data(&path, Some(&self.root)))
    }

    fn __repr__(&self) -> String {
        format!(
            "PathPolicy({:?}, recursive={}, ignore_sys_files={}, whitelist={}, blacklist={})",
            self.root.display().to_string(),
            self.recursive,
            self.filter.ignore_sys_files,
            self.filter.whitelist.len(),
            self.filter.blacklist.len()
        )
    }
}
