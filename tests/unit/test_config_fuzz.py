"""Property-based tests for the configuration layer.

Random ``;``/``,`` values for every property must either load or raise ConfigError (never
another exception), and valid generated per-user lists must come back element by element.
"""

from __future__ import annotations

import json
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omero_dropbox.config import ConfigError, DropBoxConfig, load_config
from omero_dropbox.properties import EVENT_TYPES, PROPERTIES, Property, Scope
from tests.support.strategies import TOKENS, element, value

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

prop_names = st.sampled_from([prop.name for prop in PROPERTIES])
USERS_SETUP = ["omero.fs.importUsers=default; amy ;zak", "omero.fs.watchDir=;/a;/z"]


def load_or_config_error(**kwargs: object) -> DropBoxConfig | None:
    try:
        return load_config(**kwargs)  # type: ignore[arg-type]
    except ConfigError:
        return None


@FUZZ
@given(settings_=st.lists(st.tuples(prop_names, value), min_size=1, max_size=3), users=st.booleans())
def test_random_overrides_only_raise_config_error(settings_: list[tuple[str, str]], users: bool) -> None:
    overrides = (USERS_SETUP if users else []) + [f"{name}={text}" for name, text in settings_]
    config = load_or_config_error(overrides=overrides)
    if config is not None:
        assert config.users and all(isinstance(u.watch_dir, Path) for u in config.users)


@FUZZ
@given(name=st.text(max_size=30), text=value)
def test_random_override_names_only_raise_config_error(name: str, text: str) -> None:
    load_or_config_error(overrides=[f"{name}={text}"])


def xml_safe(text: str) -> str:
    # XML 1.0 cannot carry most control characters or lone surrogates at all.
    return "".join(c for c in text if c in "\t\n\r" or (" " <= c <= "\ud7ff") or ("\ue000" <= c <= "\ufffd"))


def write_templates(directory: Path, props: Sequence[tuple[str, str]]) -> Path:
    root = ET.Element("icegrid")
    block = ET.SubElement(ET.SubElement(root, "application"), "properties", id="DropBox")
    for name, text in props:
        ET.SubElement(block, "property", name=name, value=text)
    path = directory / "templates.xml"
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


@FUZZ
@given(settings_=st.lists(st.tuples(prop_names, value.map(xml_safe)), min_size=1, max_size=4))
def test_random_templates_only_raise_config_error(settings_: list[tuple[str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        load_or_config_error(templates=write_templates(Path(tmp), settings_))


toml_scalar = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=10),
    st.sampled_from([t for t in TOKENS if t != "\udcff"]),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
toml_value = st.one_of(toml_scalar, st.lists(toml_scalar, max_size=3))


def toml_literal(item: object) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, (int, float)):
        return repr(item)  # inf, -inf and nan are spelled the same in TOML
    if isinstance(item, list):
        # TOML arrays may mix types since 1.0
        return "[" + ", ".join(toml_literal(x) for x in item) + "]"
    return json.dumps(item)  # JSON string escapes are valid TOML basic-string escapes


@FUZZ
@given(
    table=st.sampled_from(["dropbox", "users.amy", "users.default"]),
    entries=st.lists(st.tuples(st.sampled_from([p.key for p in PROPERTIES]), toml_value), max_size=4),
)
def test_random_toml_only_raises_config_error(table: str, entries: list[tuple[str, object]]) -> None:
    lines = [f"[{table}]"] + [f"{key} = {toml_literal(item)}" for key, item in dict(entries).items()]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        load_or_config_error(toml_file=path)


# --------------------------------------------------------------------------- round trips

user_name = st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True).filter(lambda n: n != "default")
pad = st.sampled_from(["", " ", "  ", "\t"])
event_subset = st.sets(st.sampled_from(EVENT_TYPES), min_size=1)
extension = st.from_regex(r"\.[a-z0-9]{1,5}", fullmatch=True)


@st.composite
def per_user_lists(draw: st.DrawFn) -> dict[str, object]:
    users = draw(st.lists(user_name, min_size=1, max_size=5, unique=True))
    if draw(st.booleans()):
        users = ["default", *users]
    n = len(users)
    waits = draw(st.lists(st.none() | st.integers(0, 10**6), max_size=n))
    events = draw(st.lists(st.none() | event_subset, max_size=n))
    whitelists = draw(st.lists(st.lists(extension, max_size=4), max_size=n))
    return {"users": users, "waits": waits, "events": events, "whitelists": whitelists}


def padded(draw: Callable[[st.SearchStrategy[str]], str], items: Sequence[str], sep: str) -> str:
    return sep.join(f"{draw(pad)}{item}{draw(pad)}" for item in items)


@FUZZ
@given(data=per_user_lists(), draw=st.data())
def test_valid_lists_round_trip(data: dict[str, object], draw: st.DataObject) -> None:
    users: list[str] = data["users"]  # type: ignore[assignment]
    waits: list[int | None] = data["waits"]  # type: ignore[assignment]
    events: list[set[str] | None] = data["events"]  # type: ignore[assignment]
    whitelists: list[list[str]] = data["whitelists"]  # type: ignore[assignment]
    d = draw.draw
    props = [
        ("omero.fs.importUsers", padded(d, users, ";")),
        ("omero.fs.watchDir", ";".join("" if u == "default" else f"/w/{u}" for u in users)),
        ("omero.fs.dirImportWait", ";".join("" if w is None else str(w) for w in waits)),
        (
            "omero.fs.eventTypes",
            ";".join("" if e is None else padded(d, [x.capitalize() for x in e], ",") for e in events),
        ),
        ("omero.fs.whitelist", ";".join(padded(d, items, ",") for items in whitelists)),
    ]
    config = load_config(overrides=[f"{name}={text}" for name, text in props])

    def entry(values: Sequence[object], i: int) -> object:
        # A one-entry list has no ';': it is every user's (issue 12), else entry i is user i's.
        return values[0] if len(values) == 1 else values[i] if i < len(values) else None

    assert config.import_users == tuple(users)
    for i, user in enumerate(config.users):
        expected_dir = Path("/OMERO/DropBox") if user.import_user == "default" else Path(f"/w/{users[i]}")
        assert user.watch_dir == expected_dir
        wait = entry(waits, i)
        assert user.dir_import_wait == (60 if wait is None else wait)
        event = entry(events, i)
        expected_events = {"creation", "modification"} if event is None else event
        assert set(user.event_types) == expected_events  # type: ignore[arg-type]
        assert len(user.event_types) == len(expected_events)  # type: ignore[arg-type]
        assert user.whitelist == tuple(entry(whitelists, i) or ())  # type: ignore[call-overload]

    # The same properties from a templates.xml give the same configuration.
    with tempfile.TemporaryDirectory() as tmp:
        assert load_config(templates=write_templates(Path(tmp), props)) == config


def _user_prop(prop: Property) -> bool:
    return prop.scope is Scope.USER


@FUZZ
@given(prop=st.sampled_from(PROPERTIES), text=element)
def test_values_round_trip_through_property_syntax(prop: Property, text: str) -> None:
    """A value that loads, written back with its kind's to_text, loads to the same value."""
    if prop.name == "omero.fs.importUsers":
        return  # covered by test_valid_lists_round_trip
    first = load_or_config_error(overrides=[f"{prop.name}={text}"])
    if first is None:
        return
    holder: object = first.users[0] if _user_prop(prop) else first
    written = prop.kind.to_text(getattr(holder, prop.attr))
    second = load_config(overrides=[f"{prop.name}={written}"])
    assert second == first


@pytest.mark.parametrize("prop", PROPERTIES, ids=lambda p: p.name)
def test_default_text_parses_to_itself(prop: Property) -> None:
    """Defaults go through the same parser: printing one gives back the default text."""
    config = load_config()
    if prop.name == "omero.fs.importUsers":
        assert ";".join(config.import_users) == prop.default
        return
    holder: object = config.users[0] if _user_prop(prop) else config
    shown = prop.kind.to_text(getattr(holder, prop.attr))
    if prop.name == "omero.fs.watchDir":
        assert shown == "/OMERO/DropBox"  # derived for the default user
    else:
        reparsed = load_config(overrides=[f"{prop.name}={shown}"]) if shown else config
        assert reparsed == config
