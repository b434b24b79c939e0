"""``omero-dropbox`` with the OMERO *server* replaced by a recorded stand-in (none can run here).

Run as ``python -m tests.support.omero_standin run --importer omero ...``: this is the real CLI
(arguments, configuration, watcher, engine, journal, queue, the OMERO importer and the ``omero
import`` argv it builds, run as a process through a fake ``omero`` on PATH) with only what a
server does replaced: the admin login and the user sessions (:class:`RecordedSessions`), and
the omero-py steps around an import (:class:`RecordedSteps`). Each call is appended as a JSON
line to ``$OMERO_STANDIN_RECORD``.

Faults on request: a session in group ``$OMERO_STANDIN_REFUSED_GROUP`` is refused (not a
member); while the file ``$OMERO_STANDIN_RECORD.down`` exists, the steps fail as if the
server were unreachable; while ``$OMERO_STANDIN_RECORD.refuse`` exists, attaching annotations is
refused for good (as OMERO refuses a link to an object the user cannot annotate).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path

from omero_dropbox import cli
from omero_dropbox.annotations import AnnotationError
from omero_dropbox.config import DropBoxConfig
from omero_dropbox.ice.sessions import PerUserOmeroImporter, omero_importer_for
from omero_dropbox.importers import PermanentImportError

#: The fake ``omero`` executable: records its argv and prints what ``omero import`` prints.
FAKE_OMERO_IMPORT = """\
#!{python}
import json, os, sys
with open(os.environ["OMERO_STANDIN_RECORD"], "a") as fh:
    fh.write(json.dumps({{"call": "omero", "argv": sys.argv[1:]}}) + "\\n")
print("Image:%d" % (1000 + len(open(os.environ["OMERO_STANDIN_RECORD"]).readlines())))
"""

_lock = threading.Lock()


def _record(call: str, **fields: object) -> None:
    with _lock, open(os.environ["OMERO_STANDIN_RECORD"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"call": call, **fields}) + "\n")


def _server_down() -> None:
    if os.path.exists(os.environ["OMERO_STANDIN_RECORD"] + ".down"):
        raise ConnectionRefusedError("OMERO stand-in: the server is down")


class RecordedSessions:
    """Stands in for the OMERO session service."""

    def __init__(self) -> None:
        self.count = 0

    def open_session(self, user: str, group: str | None = None) -> str:
        if group is not None and group == os.environ.get("OMERO_STANDIN_REFUSED_GROUP"):
            raise PermanentImportError(f"{user} is not a member of group {group}")
        self.count += 1
        key = f"standin-session-{self.count}"
        _record("open_session", user=user, group=group, key=key)
        return key

    def close_session(self, key: str) -> None:
        _record("close_session", key=key)

    def exists(self, name: str) -> bool:
        return True


class RecordedSteps:
    """Stands in for the omero-py steps (``BlitzSteps``) against a server."""

    def dataset_in_project(self, session_key: str, project: str, dataset: str) -> int:
        _server_down()
        ident = 500 + zlib.crc32(f"{project}/{dataset}".encode()) % 1000
        _record("dataset_in_project", key=session_key, project=project, dataset=dataset, id=ident)
        return ident

    def annotate(
        self,
        session_key: str,
        objects: Sequence[str],
        key_values: Sequence[tuple[str, str]],
        tags: Sequence[str],
    ) -> None:
        _server_down()
        if os.path.exists(os.environ["OMERO_STANDIN_RECORD"] + ".refuse"):
            raise AnnotationError(
                "OMERO stand-in: SecurityViolation: cannot annotate these objects", final=True
            )
        _record(
            "annotate",
            key=session_key,
            objects=list(objects),
            key_values=[list(kv) for kv in key_values],
            tags=list(tags),
        )


def _standin_importer(args: argparse.Namespace, config: DropBoxConfig, why: str = "") -> PerUserOmeroImporter:
    return omero_importer_for(
        config,
        RecordedSessions(),
        steps=RecordedSteps(),
        session_root=Path(args.state_dir) / "omero-sessions",
    )


def install_fake_omero(bin_dir: Path) -> Path:
    """Write the fake ``omero`` into ``bin_dir`` (put it first on PATH)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "omero"
    script.write_text(FAKE_OMERO_IMPORT.format(python=sys.executable))
    script.chmod(0o755)
    return script


if __name__ == "__main__":
    cli._omero_importer = _standin_importer  # type: ignore[assignment]
    sys.exit(cli.main())
