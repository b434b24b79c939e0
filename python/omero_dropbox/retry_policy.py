"""When a failed import is tried again, and when the drop box gives up on it.

Pure: given an attempt's outcome, :meth:`RetryPolicy.decide` says what the fileset becomes.
A transient failure (OMERO down, a timeout, an importer that raised) is tried again after an
exponential back-off (``backoff_initial`` doubling by ``backoff_factor`` up to ``backoff_max``)
until ``max_attempts`` attempts were made, then fails; a permanent failure (a corrupt file, an
importer that said so) fails at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from omero_dropbox.states import FilesetState

__all__ = ["Decision", "RetryPolicy"]


@dataclass(frozen=True)
class Decision:
    """What a fileset becomes after an attempt: ``state``, with ``reason``; ``retry_in``
    seconds from now when it is queued again; ``gave_up`` when it will not be tried again by
    itself although it did not succeed."""

    state: FilesetState
    reason: str
    retry_in: float | None = None
    gave_up: bool = False


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff_initial: float = 30.0
    backoff_factor: float = 2.0
    backoff_max: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, not {self.max_attempts!r}")
        if self.backoff_initial < 0 or self.backoff_max < 0 or self.backoff_factor < 1:
            raise ValueError(
                "backoff_initial and backoff_max must be >= 0 and backoff_factor >= 1, not "
                f"{self.backoff_initial!r}, {self.backoff_factor!r}, {self.backoff_max!r}"
            )

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 for the first)."""
        return float(min(self.backoff_max, self.backoff_initial * self.backoff_factor ** (attempt - 1)))

    def exhausted(self, attempts: int) -> bool:
        """No attempt is left after ``attempts`` (only crashes during imports get here unasked)."""
        return attempts >= self.max_attempts

    @staticmethod
    def exhausted_reason(attempts: int, last_error: str) -> str:
        return f"gave up after {attempts} attempt(s); last: {last_error or '?'}"

    def decide(self, attempt: int, ok: bool, transient: bool, reason: str) -> Decision:
        """The outcome of attempt number ``attempt``."""
        if ok:
            return Decision(FilesetState.IMPORTED, f"attempt {attempt}")
        if transient and attempt < self.max_attempts:
            return Decision(FilesetState.QUEUED, reason, retry_in=self.backoff(attempt))
        reason = reason or "import failed"
        if transient:
            reason = f"gave up after {attempt} attempt(s): {reason}"
        return Decision(FilesetState.FAILED, reason, gave_up=True)
