"""Configuration: upstream ``omero.fs.*`` properties from templates.xml, TOML and ``-D``.

Every setting is a row of :data:`omero_dropbox.properties.PROPERTIES` (name, type,
defaults, scope, documentation); :func:`property_reference_markdown` prints that table.

Sources, lowest to highest precedence (a higher one wins):

1. code defaults (the table);
2. ``templates.xml``: the ``<properties id="DropBox">`` block of an IceGrid templates file
   (or a file that is only that block), then the properties set directly on the
   ``DropBoxTemplate`` server. IceGrid ``${VAR}`` references are resolved from
   ``<variable>`` elements of the same file; one that cannot be resolved (typically
   ``port=${ROUTERPORT}``) is skipped with a log line. The ``Profile`` block
   (``omero config``) is not read: pass those values with ``-D``;
3. a TOML file (shape below);
4. ``-D omero.fs.NAME=VALUE`` overrides, like ``omero config set``, which wins upstream.
   Later ``-D`` of the same name wins.

Property syntax (templates.xml and ``-D``) is upstream's:

* ``;`` separates per-user entries: entry *i* belongs to ``importUsers`` entry *i*;
* a per-user value without any ``;`` applies to every user (``-D omero.fs.whitelist=.tif``
  with ``importUsers=amy;zak`` gives both ``.tif``), as the same key in TOML ``[dropbox]``
  does. Upstream gave it to the first user only (and crashed for ``eventTypes``,
  ``whitelist`` and ``blacklist``); write ``.tif;`` for "the first user only";
* ``,`` separates list items; every entry and item is whitespace-stripped;
* an empty or missing entry sets nothing, so the next source down applies and in the end
  the default. Within one source that is upstream's "empty means default"; across sources
  it means a ``-D`` that leaves an entry blank keeps that user's templates.xml value;
* a per-user list may be shorter than ``importUsers`` (missing entries get the default;
  upstream aborted with IndexError for eventTypes, whitelist and blacklist);
* blank ``importUsers`` entries are skipped, keeping the positions of the others, so in
  ``importUsers=amy;;zak`` zak is entry 3 and reads element 3 of every other list;
* for user ``default`` an empty ``watchDir`` means
  ``<omero.data.dir>/<omero.fs.defaultDropBoxDir>`` (``omero.data.dir`` is a setting
  here, default ``/OMERO``); any other user must be given a ``watchDir``.

``default`` in ``importUsers`` is all-users mode: the first path component under the
watch dir names the OMERO user (see :mod:`omero_dropbox.ownership`). Any other name
imports everything under its own ``watchDir`` as that user.

The TOML layout (``[dropbox]``, ``[users.NAME]``) is :data:`TOML_LAYOUT` (an example) and
:data:`TOML_RULES`; ``docs/reference.md`` prints both.

Every bad value raises :class:`ConfigError` naming the property, the value, the user
entry where there is one, and what is allowed; see :mod:`omero_dropbox.properties` for
the upstream quirks this fixes.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from omero_dropbox.after_import import UnsafeCombination, check_after_import
from omero_dropbox.choices import (
    AFTER_IMPORT_ACTIONS,
    BACKENDS,
    PATH_MODES,
    WATCH_EVENT_TYPES,
    AfterImport,
    Backend,
    PathMode,
    WatchEventType,
)
from omero_dropbox.properties import (
    DEFAULT_USER,
    PROPERTIES,
    RETRY_BACKOFF_CAP,
    ConfigError,
    Property,
    Scope,
    Users,
    Where,
    property_by_key,
    property_by_name,
    property_reference_markdown,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "DEFAULT_USER",
    "PROPERTIES",
    "RETRY_BACKOFF_CAP",
    "TOML_LAYOUT",
    "TOML_RULES",
    "ConfigError",
    "DropBoxConfig",
    "UserMonitorConfig",
    "format_config",
    "load_config",
    "parse_override",
    "property_reference_markdown",
]

_log = logging.getLogger(__name__)

#: An example TOML file (``--config``): keys are the "TOML key" column of the reference.
TOML_LAYOUT = """\
[dropbox]                         # global settings, and per-user defaults
import_users = ["default", "amy"] # optional; else the [users.*] tables, in file order
host = "omero.example.org"
port = 4064
data_dir = "/OMERO"
dir_import_wait = 60              # a per-user key here applies to every user
max_concurrent_imports = 2        # our own settings (omero.fs.ng.*) live here too

[users.default]                   # <data_dir>/<default_dropbox_dir>/<user>/...
event_types = ["Creation", "Modification"]

[users.amy]                       # everything under watch_dir is imported as amy
watch_dir = "/data/amy-drop"
dir_import_wait = 30
import_args = "--transfer=ln_rm -T 'Dataset:name:From DropBox'"  # or an array
"""

#: How a TOML file is read (Markdown; printed under :data:`TOML_LAYOUT` in the reference).
TOML_RULES = """\
Two tables only: `[dropbox]` holds global settings and per-user defaults (a per-user key
there applies to every user), `[users.NAME]` holds one import user's per-user keys (a global
key there is an error). Per user, `[users.NAME]` wins over `[dropbox]`; both win over
templates.xml and lose to `-D`. Without `import_users`, the users are the `[users.NAME]`
tables in file order; with it, a `[users.NAME]` for a user not listed is an error (when
`-D omero.fs.importUsers` names the users, such a table is ignored with a warning).
Values have their TOML types (numbers, booleans, arrays of strings). A string is accepted
for any key and read like one property-syntax entry (`"Creation,Modification"`, `"yes"`);
an empty string sets nothing. In TOML `import_args` may contain `;`. Unknown tables, keys
and `-D` names are errors that suggest the closest known name.
"""

PathArg = str | os.PathLike[str]

_IMPORT_USERS = "omero.fs.importUsers"


# --------------------------------------------------------------------------- results


def _check_choices(
    name: str, given: Sequence[object], allowed: Sequence[str], user: str | None = None
) -> None:
    for value in given:
        if value not in allowed:
            who = f" for user '{user}'" if user is not None else ""
            raise ConfigError(f"{name}: unknown value {value!r}{who}; allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class UserMonitorConfig:
    """The resolved settings of one ``importUsers`` entry (one watched directory)."""

    import_user: str  # "default" or an OMERO user name
    watch_dir: Path
    event_types: tuple[WatchEventType, ...]
    path_mode: PathMode
    whitelist: tuple[str, ...]
    blacklist: tuple[str, ...]
    timeout: float
    block_size: int
    ignore_sys_files: bool
    ignore_dir_events: bool
    dir_import_wait: float
    file_batch: int
    throttle_import: float
    time_to_live_ms: int  # seconds * 1000, as upstream
    time_to_idle_ms: int
    readers: Path | None  # only an existing file, as upstream
    import_args: tuple[str, ...]  # shlex-split

    def __post_init__(self) -> None:
        # The loader has checked these already; this catches code that builds or replace()s one.
        _check_choices("omero.fs.eventTypes", self.event_types, WATCH_EVENT_TYPES, self.import_user)
        _check_choices("omero.fs.pathMode", (self.path_mode,), PATH_MODES, self.import_user)

    @property
    def is_default(self) -> bool:
        """True for all-users mode (``<watch_dir>/<user>/...``)."""
        return self.import_user == DEFAULT_USER


@dataclass(frozen=True)
class DropBoxConfig:
    """The whole resolved configuration. ``sources`` says where each value came from."""

    users: tuple[UserMonitorConfig, ...]
    host: str
    port: int
    max_retries: int
    retry_interval: float
    default_dropbox_dir: str
    data_dir: Path
    platform_check: bool
    server_id_string: str
    client_id_string: str
    client_adapter_name: str
    monitor_server_id_string: str
    monitor_server_adapter_name: str
    file_server_id_string: str
    file_server_adapter_name: str
    settle: float
    complete_wait: float
    max_concurrent_imports: int
    max_attempts: int
    retry_backoff: float
    import_timeout: float
    backend: Backend
    poll_interval: float
    require_owner: bool
    bioformats_oracle: bool
    bioformats_oracle_timeout: float
    after_import: AfterImport
    imported_area: Path | None
    user_report: bool
    folder_settings: bool
    folder_import_args: tuple[str, ...]
    log_dir: Path | None
    queue: str
    # "omero.fs.host" or "omero.fs.watchDir[amy]" -> "default" | "templates.xml" |
    # "toml" | "-D" | "derived". Not part of equality: it is provenance, not config.
    sources: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )

    def __post_init__(self) -> None:
        _check_choices("omero.fs.ng.backend", (self.backend,), BACKENDS)
        _check_choices("omero.fs.ng.afterImport", (self.after_import,), AFTER_IMPORT_ACTIONS)
        _check_after_import(self)
        _check_folder_import_args(self)

    @property
    def import_users(self) -> tuple[str, ...]:
        return tuple(user.import_user for user in self.users)


# --------------------------------------------------------------------------- -D


def parse_override(text: str) -> tuple[str, str]:
    """Split ``"omero.fs.NAME=VALUE"`` at the first ``=``; the value is kept verbatim.

    Only the syntax is checked here; :func:`load_config` checks the name.
    """
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name or any(char.isspace() for char in name):
        raise ConfigError(f"-D {text!r}: expected NAME=VALUE, e.g. -D omero.fs.dirImportWait=30")
    return name, value


def _normal(name: str) -> str:
    """A spelling-insensitive form: "omero.fs.dirImportWait" ~ "dir_import_wait"."""
    low = name.lower()
    for prefix in ("omero.fs.ng.", "omero.fs.", "omero."):
        if low.startswith(prefix):
            low = low[len(prefix) :]
            break
    return re.sub(r"[^a-z0-9]", "", low)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    by_normal = {_normal(choice): choice for choice in choices}
    hit = by_normal.get(_normal(word))
    if hit is None:
        close = difflib.get_close_matches(_normal(word), list(by_normal), n=1, cutoff=0.6)
        hit = by_normal[close[0]] if close else None
    return f"; did you mean '{hit}'?" if hit else ""


def _read_overrides(overrides: Sequence[str]) -> dict[str, str]:
    props: dict[str, str] = {}
    for text in overrides:
        name, value = parse_override(text)
        if property_by_name(name) is None:
            hint = _did_you_mean(name, (p.name for p in PROPERTIES))
            raise ConfigError(f"{name}: unknown property (source: -D){hint}")
        props[name] = value  # a later -D wins
    return props


# --------------------------------------------------------------------------- files


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None


def _read_templates(path: Path) -> dict[str, str]:
    """The DropBox properties of an IceGrid templates file, in IceGrid order."""
    try:
        root = ET.fromstring(_read_bytes(path))
    except ET.ParseError as exc:  # the message carries "line N, column M"
        raise ConfigError(f"{path}: malformed XML: {exc}") from None
    blocks = [el for el in root.iter("properties") if el.get("id") == "DropBox"]
    for template in root.iter("server-template"):
        if template.get("id") == "DropBoxTemplate":
            blocks += [el for server in template.iter("server") for el in server.findall("properties")]
    if not blocks:
        raise ConfigError(
            f'{path}: no <properties id="DropBox"> block; expected an IceGrid templates.xml '
            "(etc/grid/templates.xml) or a file holding just that block"
        )
    variables = {
        str(var.get("name")): var.get("value", "") for var in root.iter("variable") if var.get("name")
    }
    props: dict[str, str] = {}
    for block in blocks:
        for element in block.findall("property"):
            _take_template_property(path, element, variables, props)
    return props


def _take_template_property(
    path: Path, element: ET.Element, variables: Mapping[str, str], props: dict[str, str]
) -> None:
    name = element.get("name")
    if not name:
        raise ConfigError(f"{path}: a <property> element has no name attribute")
    if property_by_name(name) is None:
        # templates.xml is the server's file: other services' properties are normal,
        # an unknown omero.fs.* one is probably a typo worth a warning, not a crash.
        if name.startswith("omero.fs."):
            hint = _did_you_mean(name, (p.name for p in PROPERTIES))
            _log.warning("%s: unknown property %s ignored%s", path, name, hint)
        return
    value = re.sub(
        r"\$\{([^}]*)\}", lambda m: variables.get(m.group(1), m.group(0)), element.get("value", "")
    )
    if "${" in value:
        _log.info(
            "%s: %s=%r uses an IceGrid variable not defined in that file; using the default "
            "(set it with -D %s=...)",
            path,
            name,
            value,
            name,
        )
        return
    props[name] = value


@dataclass
class _Toml:
    """The validated content of a TOML file."""

    path: Path | None = None
    base: dict[str, object] = field(default_factory=dict)
    users: dict[str, dict[str, object]] = field(default_factory=dict)
    import_users: object = None  # the raw [dropbox] import_users value, if any


def _read_toml(path: Path) -> _Toml:
    try:
        data = tomllib.loads(_read_bytes(path).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: not UTF-8 ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:  # the message carries "line N, column M"
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    for key in data:
        if key not in ("dropbox", "users"):
            hint = _did_you_mean(key, ("dropbox", "users"))
            raise ConfigError(f"{path}: unknown table [{key}]; allowed: [dropbox], [users.NAME]{hint}")
    toml = _Toml(path)
    toml.base = _table(path, data.get("dropbox", {}), "[dropbox]")
    toml.import_users = toml.base.pop("import_users", None)
    _check_keys(path, "[dropbox]", toml.base, per_user_only=False)
    users = _table(path, data.get("users", {}), "[users]")
    for raw_name, table in users.items():
        label, name = f"[users.{raw_name}]", raw_name.strip()
        if not name or name in toml.users:  # blank, or " amy " next to "amy"
            raise ConfigError(f"{path}: {label}: empty or duplicate user name {raw_name!r}")
        toml.users[name] = _table(path, table, label, "e.g. [users.amy] watch_dir = ...")
        _check_keys(path, label, toml.users[name], per_user_only=True)
    return toml


def _table(path: Path, value: object, label: str, example: str = "") -> dict[str, object]:
    if not isinstance(value, dict):
        hint = f" ({example})" if example else ""
        raise ConfigError(f"{path}: {label} must be a table, not {value!r}{hint}")
    return dict(value)


def _check_keys(path: Path, label: str, table: Mapping[str, object], *, per_user_only: bool) -> None:
    for key in table:
        prop = property_by_key(key)
        if prop is None:
            keys = [p.key for p in PROPERTIES if not (per_user_only and p.scope is Scope.GLOBAL)]
            hint = _did_you_mean(key, keys)
            raise ConfigError(f"{path}: {label} unknown key '{key}'{hint}")
        if per_user_only and prop.scope is Scope.GLOBAL:
            raise ConfigError(
                f"{path}: {label} '{key}' ({prop.name}) is a global setting; set it in [dropbox]"
            )


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class _User:
    name: str
    entry: int  # 1-based position in the importUsers list that named it


@dataclass(frozen=True)
class _Value:
    raw: object  # a stripped property-syntax string, or a TOML value
    source: str  # for error messages
    origin: str  # for format_config
    toml: bool = False


def _entry(text: str | None, entry: int) -> str | None:
    """Element ``entry`` (1-based) of a ``;`` list, stripped; None if missing or empty.

    A value without ``;`` is every user's (as a TOML ``[dropbox]`` key), not entry 1's only.
    """
    if text is None:
        return None
    if ";" not in text:
        return text.strip() or None
    elements = text.split(";")
    value = elements[entry - 1].strip() if entry <= len(elements) else ""
    return value or None


def _is_set(raw: object) -> bool:
    return not isinstance(raw, str) or bool(raw.strip())


@dataclass(frozen=True)
class _Sources:
    templates: Mapping[str, str]
    templates_path: Path | None
    toml: _Toml
    overrides: Mapping[str, str]

    def _text(self, layer: Mapping[str, str], name: str, user: _User | None) -> str | None:
        text = layer.get(name)
        if user is None:
            return text.strip() if text is not None and text.strip() else None
        return _entry(text, user.entry)

    def winner(self, prop: Property, user: _User | None) -> _Value | None:
        """The highest-precedence value that sets ``prop`` (for ``user``), if any."""
        text = self._text(self.overrides, prop.name, user)
        if text is not None:
            return _Value(text, f"-D {prop.name}", "-D")
        tables = [("[dropbox]", self.toml.base)]
        if user is not None and user.name in self.toml.users:
            tables.insert(0, (f"[users.{user.name}]", self.toml.users[user.name]))
        for label, table in tables:
            if prop.key in table and _is_set(table[prop.key]):
                where = f"{self.toml.path} {label} {prop.key}"
                return _Value(table[prop.key], where, "toml", toml=True)
        text = self._text(self.templates, prop.name, user)
        if text is not None:
            return _Value(text, str(self.templates_path), "templates.xml")
        return None

    def resolve(self, prop: Property, user: _User | None) -> tuple[Any, str]:
        """The parsed value of ``prop`` (for ``user``) and where it came from."""
        value = self.winner(prop, user)
        if value is None:
            if not prop.default:
                return prop.kind.empty(), "default"
            return prop.kind.parse_text(prop.default, Where(prop.name, "default")), "default"
        where = Where(prop.name, value.source)
        if user is not None:
            where = Where(prop.name, value.source, user.name, user.entry)
        if _has_nul(value.raw):
            # No path, user name or command argument can hold one; the OS would refuse it later
            # with a bare "embedded null byte".
            raise where.error("the value contains a NUL character (\\u0000); remove it", prop.kind.allowed())
        if value.toml:
            return prop.kind.parse_toml(value.raw, where), value.origin
        return prop.kind.parse_text(str(value.raw), where), value.origin


def _has_nul(raw: object) -> bool:
    if isinstance(raw, str):
        return "\x00" in raw
    if isinstance(raw, (list, tuple)):
        return any(_has_nul(item) for item in raw)
    return False


def _users_from_text(text: str, source: str) -> list[_User]:
    names = [(entry, name.strip()) for entry, name in enumerate(text.split(";"), 1)]
    return _unique_users([_User(name, entry) for entry, name in names if name], source)


def _users_from_toml(value: object, source: str) -> list[_User]:
    where = Where(_IMPORT_USERS, source)
    if isinstance(value, str):
        return _users_from_text(value, source)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise where.error(f"{value!r} is not a list of names", "an array of user names")
    users = [_User(str(name).strip(), entry) for entry, name in enumerate(value, 1)]
    return _unique_users([user for user in users if user.name], source)


def _unique_users(users: list[_User], source: str) -> list[_User]:
    seen: dict[str, int] = {}
    for user in users:
        if user.name in seen:
            problem = f"user '{user.name}' is listed twice (entries {seen[user.name]} and {user.entry})"
            raise Where(_IMPORT_USERS, source).error(problem, "each user once")
        seen[user.name] = user.entry
    return users


def _resolve_users(sources: _Sources) -> tuple[list[_User], str]:
    """The import users from the highest source that names any, and its origin."""
    override = sources.overrides.get(_IMPORT_USERS)
    if override is not None and (users := _users_from_text(override, f"-D {_IMPORT_USERS}")):
        return users, "-D"
    toml = sources.toml
    if toml.import_users is not None:
        users = _users_from_toml(toml.import_users, f"{toml.path} [dropbox] import_users")
        if users:
            return users, "toml"
    elif toml.users:  # no explicit list: the [users.X] tables, in file order
        return [_User(name, entry) for entry, name in enumerate(toml.users, 1)], "toml"
    template = sources.templates.get(_IMPORT_USERS)
    if template is not None and (users := _users_from_text(template, str(sources.templates_path))):
        return users, "templates.xml"
    return [_User(DEFAULT_USER, 1)], "default"


def _check_toml_users(sources: _Sources, users: Sequence[_User], origin: str) -> None:
    names = {user.name for user in users}
    for name in sources.toml.users:
        if name in names:
            continue
        if origin == "toml":  # the same file lists users and configures another one
            raise ConfigError(
                f"{sources.toml.path}: [users.{name}] configures a user who is not in "
                f"[dropbox] import_users ({', '.join(sorted(names))})"
            )
        _log.warning(
            "%s: [users.%s] ignored: %s is not in %s (set by %s)",
            sources.toml.path,
            name,
            name,
            _IMPORT_USERS,
            origin,
        )


def _warn_extra_entries(sources: _Sources, users: Sequence[_User]) -> None:
    """Per-user lists longer than importUsers: upstream ignored the extra entries too."""
    last = max(user.entry for user in users)
    layers = (("-D", sources.overrides), (str(sources.templates_path), sources.templates))
    for label, layer in layers:
        for prop in PROPERTIES:
            text = layer.get(prop.name)
            if prop.scope is not Scope.USER or text is None:
                continue
            extra = [element for element in text.split(";")[last:] if element.strip()]
            if extra:
                _log.warning(
                    "%s: entries after entry %d ignored (%r): %s has only %d entries (source: %s)",
                    prop.name,
                    last,
                    ";".join(extra),
                    _IMPORT_USERS,
                    last,
                    label,
                )


def _build_user(
    sources: _Sources, user: _User, glob: Mapping[str, Any], origins: dict[str, str]
) -> UserMonitorConfig:
    values: dict[str, Any] = {"import_user": user.name}
    for prop in PROPERTIES:
        if prop.scope is Scope.USER:
            values[prop.attr], origins[f"{prop.name}[{user.name}]"] = sources.resolve(prop, user)
    if values["watch_dir"] is None:
        if user.name != DEFAULT_USER:
            where = Where("omero.fs.watchDir", "no source sets it", user.name, user.entry)
            raise where.error(
                "empty value ''",
                "a directory path (only user 'default' has a default location, "
                "<omero.data.dir>/<omero.fs.defaultDropBoxDir>)",
            )
        values["watch_dir"] = Path(glob["data_dir"]) / str(glob["default_dropbox_dir"])
        origins[f"omero.fs.watchDir[{user.name}]"] = "derived"
    # Relative directories are taken from the current directory once, here, so that
    # every later comparison with the watcher's absolute event paths is exact.
    values["watch_dir"] = Path(os.path.abspath(values["watch_dir"]))
    return UserMonitorConfig(**values)


def _check_distinct_dirs(monitors: Sequence[UserMonitorConfig], users: Sequence[_User]) -> None:
    seen: dict[str, _User] = {}
    for monitor, user in zip(monitors, users, strict=True):
        key = os.path.normpath(monitor.watch_dir)
        if key in seen:
            first = seen[key]
            problem = (
                f"'{monitor.watch_dir}' is watched for both user '{first.name}' "
                f"(entry {first.entry}) and user '{user.name}' (entry {user.entry})"
            )
            raise ConfigError(f"omero.fs.watchDir: {problem}; allowed: a different directory per import user")
        seen[key] = user


def _check_after_import(config: DropBoxConfig) -> None:
    """Refuse an after-import action that would lose data with some user's import arguments."""
    area = None if config.imported_area is None else str(config.imported_area)
    watch_dirs = [str(u.watch_dir) for u in config.users]
    try:
        for user in config.users or ():
            check_after_import(config.after_import, user.import_args, area, watch_dirs)
        if not config.users:
            check_after_import(config.after_import, (), area, watch_dirs)
    except UnsafeCombination as exc:
        raise ConfigError(str(exc)) from None


_LONG_OPTION = re.compile(r"^--[A-Za-z][A-Za-z0-9-]*$")


def _check_folder_import_args(config: DropBoxConfig) -> None:
    """The options a lab user's dropbox.toml may add: long options only, and never one that
    could make the after-import action lose data."""
    for option in config.folder_import_args:
        if not _LONG_OPTION.match(option):
            raise ConfigError(
                f"omero.fs.ng.folderImportArgs: {option!r} is not a long option name; "
                "allowed: names such as --skip or --checksum-algorithm, without values"
            )
        if option == "--transfer" and config.after_import != "keep":
            raise ConfigError(
                f"omero.fs.ng.folderImportArgs allows --transfer with omero.fs.ng.afterImport="
                f"{config.after_import}: a folder choosing --transfer=ln_s would leave OMERO a link "
                "to files that are then moved or deleted; remove --transfer or set afterImport=keep"
            )


def _resolve(sources: _Sources) -> DropBoxConfig:
    users, users_origin = _resolve_users(sources)
    _check_toml_users(sources, users, users_origin)
    _warn_extra_entries(sources, users)
    origins: dict[str, str] = {_IMPORT_USERS: users_origin}
    glob: dict[str, Any] = {}
    for prop in PROPERTIES:
        if prop.scope is Scope.GLOBAL and not isinstance(prop.kind, Users):
            glob[prop.attr], origins[prop.name] = sources.resolve(prop, None)
    monitors = [_build_user(sources, user, glob, origins) for user in users]
    _check_distinct_dirs(monitors, users)
    return DropBoxConfig(users=tuple(monitors), sources=MappingProxyType(origins), **glob)


def load_config(
    *,
    templates: PathArg | None = None,
    toml_file: PathArg | None = None,
    overrides: Sequence[str] = (),
) -> DropBoxConfig:
    """Read and validate the configuration; precedence defaults < templates < TOML < -D.

    Raises :class:`ConfigError` for a missing or malformed file, an unknown name or a
    bad value.
    """
    template_path = None if templates is None else Path(templates)
    sources = _Sources(
        templates={} if template_path is None else _read_templates(template_path),
        templates_path=template_path,
        toml=_Toml() if toml_file is None else _read_toml(Path(toml_file)),
        overrides=_read_overrides(overrides),
    )
    return _resolve(sources)


# --------------------------------------------------------------------------- display


def _rows(obj: object, scope: Scope, sources: Mapping[str, str], suffix: str) -> list[tuple[str, str, str]]:
    rows = []
    for prop in PROPERTIES:
        if prop.scope is scope and not isinstance(prop.kind, Users):
            text = prop.kind.to_text(getattr(obj, prop.attr))
            rows.append((prop.name, text or '""', sources.get(prop.name + suffix, "")))
    return rows


def format_config(config: DropBoxConfig) -> str:
    """The resolved configuration, global then per user, with each value's source.

    Values are written in property syntax, so any line can be pasted into ``-D``.
    """
    sources = config.sources
    users_text = ";".join(config.import_users)
    sections = [("Global settings", [(_IMPORT_USERS, users_text, sources.get(_IMPORT_USERS, ""))])]
    sections[0][1].extend(_rows(config, Scope.GLOBAL, sources, ""))
    for number, user in enumerate(config.users, 1):
        title = f"Import user '{user.import_user}' ({number} of {len(config.users)})"
        sections.append((title, _rows(user, Scope.USER, sources, f"[{user.import_user}]")))
    width = max(len(name) for _, rows in sections for name, _, _ in rows)
    lines: list[str] = []
    for title, rows in sections:
        lines.append(f"{title}:")
        for name, text, origin in rows:
            note = f"  ({origin})" if origin else ""
            lines.append(f"  {name.ljust(width)} = {text}{note}")
        lines.append("")
    return "\n".join(lines)
