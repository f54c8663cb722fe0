"""The servers the tests start die with the test run (tests/process_support.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .process_support import dies_with_us

MIDDLE = """
import json, subprocess, sys, time
server = subprocess.Popen(json.loads(sys.argv[1]))
print(server.pid, flush=True)
time.sleep(60)
"""


def _gone(pid: int) -> bool:
    """No such process, or a zombie waiting for init to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_a_server_dies_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    """A test process killed with SIGKILL runs no finaliser; its server still gets SIGTERM."""
    argv = dies_with_us([sys.executable, "-c", "import time; time.sleep(60)"])
    middle = subprocess.Popen([sys.executable, "-c", MIDDLE, json.dumps(argv)], stdout=subprocess.PIPE, text=True)
    try:
        assert middle.stdout is not None
        server = int(middle.stdout.readline())
        time.sleep(0.5)  # the server has exec'd its own program
        assert not _gone(server)
        assert Path(f"/proc/{server}/cmdline").read_bytes().split(b"\0")[:2] == [sys.executable.encode(), b"-c"]
        middle.send_signal(signal.SIGKILL)
        middle.wait(10)
        deadline = time.monotonic() + 10
        while not _gone(server) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling another process's exit
        if not _gone(server):
            os.kill(server, signal.SIGKILL)
            raise AssertionError("the server outlived the process that started it")
    finally:
        if middle.poll() is None:
            middle.kill()
            middle.wait(10)
        if middle.stdout is not None:
            middle.stdout.close()
