"""``omero-dropbox``: run the DropBox service, inspect filesets, the journal and the configuration."""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from omero_dropbox.config import ConfigError, DropBoxConfig, format_config, load_config

log = logging.getLogger("omero_dropbox.cli")

# Upstream's DropBox.log line format, so sites keep their log tooling.
LOG_FORMAT = "%(asctime)s %(levelname)-5.5s [%(name)40s] (%(threadName)-10s) %(message)s"
DEFAULT_STATE_DIR = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "omero-dropbox"

_DESCRIPTION = """\
Drop-folder importer for OMERO. Files copied into <DropBox>/<omero-user>/... are
imported into OMERO as that user, one import per multi-file fileset, exactly once,
with a durable journal of what happened to every file.
"""

_RUN_EPILOG = """\
importers:
  --importer omero     the OMERO CLI, as upstream (needs `omero` on PATH and omero-py)
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


def _state_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("OMERO_DROPBOX_STATE_DIR", DEFAULT_STATE_DIR)),
        help="where the journal lives (default: $OMERO_DROPBOX_STATE_DIR or %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omero-dropbox", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="watch the DropBox and import (foreground; SIGTERM/SIGINT drain and exit 0)",
        description="Watch the DropBox directories and import every fileset once.",
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_args(run)
    _state_arg(run)
    run.add_argument("--importer", choices=("auto", "omero", "command", "record"), default="auto")
    run.add_argument(
        "--importer-command", metavar="'ARGV TEMPLATE'", help="run this for each fileset (no shell)"
    )
    run.add_argument(
        "--users", metavar="NAMES|@FILE", help="only these OMERO users exist (comma list or @file)"
    )
    run.add_argument("--dry-run", action="store_true", help="log what would be imported, as whom and when")
    run.add_argument(
        "--log-dir", type=Path, help="write DropBox.log here (rotated 5 MB x 9, upstream format)"
    )
    run.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    fs = sub.add_parser("filesets", help="print the filesets found under PATH... as JSON lines")
    fs.add_argument("paths", nargs="+", metavar="PATH")
    fs.add_argument(
        "--readers", type=Path, help="a file of Bio-Formats reader class names (omero.fs.readers)"
    )

    st = sub.add_parser("status", help="counts per user and state, and recent journal entries")
    _state_arg(st)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--limit", type=int, default=20, help="how many recent entries to show")

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = cfg_sub.add_parser("show", help="print the resolved per-user configuration")
    _config_args(show)
    return parser


# ----------------------------------------------------------------- logging


def setup_logging(level: str, log_dir: Path | None) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    formatter = logging.Formatter(LOG_FORMAT)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(formatter)
    root.addHandler(stream)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            log_dir / "DropBox.log", maxBytes=5_000_000, backupCount=9
        )
        handler.setFormatter(formatter)
        root.addHandler(handler)


# --------------------------------------------------------------- importers


class RecordImporter:
    """Imports nothing: appends one JSON line per fileset to a file. Works without OMERO."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, request: object) -> bool:
        from omero_dropbox.importers import ImportRequest

        assert isinstance(request, ImportRequest)
        line = {
            "user": request.user,
            "key": os.fsencode(request.key).decode("utf-8", "backslashreplace"),
            "files": [os.fsencode(f).decode("utf-8", "backslashreplace") for f in request.files],
            "fileset": request.fileset_id,
            "format": request.format,
            "at": time.time(),
        }
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def __repr__(self) -> str:
        return f"RecordImporter({str(self.path)!r})"


def make_importer(args: argparse.Namespace, config: DropBoxConfig) -> object:
    from omero_dropbox.importers import CommandImporter

    kind = args.importer
    if args.importer_command:
        if kind not in ("auto", "command"):
            raise ConfigError(f"--importer-command conflicts with --importer {kind}")
        kind = "command"
    if kind == "auto":
        kind = "omero" if shutil.which("omero") else "record"
        if kind == "record":
            log.warning(
                "No `omero` command found: recording imports to %s instead of importing "
                "(install omero-py, or pass --importer-command)",
                args.state_dir / "imports.jsonl",
            )
    timeout = config.import_timeout or None
    if kind == "command":
        if not args.importer_command:
            raise ConfigError("--importer command needs --importer-command 'ARGV TEMPLATE'")
        return CommandImporter(args.importer_command, timeout)
    if kind == "record":
        return RecordImporter(args.state_dir / "imports.jsonl")
    raise ConfigError(
        "--importer omero needs an OMERO server session for each user, which comes with the OMERO "
        "integration (IceGrid DropBox); outside OMERO use --importer-command or --importer record"
    )


def _read_users(spec: str | None) -> object:
    from omero_dropbox.engine import UserList

    if spec is None:
        return None
    if spec.startswith("@"):
        text = Path(spec[1:]).read_text(encoding="utf-8")
        names = [line.split("#", 1)[0] for line in text.splitlines()]
    else:
        names = spec.split(",")
    return UserList(names)


# ---------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    from omero_dropbox.engine import DropBox
    from omero_dropbox.journal import JournalError

    config = load_config(templates=args.templates, toml_file=args.config, overrides=args.overrides)
    setup_logging(args.log_level, args.log_dir or config.log_dir)
    importer = make_importer(args, config)
    state_dir = args.state_dir
    if args.dry_run:
        # A dry run must not mark anything imported in the real journal.
        state_dir = Path(tempfile.mkdtemp(prefix="omero-dropbox-dry-run-"))
        log.info("Dry run: journal kept in %s; the real journal is untouched", state_dir)
    log.info("Importer: %r; journal: %s", importer, state_dir)
    try:
        dropbox = DropBox(
            config,
            importer,  # type: ignore[arg-type]
            state_dir=state_dir,
            users=_read_users(args.users),  # type: ignore[arg-type]
            dry_run=args.dry_run,
        )
    except JournalError as exc:
        print(f"omero-dropbox: error: {exc}", file=sys.stderr)
        return 1

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("Received %s: finishing running imports, then exiting", signal.Signals(signum).name)
        dropbox.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    dropbox.run()
    return 0


def cmd_filesets(args: argparse.Namespace) -> int:
    from omero_dropbox.filesets import filesets_command

    return filesets_command(args.paths, args.readers)


def cmd_status(args: argparse.Namespace) -> int:
    from omero_dropbox.status import print_status

    return print_status(args.state_dir, as_json=args.json, limit=args.limit)


def cmd_config(args: argparse.Namespace) -> int:
    config = load_config(templates=args.templates, toml_file=args.config, overrides=args.overrides)
    print(format_config(config))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"run": cmd_run, "filesets": cmd_filesets, "status": cmd_status, "config": cmd_config}
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print(f"omero-dropbox: configuration error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"omero-dropbox: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
