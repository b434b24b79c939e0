"""``omero-dropbox``: run the DropBox service, inspect filesets, the journal and the configuration."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from omero_dropbox.config import ConfigError, DropBoxConfig, format_config, load_config
from omero_dropbox.logging_setup import setup_logging
from omero_dropbox.text import printable

if TYPE_CHECKING:  # imported where used: `status`, `retry` and `config` start without them
    from omero_dropbox.engine import DropBox, UserDirectory
    from omero_dropbox.http_status import StatusServer
    from omero_dropbox.ice.sessions import PerUserOmeroImporter
    from omero_dropbox.importers import ImportFunction, ImportRequest
    from omero_dropbox.queue_store import SharedQueue

log = logging.getLogger("omero_dropbox.cli")

DEFAULT_STATE_DIR = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "omero-dropbox"
#: Seconds `run` waits, after SIGTERM/SIGINT/SIGHUP, for running imports (default 300); then
#: the importers still running are ended and their filesets run again at the next start.
DRAIN_TIMEOUT_ENV = "OMERO_DROPBOX_DRAIN_TIMEOUT"

_DESCRIPTION = """\
Drop-folder importer for OMERO. Files copied into <DropBox>/<omero-user>/... are
imported into OMERO as that user, one import per multi-file fileset, exactly once,
with a durable journal of what happened to every file.
"""

_RUN_EPILOG = """\
importers:
  --importer omero     the OMERO CLI, as upstream (needs `omero` on PATH and omero-py); an
                       admin (--omero-admin, default root) whose password is in
                       --omero-password-file or $OMERO_DROPBOX_ADMIN_PASSWORD creates
                       each user's session
  --importer command   --importer-command 'ARGV TEMPLATE' (no shell): {user} the OMERO
                       user, {key} the key file, {files} every file of the fileset as
                       separate arguments, {fileset} a stable fileset id; exit 0 = imported
  --importer record    no OMERO needed: appends one JSON line per fileset to
                       <state-dir>/imports.jsonl (the default when `omero` is not installed)

examples:
  omero-dropbox run -D omero.data.dir=/OMERO
  omero-dropbox run --templates etc/grid/templates.xml -D omero.fs.importArgs=--transfer=ln_rm
  omero-dropbox run --config dropbox.toml --importer-command 'my-import --user {user} -- {files}'
  omero-dropbox run --dry-run -D omero.fs.watchDir=/data/DropBox
"""


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE.toml", help="TOML configuration file")
    parser.add_argument(
        "--templates",
        type=Path,
        metavar="templates.xml",
        help="OMERO IceGrid templates.xml (<properties id='DropBox'>)",
    )
    parser.add_argument(
        "-D",
        dest="overrides",
        action="append",
        default=[],
        metavar="omero.fs.NAME=VALUE",
        help="set a property; later wins, and -D wins over the files (as `omero config set`)",
    )


def _state_arg(parser: argparse.ArgumentParser, what: str = "the journal lives") -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("OMERO_DROPBOX_STATE_DIR", DEFAULT_STATE_DIR)),
        help=f"where {what} (default: $OMERO_DROPBOX_STATE_DIR or %(default)s)",
    )


def _importer_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--importer", choices=("auto", "omero", "command", "record"), default="auto")
    parser.add_argument(
        "--importer-command", metavar="'ARGV TEMPLATE'", help="run this for each fileset (no shell)"
    )
    parser.add_argument(
        "--omero-admin", default="root", metavar="USER", help="OMERO admin that creates user sessions"
    )
    parser.add_argument(
        "--omero-password-file",
        type=Path,
        metavar="FILE",
        help="file (mode 600) with that admin's password; or set OMERO_DROPBOX_ADMIN_PASSWORD",
    )


def _log_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-dir", type=Path, help="write DropBox.log here (rotated 5 MB x 9, upstream format)"
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument(
        "--external-logrotate",
        action="store_true",
        help="with --log-dir: let logrotate rotate DropBox.log (reopened when moved) instead of 5 MB x 9",
    )


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number, 1 or more")
    return value


def _queue_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--queue",
        metavar="postgresql://USER@HOST/DB",
        help="the import queue shared by several hosts, in this PostgreSQL database (default: "
        "omero.fs.ng.queue; none: the local journal). Keep the password in ~/.pgpass or PGPASSWORD",
    )
    parser.add_argument(
        "--lease",
        type=_positive,
        default=60.0,
        metavar="SECONDS",
        help="with --queue: a claim not kept alive (heartbeats every lease/3) for this long is taken "
        "back and imported elsewhere (default 60)",
    )
    parser.add_argument(
        "--max-running",
        type=_positive_int,
        metavar="N",
        help="with --queue: imports running at once on all hosts together (default: no global cap; "
        "each process runs its own concurrency)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omero-dropbox", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="watch the DropBox and import (foreground; SIGTERM/SIGINT/SIGHUP drain and exit 0)",
        description="Watch the DropBox directories and import every fileset once.",
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_args(run)
    _state_arg(run)
    _importer_args(run)
    run.add_argument(
        "--users", metavar="NAMES|@FILE", help="only these OMERO users exist (comma list or @file)"
    )
    run.add_argument("--dry-run", action="store_true", help="log what would be imported, as whom and when")
    _log_args(run)
    _queue_args(run)
    run.add_argument(
        "--role",
        choices=("all", "watcher"),
        default="all",
        help="with --queue: 'all' (default) watches and imports, 'watcher' only watches and enqueues "
        "(`omero-dropbox worker` processes import)",
    )
    run.add_argument(
        "--http",
        metavar="[HOST:]PORT",
        help="serve the status page and /metrics here (HOST defaults to 127.0.0.1; PORT 0: any free port)",
    )
    run.add_argument(
        "--omero-web",
        metavar="URL",
        help="OMERO.web base URL (e.g. https://omero.example.org), to link imports on the status page",
    )

    wk = sub.add_parser(
        "worker",
        help="import filesets from the queue shared in PostgreSQL (SIGTERM/SIGINT: drain and exit 0)",
        description="Claim filesets from the shared queue (--queue) that watcher nodes "
        "(`run --queue`) fill, and import them. The files must be at the same paths here.",
        epilog=_RUN_EPILOG.split("\nexamples:")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_args(wk)
    _state_arg(wk, "the record importer's imports.jsonl and OMERO sessions live")
    _importer_args(wk)
    _log_args(wk)
    _queue_args(wk)
    wk.add_argument(
        "--concurrency",
        type=_positive_int,
        metavar="N",
        help="imports at the same time in this worker (default: omero.fs.ng.maxConcurrentImports)",
    )
    wk.add_argument(
        "--worker-name", metavar="NAME", help="this worker's name in the queue (default: host:pid)"
    )

    fs = sub.add_parser("filesets", help="print the filesets found under PATH... as JSON lines")
    fs.add_argument("paths", nargs="+", metavar="PATH")
    fs.add_argument(
        "--readers", type=Path, help="a file of Bio-Formats reader class names (omero.fs.readers)"
    )
    fs.add_argument(
        "--bioformats-oracle",
        action="store_true",
        help="ask Bio-Formats (Java) about the formats the rule table cannot decide "
        "(omero.fs.ng.bioformatsOracle; docs/formats.md)",
    )

    st = sub.add_parser("status", help="counts per user and state, and recent journal entries")
    _state_arg(st)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--limit", type=int, default=20, help="how many recent entries to show")
    st.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C; with --json, one JSON document per line",
    )

    rt = sub.add_parser(
        "retry",
        help="import failed filesets again, or attach an imported fileset's failed key-value pairs and "
        "tags again (recorded in the journal; a running service starts at once)",
    )
    _state_arg(rt)
    rt.add_argument("filesets", nargs="*", metavar="FILESET", help="fileset id, or its first 6+ characters")
    rt.add_argument("--all-failed", action="store_true", help="every fileset that failed")

    fg = sub.add_parser(
        "forget",
        help="forget PATH (a file or a directory) so that a copy dropped again is imported again",
    )
    _state_arg(fg)
    fg.add_argument("paths", nargs="+", metavar="PATH")

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = cfg_sub.add_parser("show", help="print the resolved per-user configuration")
    _config_args(show)
    return parser


# --------------------------------------------------------------- importers


class RecordImporter:
    """Imports nothing: appends one JSON line per fileset to a file. Works without OMERO."""

    def __init__(self, path: Path) -> None:
        from omero_dropbox.journal import private_dir

        self.path = path
        private_dir(path.parent)

    def __call__(self, request: ImportRequest) -> bool:
        line = {
            "user": request.user,
            "key": os.fsencode(request.key).decode("utf-8", "backslashreplace"),
            "files": [os.fsencode(f).decode("utf-8", "backslashreplace") for f in request.files],
            "fileset": request.fileset_id,
            "format": request.format,
            "at": time.time(),
        }
        if not request.settings.empty:
            line["settings"] = json.loads(request.settings.to_json())
        from omero_dropbox.journal import open_private

        # Every user's file names: 0600 like the journal, whatever the umask.
        with os.fdopen(open_private(self.path), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def __repr__(self) -> str:
        return f"RecordImporter({str(self.path)!r})"


class StartupRefused(Exception):
    """``run`` cannot work as configured; the message names the fix.

    ``exit_code`` 2: the setup must change (an importer that cannot run, a wrong password, a
    directory that cannot exist); 1: it may pass by itself (OMERO not reachable yet).
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_OTHER_IMPORTERS = "or choose another importer: --importer-command 'ARGV TEMPLATE' or --importer record"


def make_importer(args: argparse.Namespace, config: DropBoxConfig) -> ImportFunction:
    """The importer ``run`` uses, checked now so that a bad one stops the start, not the first file."""
    from omero_dropbox.importers import CommandImporter, ImporterConfigError

    kind = args.importer
    if args.importer_command:
        if kind not in ("auto", "command"):
            raise ConfigError(f"--importer-command conflicts with --importer {kind}")
        kind = "command"
    why = ""
    if kind == "auto":
        has_login = bool(args.omero_password_file or getattr(args, "admin_password", None))
        omero = shutil.which("omero")
        kind = "omero" if omero and has_login else "record"
        if kind == "record":
            log.warning(
                "No `omero` command or no OMERO admin login (--omero-password-file): recording "
                "imports to %s instead of importing (or pass --importer-command)",
                args.state_dir / "imports.jsonl",
            )
        else:
            why = (
                f"--importer auto chose the OMERO importer (`omero` is {omero} and an admin password "
                "is set), but "
            )
    timeout = config.import_timeout or None
    if kind == "command":
        if not args.importer_command:
            raise ConfigError("--importer command needs --importer-command 'ARGV TEMPLATE'")
        try:
            importer = CommandImporter(args.importer_command, timeout)
        except ImporterConfigError as exc:
            raise ConfigError(f"--importer-command: {exc}") from None
        check_program(importer.template[0], "--importer-command")
        return importer
    if kind == "record":
        return RecordImporter(args.state_dir / "imports.jsonl")
    return _omero_importer(args, config, why)


def check_program(program: str, option: str, fix: str = "give its full path, or install it") -> str:
    """The path of ``program`` (a path, or a name looked up on PATH); refused unless it can run."""
    if os.sep not in program:
        found = shutil.which(program)
        if found is None:
            raise StartupRefused(
                f"{option}: the program {program!r} is not on PATH ({os.environ.get('PATH', '')}); {fix}"
            )
        return found
    path = Path(program)
    if not path.exists():
        raise StartupRefused(
            f"{option}: the program {program} does not exist; give the path of an installed program"
        )
    if not path.is_file():
        raise StartupRefused(f"{option}: {program} is not a program (it is a directory or a special file)")
    if not os.access(path, os.X_OK):
        mode = stat.S_IMODE(path.stat().st_mode)
        raise StartupRefused(
            f"{option}: the program {program} is not executable (mode {mode:04o}); "
            f"make it executable (chmod +x {program}) for the service's user"
        )
    return program


def _omero_importer(args: argparse.Namespace, config: DropBoxConfig, why: str = "") -> PerUserOmeroImporter:
    """The OMERO CLI importer with sessions made by an admin login (password never in argv).

    Checked at start: the ``omero`` program, Ice and omero-py in this Python, and the admin login.
    """
    from omero_dropbox.importers import default_omero_executable

    check_program(
        default_omero_executable(),
        f"{why}--importer omero",
        "install omero-py in this Python's environment (pip install 'omero-dropbox-ng[omero]'); "
        + _OTHER_IMPORTERS,
    )
    try:
        from omero_dropbox.ice.sessions import (
            ADMIN_PASSWORD_ENV,
            UserSessions,
            check_admin_login,
            load_omero,
            omero_importer_for,
            password_admin_factory,
            read_password_file,
        )

        load_omero()
    except ImportError as exc:
        raise StartupRefused(
            f"{why}the OMERO importer cannot run in this Python ({sys.executable}): {exc}; {_OTHER_IMPORTERS}"
        ) from None
    if args.omero_password_file:
        password = read_password_file(args.omero_password_file)
        source = f"--omero-password-file {args.omero_password_file}"
    elif getattr(args, "admin_password", None):
        password = args.admin_password  # taken out of the environment by cmd_run
        source = f"${ADMIN_PASSWORD_ENV}"
    else:
        raise ConfigError(
            "--importer omero needs an OMERO admin login to create each user's session: pass "
            f"--omero-password-file FILE (mode 600) or set {ADMIN_PASSWORD_ENV} (never a password on "
            "the command line); inside OMERO run python -m omero_dropbox.ice.dropbox_service instead"
        )
    factory, close = password_admin_factory(config.host, config.port, args.omero_admin, password)
    first = config.users[0]
    sessions = UserSessions(
        factory, time_to_live_ms=first.time_to_live_ms, time_to_idle_ms=first.time_to_idle_ms, close=close
    )
    problem = check_admin_login(
        sessions, config.host, config.port, args.omero_admin, config.max_retries, config.retry_interval
    )
    if problem is not None:
        message, permanent = problem
        raise StartupRefused(
            f"{message} (password from {source})" if permanent else message, 2 if permanent else 1
        )
    return omero_importer_for(config, sessions, session_root=args.state_dir / "omero-sessions")


def _read_users(spec: str | None) -> UserDirectory | None:
    from omero_dropbox.engine import UserList

    if spec is None:
        return None
    if spec.startswith("@"):
        try:
            text = Path(spec[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(
                f"--users {spec}: cannot read the user list {spec[1:]}: {why}; give a file with one OMERO "
                "user name per line (# starts a comment), or the names themselves: --users amy,zak"
            ) from None
        names = [line.split("#", 1)[0] for line in text.splitlines()]
    else:
        names = spec.split(",")
    return UserList(names)


def prepare_watch_dirs(config: DropBoxConfig) -> None:
    """Create a missing DropBox directory of user ``default`` as upstream, or refuse, saying why.

    Without ``omero.fs.watchDir`` the directory is upstream's default
    ``<omero.data.dir>/<omero.fs.defaultDropBoxDir>``, created one level deep as upstream does
    (``omero.data.dir`` must exist: on an OMERO server it does), with a warning; a ``watchDir``
    given is created with its parents. Named users' directories must exist (the watcher says so).
    """
    for user in config.users:
        if not user.is_default or user.watch_dir.is_dir():
            continue
        derived = config.sources.get(f"omero.fs.watchDir[{user.import_user}]") == "derived"
        if derived:
            _create_default_dropbox(user.watch_dir)
        else:
            _create_dir(user.watch_dir, parents=True)
            log.info("Created the DropBox directory %s (omero.fs.watchDir)", user.watch_dir)


def _create_default_dropbox(path: Path) -> None:
    if not path.parent.is_dir():
        raise StartupRefused(
            f"omero.fs.watchDir is not set, and its default {path} (<omero.data.dir>/"
            f"<omero.fs.defaultDropBoxDir>) cannot be created: {path.parent} does not exist. Set the "
            "directory to watch: -D omero.fs.watchDir=/path/to/DropBox (or -D omero.data.dir=DIR "
            "where OMERO's data directory is)"
        )
    _create_dir(path, parents=False)
    log.warning(
        "omero.fs.watchDir is not set: created the default DropBox directory %s (<omero.data.dir>/"
        "<omero.fs.defaultDropBoxDir>, as upstream); set -D omero.fs.watchDir=DIR to watch another",
        path,
    )


def _create_dir(path: Path, *, parents: bool) -> None:
    try:
        path.mkdir(parents=parents, exist_ok=True)
    except OSError as exc:
        raise StartupRefused(
            f"omero.fs.watchDir: cannot create the DropBox directory {path}: {exc.strerror or exc}; "
            "create it (readable by the service's user) or set -D omero.fs.watchDir=DIR to an existing "
            "directory"
        ) from None


# ---------------------------------------------------------------- commands


ADMIN_PASSWORD_ENV = "OMERO_DROPBOX_ADMIN_PASSWORD"


def take_admin_password() -> str | None:
    """$OMERO_DROPBOX_ADMIN_PASSWORD, removed from the environment so that no child process (an
    importer command, Java, the OMERO CLI) inherits it; kept in memory for the OMERO importer."""
    return os.environ.pop(ADMIN_PASSWORD_ENV, None) or None


def cmd_run(args: argparse.Namespace) -> int:
    args.admin_password = take_admin_password()  # first: before anything can start a child
    config = load_config(templates=args.templates, toml_file=args.config, overrides=args.overrides)
    setup_logging(args.log_level, args.log_dir or config.log_dir, args.external_logrotate)
    users = _read_users(args.users)
    drain_timeout = _drain_timeout()
    if args.dry_run:
        # A dry run must not mark anything imported in the real journal: a throw-away one,
        # removed at exit. The importer is neither built nor run.
        state_dir = Path(tempfile.mkdtemp(prefix="omero-dropbox-dry-run-"))
        try:
            prepare_watch_dirs(config)
            log.info(
                "Dry run: nothing is imported; throw-away journal in %s (the real one is untouched)",
                state_dir,
            )
            return _run(args, config, None, state_dir, users, drain_timeout)
        finally:
            shutil.rmtree(state_dir, ignore_errors=True)
    from omero_dropbox.journal import private_dir

    private_dir(args.state_dir)  # before anything creates a file in it
    prepare_watch_dirs(config)
    importer = make_importer(args, config)
    log.info("Importer: %r; journal: %s", importer, args.state_dir)
    if users is None:
        users = _known_users(importer)
    return _run(args, config, importer, args.state_dir, users, drain_timeout)


def _known_users(importer: ImportFunction) -> UserDirectory | None:
    """The OMERO importer's sessions, which can tell which users exist; None for other importers."""
    from omero_dropbox.engine import UserDirectory

    sessions = getattr(importer, "sessions", None)
    return sessions if isinstance(sessions, UserDirectory) else None


def _run(
    args: argparse.Namespace,
    config: DropBoxConfig,
    importer: ImportFunction | None,
    state_dir: Path,
    users: UserDirectory | None,
    drain_timeout: float | None,
) -> int:
    from omero_dropbox.engine import DropBox
    from omero_dropbox.journal import JournalError

    shared = None if args.dry_run else _shared_queue(args, config)
    try:
        dropbox = DropBox(
            config,
            importer,
            state_dir=state_dir,
            users=users,
            dry_run=args.dry_run,
            shared=shared,
        )
    except JournalError as exc:
        print(f"omero-dropbox: error: {exc}", file=sys.stderr)
        return 1
    dropbox.user_reports.omero_web = getattr(args, "omero_web", None)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("Received %s: finishing running imports, then exiting", signal.Signals(signum).name)
        dropbox.stop()

    # SIGHUP too (a closed terminal or ssh session, `kill -HUP`): its default would kill the
    # service at once and leave its importers running.
    for name in ("SIGTERM", "SIGINT", "SIGHUP"):
        if hasattr(signal, name):  # no SIGHUP on Windows
            signal.signal(getattr(signal, name), on_signal)
    dropbox.queue.drain_timeout = drain_timeout
    server = _start_status_server(args, dropbox, state_dir)
    _startup_progress(dropbox)
    try:
        dropbox.run()
    finally:
        if server is not None:
            server.close()
    return 0


def _queue_dsn(args: argparse.Namespace, config: DropBoxConfig) -> str | None:
    dsn: str | None = args.queue or config.queue or None
    return dsn


def _shared_queue(args: argparse.Namespace, config: DropBoxConfig) -> SharedQueue | None:
    """``run --queue``'s shared queue; None without one (the journal is the queue)."""
    from omero_dropbox.queue_store import SharedQueue

    dsn = _queue_dsn(args, config)
    if dsn is None:
        if args.role != "all":
            raise ConfigError(
                f"--role {args.role} needs the shared queue: --queue postgresql://… or -D omero.fs.ng.queue=…"
            )
        return None
    _check_queue(dsn)
    return SharedQueue(dsn, role=args.role, lease=args.lease, max_running=args.max_running)


def _check_queue(dsn: str) -> None:
    """psycopg is there and ``dsn`` parses; refused now, with the fix, rather than at connect."""
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError as exc:
        raise StartupRefused(
            f"--queue needs psycopg 3 in this Python ({sys.executable}): {exc}; install it with "
            "pip install 'omero-dropbox-ng[postgresql]'"
        ) from None
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        from omero_dropbox.pg_store import redact_dsn

        raise ConfigError(
            f"--queue {redact_dsn(dsn)}: not a PostgreSQL connection string ({str(exc).strip()}); give "
            "postgresql://USER@HOST:PORT/DATABASE or 'host=HOST dbname=DATABASE user=USER'"
        ) from None


def cmd_worker(args: argparse.Namespace) -> int:
    """``omero-dropbox worker``: import from the shared queue until SIGTERM/SIGINT/SIGHUP."""
    args.admin_password = take_admin_password()  # first: before anything can start a child
    config = load_config(templates=args.templates, toml_file=args.config, overrides=args.overrides)
    setup_logging(args.log_level, args.log_dir or config.log_dir, args.external_logrotate)
    dsn = _queue_dsn(args, config)
    if dsn is None:
        raise ConfigError(
            "worker needs the shared queue: --queue postgresql://USER@HOST/DB (or -D omero.fs.ng.queue=…), "
            "the database the watcher nodes (`run --queue`) enqueue in"
        )
    _check_queue(dsn)
    drain_timeout = _drain_timeout()
    from omero_dropbox.journal import JournalError, private_dir
    from omero_dropbox.worker import Worker, WorkerSettings

    private_dir(args.state_dir)  # the record importer's file, OMERO sessions
    importer = make_importer(args, config)
    settings = WorkerSettings(
        concurrency=args.concurrency or config.max_concurrent_imports,
        max_running=args.max_running,
        throttle=min((u.throttle_import for u in config.users), default=0.0),
        max_attempts=config.max_attempts,
        backoff_initial=config.retry_backoff,
        name=args.worker_name or "",
    )
    log.info("Importer: %r", importer)
    try:
        worker = Worker(dsn, importer, settings, state_dir=args.state_dir, lease=args.lease)
    except JournalError as exc:
        print(f"omero-dropbox: error: {exc}", file=sys.stderr)
        return 1

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("Received %s: claiming nothing more, finishing running imports", signal.Signals(signum).name)
        worker.stop()

    for name in ("SIGTERM", "SIGINT", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)
    worker.run(300.0 if drain_timeout is None else drain_timeout)
    return 0


def _drain_timeout() -> float | None:
    text = os.environ.get(DRAIN_TIMEOUT_ENV, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:
        raise ConfigError(
            f"{DRAIN_TIMEOUT_ENV}={text!r}: give the seconds to wait for running imports (>= 0)"
        )
    return value


def _start_status_server(args: argparse.Namespace, dropbox: DropBox, state_dir: Path) -> StatusServer | None:
    if not args.http:
        return None
    from omero_dropbox.http_status import StatusServer, parse_http_address

    host, port = parse_http_address(args.http)
    server = StatusServer(dropbox, state_dir, host, port, omero_web=args.omero_web)
    server.start()
    return server


def _startup_progress(dropbox: DropBox) -> None:
    """On a terminal: files found by the start-up scan until it has been quiet for 3 s."""
    from omero_dropbox.progress import watch_progress

    last = {"events": -1, "since": time.monotonic()}
    wanted = len(dropbox.config.users)

    def poll() -> tuple[int, str, bool]:
        live = dropbox.runtime_status()
        events = sum(dropbox.metrics.events.values())
        watcher = live["watcher"]
        if live["watching"] < wanted:
            return events, "placing watches", False
        now = time.monotonic()
        if events != last["events"] or watcher.get("pending", 0):
            last["events"], last["since"] = events, now
        waiting = sum(live["waiting"].values())
        queue = live["queue"]
        detail = (
            f"{watcher.get('watches', 0):,} directories watched, {waiting:,} waiting, "
            f"{queue['ready'] + queue['running']:,} queued"
        )
        return events, detail, now - last["since"] > 3.0

    handlers = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
    watch_progress("Start-up scan", poll, handlers=handlers)


def cmd_filesets(args: argparse.Namespace) -> int:
    from omero_dropbox.grouping.command import filesets_command

    return filesets_command(args.paths, args.readers, args.bioformats_oracle)


def cmd_status(args: argparse.Namespace) -> int:
    from omero_dropbox.status import print_status

    return print_status(args.state_dir, as_json=args.json, limit=args.limit, watch=args.watch)


def _actor(command: str) -> str:
    """Who asked, for the journal history: login name, host and command."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user} on {socket.gethostname()} (omero-dropbox {command})"


def cmd_retry(args: argparse.Namespace) -> int:
    from omero_dropbox.journal import FAILED, Journal, JournalError, display_path

    if bool(args.filesets) == bool(args.all_failed):
        print("omero-dropbox retry: give FILESET ids or --all-failed (not both)", file=sys.stderr)
        return 2
    actor = _actor("retry")
    errors = 0
    try:
        with Journal(args.state_dir, check=False) as journal:
            if args.all_failed:
                targets = [r.id for r in journal.filesets(FAILED)] + journal.annotations_failed()
                if not targets:
                    print("Nothing to retry: no failed filesets.")
                    return 0
            else:
                targets = []
                for ref in args.filesets:
                    try:
                        targets.append(journal.resolve_fileset(ref).id)
                    except JournalError as exc:
                        print(f"omero-dropbox retry: {printable(str(exc))}", file=sys.stderr)
                        errors += 1
            for fid in targets:
                # An imported fileset whose key-value pairs or tags failed: attach them again.
                if journal.annotations_retry(fid, actor):
                    rec_done = journal.fileset_by_id(fid)
                    where = display_path(rec_done.key) if rec_done is not None else ""
                    print(f"Annotations of {fid[:12]} {where} will be attached again")
                    continue
                try:
                    rec = journal.retry(fid, actor)
                except JournalError as exc:
                    print(f"omero-dropbox retry: {printable(str(exc))}", file=sys.stderr)
                    errors += 1
                    continue
                print(f"Re-queued {fid[:12]} {printable(rec.user)} {display_path(rec.key)}")
    except JournalError as exc:
        print(f"omero-dropbox: error: {exc}", file=sys.stderr)
        return 1
    running = _service_running(args.state_dir)
    if targets and not errors:
        print("The running service imports them now." if running else "They are imported at the next start.")
    return 1 if errors else 0


def cmd_forget(args: argparse.Namespace) -> int:
    from omero_dropbox.journal import Journal, JournalError, display_path

    actor = _actor("forget")
    errors = 0
    try:
        with Journal(args.state_dir, check=False) as journal:
            for given in args.paths:
                candidates = dict.fromkeys([os.path.abspath(given), os.path.realpath(given)])
                last: JournalError | None = None
                for path in candidates:
                    try:
                        entries = journal.forget(path, actor)
                        break
                    except JournalError as exc:
                        last = exc
                else:
                    print(f"omero-dropbox forget: {printable(str(last))}", file=sys.stderr)
                    errors += 1
                    continue
                filesets = [e for e in entries if e.kind == "fileset"]
                files = [e for e in entries if e.kind == "file"]
                for e in filesets:
                    key = display_path(e.path or "")
                    owner = printable(e.user or "")
                    print(f"Forgot fileset {e.subject[:12]} ({e.old_state}) of {owner}: {key}")
                shown = display_path(path)
                print(f"Forgot {len(files)} file(s) under {shown}; a copy dropped again is imported again.")
    except JournalError as exc:
        print(f"omero-dropbox: error: {exc}", file=sys.stderr)
        return 1
    return 1 if errors else 0


def _service_running(state_dir: Path) -> bool:
    from omero_dropbox.snapshot import read_service

    return bool(read_service(state_dir).get("running"))


def cmd_config(args: argparse.Namespace) -> int:
    config = load_config(templates=args.templates, toml_file=args.config, overrides=args.overrides)
    print(format_config(config))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"run": cmd_run, "filesets": cmd_filesets, "status": cmd_status, "config": cmd_config}
    handlers.update(retry=cmd_retry, forget=cmd_forget, worker=cmd_worker)
    try:
        code = handlers[args.command](args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return code
    except BrokenPipeError:
        # `status | head`: the reader has what it wanted. No traceback, and no second error
        # when Python flushes stdout at exit; 141 as a program killed by SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE if hasattr(signal, "SIGPIPE") else 1
    except ConfigError as exc:
        print(f"omero-dropbox: configuration error: {exc}", file=sys.stderr)
        return 2
    except StartupRefused as exc:
        print(f"omero-dropbox: cannot start: {exc}", file=sys.stderr)
        return exc.exit_code
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"omero-dropbox: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
