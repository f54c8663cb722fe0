"""`make demo`'s script runs end to end on a fresh `lockkit init` (no network, no Flask)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_script(tmp_path: Path) -> None:
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    lockkit = Path(sys.executable).with_name("lockkit")
    init = subprocess.run([str(lockkit), "init", "--if-missing"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert init.returncode == 0, init.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "bob tries to decrypt alice's row: DecryptionError" in out
    assert "note contains 'budget'     -> rows [2]" in out
    assert "bob:   note contains 'budget'     -> rows []" in out
    assert "Dentist on Tuesday" in out  # alice's own decrypt
