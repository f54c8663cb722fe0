"""Servers the tests start die with the test run, even when it is killed by hand.

A fixture stops its server on a normal exit; a ``kill -9`` of pytest (or of an xdist worker)
skips every finaliser, and the server would keep running with its port. On Linux the server
is started through util-linux's ``setpriv --pdeathsig TERM``: the kernel sends it SIGTERM
when the process that started it dies. ``setpriv`` then execs the server, so its pid, signals
and exit status are the server's own.
"""

from __future__ import annotations

import shutil
import sys

_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def dies_with_us(argv: list[str]) -> list[str]:
    """``argv`` run so that the server is sent SIGTERM when this process dies (unchanged
    where ``setpriv`` is missing). Start it from the thread that lives as long as the test
    run (fixtures run in the main thread): Linux sends the signal when the *thread* that
    started the server ends."""
    if _SETPRIV is None:
        return argv
    return [_SETPRIV, "--pdeathsig", "TERM", "--", *argv]
