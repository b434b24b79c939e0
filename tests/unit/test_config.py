"""Tests for the configuration layer (omero_dropbox.config / omero_dropbox.properties)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from omero_dropbox.config import (
    ConfigError,
    DropBoxConfig,
    UserMonitorConfig,
    format_config,
    load_config,
    parse_override,
    property_reference_markdown,
)
from omero_dropbox.properties import PROPERTIES, Scope
from tests.support.sample_config import REALISTIC_TEMPLATES


# A templates.xml shaped like OMERO's etc/grid/templates.xml (written for these tests
# from the description in the upstream reference, not copied): shared property blocks,
# the DropBox block with its ;/, syntax, and the server templates.
def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def block(**props: str) -> str:
    """A file holding only a <properties id="DropBox"> block."""
    lines = [f'  <property name="omero.fs.{k}" value="{v}"/>' for k, v in props.items()]
    return '<properties id="DropBox">\n' + "\n".join(lines) + "\n</properties>\n"


def users_by_name(config: DropBoxConfig) -> dict[str, UserMonitorConfig]:
    return {user.import_user: user for user in config.users}


def d(**props: str) -> list[str]:
    """-D overrides from keyword arguments (omero.fs. prefix added)."""
    return [f"omero.fs.{name}={value}" for name, value in props.items()]


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    config = load_config()
    assert config.import_users == ("default",)
    (user,) = config.users
    assert user.watch_dir == Path("/OMERO/DropBox")
    assert user.event_types == ("creation", "modification")  # template default, not All
    assert user.path_mode == "follow"
    assert user.whitelist == () and user.blacklist == ()
    assert user.timeout == 0.0 and user.block_size == 0
    assert user.ignore_sys_files is True and user.ignore_dir_events is True
    assert user.dir_import_wait == 60 and user.file_batch == 10
    assert user.throttle_import == 10  # template's 10, not upstream code's 5
    assert user.time_to_live_ms == 0 and user.time_to_idle_ms == 600_000
    assert user.readers is None and user.import_args == ()
    assert (config.host, config.port, config.max_retries, config.retry_interval) == (
        "localhost",
        4064,
        5,
        3,
    )
    assert config.default_dropbox_dir == "DropBox" and config.data_dir == Path("/OMERO")
    assert config.platform_check is True
    assert config.server_id_string == "MonitorServer"
    assert config.client_id_string == "DropBox"
    assert config.client_adapter_name == "omerofs.DropBox"
    assert config.monitor_server_id_string == "MonitorServer"
    assert config.monitor_server_adapter_name == "omerofs.MonitorServer"
    assert config.file_server_id_string == "FileServer"
    assert config.file_server_adapter_name == "omerofs.FileServer"
    assert config.settle == 2.0 and config.complete_wait == 5
    assert config.max_concurrent_imports == 2 and config.max_attempts == 5
    assert config.retry_backoff == 30 and config.import_timeout == 43200
    assert config.backend == "auto" and config.poll_interval == 5
    assert config.require_owner is False and config.log_dir is None
    assert config.sources["omero.fs.host"] == "default"
    assert config.sources["omero.fs.watchDir[default]"] == "derived"


def test_schema_covers_dataclasses_exactly() -> None:
    user_fields = {f.name for f in dataclasses.fields(UserMonitorConfig)} - {"import_user"}
    global_fields = {f.name for f in dataclasses.fields(DropBoxConfig)} - {"users", "sources"}
    user_attrs = {p.attr for p in PROPERTIES if p.scope is Scope.USER}
    global_attrs = {p.attr for p in PROPERTIES if p.scope is Scope.GLOBAL} - {"import_users"}
    assert user_attrs == user_fields
    assert global_attrs == global_fields
    assert len({p.name for p in PROPERTIES}) == len({p.key for p in PROPERTIES}) == len(PROPERTIES)


def test_config_is_frozen() -> None:
    config = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.host = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.users[0].watch_dir = Path("/x")  # type: ignore[misc]


def test_closed_choices_checked_when_built_in_code() -> None:
    # The loader checks them against what is allowed; a config built or replace()d in code is
    # checked too, so a value outside its Literal type never reaches the watcher.
    config = load_config()
    user = config.users[0]
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(user, path_mode="Flat")  # type: ignore[arg-type]
    assert str(info.value) == (
        "omero.fs.pathMode: unknown value 'Flat' for user 'default'; allowed: flat, recurse, follow"
    )
    with pytest.raises(ConfigError, match=r"^omero.fs.eventTypes: unknown value 'all' for user 'default'"):
        dataclasses.replace(user, event_types=("creation", "all"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^omero.fs.ng.backend: unknown value 'inotify'; allowed: auto,"):
        dataclasses.replace(config, backend="inotify")  # type: ignore[arg-type]
    assert dataclasses.replace(user, path_mode="flat").path_mode == "flat"


# --------------------------------------------------------------------------- templates.xml


def test_realistic_templates(tmp_path: Path) -> None:
    config = load_config(templates=write(tmp_path / "templates.xml", REALISTIC_TEMPLATES))
    assert config.import_users == ("default", "root")
    users = users_by_name(config)
    assert users["default"].watch_dir == Path("/OMERO/DropBox")
    assert users["root"].watch_dir == Path("/OMERODEV/OtherBox")
    assert users["default"].event_types == ("creation", "modification")
    assert users["root"].event_types == ("creation",)
    assert users["default"].dir_import_wait == 60 and users["root"].dir_import_wait == 30
    assert users["default"].import_args == ("--report", "--email", "root@example.com")
    # A value without ';' is every user's (issue 12; upstream gave root nothing).
    assert users["root"].import_args == ("--report", "--email", "root@example.com")
    assert config.port == 4064  # ${ROUTERPORT} is not defined in the file: default
    # Properties set on the DropBoxTemplate server itself override the DropBox block.
    assert config.server_id_string == "MonitorServerX"
    assert config.client_id_string == "DropBoxX"
    assert config.client_adapter_name == "omerofs.DropBoxX"
    # The MonitorServer template is another process: its properties are not DropBox's.
    assert config.monitor_server_id_string == "MonitorServer"
    assert config.sources["omero.fs.eventTypes[root]"] == "templates.xml"


def test_templates_variables_are_resolved(tmp_path: Path) -> None:
    text = REALISTIC_TEMPLATES.replace(
        '<variable name="OMEROPY_HOME"',
        '<variable name="ROUTERPORT" value="14064"/>\n<variable name="OMEROPY_HOME"',
    )
    config = load_config(templates=write(tmp_path / "templates.xml", text))
    assert config.port == 14064


def test_templates_file_with_only_the_block(tmp_path: Path) -> None:
    path = write(tmp_path / "dropbox.xml", block(dirImportWait="15", pathMode="Flat"))
    (user,) = load_config(templates=path).users
    assert user.dir_import_wait == 15 and user.path_mode == "flat"


def test_templates_unknown_fs_property_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "t.xml", block(dirImportWiat="15"))
    with caplog.at_level(logging.WARNING):
        config = load_config(templates=path)
    assert config.users[0].dir_import_wait == 60
    assert "omero.fs.dirImportWiat" in caplog.text and "omero.fs.dirImportWait" in caplog.text


def test_templates_without_dropbox_block(tmp_path: Path) -> None:
    path = write(tmp_path / "t.xml", '<icegrid><properties id="Basics"/></icegrid>')
    with pytest.raises(ConfigError, match=r'no <properties id="DropBox"> block') as info:
        load_config(templates=path)
    assert str(path) in str(info.value)


def test_templates_property_without_name(tmp_path: Path) -> None:
    path = write(tmp_path / "t.xml", '<properties id="DropBox"><property value="1"/></properties>')
    with pytest.raises(ConfigError, match="no name attribute"):
        load_config(templates=path)


# --------------------------------------------------------------------------- precedence


def test_override_wins_over_template(tmp_path: Path) -> None:
    path = write(tmp_path / "templates.xml", REALISTIC_TEMPLATES)
    config = load_config(templates=path, overrides=d(dirImportWait="5", host="omero.example.org"))
    users = users_by_name(config)
    assert users["default"].dir_import_wait == 5
    # A -D value without ';' is every user's, root's too (issue 12).
    assert users["root"].dir_import_wait == 5
    assert config.host == "omero.example.org"
    assert config.sources["omero.fs.dirImportWait[default]"] == "-D"
    assert config.sources["omero.fs.dirImportWait[root]"] == "-D"
    # An override that leaves root's entry out: root keeps its templates.xml value.
    config = load_config(templates=path, overrides=d(dirImportWait="5;"))
    users = users_by_name(config)
    assert users["default"].dir_import_wait == 5 and users["root"].dir_import_wait == 30
    assert config.sources["omero.fs.dirImportWait[root]"] == "templates.xml"


def test_later_override_wins() -> None:
    config = load_config(overrides=d(fileBatch="3") + d(fileBatch="4"))
    assert config.users[0].file_batch == 4


def test_blank_override_entry_falls_through(tmp_path: Path) -> None:
    path = write(tmp_path / "t.xml", block(importUsers="amy;zak", watchDir="/a;/z"))
    config = load_config(templates=path, overrides=d(watchDir=";/zz"))
    users = users_by_name(config)
    assert users["amy"].watch_dir == Path("/a") and users["zak"].watch_dir == Path("/zz")


def test_precedence_defaults_templates_toml_overrides(tmp_path: Path) -> None:
    templates = write(tmp_path / "t.xml", block(dirImportWait="11", fileBatch="12", blockSize="13"))
    toml = write(tmp_path / "c.toml", "[dropbox]\nfile_batch = 22\nblock_size = 23\n")
    config = load_config(templates=templates, toml_file=toml, overrides=d(blockSize="33"))
    user = config.users[0]
    assert (user.dir_import_wait, user.file_batch, user.block_size) == (11, 22, 33)
    assert user.throttle_import == 10
    sources = config.sources
    assert sources["omero.fs.dirImportWait[default]"] == "templates.xml"
    assert sources["omero.fs.fileBatch[default]"] == "toml"
    assert sources["omero.fs.blockSize[default]"] == "-D"
    assert sources["omero.fs.throttleImport[default]"] == "default"


# --------------------------------------------------------------------------- TOML

FULL_TOML = """
[dropbox]
host = "omero.example.org"
port = 14064
data_dir = "/srv/omero"
dir_import_wait = 45            # every user
max_concurrent_imports = 4
backend = "poll"
poll_interval = 0.5
require_owner = true
log_dir = "/var/log/omero"

[users.default]
event_types = ["Creation", "Modification", "Deletion"]

[users.amy]
watch_dir = "/data/amy"
dir_import_wait = 30
whitelist = [".tif", " .ome.tiff "]
import_args = "--transfer=ln_rm -T 'Dataset:name:My data; 2024'"
ignore_sys_files = "no"
"""


def test_toml_shape(tmp_path: Path) -> None:
    config = load_config(toml_file=write(tmp_path / "dropbox.toml", FULL_TOML))
    assert config.import_users == ("default", "amy")  # the [users.*] tables, in order
    assert config.host == "omero.example.org" and config.port == 14064
    assert config.max_concurrent_imports == 4 and config.backend == "poll"
    assert config.poll_interval == 0.5 and config.require_owner is True
    assert config.log_dir == Path("/var/log/omero")
    users = users_by_name(config)
    default, amy = users["default"], users["amy"]
    assert default.watch_dir == Path("/srv/omero/DropBox")
    assert default.event_types == ("creation", "modification", "deletion")
    assert default.dir_import_wait == 45 and amy.dir_import_wait == 30
    assert amy.watch_dir == Path("/data/amy")
    assert amy.whitelist == (".tif", ".ome.tiff")
    assert amy.import_args == ("--transfer=ln_rm", "-T", "Dataset:name:My data; 2024")
    assert amy.ignore_sys_files is False and default.ignore_sys_files is True


def test_toml_explicit_import_users(tmp_path: Path) -> None:
    text = '[dropbox]\nimport_users = [" zak ", "amy"]\n[users.amy]\nwatch_dir = "/a"\n'
    text += '[users.zak]\nwatch_dir = "/z"\n'
    config = load_config(toml_file=write(tmp_path / "c.toml", text))
    assert config.import_users == ("zak", "amy")


def test_toml_user_table_not_in_import_users(tmp_path: Path) -> None:
    text = '[dropbox]\nimport_users = ["amy"]\n[users.amy]\nwatch_dir = "/a"\n'
    text += '[users.bob]\nwatch_dir = "/b"\n'
    with pytest.raises(ConfigError, match=r"\[users.bob\] configures a user who is not in"):
        load_config(toml_file=write(tmp_path / "c.toml", text))


def test_toml_user_table_overridden_by_d_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = '[users.amy]\nwatch_dir = "/a"\n'
    with caplog.at_level(logging.WARNING):
        config = load_config(toml_file=write(tmp_path / "c.toml", text), overrides=d(importUsers="default"))
    assert config.import_users == ("default",)
    assert "[users.amy] ignored" in caplog.text


def test_toml_array_import_args_verbatim(tmp_path: Path) -> None:
    text = '[users.default]\nimport_args = ["-T", "Dataset:name:a b", "--x;y"]\n'
    (user,) = load_config(toml_file=write(tmp_path / "c.toml", text)).users
    assert user.import_args == ("-T", "Dataset:name:a b", "--x;y")


def test_toml_string_values_use_property_syntax(tmp_path: Path) -> None:
    text = '[dropbox]\nevent_types = "Creation, Deletion"\nfile_batch = "7"\n'
    text += 'ignore_dir_events = "0"\nhost = ""\n'
    config = load_config(toml_file=write(tmp_path / "c.toml", text))
    user = config.users[0]
    assert user.event_types == ("creation", "deletion") and user.file_batch == 7
    assert user.ignore_dir_events is False
    assert config.host == "localhost"  # an empty string sets nothing


def test_toml_global_key_in_user_table(tmp_path: Path) -> None:
    text = '[users.amy]\nwatch_dir = "/a"\nport = 4064\n'
    with pytest.raises(ConfigError, match=r"\[users.amy\] 'port' \(omero.fs.port\) is a global"):
        load_config(toml_file=write(tmp_path / "c.toml", text))


@pytest.mark.parametrize(
    ("text", "bad", "suggestion"),
    [
        ("[dropbox]\ndir_import_wiat = 3\n", "dir_import_wiat", "dir_import_wait"),
        ("[dropbox]\ndirImportWait = 3\n", "dirImportWait", "dir_import_wait"),
        ('[dropbox]\n"omero.fs.importArgs" = "-x"\n', "omero.fs.importArgs", "import_args"),
        ("[users.amy]\neventtype = 3\n", "eventtype", "event_types"),
        ("[dropbx]\nhost = 'x'\n", "[dropbx]", "dropbox"),
    ],
)
def test_toml_unknown_key_suggests(tmp_path: Path, text: str, bad: str, suggestion: str) -> None:
    path = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(toml_file=path)
    message = str(info.value)
    assert str(path) in message and bad in message and f"did you mean '{suggestion}'" in message


@pytest.mark.parametrize(
    ("line", "prop", "allowed"),
    [
        ("port = 'abc'", "omero.fs.port", "a whole number from 1 to 65535"),
        ("port = 1.5", "omero.fs.port", "a whole number"),
        ("port = 70000", "omero.fs.port", "a whole number from 1 to 65535"),
        ("settle = true", "omero.fs.ng.settle", "a number of seconds"),
        ("event_types = [1]", "omero.fs.eventTypes", "Creation, Modification"),
        ("event_types = []", "omero.fs.eventTypes", "Creation, Modification"),
        ("require_owner = 'perhaps'", "omero.fs.ng.requireOwner", "true, false, yes, no"),
        ("import_users = 3", "omero.fs.importUsers", "an array of user names"),
        ("backend = 'inotify'", "omero.fs.ng.backend", "auto, native, notify, poll, fanotify"),
    ],
)
def test_toml_bad_values(tmp_path: Path, line: str, prop: str, allowed: str) -> None:
    path = write(tmp_path / "c.toml", f"[dropbox]\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_config(toml_file=path)
    message = str(info.value)
    assert message.startswith(f"{prop}: ")
    assert f"allowed: {allowed}" in message and str(path) in message


def test_toml_import_users_in_user_table(tmp_path: Path) -> None:
    text = '[users.amy]\nimport_users = ["amy"]\n'
    with pytest.raises(ConfigError, match=r"'import_users' \(omero.fs.importUsers\) is a global"):
        load_config(toml_file=write(tmp_path / "c.toml", text))


@pytest.mark.parametrize(
    "text",
    [
        '[users.""]\nwatch_dir = "/a"\n',
        '[users." "]\nwatch_dir = "/a"\n',
        '[users.amy]\nwatch_dir = "/a"\n[users." amy "]\nwatch_dir = "/b"\n',
    ],
)
def test_toml_bad_user_table_names(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="empty or duplicate user name"):
        load_config(toml_file=write(tmp_path / "c.toml", text))


def test_toml_users_must_be_tables(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[users.amy\] must be a table"):
        load_config(toml_file=write(tmp_path / "c.toml", 'users = {amy = "x"}\n'))


# --------------------------------------------------------------------------- per-user lists


def test_upstream_example_lists() -> None:
    config = load_config(
        overrides=d(
            importUsers="default;root",
            watchDir=";/x",
            eventTypes="Creation,Modification;Creation",
        )
    )
    default, root = config.users
    assert default.import_user == "default" and default.watch_dir == Path("/OMERO/DropBox")
    assert root.import_user == "root" and root.watch_dir == Path("/x")
    assert default.event_types == ("creation", "modification")
    assert root.event_types == ("creation",)


def test_short_lists_get_defaults() -> None:
    # Upstream raised IndexError here for eventTypes, whitelist and blacklist.
    config = load_config(
        overrides=d(
            importUsers="a;b;c",
            watchDir="/a;/b;/c",
            eventTypes="Deletion;",  # one entry, for user a only: written with its ';'
            whitelist=".tif;",
            blacklist="tmp;",
            dirImportWait="1;2",
            ignoreSysFiles="False;",
        )
    )
    a, b, c = config.users
    assert a.event_types == ("deletion",) and b.event_types == c.event_types == (
        "creation",
        "modification",
    )
    assert a.whitelist == (".tif",) and b.whitelist == c.whitelist == ()
    assert a.blacklist == ("tmp",) and c.blacklist == ()
    assert (a.dir_import_wait, b.dir_import_wait, c.dir_import_wait) == (1, 2, 60)
    assert a.ignore_sys_files is False and b.ignore_sys_files is c.ignore_sys_files is True


def test_whitespace_around_names_and_items() -> None:
    config = load_config(
        overrides=d(
            importUsers="  amy ;\tzak  ",
            watchDir=" /a ; /z ",
            eventTypes=" Creation , Deletion ; Modification ",
            whitelist=" .tif , .czi ,, ",
        )
    )
    amy, zak = config.users
    assert (amy.import_user, zak.import_user) == ("amy", "zak")
    assert amy.watch_dir == Path("/a") and zak.watch_dir == Path("/z")
    assert amy.event_types == ("creation", "deletion") and zak.event_types == ("modification",)
    assert amy.whitelist == (".tif", ".czi")


def test_blank_import_users_keep_positions() -> None:
    config = load_config(overrides=d(importUsers="amy;;zak", watchDir="/a;/unused;/z"))
    assert config.import_users == ("amy", "zak")
    assert users_by_name(config)["zak"].watch_dir == Path("/z")


def test_empty_import_users_means_default() -> None:
    assert load_config(overrides=d(importUsers=" ; ")).import_users == ("default",)


def test_duplicate_import_users() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=d(importUsers="amy;zak;amy", watchDir="/a;/z;/b"))
    message = str(info.value)
    assert message.startswith("omero.fs.importUsers: user 'amy' is listed twice (entries 1 and 3)")
    assert "allowed: each user once" in message


def test_named_user_needs_watch_dir() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=d(importUsers="default;amy"))
    message = str(info.value)
    assert message.startswith("omero.fs.watchDir: empty value '' for user 'amy' (entry 2)")
    assert "allowed: a directory path" in message


def test_same_watch_dir_twice() -> None:
    with pytest.raises(ConfigError, match=r"watched for both user 'amy' \(entry 1\) and user 'zak'"):
        load_config(overrides=d(importUsers="amy;zak", watchDir="/x;/x/"))


def test_extra_entries_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        load_config(overrides=d(dirImportWait="5;6;7"))
    assert "omero.fs.dirImportWait: entries after entry 1 ignored ('6;7')" in caplog.text


def test_data_dir_and_default_dropbox_dir() -> None:
    config = load_config(overrides=["omero.data.dir=/srv/data", "omero.fs.defaultDropBoxDir=Drop"])
    assert config.users[0].watch_dir == Path("/srv/data/Drop")


# --------------------------------------------------------------------------- importUsers semantics


# --------------------------------------------------------------------------- quirk fixes


@pytest.mark.parametrize("prop", ["ignoreSysFiles", "ignoreDirEvents"])
def test_empty_boolean_means_default(prop: str) -> None:
    # Upstream read an empty element as False.
    config = load_config(
        overrides=["omero.fs.importUsers=a;b", "omero.fs.watchDir=/a;/b", f"omero.fs.{prop}=;False"]
    )
    a, b = config.users
    attr = "ignore_sys_files" if prop == "ignoreSysFiles" else "ignore_dir_events"
    assert getattr(a, attr) is True and getattr(b, attr) is False
    config = load_config(overrides=[f"omero.fs.{prop}="])
    assert getattr(config.users[0], attr) is True


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True), ("TRUE", True), ("yes", True), ("Yes", True), ("1", True),
        ("T", True), ("t", True), ("Tru", True),
        ("false", False), ("False", False), ("NO", False), ("0", False), ("F", False),
    ],
)  # fmt: skip
def test_boolean_forms(text: str, value: bool) -> None:
    assert load_config(overrides=d(ignoreDirEvents=text)).users[0].ignore_dir_events is value
    assert load_config(overrides=d(platformCheck=text)).platform_check is value


@pytest.mark.parametrize("text", ["maybe", "2", "on", "nope"])
def test_boolean_errors(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=d(ignoreSysFiles=text))
    message = str(info.value)
    assert message.startswith(f"omero.fs.ignoreSysFiles: {text!r} is not a boolean")
    assert "for user 'default' (entry 1)" in message
    assert "allowed: true, false, yes, no, 1, 0" in message


def test_unknown_event_type_message() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=d(importUsers="default;amy", watchDir=";/a", eventTypes="Creation;Creatoin"))
    assert str(info.value).startswith(
        "omero.fs.eventTypes: unknown event type 'Creatoin' for user 'amy' (entry 2); "
        "allowed: Creation, Modification, Deletion, All"
    )
    assert "-D omero.fs.eventTypes" in str(info.value)


def test_event_types_all_and_case() -> None:
    user = load_config(overrides=d(eventTypes="All")).users[0]
    assert user.event_types == ("creation", "modification", "deletion")
    user = load_config(overrides=d(eventTypes="deletion,CREATION,Creation")).users[0]
    assert user.event_types == ("creation", "deletion")


def test_event_types_only_commas() -> None:
    with pytest.raises(ConfigError, match=r"omero.fs.eventTypes: no event type in ',,'"):
        load_config(overrides=d(eventTypes=",,"))


def test_unknown_path_mode_message() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=d(pathMode="Deep"))
    message = str(info.value)
    assert message.startswith("omero.fs.pathMode: unknown path mode 'Deep' for user 'default'")
    assert "allowed: Flat, Recurse, Follow" in message


@pytest.mark.parametrize(("text", "mode"), [("Flat", "flat"), ("recurse", "recurse"), ("FOLLOW", "follow")])
def test_path_modes(text: str, mode: str) -> None:
    assert load_config(overrides=d(pathMode=text)).users[0].path_mode == mode


@pytest.mark.parametrize(
    ("prop", "text", "problem", "allowed"),
    [
        ("fileBatch", "60.5", "'60.5' is not a whole number", "a whole number from 1 to"),
        ("fileBatch", "0", "'0' is out of range", "a whole number from 1 to"),
        ("blockSize", "-1", "'-1' is out of range", "a whole number from 0 to"),
        ("blockSize", "1_0", "'1_0' is not a whole number", "a whole number"),
        ("timeToIdle", "ten", "'ten' is not a whole number", "a whole number of seconds"),
        ("dirImportWait", "abc", "'abc' is not a number", "a number of seconds from 0"),
        ("dirImportWait", "-5", "'-5' is out of range", "a number of seconds from 0"),
        ("throttleImport", "inf", "'inf' is not a number", "a number of seconds"),
        ("timeout", "1e400", "'1e400' is out of range", "a number of seconds"),
    ],
)
def test_number_errors(prop: str, text: str, problem: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=d(**{prop: text}))
    message = str(info.value)
    assert message.startswith(f"omero.fs.{prop}: {problem} for user 'default' (entry 1)")
    assert f"allowed: {allowed}" in message


def test_global_number_error_has_no_user() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=d(port="4064;4065"))
    message = str(info.value)
    assert message.startswith("omero.fs.port: '4064;4065' is not a whole number; allowed:")


def test_fractional_waits_accepted() -> None:
    config = load_config(overrides=d(dirImportWait="0.5", throttleImport=" 1.25 ", retryInterval=".5"))
    assert config.users[0].dir_import_wait == 0.5 and config.users[0].throttle_import == 1.25
    assert config.retry_interval == 0.5


def test_session_timeouts_in_ms() -> None:
    user = load_config(overrides=d(timeToLive="3600", timeToIdle="+60")).users[0]
    assert user.time_to_live_ms == 3_600_000 and user.time_to_idle_ms == 60_000


# --------------------------------------------------------------------------- -D names


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("omero.fs.importUser", "omero.fs.importUsers"),
        ("omero.fs.dir_import_wait", "omero.fs.dirImportWait"),
        ("omero.fs.DIRIMPORTWAIT", "omero.fs.dirImportWait"),
        ("omero.fs.settle", "omero.fs.ng.settle"),
        ("omero.fs.ng.maxConcurentImports", "omero.fs.ng.maxConcurrentImports"),
        ("omero.datadir", "omero.data.dir"),
    ],
)
def test_unknown_override_suggests(name: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[f"{name}=1"])
    assert str(info.value) == f"{name}: unknown property (source: -D); did you mean '{suggestion}'?"


def test_unknown_override_without_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"^omero.fs.zzzzzzzzzzzz: unknown property \(source: -D\)$"):
        load_config(overrides=["omero.fs.zzzzzzzzzzzz=1"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("omero.fs.importArgs=--a=b", ("omero.fs.importArgs", "--a=b")),
        (" omero.fs.host =x ", ("omero.fs.host", "x ")),
        ("omero.fs.watchDir=", ("omero.fs.watchDir", "")),
    ],
)
def test_parse_override(text: str, expected: tuple[str, str]) -> None:
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["omero.fs.host", "=x", "", "omero fs.host=x"])
def test_parse_override_malformed(text: str) -> None:
    with pytest.raises(ConfigError, match=r"expected NAME=VALUE, e.g. -D omero.fs.dirImportWait=30"):
        parse_override(text)


# --------------------------------------------------------------------------- readers, importArgs


def test_readers_existing_file(tmp_path: Path) -> None:
    readers = write(tmp_path / "readers.txt", "loci.formats.in.TiffReader\n")
    assert load_config(overrides=d(readers=str(readers))).users[0].readers == readers


def test_readers_missing_file_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "nope.txt"
    with caplog.at_level(logging.WARNING):
        user = load_config(overrides=d(readers=str(missing))).users[0]
    assert user.readers is None
    assert "omero.fs.readers" in caplog.text and str(missing) in caplog.text


def test_readers_directory_is_not_a_file(tmp_path: Path) -> None:
    assert load_config(overrides=d(readers=str(tmp_path))).users[0].readers is None


def test_import_args_quotes() -> None:
    text = """--report --email "a b@example.com" -T 'regex:^.*/(?<Container1>.*?)'"""
    user = load_config(overrides=d(importArgs=text)).users[0]
    assert user.import_args == (
        "--report",
        "--email",
        "a b@example.com",
        "-T",
        "regex:^.*/(?<Container1>.*?)",
    )


def test_import_args_unbalanced_quote() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=d(importArgs="-T 'Dataset:name:x"))
    message = str(info.value)
    assert message.startswith('omero.fs.importArgs: cannot split "-T \'Dataset:name:x"')
    assert "allowed: shell-like words with balanced quotes" in message


# --------------------------------------------------------------------------- ng settings


def test_ng_settings_via_overrides() -> None:
    config = load_config(
        overrides=[
            "omero.fs.ng.settle=0.25",
            "omero.fs.ng.completeWait=1",
            "omero.fs.ng.maxConcurrentImports=8",
            "omero.fs.ng.maxAttempts=1",
            "omero.fs.ng.retryBackoff=2.5",
            "omero.fs.ng.importTimeout=600",
            "omero.fs.ng.backend=Native",
            "omero.fs.ng.pollInterval=0.1",
            "omero.fs.ng.requireOwner=yes",
            "omero.fs.ng.logDir=/var/log/omero",
        ]
    )
    assert (config.settle, config.complete_wait, config.max_concurrent_imports) == (0.25, 1, 8)
    assert (config.max_attempts, config.retry_backoff, config.import_timeout) == (1, 2.5, 600)
    assert (config.backend, config.poll_interval, config.require_owner) == ("native", 0.1, True)
    assert config.log_dir == Path("/var/log/omero")


@pytest.mark.parametrize(
    ("override", "allowed"),
    [
        ("omero.fs.ng.backend=inotify", "auto, native, notify, poll, fanotify"),
        ("omero.fs.ng.pollInterval=0", "a number of seconds more than 0"),
        ("omero.fs.ng.maxConcurrentImports=0", "a whole number from 1"),
        ("omero.fs.ng.maxAttempts=x", "a whole number from 1"),
    ],
)
def test_ng_errors(override: str, allowed: str) -> None:
    name, value = override.split("=")
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    message = str(info.value)
    assert message.startswith(f"{name}: ") and repr(value) in message
    assert f"allowed: {allowed}" in message


# --------------------------------------------------------------------------- bad files


def test_missing_files(tmp_path: Path) -> None:
    for kwargs in ({"templates": tmp_path / "nope.xml"}, {"toml_file": tmp_path / "nope.toml"}):
        with pytest.raises(ConfigError, match="cannot read config file: No such file") as info:
            load_config(**kwargs)  # type: ignore[arg-type]
        assert "nope." in str(info.value)


def test_malformed_xml(tmp_path: Path) -> None:
    path = write(tmp_path / "t.xml", '<properties id="DropBox">\n<property name="x"\n</properties>')
    with pytest.raises(ConfigError) as info:
        load_config(templates=path)
    message = str(info.value)
    assert message.startswith(f"{path}: malformed XML:") and "line 3" in message


def test_malformed_toml(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[dropbox]\nhost = 'x'\nport = = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(toml_file=path)
    message = str(info.value)
    assert message.startswith(f"{path}: malformed TOML:") and "line 3" in message


def test_toml_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b"[dropbox]\nhost = '\xff'\n")
    with pytest.raises(ConfigError, match="malformed TOML: not UTF-8"):
        load_config(toml_file=path)


def test_directory_as_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(toml_file=tmp_path)


# --------------------------------------------------------------------------- output


def test_format_config(tmp_path: Path) -> None:
    config = load_config(
        templates=write(tmp_path / "templates.xml", REALISTIC_TEMPLATES),
        overrides=d(throttleImport="2.5"),
    )
    text = format_config(config)
    assert "Import user 'default' (1 of 2):" in text and "Import user 'root' (2 of 2):" in text
    lines = [line.split() for line in text.splitlines()]
    assert ["omero.fs.importUsers", "=", "default;root", "(templates.xml)"] in lines
    assert ["omero.fs.throttleImport", "=", "2.5", "(-D)"] in lines
    assert ["omero.fs.watchDir", "=", "/OMERO/DropBox", "(derived)"] in lines
    assert ["omero.fs.watchDir", "=", "/OMERODEV/OtherBox", "(templates.xml)"] in lines
    assert ["omero.fs.timeToIdle", "=", "600", "(templates.xml)"] in lines
    assert ["omero.fs.ng.logDir", "=", '""', "(default)"] in lines
    for prop in PROPERTIES:
        assert prop.name in text


def test_format_config_values_round_trip_through_overrides(tmp_path: Path) -> None:
    """Every line of `config show` can be pasted back as -D and gives the same config."""
    # property syntax cannot carry ';' inside a value, so leave that one out
    toml = FULL_TOML.replace("My data; 2024", "My data 2024")
    original = load_config(toml_file=write(tmp_path / "c.toml", toml))
    overrides = _overrides_from_format(format_config(original))
    assert load_config(overrides=overrides) == original


def _overrides_from_format(text: str) -> list[str]:
    per_user: dict[str, list[str]] = {}
    overrides = []
    for line in text.splitlines():
        if not line.startswith("  "):
            continue
        name, _, rest = line.strip().partition(" = ")
        name = name.strip()
        value = rest.rsplit("  (", 1)[0]
        value = "" if value == '""' else value
        if name in {p.name for p in PROPERTIES if p.scope is Scope.USER}:
            per_user.setdefault(name, []).append(value)
        else:
            overrides.append(f"{name}={value}")
    overrides += [f"{name}={';'.join(values)}" for name, values in per_user.items()]
    return overrides


def test_property_reference_markdown() -> None:
    text = property_reference_markdown()
    for prop in PROPERTIES:
        assert f"`{prop.name}`" in text and f"`{prop.key}`" in text
    assert (
        "| `omero.fs.throttleImport` | `throttle_import` | per-user | seconds | `10` | `5` / `10` |" in text
    )
    assert "Notes (differences from upstream and why):" in text
    assert "- `omero.fs.ng.completeWait`:" in text


def test_ng_backend_fanotify_is_accepted() -> None:
    # One fanotify filesystem mark (Linux, CAP_SYS_ADMIN; README, "Backends").
    config = load_config(overrides=["omero.fs.ng.backend=fanotify"])
    assert config.backend == "fanotify"


def test_ng_backend_notify_is_accepted() -> None:
    # notify's watcher on every OS: the adapter macOS and Windows use (README, "Backends").
    config = load_config(overrides=["omero.fs.ng.backend=Notify"])
    assert config.backend == "notify"


def test_folder_settings_are_on_and_allow_no_import_options_by_default() -> None:
    config = load_config()
    assert config.folder_settings is True and config.folder_import_args == ()
    config = load_config(overrides=["omero.fs.ng.folderImportArgs=--skip,--checksum-algorithm"])
    assert config.folder_import_args == ("--skip", "--checksum-algorithm")


@pytest.mark.parametrize(
    ("value", "after", "expected"),
    [
        ("-T", "keep", "'-T' is not a long option name"),
        ("--skip=all", "keep", "'--skip=all' is not a long option name"),
        ("--transfer", "delete", "remove --transfer or set afterImport=keep"),
    ],
)
def test_folder_import_args_that_could_hurt_are_refused_with_the_fix(
    value: str, after: str, expected: str
) -> None:
    overrides = [f"omero.fs.ng.folderImportArgs={value}", f"omero.fs.ng.afterImport={after}"]
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    assert str(info.value).startswith("omero.fs.ng.folderImportArgs") and expected in str(info.value)
