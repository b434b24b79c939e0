"""The retry policy: back-off times, permanent and transient failures, giving up."""

from __future__ import annotations

import pytest

from omero_dropbox.retry_policy import RetryPolicy
from omero_dropbox.states import FilesetState


def test_backoff_doubles_up_to_the_cap() -> None:
    p = RetryPolicy(max_attempts=10, backoff_initial=30, backoff_factor=2, backoff_max=100)
    assert [p.backoff(a) for a in range(1, 6)] == [30, 60, 100, 100, 100]


def test_transient_failures_are_retried_until_the_last_attempt() -> None:
    p = RetryPolicy(max_attempts=3, backoff_initial=1, backoff_factor=3, backoff_max=60)
    first = p.decide(1, ok=False, transient=True, reason="server down")
    assert (first.state, first.reason, first.retry_in, first.gave_up) == (
        FilesetState.QUEUED,
        "server down",
        1.0,
        False,
    )
    assert p.decide(2, ok=False, transient=True, reason="x").retry_in == 3.0
    last = p.decide(3, ok=False, transient=True, reason="timeout")
    assert (last.state, last.reason, last.retry_in, last.gave_up) == (
        FilesetState.FAILED,
        "gave up after 3 attempt(s): timeout",
        None,
        True,
    )


def test_a_permanent_failure_fails_at_once_and_success_is_imported() -> None:
    p = RetryPolicy(max_attempts=5)
    perm = p.decide(1, ok=False, transient=False, reason="")
    assert (perm.state, perm.reason, perm.gave_up) == (FilesetState.FAILED, "import failed", True)
    ok = p.decide(2, ok=True, transient=False, reason="")
    assert (ok.state, ok.reason, ok.gave_up) == (FilesetState.IMPORTED, "attempt 2", False)


def test_exhausted_after_crashes() -> None:
    p = RetryPolicy(max_attempts=3)
    assert not p.exhausted(2) and p.exhausted(3)
    assert p.exhausted_reason(3, "") == "gave up after 3 attempt(s); last: ?"


@pytest.mark.parametrize(
    "kw", [{"max_attempts": 0}, {"backoff_initial": -1}, {"backoff_max": -1}, {"backoff_factor": 0.5}]
)
def test_bad_settings_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kw)  # type: ignore[arg-type]
