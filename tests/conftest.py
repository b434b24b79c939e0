"""Fixtures for every layer: real directories on tmpfs where available.

Helpers live in :mod:`tests.support`; this file holds fixtures only."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import pg_dsn, postgres_server  # noqa: F401  (fixtures)
from tests.support.watching import WATCH_BACKENDS, WatchBackend, require_backend


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A fresh directory on tmpfs (fast file creation), falling back to the system temp dir."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="odb-test-", dir=base))
    try:
        yield path
    finally:
        # Tests may leave unreadable directories behind on purpose.
        for dirpath, dirnames, _ in os.walk(path):
            for name in dirnames:
                try:
                    os.chmod(os.path.join(dirpath, name), 0o755)
                except OSError:
                    pass
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=sorted(WATCH_BACKENDS))
def backend(request: pytest.FixtureRequest) -> WatchBackend:
    """Each watcher backend in turn: native (our inotify), notify (notify's watcher), poll,
    fanotify (skipped, with the reason, where the process lacks CAP_SYS_ADMIN)."""
    require_backend(request.param)
    return WATCH_BACKENDS[request.param]
