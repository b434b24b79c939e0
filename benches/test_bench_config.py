"""Configuration load: upstream omero.fs properties from templates.xml, a TOML file and -D."""

from __future__ import annotations

from pathlib import Path

from pytest_benchmark.fixture import BenchmarkFixture

from omero_dropbox.config import TOML_LAYOUT, DropBoxConfig, load_config
from tests.support.sample_config import REALISTIC_TEMPLATES

OVERRIDES = [
    "omero.fs.dirImportWait=2",
    "omero.fs.throttleImport=0",
    "omero.fs.whitelist=.tif,.ics,.ids",
]


def _files(where: Path) -> tuple[Path, Path]:
    templates, toml = where / "templates.xml", where / "dropbox.toml"
    templates.write_text(REALISTIC_TEMPLATES, encoding="utf-8")
    toml.write_text(TOML_LAYOUT, encoding="utf-8")
    return templates, toml


def test_load_overrides_only(benchmark: BenchmarkFixture) -> None:
    config: DropBoxConfig = benchmark(load_config, overrides=OVERRIDES)
    assert config.users


def test_load_templates_toml_and_overrides(benchmark: BenchmarkFixture, shm_dir: Path) -> None:
    templates, toml = _files(shm_dir)
    config: DropBoxConfig = benchmark(load_config, templates=templates, toml_file=toml, overrides=OVERRIDES)
    assert {u.import_user for u in config.users} >= {"default"}
