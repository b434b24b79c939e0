"""dropbox.toml folder settings: parsing, validation, inheritance, translation to `omero import`.

Real files in a real DropBox tree; the settings are read the way the service reads them
(beneath the user's root, no link followed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from omero_dropbox.folder_settings import (
    SETTINGS_NAME,
    ImportPlan,
    SettingsError,
    SettingsLimits,
    parse_settings,
    plan_for,
    without_target,
)

ALLOWED = ("--skip", "--checksum-algorithm")


def tree(tmp_path: Path) -> tuple[str, str]:
    watch = tmp_path / "DropBox"
    (watch / "amy").mkdir(parents=True)
    return str(watch), str(watch / "amy")


def put(folder: str | Path, text: str) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, SETTINGS_NAME)
    Path(path).write_text(text)
    return path


def plan(watch: str, root: str, folder: str, user: str = "amy") -> ImportPlan:
    return plan_for(watch, root, user, folder, ALLOWED)


def test_no_settings_file_adds_nothing_to_the_import(tmp_path: Path) -> None:
    watch, root = tree(tmp_path)
    p = plan(watch, root, os.path.join(root, "run1"))
    assert p.cli_args() == []
    assert p.empty


def test_dataset_by_name_becomes_a_target_the_importer_creates_if_missing(tmp_path: Path) -> None:
    watch, root = tree(tmp_path)
    put(root, '[target]\ndataset = "Mitosis"\n')
    assert plan(watch, root, os.path.join(root, "run1")).cli_args() == ["-T", "Dataset:name:Mitosis"]


def test_nearest_file_wins_key_by_key_and_the_rest_is_inherited(tmp_path: Path) -> None:
    watch, root = tree(tmp_path)
    put(
        root,
        'group = "lab"\ntags = ["confocal"]\n[target]\nproject = "P"\ndataset = "D0"\n'
        '[key_values]\nMicroscope = "LSM 980"\nStain = "DAPI"\n',
    )
    run = os.path.join(root, "P", "run42")
    put(run, '[target]\ndataset = "run42"\n[key_values]\nStain = "GFP"\n')
    p = plan(watch, root, os.path.join(run, "sub"))
    assert (p.project, p.dataset, p.group) == ("P", "run42", "lab")
    assert dict(p.key_values) == {"Microscope": "LSM 980", "Stain": "GFP"}
    assert p.tags == ("confocal",)
    # A sibling folder is not touched by run42's file.
    other = plan(watch, root, os.path.join(root, "P", "run43"))
    assert other.dataset == "D0" and dict(other.key_values)["Stain"] == "DAPI"


def test_project_and_dataset_need_the_dataset_resolved_before_the_import(tmp_path: Path) -> None:
    watch, root = tree(tmp_path)
    put(root, '[target]\nproject = "P"\ndataset = "D"\n')
    p = plan(watch, root, root)
    assert p.needs_container
    with pytest.raises(ValueError, match="resolved"):
        p.cli_args()
    assert p.cli_args(dataset_id=51) == ["-d", "51"]


def test_a_nearer_screen_replaces_an_inherited_project_and_dataset(tmp_path: Path) -> None:
    watch, root = tree(tmp_path)
    put(root, '[target]\nproject = "P"\ndataset = "D"\n')
    plates = os.path.join(root, "plates")
    put(plates, '[target]\nscreen = "Screen A"\n')
    p = plan(watch, root, plates)
    assert (p.project, p.dataset, p.screen) == (None, None, "Screen A")
    assert p.cli_args() == ["-T", "Screen:name:Screen A"]


def test_template_is_filled_from_the_path(tmp_path: Path) -> None:
    watch, root = tree(tmp_path)
    put(root, '[target]\ntemplate = "Dataset:name:{parent}-{folder}"\n')
    p = plan(watch, root, os.path.join(root, "2026", "run7"))
    assert p.cli_args() == ["-T", "Dataset:name:2026-run7"]


def test_project_without_any_dataset_in_force_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    watch, root = tree(tmp_path)
    put(root, '[target]\nproject = "P"\n')
    with pytest.raises(SettingsError, match=r"no target\.dataset"):
        plan(watch, root, root)


def test_allowed_import_args_pass_and_others_are_refused_with_the_fix(tmp_path: Path) -> None:
    watch, root = tree(tmp_path)
    put(root, 'import_args = ["--skip=minmax"]\n')
    assert plan(watch, root, root).cli_args() == ["--skip=minmax"]
    put(root, 'import_args = ["--transfer=ln_s"]\n')
    with pytest.raises(SettingsError, match=r"--transfer is not allowed.*omero.fs.ng.folderImportArgs"):
        plan(watch, root, root)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[target\ndataset = 1", "not valid TOML"),
        ('datset = "x"\n', "unknown key 'datset'"),
        ('[target]\ndatset = "x"\n', "unknown target key 'datset'"),
        ("[target]\ndataset = 3\n", "must be a text"),
        ('[target]\ndataset = ""\n', "is empty"),
        ('[target]\ndataset = "a\\u0000b"\n', "control character"),
        ('[target]\nscreen = "S"\ndataset = "D"\n', "cannot be combined"),
        ('[target]\ntemplate = "Project:name:{folder}"\n', "must start with Dataset:name:"),
        ('[target]\ntemplate = "Dataset:name:{home}"\n', r"uses \{home\}"),
        ('tags = "one"\n', "tags must be a list"),
        ('import_args = ["-d 5"]\n', "must be one --option"),
        ('import_args = ["--skip", "x"]\n', "must be one --option"),
    ],
)
def test_a_malformed_file_is_an_error_naming_the_file_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    watch, root = tree(tmp_path)
    path = put(root, text)
    with pytest.raises(SettingsError, match=message) as err:
        plan(watch, root, root)
    assert path in str(err.value)


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    watch, root = tree(tmp_path)
    put(root, "# " + "x" * (70 << 10) + "\n")
    with pytest.raises(SettingsError, match="over the limit"):
        plan(watch, root, root)


def test_entry_counts_are_bounded() -> None:
    limits = SettingsLimits(max_key_values=3, max_tags=2)
    kv = "[key_values]\n" + "".join(f'k{i} = "v"\n' for i in range(4))
    with pytest.raises(SettingsError, match="over the limit of 3"):
        parse_settings("f", kv.encode(), limits=limits)
    with pytest.raises(SettingsError, match="over the limit of 2"):
        parse_settings("f", b'tags = ["a", "b", "c"]\n', limits=limits)


def test_not_utf8_is_an_error() -> None:
    with pytest.raises(SettingsError, match="not UTF-8"):
        parse_settings("f", b'group = "\xff"\n')


def test_a_settings_file_that_is_a_link_is_refused_not_followed(tmp_path: Path) -> None:
    watch, root = tree(tmp_path)
    other = tmp_path / "DropBox" / "zak"
    real = put(other, '[target]\ndataset = "zak-secret"\n')
    os.symlink(real, os.path.join(root, SETTINGS_NAME))
    with pytest.raises(SettingsError, match="symbolic link"):
        plan(watch, root, root)


def test_a_folder_on_the_way_that_is_a_link_is_refused(tmp_path: Path) -> None:
    watch, root = tree(tmp_path)
    put(tmp_path / "elsewhere", '[target]\ndataset = "x"\n')
    os.symlink(tmp_path / "elsewhere", os.path.join(root, "run"))
    with pytest.raises(SettingsError, match="symbolic link"):
        plan(watch, root, os.path.join(root, "run"))


def test_a_folder_outside_the_users_root_is_refused(tmp_path: Path) -> None:
    watch, root = tree(tmp_path)
    with pytest.raises(SettingsError, match="not inside"):
        plan(watch, root, os.path.join(watch, "zak"))


def test_the_journaled_form_holds_what_was_in_force(tmp_path: Path) -> None:
    watch, root = tree(tmp_path)
    src = put(root, 'group = "lab"\n[target]\ndataset = "D"\n')
    assert plan(watch, root, root).to_json() == (
        f'{{"dataset": "D", "group": "lab", "sources": ["{src}"], "target": "Dataset:name:D"}}'
    )


def test_the_journaled_plan_reads_back_as_the_same_plan(tmp_path: Path) -> None:
    watch, root = tree(tmp_path)
    put(
        root,
        'group = "lab"\ntags = ["a", "b"]\nimport_args = ["--skip=thumbnails"]\n'
        '[target]\nproject = "P"\ndataset = "D"\n[key_values]\nStain = "DAPI"\n',
    )
    p = plan(watch, root, root)
    assert ImportPlan.from_json(p.to_json()) == p
    assert ImportPlan.from_json("") == ImportPlan()
    assert p.annotates and p.sets_target and p.needs_container


@pytest.mark.parametrize(
    ("site", "kept"),
    [
        (["-T", "Dataset:name:site", "--skip=all"], ["--skip=all"]),
        (["-TDataset:name:site", "--skip", "all"], ["--skip", "all"]),
        (["--target=Dataset:name:site", "-d", "7", "-r", "9", "--debug=WARN"], ["--debug=WARN"]),
        (["-d7", "--checksum-algorithm=File-Size-64"], ["--checksum-algorithm=File-Size-64"]),
        (["--depth", "4"], ["--depth", "4"]),
    ],
)
def test_a_folder_target_replaces_the_sites_target_options(site: list[str], kept: list[str]) -> None:
    assert without_target(site) == kept


@pytest.mark.parametrize("name", [b"run\n7", b"run\x1b[31m", b"caf\xe9"])
def test_a_template_never_renders_a_folder_name_that_is_not_plain_text(tmp_path: Path, name: bytes) -> None:
    watch, root = tree(tmp_path)
    put(root, '[target]\ntemplate = "Dataset:name:{folder}"\n')
    folder = os.path.join(root, os.fsdecode(name))
    os.makedirs(os.fsencode(folder))
    with pytest.raises(SettingsError, match=r"not plain text.*rename the folder"):
        plan(watch, root, folder)
    # The same folder is fine when the template does not use its name.
    put(root, '[target]\ntemplate = "Dataset:name:{user}"\n')
    assert plan(watch, root, folder).target == "Dataset:name:amy"
