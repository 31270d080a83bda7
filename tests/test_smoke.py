"""The GPU smoke script (benchmarks/smoke.py) runs on CPU too: its own logic, and its rule that every registered op
has a smoke function and every compiled op gets launched, are checked in every CI run, not only on a GPU."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_quick_on_cpu():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "benchmarks/smoke.py", "--device", "cpu", "--scope", "quick"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "smoke: PASS" in out.stdout
