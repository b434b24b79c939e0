"""What one key file may make the grouper do (:class:`GroupingLimits`), and the
per-key-file budget that enforces it."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class GroupingLimits:
    """What one key file may make the grouper do; lab users write key files.

    Every cap is checked before the work it bounds is done (a count is computed as a
    product first); a key file over a cap is not imported and its reason names the cap.
    """

    # Real plates and time-lapses have thousands to tens of thousands of files (a 1536-well
    # plate x 9 fields x 4 channels is 55,296); 100,000 leaves room and still bounds a
    # regroup to well under a second per key file (benches/bench_grouping.py --hostile).
    max_members: int = 100_000
    # .nd, .pattern and Slidedat.ini are a few KiB; OME-XML companions and InCell .xdce
    # grow ~0.5 KiB per image, so 16 MiB covers ~30,000 images listed in XML.
    max_key_file_bytes: int = 16 << 20
    # A real IFD has a few dozen entries; the OME-XML of an OME-TIFF lists every plane.
    max_tiff_entries: int = 4096
    max_tiff_description_bytes: int = 32 << 20
    # Cooperative: checked in every loop that can run long, so one key file cannot hold
    # the single engine thread longer than this.
    key_file_seconds: float = 5.0
    # Directory entries a regular-expression .pattern (and a Folder rule) may list.
    max_listing: int = 200_000
    # Compiled size of a .pattern regular expression (Rust regex size_limit).
    max_regex_bytes: int = 1 << 20
    # Key files whose parse results are kept between regroups, and the paths they may
    # hold in all (~100-150 bytes each: 1,000,000 paths is ~150 MB at most).
    cache_entries: int = 4096
    cache_paths: int = 1_000_000


DEFAULT_LIMITS = GroupingLimits()


class KeyFileRejected(Exception):
    """A key file that must not be imported; ``reason`` is shown to operators."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def over_size(size: int, cap: int) -> KeyFileRejected:
    return KeyFileRejected(
        f"key file is {size:,} bytes, over the limit of {cap:,} bytes "
        "(GroupingLimits.max_key_file_bytes); not importing it"
    )


def too_many(count: int, limits: GroupingLimits, what: str = "files") -> KeyFileRejected:
    return KeyFileRejected(
        f"key file declares {count:,} {what}, over the limit of {limits.max_members:,} members "
        "per fileset (GroupingLimits.max_members); not importing it"
    )


class Budget:
    """A per-key-file deadline, checked cooperatively by every loop that can run long."""

    __slots__ = ("deadline", "limits", "n")

    def __init__(self, limits: GroupingLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.key_file_seconds
        self.n = 0

    def tick(self) -> None:
        self.n += 1
        if self.n & 255 == 0:
            self.check()

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise KeyFileRejected(
                f"reading the key file took longer than {self.limits.key_file_seconds:g} s "
                "(GroupingLimits.key_file_seconds); not importing it"
            )

    def count(self, n: int, what: str = "files") -> None:
        """Refuse a declared member count over the cap, before anything is built."""
        if n > self.limits.max_members:
            raise too_many(n, self.limits, what)


def default_budget() -> Budget:
    return Budget(DEFAULT_LIMITS)
