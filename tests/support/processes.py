"""Child processes as a terminal user would run them."""

from __future__ import annotations

import signal


def sigint_as_a_terminal_sends_it() -> None:
    """``preexec_fn`` for a child that a test interrupts with SIGINT, as Ctrl-C would.

    A job started in the background by a non-interactive shell (CI runners, ``cmd &``)
    ignores SIGINT, and children inherit that; Python then never raises KeyboardInterrupt.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
