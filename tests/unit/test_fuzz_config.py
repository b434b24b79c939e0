"""Property tests of configuration as operators meet it, complementing ``test_config_fuzz``:

* ``omero-dropbox config show -D ...`` with random values for every property exits 0, or
  2 with a message naming the property (never a traceback);
* for *every* per-user property, the *i*-th ``;`` entry belongs to the *i*-th import user,
  an empty or missing entry means the default, and ``,`` lists keep their items;
* a path property never ends up holding a character no path can hold.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from omero_dropbox import cli
from omero_dropbox.config import ConfigError, DropBoxConfig, load_config
from omero_dropbox.properties import PROPERTIES, PathKind, Property, Scope
from tests.support.strategies import TOKENS, element, value

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
USER_PROPS = [p for p in PROPERTIES if p.scope is Scope.USER and p.name != "omero.fs.watchDir"]
PATH_PROPS = [p for p in PROPERTIES if isinstance(p.kind, PathKind)]


def _config_show(*overrides: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = cli.main(["config", "show", *[a for o in overrides for a in ("-D", o)]])
    return rc, err.getvalue()


@FUZZ
@given(prop=st.sampled_from(PROPERTIES), text=value)
def test_config_show_exits_0_or_2_naming_the_property(prop: Property, text: str) -> None:
    rc, err = _config_show(f"{prop.name}={text}")
    assert rc in (0, 2), err
    if rc == 2:
        assert err.startswith("omero-dropbox: configuration error: "), err
        assert "omero.fs." in err or "omero.data.dir" in err, err
        if prop.name != "omero.fs.importUsers":  # a user list can fail on another property's entries
            assert prop.name in err, err


def _alone(prop: Property, text: str) -> object | None:
    """The value ``text`` gives ``prop`` for the default user, or None if it does not load."""
    try:
        config = load_config(overrides=[f"{prop.name}={text}"])
    except ConfigError:
        return None
    return getattr(config.users[0], prop.attr)


@FUZZ
@given(
    prop=st.sampled_from(USER_PROPS),
    entries=st.lists(st.one_of(st.just(""), element), min_size=1, max_size=4),
    extra_users=st.integers(0, 2),
)
def test_every_per_user_property_gives_entry_i_to_user_i(
    prop: Property, entries: list[str], extra_users: int
) -> None:
    assume(all(";" not in e for e in entries))
    alone = [_alone(prop, e) for e in entries]
    assume(all(v is not None for v in alone))
    users = [f"u{i}" for i in range(len(entries) + extra_users)]
    config: DropBoxConfig = load_config(
        overrides=[
            "omero.fs.importUsers=" + ";".join(users),
            "omero.fs.watchDir=" + ";".join(f"/w/{u}" for u in users),
            f"{prop.name}={';'.join(entries)}",
        ]
    )
    default = _alone(prop, "")
    for i, user in enumerate(config.users):
        # One entry has no ';': it is every user's (issue 12); else entry i is user i's.
        want = alone[0] if len(entries) == 1 else alone[i] if i < len(entries) else default
        assert getattr(user, prop.attr) == want, (user.import_user, prop.name, entries)


@settings(max_examples=50, deadline=None)
@given(prop=st.sampled_from(PATH_PROPS), before=st.sampled_from(TOKENS), after=st.text(max_size=5))
def test_a_path_property_with_a_nul_character_is_a_configuration_error(
    tmp_path_factory: pytest.TempPathFactory, prop: Property, before: str, after: str
) -> None:
    toml = tmp_path_factory.mktemp("nul") / "dropbox.toml"
    quoted = (f"/data/{before}\x00{after}").encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    escaped = quoted.replace("\\", "\\\\").replace('"', '\\"')
    # TOML forbids raw control characters (U+0000-U+001F and U+007F) in strings: escape them.
    escaped = "".join(c if " " <= c != "\x7f" else f"\\u{ord(c):04x}" for c in escaped)
    table = "users.default" if prop.scope is Scope.USER else "dropbox"
    toml.write_text(f'[{table}]\n{prop.key} = "{escaped}"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=prop.name.replace(".", r"\.")):
        load_config(toml_file=toml)


def test_nul_in_watch_dir_from_toml_is_a_configuration_error_naming_it(tmp_path: Path) -> None:
    """The concrete case behind the property above: `run` would die in mkdir with a traceback."""
    toml = tmp_path / "dropbox.toml"
    toml.write_text('[users.default]\nwatch_dir = "/tmp/a\\u0000b"\n', encoding="utf-8")
    rc, err = _config_show_file(toml)
    assert rc == 2 and "omero.fs.watchDir" in err, err


def _config_show_file(toml: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = cli.main(["config", "show", "--config", str(toml)])
    return rc, err.getvalue()
