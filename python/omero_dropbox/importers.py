"""Importers: what actually imports one fileset.

Three kinds, all called with an :class:`ImportRequest` and returning an
:class:`ImportResult`:

* :class:`CommandImporter` runs an argv template (``--importer-command``), never
  through a shell;
* :class:`OmeroImporter` runs the OMERO CLI as upstream did
  (``omero -s HOST -p PORT -k SESSION import -- --agent=dropbox <importArgs> <key>``)
  with a session created for the user; the key reaches the CLI through a private
  0600 session store (``OMERO_SESSIONDIR``), never through an argv or a log;
* :class:`CallableImporter` wraps any Python callable.

Transient or permanent
    A *transient* failure is retried by the import queue with back-off (up to its
    ``max_attempts``); a *permanent* one fails the fileset at once.  For commands:

    * exit status 0: imported;
    * killed by a signal, or timed out (the whole process group is killed): transient;
    * exit status in ``permanent_exit_codes`` (default: the ``sysexits.h`` codes
      64-78 except 75 ``EX_TEMPFAIL``): permanent.  An importer that knows retrying
      is useless (bad file, unknown user) should exit with one of these, e.g. 65
      ``EX_DATAERR``;
    * any other non-zero status (including 75 ``EX_TEMPFAIL``): transient; bounded
      retries keep the "nothing lost" promise when the importer cannot tell (a
      connection refused looks the same as a corrupt file to a generic ``exit 1``);
    * the program cannot be started (missing, not executable): permanent, with a
      reason naming the program.

Option injection
    Templates should put ``--`` before ``{files}``/``{key}`` when the program
    understands it.  In addition every path passed to an importer must be absolute,
    so it starts with ``/`` and can never be read as an option; a relative path is
    refused with ``ValueError``.

Log lines (logger ``omero_dropbox.importer``), as upstream, for operators to grep::

    Importing <key> as <user> (fileset=<id>)
    Import of <key> completed
    Import of <key> failed=<rc>
    ***** start of output from importer-cli to stderr *****
    ...the importer's stderr...
    ***** end of output from importer-cli *****
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

from omero_dropbox.folder_settings import ImportPlan, without_target
from omero_dropbox.journal import display_path, open_private

__all__ = [
    "DEFAULT_PERMANENT_EXIT_CODES",
    "RUNNING_IMPORTERS",
    "CallableImporter",
    "CommandImporter",
    "ImportFunction",
    "ImportRequest",
    "ImportResult",
    "Importer",
    "ImporterConfigError",
    "OmeroImporter",
    "PermanentImportError",
    "RunningImporters",
    "SessionProvider",
    "UnconfiguredSessionProvider",
    "as_importer",
    "default_omero_executable",
    "write_session_store",
]

log = logging.getLogger("omero_dropbox.importer")

#: ``sysexits.h`` 64 (EX_USAGE) .. 78 (EX_CONFIG), except 75 (EX_TEMPFAIL).
DEFAULT_PERMANENT_EXIT_CODES: frozenset[int] = frozenset(range(64, 79)) - {75}
#: How much of the importer's stderr becomes the failure reason.
REASON_TAIL_BYTES = 4096
#: How much of the importer's stderr is copied into the log on failure.
LOG_TAIL_BYTES = 64 * 1024

START_MARK = "***** start of output from importer-cli to stderr *****"
END_MARK = "***** end of output from importer-cli *****"

PLACEHOLDERS = frozenset({"user", "key", "files", "fileset", "attempt", "interrupted", "target_args"})
#: Placeholders that expand to any number of arguments, so must be an argument of their own.
_WHOLE = ("{files}", "{target_args}")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


# --- requests and results ---------------------------------------------------------------


@dataclass(frozen=True)
class ImportRequest:
    """One fileset to import as ``user``; ``key`` is the file Bio-Formats opens.

    ``attempt`` counts from 1; ``interrupted`` says that the previous attempt was cut off by
    a crash or restart of the service, so that it may already have imported the fileset: the
    OMERO importer then passes ``--exclude=clientpath`` (OMERO skips files it already imported
    from the same client path), and a command importer gets ``{attempt}``/``{interrupted}``
    and ``$OMERO_DROPBOX_ATTEMPT``/``$OMERO_DROPBOX_INTERRUPTED`` to check for itself.
    """

    user: str
    key: str
    files: tuple[str, ...]
    fileset_id: str
    format: str
    attempt: int = 1
    interrupted: bool = False
    #: The folder settings (``dropbox.toml``) in force when the fileset was queued; None only
    #: while it is being read back (the queue refuses a fileset whose plan cannot be).
    plan: ImportPlan | None = field(default_factory=ImportPlan)

    @property
    def settings(self) -> ImportPlan:
        return self.plan if self.plan is not None else ImportPlan()


@dataclass(frozen=True)
class ImportResult:
    """Outcome of one import attempt.

    ``reason`` is the failure reason for the journal (empty on success),
    ``output`` the tail of the importer's stdout, ``stderr`` the tail of its stderr
    (logged between the upstream markers on failure).  ``objects`` names the OMERO
    objects the import created (``"Image:12"``, ``"Plate:3"``), when the importer knows;
    the status page links to them.  Without it, ``Image:12``-style lines of ``output``
    (what ``omero import`` prints) are used.
    """

    ok: bool
    returncode: int | None
    reason: str
    transient: bool
    output: str
    stderr: str = ""
    objects: tuple[str, ...] = ()

    @classmethod
    def success(cls, output: str = "", returncode: int | None = 0) -> ImportResult:
        return cls(True, returncode, "", False, output)

    @classmethod
    def failure(
        cls,
        reason: str,
        *,
        transient: bool,
        returncode: int | None = None,
        output: str = "",
        stderr: str = "",
    ) -> ImportResult:
        return cls(False, returncode, reason, transient, output, stderr)


class PermanentImportError(Exception):
    """Raise from an importer callable when retrying cannot help."""


class ImporterConfigError(ValueError):
    """An importer template or setting that cannot work; the message names it."""


@runtime_checkable
class Importer(Protocol):
    def __call__(self, request: ImportRequest) -> ImportResult: ...


#: What the engine accepts as an importer: an :class:`Importer`, or any function returning
#: True/None (imported), False (failed, retried) or an :class:`ImportResult` (:class:`CallableImporter`).
ImportFunction = Callable[[ImportRequest], ImportResult | bool | None]


def display(path: str) -> str:
    """Printable form of a (possibly surrogate-escaped) path or text, control characters escaped."""
    return display_path(path)


def _check_absolute(request: ImportRequest) -> None:
    for p in (request.key, *request.files):
        if not os.path.isabs(p):
            raise ValueError(
                f"importer paths must be absolute (so none can be taken for an option): "
                f"{display(p)!r} in fileset {request.fileset_id}"
            )


# --- base: the log lines ----------------------------------------------------------------


class BaseImporter:
    """Logs the upstream-compatible lines around :meth:`run`."""

    def __call__(self, request: ImportRequest) -> ImportResult:
        key = display(request.key)
        log.info("Importing %s as %s (fileset=%s)", key, display(request.user), request.fileset_id)
        result = self.run(request)
        if result.ok:
            log.info("Import of %s completed", key)
        else:
            kind = "transient" if result.transient else "permanent"
            rc = result.returncode if result.returncode is not None else "none"
            log.error("Import of %s failed=%s (%s: %s)", key, rc, kind, _first_line(result.reason))
            text = result.stderr or result.reason
            log.error(START_MARK)
            for line in text.splitlines():
                log.error("%s", line)
            log.error(END_MARK)
        return result

    def run(self, request: ImportRequest) -> ImportResult:
        raise NotImplementedError


def _first_line(text: str, limit: int = 200) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --- callable -----------------------------------------------------------------------------


class CallableImporter(BaseImporter):
    """Wraps ``func(request) -> bool | ImportResult | None``.

    ``None`` or ``True``: imported.  ``False``: transient failure (retried within the
    queue's limit).  An ``ImportResult`` is used as is.  An exception is a transient
    failure with the exception's text, or permanent for :class:`PermanentImportError`.
    """

    def __init__(self, func: ImportFunction) -> None:
        if not callable(func):
            raise ImporterConfigError(f"importer {func!r} is not callable")
        self.func = func

    def run(self, request: ImportRequest) -> ImportResult:
        try:
            rv = self.func(request)
        except PermanentImportError as e:
            return ImportResult.failure(_exc_text(e), transient=False, stderr=traceback.format_exc())
        except Exception as e:
            return ImportResult.failure(_exc_text(e), transient=True, stderr=traceback.format_exc())
        if rv is None or rv is True:
            return ImportResult.success(returncode=None)
        if rv is False:
            return ImportResult.failure("importer returned False", transient=True)
        if isinstance(rv, ImportResult):
            return rv
        return ImportResult.failure(
            f"importer returned {type(rv).__name__}, expected bool, None or ImportResult",
            transient=False,
        )

    def __repr__(self) -> str:
        return f"CallableImporter({self.func!r})"


def _exc_text(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def as_importer(obj: object) -> Importer:
    """``obj`` if it is one of ours, else wrapped in :class:`CallableImporter`."""
    if isinstance(obj, BaseImporter):
        return obj
    if not callable(obj):
        raise ImporterConfigError(f"importer {obj!r} is not callable")
    return CallableImporter(obj)


# --- subprocess runner --------------------------------------------------------------------


def _tail(f: IO[bytes], limit: int) -> str:
    f.flush()
    size = f.seek(0, os.SEEK_END)
    start = max(0, size - limit)
    f.seek(start)
    data = f.read()
    text = data.decode("utf-8", "backslashreplace")
    if start:
        nl = text.find("\n")
        text = "[...]\n" + (text[nl + 1 :] if 0 <= nl < len(text) - 1 else text)
    return text.rstrip("\n")


#: In the state directory: the process groups of the importers running now, one
#: ``PGID START`` line each (START: the leader's start time, clock ticks after boot, from
#: ``/proc/PGID/stat``), so that a start after ``kill -9`` can end what the last run left.
GROUPS_FILE = "importers.running"


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (start time after boot, in clock ticks); None if unknown."""
    stat = _proc_stat(pid)
    return stat[1] if stat is not None else None


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """``(process group, start time)`` of ``pid`` from ``/proc``; None if it is gone (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ")": split after the last.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[2]), int(fields[19])
    except (IndexError, ValueError):
        return None


def _group_members(pgid: int, leader_start: int) -> list[int] | None:
    """PIDs in process group ``pgid`` that are ours: None if the group id now belongs to another
    leader (the PID was reused), [] if the group is gone or /proc cannot tell."""
    leader = _proc_stat(pgid)
    if leader is not None and leader[1] != leader_start:
        return None
    members = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                stat = _proc_stat(int(name))
                # A member starts after its leader; a group id is not reused while any member lives.
                if stat is not None and stat[0] == pgid and stat[1] >= leader_start:
                    members.append(int(name))
    return members


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_gone(pgids: Iterable[int], grace: float) -> None:
    deadline = time.monotonic() + grace
    pending = set(pgids)
    while pending and time.monotonic() < deadline:
        for pgid in list(pending):
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                pending.discard(pgid)
        if pending:
            time.sleep(0.05)


def end_leftover_importers(state_dir: Path | str, grace: float = 10.0) -> int:
    """End the importer process groups a previous run left running; returns how many processes.

    Reads :data:`GROUPS_FILE`.  A group whose id now names a different process (checked
    with the start time in ``/proc``) is not touched.  Logged, one line per group.
    """
    path = Path(state_dir) / GROUPS_FILE
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return 0
    except OSError as e:
        log.warning("Cannot read %s (importers left by the last run): %s", path, e.strerror or e)
        return 0
    ended: dict[int, list[int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            continue
        pgid, start = int(parts[0]), int(parts[1])
        members = _group_members(pgid, start)
        if members:
            ended[pgid] = members
            _signal_group(pgid, signal.SIGTERM)
    _wait_gone(ended, grace)
    for pgid, members in ended.items():
        _signal_group(pgid, signal.SIGKILL)
        log.warning(
            "Ended importer process group %d (%d process(es): %s) left running by the previous run of "
            "this service, which did not stop cleanly; its import runs again",
            pgid,
            len(members),
            " ".join(map(str, members)),
        )
    with contextlib.suppress(OSError):
        path.unlink()
    return sum(len(m) for m in ended.values())


class RunningImporters:
    """The process groups of the importers this process runs now, and which thread runs each.

    Written to the :data:`GROUPS_FILE` of every attached state directory at each change, so
    that :func:`end_leftover_importers` can end them after a ``kill -9`` of the service.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[int, tuple[int, int]] = {}  # pgid -> (leader start time, thread ident)
        self._files: list[Path] = []
        self._write_failed = False

    def attach(self, state_dir: Path | str) -> None:
        with self._lock:
            self._files.append(Path(state_dir) / GROUPS_FILE)
            self._save()

    def detach(self, state_dir: Path | str) -> None:
        """Stop recording there; the file stays while groups still run (the next start ends them)."""
        path = Path(state_dir) / GROUPS_FILE
        with self._lock:
            if path in self._files:
                self._files.remove(path)
            if self._groups:
                return
        with contextlib.suppress(OSError):
            path.unlink()

    def add(self, pgid: int) -> None:
        start = process_start_time(pgid)
        if start is None:
            return
        with self._lock:
            self._groups[pgid] = (start, threading.get_ident())
            self._save()

    def remove(self, pgid: int) -> None:
        with self._lock:
            if self._groups.pop(pgid, None) is not None:
                self._save()

    def end(self, threads: Iterable[int | None], grace: float) -> list[int]:
        """SIGTERM the groups started by ``threads`` (idents), SIGKILL after ``grace`` s; their pgids."""
        wanted = set(threads)
        with self._lock:
            pgids = [g for g, (_, t) in self._groups.items() if t in wanted]
        for pgid in pgids:
            _signal_group(pgid, signal.SIGTERM)
        _wait_gone(pgids, grace)
        for pgid in pgids:
            _signal_group(pgid, signal.SIGKILL)
        return pgids

    def _save(self) -> None:
        text = "".join(f"{g} {start}\n" for g, (start, _) in self._groups.items())
        for path in self._files:
            try:
                _write_small(path, text)
            except OSError as e:
                if not self._write_failed:
                    log.warning(
                        "Cannot record the running importers in %s (%s): after a kill -9 of this "
                        "service they would have to be ended by hand",
                        path,
                        e.strerror or e,
                    )
                self._write_failed = True


def _write_small(path: Path, text: str) -> None:
    """Replace the content in place: no new inode or block needed once the file exists."""
    fd = open_private(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        data = text.encode("ascii")
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


#: This process's running importers (one service per process: ``omero-dropbox run``).
RUNNING_IMPORTERS = RunningImporters()


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """``preexec_fn``: the importer gets SIGTERM if the service dies (Linux ``PR_SET_PDEATHSIG``).

    Runs in the forked child of a threaded process, where taking a lock another thread held
    at fork time would deadlock: so it only makes system calls (``prctl`` resolved before
    the fork, ``getppid``, ``kill``) and takes no lock, imports nothing and logs nothing.
    """
    assert _PRCTL is not None
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the service died before prctl: nobody would send it
        os.kill(os.getpid(), signal.SIGTERM)


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the importer's process group, SIGKILL after ``grace`` seconds."""
    pgid = proc.pid  # start_new_session=True: the importer leads its own group
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    # Also catches children that ignored SIGTERM or outlived the leader.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


@dataclass
class _ProcessRunner:
    """Runs one importer process in its own process group, which nothing outlives.

    The group is in :data:`RUNNING_IMPORTERS` while it runs (ended at the drain deadline,
    and recorded for a restart after ``kill -9``); on Linux the leader also gets SIGTERM
    when the service dies (``PR_SET_PDEATHSIG``).
    """

    timeout: float | None
    kill_grace: float
    permanent_exit_codes: frozenset[int]
    running: RunningImporters = field(default_factory=lambda: RUNNING_IMPORTERS)

    def run(
        self,
        argv: Sequence[bytes],
        program: str,
        env: Mapping[str, str] | None = None,
        redact: Iterable[str] = (),
    ) -> ImportResult:
        secrets = [s for s in redact if s]

        def clean(text: str) -> str:
            for s in secrets:
                text = text.replace(s, "<session>")
            return text

        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(
                    list(argv),
                    shell=False,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=dict(env) if env is not None else None,
                    start_new_session=True,
                    close_fds=True,
                    preexec_fn=functools.partial(_die_with_parent, os.getpid()) if _PRCTL else None,
                )
            except FileNotFoundError:
                return ImportResult.failure(
                    f"cannot start importer {program!r}: program not found", transient=False
                )
            except PermissionError:
                return ImportResult.failure(
                    f"cannot start importer {program!r}: permission denied (not executable?)",
                    transient=False,
                )
            except OSError as e:
                return ImportResult.failure(
                    f"cannot start importer {program!r}: {e.strerror or e}", transient=False
                )
            timed_out = False
            self.running.add(proc.pid)
            try:
                rc = proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc, self.kill_grace)
                rc = proc.returncode
            except BaseException:  # KeyboardInterrupt, SystemExit: leave nothing behind
                _kill_group(proc, self.kill_grace)
                raise
            finally:
                self.running.remove(proc.pid)
            stdout = clean(_tail(out, REASON_TAIL_BYTES))
            stderr = clean(_tail(err, LOG_TAIL_BYTES))
        reason_tail = stderr[-REASON_TAIL_BYTES:]
        if timed_out:
            reason = f"importer {program!r} timed out after {self.timeout:g} s and was killed"
            return ImportResult.failure(
                _join(reason, reason_tail),
                transient=True,
                returncode=rc,
                output=stdout,
                stderr=stderr,
            )
        if rc == 0:
            return ImportResult(True, 0, "", False, stdout, stderr)
        if rc < 0:
            reason = f"importer {program!r} was killed by {_signal_name(-rc)}"
            transient = True
        else:
            transient = rc not in self.permanent_exit_codes
            reason = f"importer {program!r} exited with status {rc}"
        return ImportResult.failure(
            _join(reason, reason_tail),
            transient=transient,
            returncode=rc,
            output=stdout,
            stderr=stderr,
        )


def _join(reason: str, tail: str) -> str:
    return f"{reason}:\n{tail}" if tail.strip() else reason


# --- command ------------------------------------------------------------------------------


class CommandImporter(BaseImporter):
    """Runs an argv template per fileset (``--importer-command``).

    The template is split once with :func:`shlex.split`; it is never given to a
    shell.  Placeholders, substituted inside arguments: ``{user}``, ``{key}``,
    ``{fileset}``, ``{attempt}`` (1, 2, ...) and ``{interrupted}`` (``1`` when the previous
    attempt was cut off by a crash or restart of the service and may have imported the
    fileset already, else ``0``); ``{files}`` must be a whole argument and expands to one
    argument per file; ``{target_args}``, also a whole argument, expands to the ``omero
    import`` arguments of the folder settings (``-T Dataset:name:run42``, allowed extra
    options; nothing without settings).  The program also gets ``$OMERO_DROPBOX_ATTEMPT``,
    ``$OMERO_DROPBOX_INTERRUPTED``, ``$OMERO_DROPBOX_FILESET`` and ``$OMERO_DROPBOX_PLAN`` (the
    folder settings as JSON: target, group, key-value pairs, tags; ``{}`` without) in its
    environment: attaching key-value pairs and tags is the program's to do.
    Other ``{name}`` placeholders are an error; braces not of the form
    ``{identifier}`` are kept literally.  Arguments reach the program as the exact
    bytes of the paths (``os.fsencode``).  Example::

        CommandImporter("my-import --user {user} --id {fileset} -- {files}")
    """

    def __init__(
        self,
        template: str | Sequence[str],
        timeout: float | None = None,
        *,
        permanent_exit_codes: Iterable[int] = DEFAULT_PERMANENT_EXIT_CODES,
        kill_grace: float = 10.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(template, str):
            try:
                argv = shlex.split(template)
            except ValueError as e:
                raise ImporterConfigError(f"importer command {template!r} cannot be parsed: {e}") from e
        else:
            argv = [str(a) for a in template]
        if not argv:
            raise ImporterConfigError(f"importer command {template!r} is empty")
        unknown = sorted({m for a in argv for m in _PLACEHOLDER.findall(a)} - PLACEHOLDERS)
        if unknown:
            raise ImporterConfigError(
                f"importer command {template!r} uses unknown placeholder(s) "
                f"{', '.join('{' + u + '}' for u in unknown)}; "
                "allowed: {user}, {key}, {files}, {fileset}, {attempt}, {interrupted}, {target_args}"
            )
        for a in argv:
            for whole in _WHOLE:
                if whole in a and a != whole:
                    raise ImporterConfigError(
                        f"importer command {template!r}: {whole} must be an argument of its own "
                        f"(it expands to any number of arguments), not part of {a!r}"
                    )
        if "{" in argv[0] and _PLACEHOLDER.search(argv[0]):
            raise ImporterConfigError(
                f"importer command {template!r}: the program name cannot be a placeholder"
            )
        if timeout is not None and timeout <= 0:
            raise ImporterConfigError(f"importer timeout must be > 0 seconds, not {timeout!r}")
        self.template = tuple(argv)
        self.timeout = timeout
        self.env = dict(env) if env is not None else None
        self._runner = _ProcessRunner(timeout, kill_grace, frozenset(permanent_exit_codes))

    @property
    def permanent_exit_codes(self) -> frozenset[int]:
        return self._runner.permanent_exit_codes

    def build_argv(self, request: ImportRequest) -> list[bytes]:
        """The exact argv for ``request`` (``ValueError`` for a relative path)."""
        _check_absolute(request)
        values = {
            "user": request.user,
            "key": request.key,
            "fileset": request.fileset_id,
            "attempt": str(request.attempt),
            "interrupted": "1" if request.interrupted else "0",
        }

        def sub(m: re.Match[str]) -> str:
            return values[m.group(1)]

        out: list[bytes] = []
        for arg in self.template:
            if arg == "{files}":
                out.extend(os.fsencode(f) for f in request.files)
            elif arg == "{target_args}":
                out.extend(os.fsencode(a) for a in self._target_args(request.settings))
            else:
                out.append(os.fsencode(_PLACEHOLDER.sub(sub, arg)))
        return out

    @staticmethod
    def _target_args(plan: ImportPlan) -> list[str]:
        if plan.needs_container:
            # The CLI names no dataset inside a project; only the OMERO importer resolves it.
            raise PermanentImportError(
                f"the folder settings put this fileset in dataset {plan.dataset!r} of project "
                f"{plan.project!r}, which {{target_args}} cannot express (omero import takes a "
                "dataset id or a -T Dataset:name: target only); read $OMERO_DROPBOX_PLAN in the "
                "importer command, or use --importer omero"
            )
        return plan.cli_args()

    def run(self, request: ImportRequest) -> ImportResult:
        env = dict(self.env if self.env is not None else os.environ)
        env["OMERO_DROPBOX_ATTEMPT"] = str(request.attempt)
        env["OMERO_DROPBOX_INTERRUPTED"] = "1" if request.interrupted else "0"
        env["OMERO_DROPBOX_FILESET"] = request.fileset_id
        env["OMERO_DROPBOX_PLAN"] = request.settings.to_json()
        return self._runner.run(self.build_argv(request), self.template[0], env)

    def __repr__(self) -> str:
        return f"CommandImporter({shlex.join(self.template)!r}, timeout={self.timeout!r})"


# --- OMERO --------------------------------------------------------------------------------


class SessionProvider(Protocol):
    """Creates and closes an OMERO session for a user (as upstream ``loginUser``).

    ``open_session`` returns the session key (uuid).  It raises
    :class:`PermanentImportError` when retrying cannot help (unknown user) and any
    other exception for transient problems (server down).
    :mod:`omero_dropbox.ice.sessions` has the real ones.
    """

    def open_session(self, user: str, group: str | None = None) -> str:
        """A session of ``user`` in OMERO group ``group`` (None: her default group)."""
        ...

    def close_session(self, key: str) -> None: ...


class OmeroSteps(Protocol):
    """What the OMERO importer asks the server besides the import, in the user's session
    (omero-py: :class:`omero_dropbox.ice.omero_steps.BlitzSteps`)."""

    def dataset_in_project(self, session_key: str, project: str, dataset: str) -> int:
        """The id of the user's dataset ``dataset`` in her project ``project``, both created
        if missing."""
        ...

    def annotate(
        self,
        session_key: str,
        objects: Sequence[str],
        key_values: Sequence[tuple[str, str]],
        tags: Sequence[str],
    ) -> None:
        """Attach one map annotation with ``key_values`` and the tags ``tags`` (the user's
        own, created if missing) to each of ``objects`` (``"Image:12"``), in one transaction."""
        ...


class UnconfiguredSessionProvider:
    """No way to log in was configured: every import fails permanently, saying what to set."""

    def open_session(self, user: str, group: str | None = None) -> str:
        raise NotImplementedError(
            "no OMERO session provider is configured: run inside OMERO (python -m "
            "omero_dropbox.ice.dropbox_service), or give omero-dropbox run --omero-admin-password-file; "
            "or use --importer-command"
        )

    def close_session(self, key: str) -> None:  # pragma: no cover - nothing opened
        return None


def _valid_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def write_session_store(directory: str | os.PathLike[str], host: str, port: int, user: str, key: str) -> None:
    """Write an omero-py CLI session store holding one current session (``OMERO_SESSIONDIR``).

    The layout is omero-py's ``SessionsStore``: ``._LASTHOST_``, ``._LASTPORT_``,
    ``<host>/._LASTUSER_``, ``<host>/<user>/._LASTSESS_`` and the properties file
    ``<host>/<user>/<key>``.  ``omero -s HOST -p PORT import ...`` run with this store
    attaches to the session without a ``-k`` argument.  Directories are 0700, files 0600.
    """
    from urllib.parse import quote

    if not user or user in (".", "..") or "/" in user or "\x00" in user:
        raise ValueError(f"cannot store a session for user name {user!r}")
    base = os.fspath(directory)
    os.makedirs(base, mode=0o700, exist_ok=True)
    host_dir = os.path.join(base, quote(host, safe=""))
    user_dir = os.path.join(host_dir, user)
    os.makedirs(user_dir, mode=0o700, exist_ok=True)
    files = {
        os.path.join(base, "._LASTHOST_"): host,
        os.path.join(base, "._LASTPORT_"): str(port),
        os.path.join(host_dir, "._LASTUSER_"): user,
        os.path.join(user_dir, "._LASTSESS_"): key,
        os.path.join(user_dir, key): (
            f"omero.host={host}\nomero.port={port}\nomero.user={user}\nomero.sess={key}\n"
        ),
    }
    for path, text in files.items():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)


#: Environment variables never passed to the OMERO CLI: a password, or another session store.
_HIDDEN_ENV = ("OMERO_PASSWORD", "OMERO_DROPBOX_ADMIN_PASSWORD", "OMERO_SESSION_DIR", "OMERO_SESSIONDIR")


class OmeroImporter(BaseImporter):
    """Imports with the OMERO CLI as the user, like upstream ``importFile``.

    The logical invocation is upstream's::

        omero -s HOST -p PORT -k SESSION import -- --agent=dropbox <importArgs...> <key>

    Only the key file is passed; Bio-Formats re-detects the fileset from it.

    Keeping the session key secret: ``-k KEY`` on a command line is world-readable in
    ``/proc/PID/cmdline``, and omero-py's CLI reads no session key from the environment.
    It does read its session store from ``$OMERO_SESSIONDIR``.  So for each import the
    key is written to a fresh private session store (a 0700 directory under
    ``session_root``, files 0600, see :func:`write_session_store`) and the command run is
    ``omero -s HOST -p PORT import -- --agent=dropbox ... <key>`` with ``OMERO_SESSIONDIR``
    pointing at it; the CLI attaches to that session.  The store is removed and the
    session closed after the import; the key is redacted from the captured output and
    never logged.  ``OMERO_PASSWORD`` and ``OMERO_DROPBOX_ADMIN_PASSWORD`` are removed from the
    CLI's environment.

    Known limit (omero-py, not ours): the Python CLI starts the Java importer with
    ``-k KEY`` on *its* command line.  Mount ``/proc`` with ``hidepid=2`` (or
    ``hidepid=invisible``) on multi-user hosts so other users cannot read it.

    Names that are not valid UTF-8 cannot be passed to the OMERO CLI (it is Python and
    Java, both decode arguments as text): such a fileset fails permanently with a reason
    saying to rename it, and nothing is run.
    """

    def __init__(
        self,
        host: str,
        port: int,
        sessions: SessionProvider | None = None,
        import_args: str | Sequence[str] = "",
        *,
        omero: str | None = None,
        session_root: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        permanent_exit_codes: Iterable[int] = DEFAULT_PERMANENT_EXIT_CODES,
        kill_grace: float = 10.0,
        env: Mapping[str, str] | None = None,
        steps: OmeroSteps | None = None,
    ) -> None:
        if not host:
            raise ImporterConfigError("omero.fs.host is empty; set it to the OMERO server name")
        try:
            port = int(port)
        except (TypeError, ValueError) as e:
            raise ImporterConfigError(f"omero.fs.port={port!r} is not a port number") from e
        if isinstance(import_args, str):
            try:
                extra = shlex.split(import_args)
            except ValueError as e:
                raise ImporterConfigError(f"omero.fs.importArgs={import_args!r} cannot be parsed: {e}") from e
        else:
            extra = [str(a) for a in import_args]
        self.host = host
        self.port = port
        self.sessions: SessionProvider = sessions or UnconfiguredSessionProvider()
        self.import_args = tuple(extra)
        self.omero = omero or default_omero_executable()
        self.session_root = os.fspath(session_root) if session_root is not None else None
        self.timeout = timeout
        self.env = dict(env) if env is not None else None
        self.steps = steps
        self._runner = _ProcessRunner(timeout, kill_grace, frozenset(permanent_exit_codes))

    def cli_args(self, request: ImportRequest, dataset_id: int | None = None) -> list[str]:
        """Arguments of ``omero`` *without* the session: ``-s H -p P import -- ...``.

        The folder settings' arguments come after the site's ``importArgs``; a target they
        choose replaces the site's (``-T``/``-d``/``-r`` are dropped from ``importArgs``).
        ``dataset_id``: the dataset a project + dataset setting was resolved to.
        """
        _check_absolute(request)
        plan = request.settings
        site = without_target(self.import_args) if plan.sets_target else list(self.import_args)
        return [
            "-s",
            self.host,
            "-p",
            str(self.port),
            "import",
            "--",
            "--agent=dropbox",
            # A re-run after a crash: OMERO may hold the fileset already; skip what it has.
            *(["--exclude=clientpath"] if request.interrupted else []),
            *site,
            *plan.cli_args(dataset_id),
            request.key,
        ]

    def upstream_argv(self, request: ImportRequest, session_key: str) -> list[str]:
        """The upstream-equivalent argv (contains the key: never log or exec it)."""
        args = self.cli_args(request)
        return ["omero", *args[:4], "-k", session_key, *args[4:]]

    def build_invocation(
        self, request: ImportRequest, session_dir: str, dataset_id: int | None = None
    ) -> tuple[list[bytes], dict[str, str]]:
        """``(argv, env)`` of the CLI process; the key is only in the store at ``session_dir``."""
        argv = [os.fsencode(self.omero), *(os.fsencode(a) for a in self.cli_args(request, dataset_id))]
        env = {
            k: v
            for k, v in (self.env if self.env is not None else os.environ).items()
            if k not in _HIDDEN_ENV
        }
        env["OMERO_SESSIONDIR"] = session_dir
        return argv, env

    def run(self, request: ImportRequest) -> ImportResult:
        _check_absolute(request)
        bad = [p for p in (request.key, *request.files) if not _valid_utf8(p)]
        if bad:
            return ImportResult.failure(
                f"file name '{display(bad[0])}' is not valid UTF-8, which the OMERO CLI cannot take; "
                "rename the file(s) to UTF-8 names and copy them in again",
                transient=False,
            )
        plan = request.settings
        if plan.needs_container and self.steps is None:
            return ImportResult.failure(
                "the folder settings name a project and a dataset, which this OMERO importer cannot "
                "resolve (it has no omero-py steps)",
                transient=False,
            )
        who = display(request.user) + (f" in group {plan.group!r}" if plan.group else "")
        try:
            key = self.sessions.open_session(request.user, group=plan.group)
        except NotImplementedError as e:
            return ImportResult.failure(str(e), transient=False)
        except PermanentImportError as e:
            return ImportResult.failure(f"cannot log in as {who}: {e}", transient=False)
        except Exception as e:
            return ImportResult.failure(f"cannot log in as {who}: {_exc_text(e)}", transient=True)
        store = None
        try:
            dataset_id = None
            if plan.needs_container and self.steps is not None:
                assert plan.project is not None and plan.dataset is not None
                try:
                    dataset_id = self.steps.dataset_in_project(key, plan.project, plan.dataset)
                except Exception as e:
                    return ImportResult.failure(
                        f"cannot find or create dataset {plan.dataset!r} in project {plan.project!r} "
                        f"as {who}: {_exc_text(e)}",
                        transient=True,
                    )
            if self.session_root is not None:
                os.makedirs(self.session_root, mode=0o700, exist_ok=True)
            store = tempfile.mkdtemp(prefix="omero-session-", dir=self.session_root)
            write_session_store(store, self.host, self.port, request.user, key)
            argv, env = self.build_invocation(request, store, dataset_id)
            return self._runner.run(argv, "omero", env, redact=[key])
        except OSError as e:
            return ImportResult.failure(f"cannot prepare the OMERO session store: {e}", transient=True)
        finally:
            if store is not None:
                shutil.rmtree(store, ignore_errors=True)
            try:
                self.sessions.close_session(key)
            except Exception as e:
                log.warning("Could not close the session of %s: %s", display(request.user), type(e).__name__)

    def annotate(self, user: str, plan: ImportPlan, objects: Sequence[str]) -> None:
        """Attach ``plan``'s key-value pairs and tags to ``objects`` in a session of ``user``
        (the :class:`~omero_dropbox.annotations.Annotator` of the OMERO importer)."""
        from omero_dropbox.annotations import AnnotationError

        if self.steps is None:
            raise AnnotationError("this OMERO importer has no omero-py steps to attach them", final=True)
        try:
            key = self.sessions.open_session(user, group=plan.group)
        except PermanentImportError as e:
            raise AnnotationError(f"cannot log in as {display(user)}: {e}", final=True) from None
        except Exception as e:
            raise AnnotationError(f"cannot log in as {display(user)}: {_exc_text(e)}") from None
        try:
            self.steps.annotate(key, objects, plan.key_values, plan.tags)
        finally:
            try:
                self.sessions.close_session(key)
            except Exception as e:
                log.warning("Could not close the session of %s: %s", display(user), type(e).__name__)

    def __repr__(self) -> str:
        return (
            f"OmeroImporter(omero={self.omero!r}, host={self.host!r}, port={self.port}, "
            f"args={self.import_args!r})"
        )


def default_omero_executable() -> str:
    """``omero`` on PATH, else the one beside this Python (an OMERO server venv), else ``omero``."""
    found = shutil.which("omero")
    if found:
        return found
    beside = os.path.join(os.path.dirname(sys.executable), "omero")
    return beside if os.access(beside, os.X_OK) else "omero"
