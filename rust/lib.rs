//! `omero_dropbox._native`: the PyO3 face of the watcher core.

mod core;
mod deadlines;
mod fanotify;
mod filter;
mod fsinfo;
mod inotify;
mod keys;
mod namematch;
mod policy;
mod poll;
mod tree;
mod walk;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::exceptions::{
    PyFileNotFoundError, PyNotADirectoryError, PyOSError, PyPermissionError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::core::{BackendChoice, Core, EventTypes, Kind, Mode, Options, OutEvent, Shared};
use crate::filter::{Filter, SYSTEM_FILE_RULES};

/// One READY event. `path` is a `str` (non-UTF-8 bytes surrogate-escaped, as `os.fsdecode`).
#[pyclass(frozen, module = "omero_dropbox._native")]
pub struct Event {
    /// Absolute path of the file or directory.
    #[pyo3(get)]
    path: Py<PyAny>,
    /// "created", "modified", "deleted" or "moved".
    #[pyo3(get)]
    kind: Py<PyString>,
    /// True for directory events (only when `ignore_dir_events` is off).
    #[pyo3(get)]
    is_dir: bool,
    /// For "moved": where it was before; otherwise None.
    #[pyo3(get)]
    src_path: Option<Py<PyAny>>,
}

#[pymethods]
impl Event {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let path = self.path.bind(py).repr()?;
        let kind = self.kind.bind(py).to_str()?.to_owned();
        match &self.src_path {
            Some(src) => Ok(format!(
                "Event({kind}, {}, src_path={}, is_dir={})",
                path,
                src.bind(py).repr()?,
                if self.is_dir { "True" } else { "False" }
            )),
            None => Ok(format!(
                "Event({kind}, {}, is_dir={})",
                path,
                if self.is_dir { "True" } else { "False" }
            )),
        }
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(other) = other.cast::<Event>() else {
            return Ok(false);
        };
        let o = other.get();
        let same_src = match (&self.src_path, &o.src_path) {
            (None, None) => true,
            (Some(a), Some(b)) => PyAnyMethods::eq(a.bind(py), b.bind(py))?,
            _ => false,
        };
        Ok(same_src
            && self.is_dir == o.is_dir
            && PyAnyMethods::eq(self.kind.bind(py).as_any(), o.kind.bind(py))?
            && PyAnyMethods::eq(self.path.bind(py), o.path.bind(py))?)
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        let tuple = PyTuple::new(py, [self.kind.bind(py).as_any(), self.path.bind(py)])?;
        tuple.hash()
    }
}

/// The kind's name, one shared string per kind (interning it anew cost a lookup per event).
fn kind_name(py: Python<'_>, kind: Kind) -> Py<PyString> {
    match kind {
        Kind::Created => pyo3::intern!(py, "created"),
        Kind::Modified => pyo3::intern!(py, "modified"),
        Kind::Deleted => pyo3::intern!(py, "deleted"),
        Kind::Moved => pyo3::intern!(py, "moved"),
    }
    .clone()
    .unbind()
}

fn to_event(py: Python<'_>, ev: OutEvent) -> PyResult<Event> {
    Ok(Event {
        path: ev.path.as_os_str().into_pyobject(py)?.into_any().unbind(),
        kind: kind_name(py, ev.kind),
        is_dir: ev.is_dir,
        src_path: match ev.src {
            Some(src) => Some(src.as_os_str().into_pyobject(py)?.into_any().unbind()),
            None => None,
        },
    })
}

/// An [`Event`] object, left out of the cycle collector: it holds only strings, a bool and
/// None, and is frozen, so it can never be part of a cycle. (PyO3 makes every class
/// collectable, and a burst of tracked events made the collector scan each batch again and
/// again: a quarter of the consumer thread's time.)
fn new_event(py: Python<'_>, ev: OutEvent) -> PyResult<Py<Event>> {
    let event = Py::new(py, to_event(py, ev)?)?;
    // SAFETY: `event` is a live object we own; untracking an object that cannot reference
    // itself (directly or through others) is what CPython does for such tuples and dicts,
    // and its deallocator untracks again, which is allowed.
    unsafe { pyo3::ffi::PyObject_GC_UnTrack(event.as_ptr().cast()) };
    Ok(event)
}

enum Wait {
    Batch(Vec<OutEvent>),
    Nothing,
    Closed,
}

struct Batching {
    block_size: usize,
    debounce: Duration,
    max_latency: Duration,
}

/// The native watcher. Use `omero_dropbox.Watcher`, which wraps this with defaults and logging.
#[pyclass(frozen, module = "omero_dropbox._native")]
pub struct NativeWatcher {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    batching: Batching,
    roots: Vec<PathBuf>,
    filter: Filter,
    recursive: bool,
}

fn parse_mode(mode: &str) -> PyResult<Mode> {
    match mode.to_ascii_lowercase().as_str() {
        "flat" => Ok(Mode::Flat),
        "recurse" => Ok(Mode::Recurse),
        "follow" => Ok(Mode::Follow),
        _ => Err(PyValueError::new_err(format!(
            "mode: unknown path mode '{mode}'; allowed: 'flat', 'recurse', 'follow'"
        ))),
    }
}

fn parse_types(types: &[String]) -> PyResult<EventTypes> {
    let mut t = EventTypes::default();
    for name in types {
        match name.to_ascii_lowercase().as_str() {
            "creation" | "create" | "created" => t.creation = true,
            "modification" | "modify" | "modified" => t.modification = true,
            "deletion" | "delete" | "deleted" => t.deletion = true,
            "all" => {
                t = EventTypes { creation: true, modification: true, deletion: true };
            }
            _ => {
                return Err(PyValueError::new_err(format!(
                    "event_types: unknown event type '{name}'; allowed: 'creation', 'modification', 'deletion', 'all'"
                )))
            }
        }
    }
    if types.is_empty() {
        return Err(PyValueError::new_err(
            "event_types: empty; give at least one of 'creation', 'modification', 'deletion', 'all'",
        ));
    }
    Ok(t)
}

fn parse_backend(backend: &str) -> PyResult<BackendChoice> {
    match backend.to_ascii_lowercase().as_str() {
        "auto" => Ok(BackendChoice::Auto),
        "native" => Ok(BackendChoice::Native),
        "notify" => Ok(BackendChoice::Notify),
        "poll" | "polling" => Ok(BackendChoice::Poll),
        "fanotify" => Ok(BackendChoice::Fanotify),
        _ => Err(PyValueError::new_err(format!(
            "backend: unknown backend '{backend}'; allowed: 'auto', 'native', 'notify', 'poll', 'fanotify'"
        ))),
    }
}

fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    if !value.is_finite() || value < 0.0 {
        return Err(PyValueError::new_err(format!(
            "{name}: must be a non-negative number of seconds, got {value}"
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

pub(crate) fn absolute(path: &Path) -> PyResult<PathBuf> {
    std::path::absolute(path)
        .map_err(|e| PyOSError::new_err(format!("cannot resolve {}: {e}", path.display())))
}

fn check_root(root: &Path) -> PyResult<()> {
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(PyNotADirectoryError::new_err(format!(
            "watch root is not a directory: {}",
            root.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(PyFileNotFoundError::new_err(format!(
            "watch root does not exist: {} (create it, or fix the configured directory)",
            root.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(PyPermissionError::new_err(
            format!("watch root is not accessible: {} ({e})", root.display()),
        )),
        Err(e) => Err(PyOSError::new_err(format!(
            "cannot use watch root {}: {e}",
            root.display()
        ))),
    }
}

fn flush_logs(py: Python<'_>, logs: Vec<(u8, String)>, dropped: u64) -> PyResult<()> {
    if logs.is_empty() && dropped == 0 {
        return Ok(());
    }
    let logger = py
        .import("logging")?
        .call_method1("getLogger", ("omero_dropbox.watcher",))?;
    for (level, msg) in logs {
        logger.call_method1("log", (level, msg))?;
    }
    if dropped > 0 {
        logger.call_method1(
            "log",
            (
                30u8,
                format!("{dropped} watcher log messages were dropped (log buffer full)"),
            ),
        )?;
    }
    Ok(())
}

impl NativeWatcher {
    fn wait(&self, step: Duration) -> (Wait, Vec<(u8, String)>, u64) {
        let b = &self.batching;
        let started = Instant::now();
        let mut out = self.shared.lock();
        loop {
            let logs = std::mem::take(&mut out.logs);
            let dropped = std::mem::take(&mut out.dropped_logs);
            if !out.events.is_empty() {
                let now = Instant::now();
                let quiet = out.last_at.map(|t| now.duration_since(t)).unwrap_or_default();
                let age = out.first_at.map(|t| now.duration_since(t)).unwrap_or_default();
                let full = b.block_size > 0 && out.events.len() >= b.block_size;
                if full || quiet >= b.debounce || age >= b.max_latency {
                    let n = if b.block_size > 0 {
                        b.block_size.min(out.events.len())
                    } else {
                        out.events.len()
                    };
                    let batch: Vec<OutEvent> = out.events.drain(..n).collect();
                    if !out.events.is_empty() {
                        out.first_at = Some(now);
                    }
                    return (Wait::Batch(batch), logs, dropped);
                }
                if !logs.is_empty() {
                    return (Wait::Nothing, logs, dropped);
                }
                let until_quiet = b.debounce.saturating_sub(quiet);
                let until_old = b.max_latency.saturating_sub(age);
                let left = step.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return (Wait::Nothing, logs, dropped);
                }
                let dur = until_quiet
                    .min(until_old)
                    .min(left)
                    .max(Duration::from_micros(200));
                out = self
                    .shared
                    .cond
                    .wait_timeout(out, dur)
                    .map(|r| r.0)
                    .unwrap_or_else(|e| e.into_inner().0);
                continue;
            }
            if out.finished {
                return (Wait::Closed, logs, dropped);
            }
            if !logs.is_empty() || dropped > 0 {
                return (Wait::Nothing, logs, dropped);
            }
            let left = step.saturating_sub(started.elapsed());
            if left.is_zero() {
                return (Wait::Nothing, logs, dropped);
            }
            out = self
                .shared
                .cond
                .wait_timeout(out, left)
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn stop_thread(&self, py: Python<'_>) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.cond.notify_all();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            py.detach(|| {
                let _ = handle.join();
            });
        }
    }
}

#[pymethods]
impl NativeWatcher {
    #[new]
    #[pyo3(signature = (
        roots, *, mode = "follow", event_types = vec!["all".to_string()], ignore_sys_files = true,
        ignore_dir_events = true, whitelist = vec![], blacklist = vec![], block_size = 0, settle = 2.0,
        close_grace = 0.1, write_timeout = 60.0, backend = "auto", poll_interval = 1.0,
        full_sweep = None, initial_scan = false, debounce = 0.05, max_latency = 1.0
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        roots: Vec<PathBuf>,
        mode: &str,
        event_types: Vec<String>,
        ignore_sys_files: bool,
        ignore_dir_events: bool,
        whitelist: Vec<String>,
        blacklist: Vec<PathBuf>,
        block_size: usize,
        settle: f64,
        close_grace: f64,
        write_timeout: f64,
        backend: &str,
        poll_interval: f64,
        full_sweep: Option<f64>,
        initial_scan: bool,
        debounce: f64,
        max_latency: f64,
    ) -> PyResult<Self> {
        if roots.is_empty() {
            return Err(PyValueError::new_err(
                "roots: give at least one directory to watch",
            ));
        }
        let mut abs_roots = Vec::with_capacity(roots.len());
        for root in &roots {
            let root = absolute(root)?;
            check_root(&root)?;
            abs_roots.push(root);
        }
        let poll_interval = seconds("poll_interval", poll_interval)?;
        if poll_interval.is_zero() {
            return Err(PyValueError::new_err(
                "poll_interval: must be greater than 0 seconds",
            ));
        }
        let full_sweep = match full_sweep {
            None => None,
            Some(s) => {
                let d = seconds("full_sweep", s)?;
                if d.is_zero() {
                    return Err(PyValueError::new_err(
                        "full_sweep: must be greater than 0 seconds (or None for the default)",
                    ));
                }
                Some(d)
            }
        };
        let opts = Options {
            roots: abs_roots.clone(),
            mode: parse_mode(mode)?,
            types: parse_types(&event_types)?,
            ignore_dir_events,
            filter: policy::build_filter(&abs_roots, ignore_sys_files, &whitelist, &blacklist),
            settle: seconds("settle", settle)?,
            close_grace: seconds("close_grace", close_grace)?,
            write_timeout: seconds("write_timeout", write_timeout)?,
            backend: parse_backend(backend)?,
            poll_interval,
            full_sweep,
            initial_scan,
        };
        let batching = Batching {
            block_size,
            debounce: seconds("debounce", debounce)?,
            max_latency: seconds("max_latency", max_latency)?,
        };
        let shared = Arc::new(Shared::default());
        shared.lock().wake_at = block_size;
        let filter = opts.filter.clone();
        let recursive = opts.mode != Mode::Flat;
        let core = Core::new(opts, shared.clone());
        let handle = std::thread::Builder::new()
            .name("omero-dropbox-watch".into())
            .spawn(move || core.run())
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the watcher thread: {e}")))?;
        let watcher = NativeWatcher {
            shared,
            thread: Mutex::new(Some(handle)),
            batching,
            roots: abs_roots,
            filter,
            recursive,
        };
        // Wait for the watches to be in place, so that anything written after this returns is seen.
        loop {
            let (setup, logs, dropped) = py.detach(|| {
                let mut out = watcher.shared.lock();
                if out.setup.is_none() {
                    out = watcher
                        .shared
                        .cond
                        .wait_timeout(out, Duration::from_millis(100))
                        .map(|r| r.0)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                (
                    out.setup.clone(),
                    std::mem::take(&mut out.logs),
                    std::mem::take(&mut out.dropped_logs),
                )
            });
            flush_logs(py, logs, dropped)?;
            if let Err(e) = py.check_signals() {
                watcher.stop_thread(py);
                return Err(e);
            }
            match setup {
                Some(Ok(())) => return Ok(watcher),
                Some(Err(msg)) => {
                    watcher.stop_thread(py);
                    return Err(PyOSError::new_err(msg));
                }
                None => continue,
            }
        }
    }

    /// Wait for the next batch of READY events.
    ///
    /// Returns a non-empty list, or an empty list when `timeout` (seconds) passed with
    /// nothing to report, or None once the watcher is closed. `timeout=None` waits forever.
    /// The GIL is released while waiting and Ctrl-C interrupts the wait.
    #[pyo3(signature = (timeout = None))]
    fn next_batch(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyList>>> {
        let deadline = match timeout {
            Some(t) => Some(Instant::now() + seconds("timeout", t)?),
            None => None,
        };
        let step = Duration::from_millis(100);
        loop {
            let (res, logs, dropped) = py.detach(|| self.wait(step));
            flush_logs(py, logs, dropped)?;
            match res {
                Wait::Batch(batch) => {
                    let events: Vec<Py<Event>> = batch
                        .into_iter()
                        .map(|e| new_event(py, e))
                        .collect::<PyResult<_>>()?;
                    return Ok(Some(PyList::new(py, events)?.unbind()));
                }
                Wait::Closed => return Ok(None),
                Wait::Nothing => {}
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Some(PyList::empty(py).unbind()));
            }
        }
    }

    /// Stop the native thread and release every watch. Idempotent.
    fn close(&self, py: Python<'_>) {
        self.stop_thread(py);
    }

    /// True once `close()` has been called.
    #[getter]
    fn closed(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// The watched roots, absolute.
    #[getter]
    fn roots(&self, py: Python<'_>) -> PyResult<Py<PyList>> {
        Ok(PyList::new(py, self.roots.iter().map(|r| r.as_os_str()))?.unbind())
    }

    /// Whether a file at `path` would be reported once complete, by its path alone: it lies
    /// under a root, within reach of the mode, and no filter (system names, whitelist,
    /// blacklist) drops it or a directory above it. The file need not exist.
    fn reports(&self, path: PathBuf) -> PyResult<bool> {
        let path = absolute(&path)?;
        Ok(self
            .roots
            .iter()
            .any(|root| self.filter.reaches_file(root, &path, self.recursive)))
    }

    /// The backend serving each root: a list of (root, "native" | "notify" | "poll" | "fanotify"),
    /// then (mount point, backend) for each mount inside a root followed as a subtree of its own.
    fn backends(&self) -> Vec<(std::ffi::OsString, &'static str)> {
        self.shared
            .lock()
            .backends
            .iter()
            .map(|(p, b)| (p.clone().into_os_string(), *b))
            .collect()
    }

    /// Counters: raw_events, overflows, rescans, watches, reported, pending, tracked, denied, poll_roots.
    fn stats(&self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        let s = self.shared.lock().stats;
        let d = PyDict::new(py);
        d.set_item("raw_events", s.raw_events)?;
        d.set_item("overflows", s.overflows)?;
        d.set_item("rescans", s.rescans)?;
        d.set_item("watches", s.watches)?;
        d.set_item("reported", s.reported)?;
        d.set_item("pending", s.pending)?;
        d.set_item("tracked", s.tracked)?;
        d.set_item("denied", s.denied)?;
        d.set_item("poll_roots", s.poll_roots)?;
        Ok(d.unbind())
    }
}

impl Drop for NativeWatcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.cond.notify_all();
    }
}

/// The system-file rules as (match, pattern, reason) tuples, for documentation.
#[pyfunction]
fn system_file_rules() -> Vec<(&'static str, &'static str, &'static str)> {
    SYSTEM_FILE_RULES
        .iter()
        .map(|r| (r.how.as_str(), r.pattern, r.why))
        .collect()
}

/// Whether the file at `path` is never image data, whatever `ignore_sys_files` says: its name
/// (a dot file, Thumbs.db, desktop.ini...) or a folder on its way (`__MACOSX`) says so.
#[pyfunction]
fn never_data(path: PathBuf) -> bool {
    filter::never_data(&path, None)
}

/// The name of the network filesystem `path` is on ("nfs", "cifs", ...), or None.
#[pyfunction]
fn network_filesystem(path: PathBuf) -> Option<&'static str> {
    fsinfo::network_fs_name(&path)
}

/// Indices of the `names` that the whole regular expression `pattern` matches, in time
/// linear in each name (no backtracking); names that are not valid UTF-8 never match.
#[pyfunction]
fn regex_full_matches(
    py: Python<'_>,
    pattern: &str,
    names: Vec<Bound<'_, PyAny>>,
    size_limit: usize,
) -> PyResult<Vec<usize>> {
    let owned: Vec<Option<String>> = names
        .iter()
        .map(|n| {
            n.cast::<PyString>()
                .ok()
                .and_then(|s| s.to_str().ok().map(str::to_owned))
        })
        .collect();
    py.detach(|| namematch::full_matches(pattern, &owned, size_limit))
        .map_err(|e| PyValueError::new_err(e.0))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeWatcher>()?;
    m.add_class::<Event>()?;
    m.add_class::<policy::PathPolicy>()?;
    m.add_function(wrap_pyfunction!(system_file_rules, m)?)?;
    m.add_function(wrap_pyfunction!(network_filesystem, m)?)?;
    m.add_function(wrap_pyfunction!(never_data, m)?)?;
    m.add_function(wrap_pyfunction!(regex_full_matches, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
