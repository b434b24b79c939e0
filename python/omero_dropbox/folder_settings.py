"""Folder settings files (``dropbox.toml``): where a lab user's import lands, and what is attached.

A ``dropbox.toml`` may sit in any folder of a user's tree; it applies to that folder and to
every folder below it, and the nearest file wins, key by key. The files are written by lab
users, so each is read beneath the user's root without following links (:mod:`at_use`),
bounded in size and number of entries, and validated strictly: an unknown key, a wrong type
or an import argument the operator did not allow is a :class:`SettingsError` that names the
file, the key and the fix. A bad file never falls back to defaults: the caller keeps the
folder's filesets waiting with that reason.

What the settings mean for ``omero import`` (checked against the OMERO CLI documentation,
``import-target.rst``, and the Java importer's options):

- ``dataset`` alone -> ``-T Dataset:name:<dataset>`` (the importer creates it if missing);
- ``screen`` -> ``-T Screen:name:<screen>``;
- ``project`` + ``dataset`` -> the CLI cannot name a dataset inside a project, so the
  dataset is found or created in the project through omero-py before the import and passed
  as ``-d <id>`` (:attr:`ImportPlan.needs_container`);
- ``template`` -> ``-T`` with ``{folder}``, ``{parent}``, ``{user}`` filled from the path;
- ``key_values`` and ``tags`` are attached through omero-py after the import (the CLI's
  ``--annotation-*`` options only make comment annotations);
- ``group`` is the OMERO group the import session is opened in;
- ``import_args`` are ``--option[=value]`` items whose option the operator allowed.

The engine works out the plan when a fileset is due (:func:`plan_for`), journals it with
the fileset (:meth:`ImportPlan.to_json`), and a bad file keeps the fileset waiting with the
file's error as the reason, checked again when a settings file changes and every minute.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

from omero_dropbox.at_use import FileRefused, open_beneath
from omero_dropbox.journal import display_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "SETTINGS_NAME",
    "FolderSettings",
    "ImportPlan",
    "SettingsError",
    "SettingsLimits",
    "is_settings_file",
    "parse_settings",
    "plan_for",
    "read_settings",
    "without_target",
]

SETTINGS_NAME = "dropbox.toml"


def is_settings_file(path: str) -> bool:
    """Is ``path`` a folder settings file (read by the service, never imported)?"""
    return os.path.basename(path) == SETTINGS_NAME


@dataclass(frozen=True)
class SettingsLimits:
    """Bounds on what one lab-written settings file may hold."""

    # A real file is a few hundred bytes; 64 KiB holds hundreds of key-value pairs.
    max_bytes: int = 64 << 10
    max_key_values: int = 256
    max_tags: int = 64
    max_import_args: int = 16
    # OMERO names and map-annotation values are free text; these keep one file from making
    # every journal row and argv huge.
    max_name_chars: int = 255
    max_value_chars: int = 4096


DEFAULT_LIMITS = SettingsLimits()


class SettingsError(Exception):
    """A settings file that cannot be used; ``str()`` names the file, the key and the fix."""


@dataclass(frozen=True)
class FolderSettings:
    """What one ``dropbox.toml`` sets; ``None``/empty means "not set here" (inherited)."""

    source: str
    project: str | None = None
    dataset: str | None = None
    screen: str | None = None
    template: str | None = None
    group: str | None = None
    key_values: tuple[tuple[str, str], ...] = ()
    tags: tuple[str, ...] | None = None
    import_args: tuple[str, ...] | None = None

    def sets_target(self) -> bool:
        return any(v is not None for v in (self.project, self.dataset, self.screen, self.template))


@dataclass(frozen=True)
class ImportPlan:
    """The settings in force for one folder, merged nearest-wins, ready for the importer."""

    project: str | None = None
    dataset: str | None = None
    screen: str | None = None
    target: str | None = None  # a rendered -T value (from dataset, screen or template)
    group: str | None = None
    key_values: tuple[tuple[str, str], ...] = ()
    tags: tuple[str, ...] = ()
    import_args: tuple[str, ...] = ()
    sources: tuple[str, ...] = field(default=())

    @property
    def needs_container(self) -> bool:
        """Project + dataset: the dataset is resolved through omero-py before the import."""
        return self.project is not None and self.dataset is not None

    def cli_args(self, dataset_id: int | None = None) -> list[str]:
        """The ``omero import`` arguments this plan adds (``dataset_id`` for project + dataset)."""
        args: list[str] = []
        if self.needs_container:
            if dataset_id is None:
                raise ValueError("project + dataset needs the dataset id resolved before the import")
            args += ["-d", str(dataset_id)]
        elif self.target is not None:
            args += ["-T", self.target]
        return args + list(self.import_args)

    def to_json(self) -> str:
        """The journaled form (what was in force when the fileset was queued)."""
        data = {
            "project": self.project,
            "dataset": self.dataset,
            "screen": self.screen,
            "target": self.target,
            "group": self.group,
            "key_values": [list(kv) for kv in self.key_values],
            "tags": list(self.tags),
            "import_args": list(self.import_args),
            "sources": list(self.sources),
        }
        return json.dumps({k: v for k, v in data.items() if v not in (None, [])}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ImportPlan:
        """The plan journaled by :meth:`to_json` (``""``: none, the empty plan)."""
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            project=data.get("project"),
            dataset=data.get("dataset"),
            screen=data.get("screen"),
            target=data.get("target"),
            group=data.get("group"),
            key_values=tuple((str(k), str(v)) for k, v in data.get("key_values", [])),
            tags=tuple(str(t) for t in data.get("tags", [])),
            import_args=tuple(str(a) for a in data.get("import_args", [])),
            sources=tuple(str(s) for s in data.get("sources", [])),
        )

    @property
    def annotates(self) -> bool:
        """Key-value pairs or tags to attach after the import."""
        return bool(self.key_values or self.tags)

    @property
    def sets_target(self) -> bool:
        return self.target is not None or self.needs_container

    @property
    def empty(self) -> bool:
        return self == ImportPlan(sources=self.sources)


#: Site import arguments that choose a target; dropped when a folder's settings choose one.
_TARGET_OPTIONS = ("-T", "--target", "-d", "-r")


def without_target(args: Iterable[str]) -> list[str]:
    """``args`` without the options that choose the import target (``-T X``, ``-TX``,
    ``--target=X``, ``--target X``, ``-d ID``, ``-r ID``): a folder's own target replaces the
    site's, rather than leaving the importer two to choose from."""
    out: list[str] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        if arg in _TARGET_OPTIONS:
            i += 2  # the option and its value
            continue
        if arg.startswith("--target=") or (arg[:2] in ("-T", "-d", "-r") and len(arg) > 2 and arg[1] != "-"):
            i += 1
            continue
        out.append(arg)
        i += 1
    return out


_TOP_KEYS = {"target", "group", "key_values", "tags", "import_args"}
_TARGET_KEYS = {"project", "dataset", "screen", "template"}
_TEMPLATE_FIELDS = {"folder", "parent", "user"}
_TEMPLATE_PREFIX = re.compile(r"^(Dataset|Screen):[+\-@%]?name:")
_OPTION = re.compile(r"^--[A-Za-z][A-Za-z0-9-]*(=.*)?$")


def _bad(source: str, what: str) -> SettingsError:
    return SettingsError(f"{display_path(source)}: {what}")


def _text(source: str, key: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise _bad(source, f"{key} must be a text in quotes, not {type(value).__name__}")
    if not value.strip():
        raise _bad(source, f"{key} is empty; give a name or remove the line")
    if len(value) > limit:
        raise _bad(source, f"{key} is {len(value):,} characters, over the limit of {limit:,}")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value):
        raise _bad(source, f"{key} contains a control character; use plain text")
    return value


def _unknown(source: str, where: str, keys: Iterable[str], allowed: set[str]) -> None:
    extra = sorted(set(keys) - allowed)
    if extra:
        raise _bad(
            source,
            f"unknown {where}key {extra[0]!r}; allowed: {', '.join(sorted(allowed))}",
        )


def parse_settings(
    source: str,
    data: bytes,
    allowed_args: Iterable[str] = (),
    limits: SettingsLimits = DEFAULT_LIMITS,
) -> FolderSettings:
    """Parse and validate one settings file's bytes (``source`` names it in errors)."""
    if len(data) > limits.max_bytes:
        raise _bad(source, f"is {len(data):,} bytes, over the limit of {limits.max_bytes:,}; shorten it")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise _bad(source, "is not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise _bad(source, f"is not valid TOML ({exc}); fix that line") from None
    _unknown(source, "", doc, _TOP_KEYS)
    name = limits.max_name_chars
    target = doc.get("target", {})
    if not isinstance(target, dict):
        raise _bad(source, 'target must be a table: [target] with dataset = "..." below it')
    _unknown(source, "target ", target, _TARGET_KEYS)
    got = {k: _text(source, f"target.{k}", v, name) for k, v in target.items()}
    if "screen" in got and ({"project", "dataset"} & got.keys()):
        raise _bad(source, "target.screen cannot be combined with project or dataset; choose one")
    if "template" in got and len(got) > 1:
        raise _bad(source, "target.template replaces project, dataset and screen; give it alone")
    if "template" in got:
        _check_template(source, got["template"])
    group = _text(source, "group", doc["group"], name) if "group" in doc else None
    key_values = _key_values(source, doc.get("key_values", {}), limits)
    tags = _tags(source, doc["tags"], limits) if "tags" in doc else None
    args = _import_args(source, doc["import_args"], allowed_args, limits) if "import_args" in doc else None
    return FolderSettings(
        source=source,
        project=got.get("project"),
        dataset=got.get("dataset"),
        screen=got.get("screen"),
        template=got.get("template"),
        group=group,
        key_values=key_values,
        tags=tags,
        import_args=args,
    )


def _check_template(source: str, template: str) -> None:
    if not _TEMPLATE_PREFIX.match(template):
        raise _bad(
            source,
            f"target.template {template!r} must start with Dataset:name: or Screen:name: "
            '(for example "Dataset:name:{folder}")',
        )
    for fld in re.findall(r"\{([^{}]*)\}", template):
        if fld not in _TEMPLATE_FIELDS:
            raise _bad(
                source,
                f"target.template uses {{{fld}}}; allowed: "
                + ", ".join(f"{{{f}}}" for f in sorted(_TEMPLATE_FIELDS)),
            )


def _key_values(source: str, value: object, limits: SettingsLimits) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise _bad(source, 'key_values must be a table: [key_values] with "Key" = "value" lines')
    if len(value) > limits.max_key_values:
        raise _bad(
            source,
            f"key_values has {len(value):,} entries, over the limit of {limits.max_key_values}",
        )
    return tuple(
        (
            _text(source, f"key_values key {k!r}", k, limits.max_name_chars),
            _text(source, f"key_values.{k}", v, limits.max_value_chars),
        )
        for k, v in value.items()
    )


def _tags(source: str, value: object, limits: SettingsLimits) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _bad(source, 'tags must be a list: tags = ["live", "confocal"]')
    if len(value) > limits.max_tags:
        raise _bad(source, f"tags has {len(value)} entries, over the limit of {limits.max_tags}")
    return tuple(dict.fromkeys(_text(source, "tags", t, limits.max_name_chars) for t in value))


def _import_args(
    source: str, value: object, allowed_args: Iterable[str], limits: SettingsLimits
) -> tuple[str, ...]:
    allowed = set(allowed_args)
    if not isinstance(value, list):
        raise _bad(source, 'import_args must be a list: import_args = ["--skip=minmax"]')
    if len(value) > limits.max_import_args:
        raise _bad(
            source,
            f"import_args has {len(value)} entries, over the limit of {limits.max_import_args}",
        )
    out = []
    for item in value:
        arg = _text(source, "import_args", item, limits.max_value_chars)
        if not _OPTION.match(arg):
            raise _bad(source, f"import_args item {arg!r} must be one --option or --option=value")
        option = arg.split("=", 1)[0]
        if option not in allowed:
            shown = ", ".join(sorted(allowed)) if allowed else "none (the operator allows none)"
            raise _bad(
                source,
                f"import_args option {option} is not allowed here; allowed: {shown}. "
                "Ask the facility to add it to omero.fs.ng.folderImportArgs",
            )
        out.append(arg)
    return tuple(out)


def read_settings(
    trusted: str,
    root: str,
    path: str,
    allowed_args: Iterable[str] = (),
    limits: SettingsLimits = DEFAULT_LIMITS,
) -> FolderSettings | None:
    """Read one settings file beneath ``root`` (``None`` when there is none)."""
    try:
        with open_beneath(trusted, root, path) as (fd, st):
            if st.st_size > limits.max_bytes:
                raise _bad(
                    path, f"is {st.st_size:,} bytes, over the limit of {limits.max_bytes:,}; shorten it"
                )
            data = os.read(fd, limits.max_bytes + 1)
    except FileNotFoundError:
        return None
    except FileRefused as exc:
        raise SettingsError(f"{exc}; a settings file must be a plain file in the folder") from None
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            return None
        raise _bad(path, f"cannot be read ({exc.strerror}); make it readable by the service") from None
    return parse_settings(path, data, allowed_args, limits)


def _folders(root: str, folder: str) -> list[str]:
    """``root`` and each folder below it down to ``folder``, top first."""
    root = root.rstrip(os.sep) or os.sep
    rel = os.path.relpath(folder, root)
    if rel == ".":
        return [root]
    if rel.startswith(".."):
        raise SettingsError(f"{display_path(folder)} is not inside {display_path(root)}")
    out = [root]
    for part in rel.split(os.sep):
        out.append(os.path.join(out[-1], part))
    return out


def merge(settings: Iterable[FolderSettings], *, user: str, folder: str) -> ImportPlan:
    """Merge settings files, farthest first, nearest-wins per key, into one plan.

    A target is one choice: a nearer ``screen`` or ``template`` replaces every inherited
    target key; a nearer ``project`` or ``dataset`` replaces an inherited screen or template
    and keeps the other of the two (a project set at the top, a dataset per run folder).
    """
    project = dataset = screen = template = group = None
    key_values: dict[str, str] = {}
    tags: tuple[str, ...] = ()
    import_args: tuple[str, ...] = ()
    sources: list[str] = []
    for s in settings:
        sources.append(s.source)
        if s.template is not None:
            template, project, dataset, screen = s.template, None, None, None
        elif s.screen is not None:
            screen, project, dataset, template = s.screen, None, None, None
        elif s.project is not None or s.dataset is not None:
            screen = template = None
            project = s.project if s.project is not None else project
            dataset = s.dataset if s.dataset is not None else dataset
        group = s.group if s.group is not None else group
        key_values.update(s.key_values)
        tags = s.tags if s.tags is not None else tags
        import_args = s.import_args if s.import_args is not None else import_args
    if project is not None and dataset is None:
        raise SettingsError(
            f"{display_path(folder)}: target.project {project!r} is set but no target.dataset is; "
            'add dataset = "..." to a dropbox.toml in this folder or above (images go into a dataset)'
        )
    target = None
    if template is not None:
        target = _render(template, user=user, folder=folder)
    elif screen is not None:
        target = f"Screen:name:{screen}"
    elif dataset is not None and project is None:
        target = f"Dataset:name:{dataset}"
    return ImportPlan(
        project=project,
        dataset=dataset,
        screen=screen,
        target=target,
        group=group,
        key_values=tuple(key_values.items()),
        tags=tags,
        import_args=import_args,
        sources=tuple(sources),
    )


def _render(template: str, *, user: str, folder: str) -> str:
    parts = {
        "user": user,
        "folder": os.path.basename(folder),
        "parent": os.path.basename(os.path.dirname(folder)),
    }
    for name, value in parts.items():
        if f"{{{name}}}" in template and not _is_plain_text(value):
            # A folder name is the lab user's text too: it reaches OMERO as a dataset name.
            raise SettingsError(
                f"{display_path(folder)}: target.template uses {{{name}}}, and that folder name "
                "is not plain text (a control character, or bytes that are not UTF-8); rename the folder"
            )
    return re.sub(r"\{(folder|parent|user)\}", lambda m: parts[m.group(1)], template)


def _is_plain_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes of the name, kept as surrogates
        return False
    return not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value)


def plan_for(
    trusted: str,
    root: str,
    user: str,
    folder: str,
    allowed_args: Iterable[str] = (),
    limits: SettingsLimits = DEFAULT_LIMITS,
    cache: dict[str, FolderSettings | None] | None = None,
) -> ImportPlan:
    """The plan in force for files in ``folder``: every ``dropbox.toml`` from ``root`` down.

    ``cache`` (filled here) saves reading a folder's file again for the next fileset of a
    batch; a bad file is read again each time, so its error is always the current one.
    """
    found: list[FolderSettings] = []
    for d in _folders(root, folder):
        path = os.path.join(d, SETTINGS_NAME)
        if cache is not None and path in cache:
            s = cache[path]
        else:
            s = read_settings(trusted, root, path, allowed_args, limits)
            if cache is not None:
                cache[path] = s
        if s is not None:
            found.append(s)
    return merge(found, user=user, folder=folder)
