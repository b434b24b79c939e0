"""Reading files that another process appends to (importer records, service logs)."""

from __future__ import annotations

from pathlib import Path


def complete_part(data: bytes) -> bytes:
    """``data`` up to its last newline: a last line without one is still being appended."""
    return data[: data.rfind(b"\n") + 1]


def complete_lines(path: Path, errors: str = "strict") -> list[str]:
    """The finished lines of a file that another process appends to ([] while it does not exist).

    Every reader of such a file (importer records, logs) goes through here: a reader can see an
    append half done (a large write lands page by page), so a last line without its newline is
    left out until the writer finishes it.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return [line.decode("utf-8", errors) for line in complete_part(data).split(b"\n")[:-1]]
