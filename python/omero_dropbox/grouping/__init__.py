"""Fileset grouping: which files import together, and which one is the key.

One module a job:

* :mod:`.rules`: the rule table (multi-file formats as data) and which files could still
  become members (:func:`~.rules.member_tokens`);
* :mod:`.readers`: what Bio-Formats' readers read (generated suffix table, multi-file
  readers, the oracle's suffixes); :mod:`.readers_file`: ``omero.fs.readers`` files;
* :mod:`.grouper`: :class:`FilesetGrouper`, which interprets the rules;
* :mod:`.result`: :class:`Fileset`, :class:`GroupingResult` with its typed
  :class:`Waiting` and :class:`Refused` entries;
* :mod:`.parsers`, :mod:`.file_pattern`, :mod:`.tiff`, :mod:`.probes`: the small readers of
  key files; :mod:`.user_files`: the one way they open a user's file;
* :mod:`.limits`: :class:`GroupingLimits`, what one key file may cost;
* :mod:`.confinement`, :mod:`.folders`, :mod:`.paths`, :mod:`.templates`,
  :mod:`.system_files`: helpers;
* :mod:`.oracle`: the Bio-Formats oracle (one long-lived JVM; ``java/DropboxOracle.java``),
  used by the tests and, with ``omero.fs.ng.bioformatsOracle``, by the engine;
* :mod:`.command`: ``omero-dropbox filesets``; :mod:`.formats_doc`: docs/formats.md.
"""

from __future__ import annotations

from omero_dropbox.grouping.folders import FolderNames
from omero_dropbox.grouping.grouper import FilesetGrouper, group_paths
from omero_dropbox.grouping.limits import GroupingLimits, KeyFileRejected
from omero_dropbox.grouping.readers_file import load_readers, read_readers_file
from omero_dropbox.grouping.result import (
    Fileset,
    GroupingResult,
    Refused,
    UsedFiles,
    UsedFilesSource,
    Waiting,
    WaitKind,
)
from omero_dropbox.grouping.system_files import is_system_file

__all__ = [
    "Fileset",
    "FilesetGrouper",
    "FolderNames",
    "GroupingLimits",
    "GroupingResult",
    "KeyFileRejected",
    "Refused",
    "UsedFiles",
    "UsedFilesSource",
    "WaitKind",
    "Waiting",
    "group_paths",
    "is_system_file",
    "load_readers",
    "read_readers_file",
]
