"""The property schema: every setting omero-dropbox reads, in ONE table.

:data:`PROPERTIES` is the single source of truth for names, value types, defaults,
scope and documentation. The loader in :mod:`omero_dropbox.config` parses with it,
``format_config`` prints with it and :func:`property_reference_markdown` turns it into
the reference documentation, so the three cannot drift apart.

Each property has a *kind* (:class:`Kind` subclass) that knows how to read a value
written in property syntax (templates.xml, ``-D``), how to read a typed TOML value,
and how to write a value back in property syntax.

Deliberate differences from upstream OMERO.dropbox 5.7 (its quirks, fixed here):

* An empty boolean means the default; upstream read it as False, so
  ``ignoreSysFiles=""`` silently turned a True default off.
* A boolean is true/false/yes/no/1/0 in any case (plus upstream's "anything starting
  with T is true" and, symmetrically, "anything starting with F is false"); anything else
  is an error instead of a silent False.
* An unknown event type is an error; upstream reset the whole list to ``All``.
* An unknown path mode is an error; upstream silently used ``Follow``.
* A value that is not a number (or, for counts, not a whole number, e.g. ``60.5``) is an
  error; upstream silently used the default.
* Waits (``dirImportWait``, ``throttleImport``, ``retryInterval``) accept fractional
  seconds; upstream only accepted whole seconds.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Generic, TypeVar

from omero_dropbox.choices import (
    AFTER_IMPORT_ACTIONS,
    BACKENDS,
    PATH_MODES,
    WATCH_EVENT_TYPES,
    WatchEventType,
)

__all__ = [
    "DEFAULT_USER",
    "EVENT_TYPES",
    "PROPERTIES",
    "RETRY_BACKOFF_CAP",
    "ConfigError",
    "Kind",
    "Property",
    "Scope",
    "Where",
    "property_by_key",
    "property_by_name",
    "property_reference_markdown",
]

_log = logging.getLogger("omero_dropbox.config")

DEFAULT_USER = "default"
"""The ``importUsers`` entry that selects all-users mode (``<watchDir>/<user>/...``)."""

EVENT_TYPES = WATCH_EVENT_TYPES
"""The watch event types, lower case, in their canonical order."""

RETRY_BACKOFF_CAP = 3600.0
"""Upper bound (seconds) of the doubling retry backoff that starts at ``retryBackoff``."""

# Seconds are capped so that every value is usable as a timer timeout
# (threading.TIMEOUT_MAX is about 9.2e9 on Linux) and no arithmetic overflows.
_MAX_SECONDS = 1e9
_MAX_INT = 2**31 - 1  # Ice "int" (blockSize is one in the Slice createMonitor call)


class ConfigError(ValueError):
    """The configuration is wrong: a value, a property name or a file.

    The message names the property (or file), the offending value, which user entry it
    belongs to where that applies, and what is allowed.
    """


class Scope(Enum):
    """Whether a property has one value per import user or one value overall."""

    USER = "per-user"
    GLOBAL = "global"


@dataclass(frozen=True)
class Where:
    """Where a value came from; every parse error is phrased through :meth:`error`."""

    name: str
    source: str
    user: str | None = None
    entry: int | None = None

    def error(self, problem: str, allowed: str) -> ConfigError:
        who = ""
        if self.user is not None:
            who = f" for user '{self.user}' (entry {self.entry})"
        return ConfigError(f"{self.name}: {problem}{who}; allowed: {allowed} (source: {self.source})")


# --------------------------------------------------------------------------- kinds


class Kind:
    """How one type of value is read and written. Subclasses are small value objects."""

    type_name = "text"

    def allowed(self) -> str:
        return "any text"

    def parse_text(self, text: str, where: Where) -> Any:
        """Parse a stripped, non-empty value written in property syntax."""
        return text

    def empty(self) -> Any:
        """The value of an empty default (only defaults reach here empty)."""
        return ""

    def parse_toml(self, value: object, where: Where) -> Any:
        """Parse a TOML value; a TOML string is read with the property syntax."""
        if isinstance(value, str):
            return self.parse_text(value.strip(), where)
        raise where.error(f"{_toml_type(value)} {value!r} is the wrong type", self.allowed())

    def to_text(self, value: Any) -> str:
        """Write a parsed value back in property syntax (what ``-D`` would accept)."""
        return str(value)


def _toml_type(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}
    return names.get(type(value), "table" if isinstance(value, dict) else type(value).__name__)


class Text(Kind):
    """A plain string, stripped."""


class Dsn(Text):
    """A PostgreSQL connection string (URL or ``key=value``); shown with its password hidden."""

    type_name = "PostgreSQL DSN"

    def to_text(self, value: Any) -> str:
        # `config show` prints every setting: never the database password.
        text = "" if value is None else str(value)
        text = re.sub(r"(://[^:/@?]*:)[^@/?]*@", r"\1***@", text)
        return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text)


class PathKind(Kind):
    """A filesystem path; with ``optional`` an empty value means "none"."""

    type_name = "path"

    def allowed(self) -> str:
        return "a directory path"

    def parse_text(self, text: str, where: Where) -> Path | None:
        return Path(text)

    def empty(self) -> Any:
        return None

    def to_text(self, value: Any) -> str:
        return "" if value is None else str(value)


class Readers(PathKind):
    """``omero.fs.readers``: used only if it names an existing file, as upstream."""

    def allowed(self) -> str:
        return "the path of a Bio-Formats readers file"

    def parse_text(self, text: str, where: Where) -> Path | None:
        # isfile() swallows ValueError for NUL bytes and unencodable names.
        if os.path.isfile(text):
            return Path(text)
        who = f" for user '{where.user}'" if where.user is not None else ""
        _log.warning(
            "%s: %r%s is not an existing file; ignoring it, so every reader is used "
            "(as upstream) (source: %s)",
            where.name,
            text,
            who,
            where.source,
        )
        return None


@dataclass(frozen=True)
class Int(Kind):
    """A whole number in ``[minimum, maximum]``, optionally scaled (seconds -> ms)."""

    minimum: int = 0
    maximum: int = _MAX_INT
    scale: int = 1
    unit: str = ""

    type_name = "integer"

    def allowed(self) -> str:
        what = f"a whole number of {self.unit}" if self.unit else "a whole number"
        return f"{what} from {self.minimum} to {self.maximum}"

    def parse_text(self, text: str, where: Where) -> int:
        # A strict ASCII pattern: int() would also take "1_0" and non-ASCII digits, and
        # the length cap keeps int() clear of its 4300-digit limit.
        if not re.fullmatch(r"[+-]?[0-9]{1,18}", text):
            raise where.error(f"{text!r} is not a whole number", self.allowed())
        return self._check(int(text), repr(text), where)

    def parse_toml(self, value: object, where: Where) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return self._check(value, repr(value), where)
        return int(super().parse_toml(value, where))

    def _check(self, number: int, shown: str, where: Where) -> int:
        if not self.minimum <= number <= self.maximum:
            raise where.error(f"{shown} is out of range", self.allowed())
        return number * self.scale

    def to_text(self, value: Any) -> str:
        return str(int(value) // self.scale)


@dataclass(frozen=True)
class Seconds(Kind):
    """A duration in seconds (fractions allowed), at least ``minimum``."""

    minimum: float = 0.0
    positive: bool = False

    type_name = "seconds"

    def allowed(self) -> str:
        low = "more than 0" if self.positive else f"from {self.minimum:g}"
        return f"a number of seconds {low} up to {_MAX_SECONDS:.0f}"

    def parse_text(self, text: str, where: Where) -> float:
        pattern = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
        if not re.fullmatch(pattern, text):
            raise where.error(f"{text!r} is not a number", self.allowed())
        return self._check(float(text), repr(text), where)

    def parse_toml(self, value: object, where: Where) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return self._check(float(value), repr(value), where)
        return float(super().parse_toml(value, where))

    def _check(self, number: float, shown: str, where: Where) -> float:
        too_low = number <= 0 if self.positive else number < self.minimum
        if not math.isfinite(number) or too_low or number > _MAX_SECONDS:
            raise where.error(f"{shown} is out of range", self.allowed())
        return number

    def to_text(self, value: Any) -> str:
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)


class Bool(Kind):
    """true/false/yes/no/1/0, any case; upstream's T.../F... forms still work."""

    type_name = "boolean"

    def allowed(self) -> str:
        return "true, false, yes, no, 1, 0 (any case)"

    def parse_text(self, text: str, where: Where) -> bool:
        low = text.lower()
        if low in ("true", "yes", "1"):
            return True
        if low in ("false", "no", "0"):
            return False
        # Upstream tested only the first letter ("T"/"t" = true), so keep "T" and "Tru"
        # working; "F..." mirrors it. Anything else was a silent False: now an error.
        if low.startswith("t"):
            return True
        if low.startswith("f"):
            return False
        raise where.error(f"{text!r} is not a boolean", self.allowed())

    def parse_toml(self, value: object, where: Where) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return value == 1
        return bool(super().parse_toml(value, where))

    def to_text(self, value: Any) -> str:
        return "True" if value else "False"


_Value = TypeVar("_Value", bound=str)


@dataclass(frozen=True)
class Choice(Kind, Generic[_Value]):
    """One of a closed set of names (a ``Literal``'s values, lower case), matched case-insensitively.

    ``capitalized``: written ``Flat`` rather than ``flat`` (in the reference, ``config show``), as
    upstream spells them.
    """

    values: tuple[_Value, ...]
    noun: str
    capitalized: bool = False

    type_name = "choice"

    def allowed(self) -> str:
        return ", ".join(self.to_text(value) for value in self.values)

    def parse_text(self, text: str, where: Where) -> _Value:
        low = text.lower()
        for value in self.values:
            if value == low:
                return value
        raise where.error(f"unknown {self.noun} {text!r}", self.allowed())

    def to_text(self, value: Any) -> str:
        return str(value).capitalize() if self.capitalized else str(value)


class EventTypes(Kind):
    """A ``,`` list of watch event types; ``All`` expands to every type."""

    type_name = "event types"
    _names = ("Creation", "Modification", "Deletion", "All")

    def allowed(self) -> str:
        return ", ".join(self._names)

    def parse_text(self, text: str, where: Where) -> tuple[WatchEventType, ...]:
        return self._parse_items(text.split(","), text, where)

    def parse_toml(self, value: object, where: Where) -> tuple[WatchEventType, ...]:
        if isinstance(value, list):
            return self._parse_items(_toml_strings(value, where, self.allowed()), value, where)
        return tuple(super().parse_toml(value, where))

    def _parse_items(self, items: Sequence[str], shown: object, where: Where) -> tuple[WatchEventType, ...]:
        by_name: dict[str, WatchEventType] = {name: name for name in EVENT_TYPES}
        chosen: set[WatchEventType] = set()
        for raw in items:
            item = raw.strip()
            if not item:
                continue  # "Creation,,Deletion": empty list items are dropped, as upstream
            low = item.lower()
            known = by_name.get(low)
            if low == "all":
                chosen.update(EVENT_TYPES)
            elif known is not None:
                chosen.add(known)
            else:
                raise where.error(f"unknown event type {item!r}", self.allowed())
        if not chosen:
            raise where.error(f"no event type in {shown!r}", self.allowed())
        return tuple(name for name in EVENT_TYPES if name in chosen)

    def to_text(self, value: Any) -> str:
        return ",".join(name.capitalize() for name in value)


class Items(Kind):
    """A ``,`` list of strings; items are stripped and empty items dropped."""

    type_name = "list"

    def allowed(self) -> str:
        return "a comma-separated list"

    def parse_text(self, text: str, where: Where) -> tuple[str, ...]:
        return tuple(item.strip() for item in text.split(",") if item.strip())

    def empty(self) -> Any:
        return ()

    def parse_toml(self, value: object, where: Where) -> tuple[str, ...]:
        if isinstance(value, list):
            items = _toml_strings(value, where, "an array of strings")
            return tuple(item.strip() for item in items if item.strip())
        return tuple(super().parse_toml(value, where))

    def to_text(self, value: Any) -> str:
        return ",".join(value)


class Args(Kind):
    """Extra importer arguments: a shell-like string split with :func:`shlex.split`."""

    type_name = "arguments"

    def allowed(self) -> str:
        return "shell-like words with balanced quotes (no shell is run)"

    def empty(self) -> Any:
        return ()

    def parse_text(self, text: str, where: Where) -> tuple[str, ...]:
        try:
            return tuple(shlex.split(text))
        except ValueError as exc:  # unbalanced quote or a trailing backslash
            raise where.error(f"cannot split {text!r} ({exc})", self.allowed()) from None

    def parse_toml(self, value: object, where: Where) -> tuple[str, ...]:
        if isinstance(value, list):  # already split: taken verbatim
            return tuple(_toml_strings(value, where, "a string or an array of strings"))
        return tuple(super().parse_toml(value, where))

    def to_text(self, value: Any) -> str:
        return shlex.join(value)


class Users(Kind):
    """``omero.fs.importUsers``: read by the loader itself, which needs entry positions."""

    type_name = "user list"

    def allowed(self) -> str:
        return "'default' or OMERO user names, separated by ';'"

    def to_text(self, value: Any) -> str:
        return ";".join(value)


def _toml_strings(value: list[object], where: Where, allowed: str) -> list[str]:
    for item in value:
        if not isinstance(item, str):
            raise where.error(f"array item {item!r} is not a string", allowed)
    return [str(item) for item in value]


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Property:
    """One row of the schema.

    ``default`` is what omero-dropbox uses when nothing sets the property, written in
    property syntax and parsed by ``kind`` like any other value. ``upstream_code`` and
    ``upstream_template`` are upstream's code default and ``templates.xml`` value
    (None: upstream has no such property / the template does not set it).
    """

    name: str
    key: str
    kind: Kind
    default: str
    scope: Scope
    doc: str
    upstream_code: str | None = None
    upstream_template: str | None = None
    note: str = ""
    attr: str = field(default="")

    def __post_init__(self) -> None:
        if not self.attr:  # the dataclass field is the TOML key unless told otherwise
            object.__setattr__(self, "attr", self.key)

    @property
    def is_upstream(self) -> bool:
        return self.upstream_code is not None


_U, _G = Scope.USER, Scope.GLOBAL


def _up(
    name: str,
    key: str,
    kind: Kind,
    default: str,
    scope: Scope,
    doc: str,
    *,
    code: str | None = None,
    template: str | None = None,
    note: str = "",
    attr: str = "",
) -> Property:
    """An upstream ``omero.fs.*`` property; upstream defaults equal ours unless given."""
    return Property(
        name,
        key,
        kind,
        default,
        scope,
        doc,
        upstream_code=default if code is None else code,
        upstream_template=default if template is None else template,
        note=note,
        attr=attr,
    )


def _ng(name: str, key: str, kind: Kind, default: str, doc: str, *, note: str = "") -> Property:
    """One of our own settings (``omero.fs.ng.*``), all global."""
    return Property(f"omero.fs.ng.{name}", key, kind, default, _G, doc, note=note)


def _plumbing(name: str, key: str, template: str, doc: str) -> Property:
    # Upstream's code default is "" (useless); the DropBox/MonitorServer templates always
    # set these, so the template value is our default.
    return _up(f"omero.fs.{name}", key, Text(), template, _G, doc, code="", template=template)


PROPERTIES: tuple[Property, ...] = (
    _up(
        "omero.fs.importUsers",
        "import_users",
        Users(),
        DEFAULT_USER,
        _G,
        "';' list of import users: 'default' (all-users mode) or OMERO user names.",
        note="Whitespace around names is fine; duplicate names are an error; every "
        "other per-user list may be shorter (missing entries get the default) where "
        "upstream aborted with IndexError.",
    ),
    _up(
        "omero.fs.watchDir",
        "watch_dir",
        PathKind(),
        "",
        _U,
        "Directory to watch; empty for 'default' means <omero.data.dir>/<defaultDropBoxDir>.",
        note="An empty watchDir for a named user is an error (upstream started a "
        "monitor on '' that failed with only a log line).",
    ),
    _up(
        "omero.fs.eventTypes",
        "event_types",
        EventTypes(),
        "Creation,Modification",
        _U,
        "',' list of Creation, Modification, Deletion, All.",
        code="All",
        template="Creation,Modification",
        note="Default is the template's Creation,Modification (what every upstream "
        "install ran with), not the code's All. An unknown name is an error; upstream "
        "silently reset the list to All.",
    ),
    _up(
        "omero.fs.pathMode",
        "path_mode",
        Choice(PATH_MODES, "path mode", capitalized=True),
        "Follow",
        _U,
        "Flat: top directory only; Recurse: existing subdirectories; Follow: also new ones.",
        note="An unknown mode is an error; upstream silently used Follow.",
    ),
    _up(
        "omero.fs.whitelist",
        "whitelist",
        Items(),
        "",
        _U,
        "',' list of file extensions of interest; empty means all.",
    ),
    _up(
        "omero.fs.blacklist",
        "blacklist",
        Items(),
        "",
        _U,
        "',' list of subdirectories to ignore.",
    ),
    _up(
        "omero.fs.timeout",
        "timeout",
        Seconds(),
        "0.0",
        _U,
        "One-shot monitor timeout; unused by DropBox (kept for compatibility).",
    ),
    _up(
        "omero.fs.blockSize",
        "block_size",
        Int(),
        "0",
        _U,
        "Maximum number of events per notification; 0 means unlimited.",
    ),
    _up(
        "omero.fs.ignoreSysFiles",
        "ignore_sys_files",
        Bool(),
        "True",
        _U,
        "Ignore system files (dotfiles, 'untitled folder', ...).",
        note="An empty value means the default True; upstream read it as False.",
    ),
    _up(
        "omero.fs.ignoreDirEvents",
        "ignore_dir_events",
        Bool(),
        "True",
        _U,
        "Do not report directory creation and modification.",
        note="An empty value means the default True; upstream read it as False.",
    ),
    _up(
        "omero.fs.dirImportWait",
        "dir_import_wait",
        Seconds(),
        "60",
        _U,
        "Seconds a fileset must be quiet before it is imported (restarts on activity).",
    ),
    _up(
        "omero.fs.fileBatch",
        "file_batch",
        Int(minimum=1),
        "10",
        _U,
        "Maximum number of files handed to fileset detection at once.",
    ),
    _up(
        "omero.fs.throttleImport",
        "throttle_import",
        Seconds(),
        "10",
        _U,
        "Minimum seconds between the starts of two imports.",
        code="5",
        template="10",
        note="Default is the template's 10, not the code's 5: every upstream install "
        "read templates.xml, so 10 is what sites actually ran with and what the "
        "documentation promises.",
    ),
    _up(
        "omero.fs.timeToLive",
        "time_to_live",
        Int(unit="seconds", scale=1000),
        "0",
        _U,
        "Import session time-to-live in seconds (0: server default); stored as ms.",
        attr="time_to_live_ms",
    ),
    _up(
        "omero.fs.timeToIdle",
        "time_to_idle",
        Int(unit="seconds", scale=1000),
        "600",
        _U,
        "Import session time-to-idle in seconds; stored as ms.",
        attr="time_to_idle_ms",
    ),
    _up(
        "omero.fs.readers",
        "readers",
        Readers(),
        "",
        _U,
        "Bio-Formats readers file restricting fileset detection; used only if it exists.",
        note="A path that is not an existing file is ignored, as upstream, but logged.",
    ),
    _up(
        "omero.fs.importArgs",
        "import_args",
        Args(),
        "",
        _U,
        "Extra importer arguments, split like a shell would (no shell is run).",
        note="Cannot contain ';' in property syntax (it separates users); use TOML.",
    ),
    _up("omero.fs.host", "host", Text(), "localhost", _G, "OMERO server host for imports."),
    _up(
        "omero.fs.port",
        "port",
        Int(minimum=1, maximum=65535),
        "4064",
        _G,
        "OMERO server port for imports (the Glacier2 SSL router port).",
        template="${ROUTERPORT}",
    ),
    _up(
        "omero.fs.maxRetries",
        "max_retries",
        Int(),
        "5",
        _G,
        "Attempts to get the internal root session at startup.",
    ),
    _up(
        "omero.fs.retryInterval",
        "retry_interval",
        Seconds(),
        "3",
        _G,
        "Seconds between those attempts.",
    ),
    _up(
        "omero.fs.defaultDropBoxDir",
        "default_dropbox_dir",
        Text(),
        "DropBox",
        _G,
        "Subdirectory of omero.data.dir watched by the 'default' import user.",
    ),
    Property(
        "omero.data.dir",
        "data_dir",
        PathKind(),
        "/OMERO",
        _G,
        "OMERO data directory (the server's omero.data.dir).",
        upstream_code="/OMERO",
        note="Upstream asked the server (IConfig) for it; here it is a setting, so the "
        "service can start without a server round trip.",
    ),
    _up(
        "omero.fs.platformCheck",
        "platform_check",
        Bool(),
        "True",
        _G,
        "Refuse to run on untested platforms.",
        note="Read as a boolean; upstream disabled it only for the exact string False.",
    ),
    _plumbing("serverIdString", "server_id_string", "MonitorServer", "MonitorServer identity."),
    _plumbing("clientIdString", "client_id_string", "DropBox", "Prefix of client servant ids."),
    _plumbing("clientAdapterName", "client_adapter_name", "omerofs.DropBox", "DropBox object adapter."),
    _plumbing(
        "monitorServerIdString",
        "monitor_server_id_string",
        "MonitorServer",
        "Servant identity inside MonitorServer.",
    ),
    _plumbing(
        "monitorServerAdapterName",
        "monitor_server_adapter_name",
        "omerofs.MonitorServer",
        "MonitorServer object adapter.",
    ),
    _plumbing("fileServerIdString", "file_server_id_string", "FileServer", "FileServer identity."),
    _plumbing(
        "fileServerAdapterName",
        "file_server_adapter_name",
        "omerofs.FileServer",
        "FileServer object adapter.",
    ),
    _ng(
        "settle",
        "settle",
        Seconds(),
        "2.0",
        "Seconds a file must be unchanged before it is ready, where the backend has no "
        "close-after-write event (polling, FSEvents, Windows).",
    ),
    _ng(
        "completeWait",
        "complete_wait",
        Seconds(),
        "5",
        "Seconds a fileset whose members are all present waits before import (instead of "
        "the full dirImportWait).",
        note="Long enough to re-detect a late companion file that changes the grouping, "
        "short enough that users do not wait dirImportWait (60 s) for complete data.",
    ),
    _ng(
        "maxConcurrentImports",
        "max_concurrent_imports",
        Int(minimum=1),
        "2",
        "Imports running at the same time (upstream: unbounded).",
    ),
    _ng(
        "maxAttempts",
        "max_attempts",
        Int(minimum=1),
        "5",
        "Attempts per fileset before it is marked failed (upstream: 1).",
    ),
    _ng(
        "retryBackoff",
        "retry_backoff",
        Seconds(),
        "30",
        "Seconds before the first retry; doubles per attempt, capped at 1 hour.",
    ),
    _ng(
        "importTimeout",
        "import_timeout",
        Seconds(),
        "43200",
        "Seconds after which a running import is killed (its whole process group) and retried; "
        "0 means no limit.",
        note="12 hours by default (upstream and earlier versions: no limit), so that a hung importer "
        "cannot hold an import slot for ever; a single import longer than that (terabytes copied "
        "over a slow link) needs a larger value.",
    ),
    _ng(
        "backend",
        "backend",
        Choice(BACKENDS, "backend"),
        "auto",
        "Watch backend: native kernel events, polling (NFS/SMB), auto, notify (the watcher macOS and "
        "Windows use; on Linux only to test that path, prefer native), or fanotify (one filesystem "
        "mark instead of a watch per directory; needs CAP_SYS_ADMIN, which auto uses when held).",
    ),
    _ng(
        "pollInterval",
        "poll_interval",
        Seconds(positive=True),
        "5",
        "Seconds between scans with the poll backend.",
    ),
    _ng(
        "requireOwner",
        "require_owner",
        Bool(),
        "false",
        "Import a file only if its owner (uid) matches the import user's directory owner.",
    ),
    _ng(
        "bioformatsOracle",
        "bioformats_oracle",
        Bool(),
        "false",
        "Ask Bio-Formats (one long-lived JVM) which files a key file uses, for the multi-file formats "
        "the rule table cannot decide (docs/formats.md); needs Java and the Bio-Formats jar.",
    ),
    _ng(
        "bioformatsOracleTimeout",
        "bioformats_oracle_timeout",
        Seconds(positive=True),
        "10",
        "Seconds one answer of the Bio-Formats oracle may take; then its JVM is restarted and the "
        "rule table decides.",
    ),
    _ng(
        "afterImport",
        "after_import",
        Choice(AFTER_IMPORT_ACTIONS, "after-import action"),
        "keep",
        "What happens to a fileset's files once its import is journaled: keep them, move them to "
        "omero.fs.ng.importedArea (keeping their path below the watch directory), or delete them. "
        "A file that changed since it was imported is always kept.",
        note="Refused at start-up with --transfer=ln_s (OMERO keeps only a link to the file) and "
        "with ln_rm/cp_rm/upload_rm (the importer removes the files itself).",
    ),
    _ng(
        "importedArea",
        "imported_area",
        PathKind(),
        "",
        "Folder that afterImport=move moves imported files to; outside every watch directory.",
    ),
    _ng(
        "userReport",
        "user_report",
        Bool(),
        "false",
        "Keep DROPBOX-STATUS.txt and DROPBOX-STATUS.json in each user's top folder: her recent "
        "filesets, imported (with the OMERO.web link under --omero-web), waiting (for what, until "
        "when) or failed (why, and what to do). Files of those names there are never imported.",
        note="Off by default because upstream never writes into the users' folders.",
    ),
    _ng(
        "folderSettings",
        "folder_settings",
        Bool(),
        "true",
        "Read dropbox.toml files in the users' folders: the target (dataset, project + dataset, "
        "screen or a -T template), OMERO group, key-value pairs and tags of the filesets below "
        "(docs/for-scientists.md). A bad file keeps its folder's filesets waiting with the reason.",
        note="Files of that name are never imported, whether this is on or off.",
    ),
    _ng(
        "folderImportArgs",
        "folder_import_args",
        Items(),
        "",
        "Import options (such as --skip,--checksum-algorithm) a dropbox.toml may add with "
        "import_args; any other option there is refused. Empty: none.",
    ),
    _ng(
        "queue",
        "queue",
        Dsn(),
        "",
        "PostgreSQL database (postgresql://user@host/db) holding the import queue shared by several "
        "hosts: watcher nodes enqueue there and `omero-dropbox worker` processes import from it "
        '(README, "More than one host"). Empty: the queue stays in the local SQLite journal.',
        note="`run --queue DSN` wins over it. A password is better kept in ~/.pgpass or PGPASSWORD "
        "than here; `config show` hides it.",
    ),
    _ng(
        "logDir",
        "log_dir",
        PathKind(),
        "",
        "Directory for DropBox.log and MonitorServer.log; empty: log to stderr only.",
    ),
)

_BY_NAME = {prop.name: prop for prop in PROPERTIES}
_BY_KEY = {prop.key: prop for prop in PROPERTIES}


def property_by_name(name: str) -> Property | None:
    """The schema row for a full property name such as ``omero.fs.dirImportWait``."""
    return _BY_NAME.get(name)


def property_by_key(key: str) -> Property | None:
    """The schema row for a TOML key such as ``dir_import_wait``."""
    return _BY_KEY.get(key)


# --------------------------------------------------------------------------- docs


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if text else "—"


def _code(text: str | None) -> str:
    if text is None:
        return "—"
    return f"`{text}`" if text else '`""`'


def property_reference_markdown() -> str:
    """The property reference as Markdown, generated from :data:`PROPERTIES`."""
    lines = [
        "| Property | TOML key | Scope | Type | Default | Upstream code / template | Description |",
        "|---|---|---|---|---|---|---|",
    ]
    for prop in PROPERTIES:
        upstream = "—"
        if prop.is_upstream:
            upstream = f"{_code(prop.upstream_code)} / {_code(prop.upstream_template)}"
        kind = prop.kind
        type_name = f"one of {kind.allowed()}" if isinstance(kind, Choice) else kind.type_name
        cells = [
            f"`{prop.name}`",
            f"`{prop.key}`",
            prop.scope.value,
            type_name,
            _code(prop.default),
            upstream,
            prop.doc,
        ]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    lines += ["", "Notes (differences from upstream and why):", ""]
    lines += [f"- `{prop.name}`: {prop.note}" for prop in PROPERTIES if prop.note]
    return "\n".join(lines) + "\n"
