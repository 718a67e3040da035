"""platform/memory.pin_mmap_threshold: freed buffers of varying sizes go back to the system instead of staying in
glibc's heap (what held 1.2 GB of free memory before the first edit of `edit bench --n 1000`, docs/scaling.md).
Each side runs in its own process: the setting is process-wide."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lifelong.platform.memory import _glibc

REPO = Path(__file__).resolve().parents[1]

# forward-like churn: big buffers of shapes that vary, freed at once, between small ones that stay
CHURN = """
import sys
import numpy as np
from pathlib import Path

def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024

if sys.argv[1] == "pin":
    from lifelong.platform.memory import pin_mmap_threshold
    assert pin_mmap_threshold()
base = rss_mb()
keep = []
for i in range(300):
    a = np.ones(int((2 + (i * 7) % 18) * 2**20 / 8))
    keep.append(np.ones(2000))
    b = np.ones(int((1 + (i * 5) % 9) * 2**20 / 8))
    keep.append(np.ones(3000))
    del a, b
print(rss_mb() - base)
"""


def _growth_mb(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, timeout=120,
                         cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_glibc() is None or not Path("/proc/self/status").exists(), reason="needs glibc and /proc")
def test_a_pinned_threshold_returns_freed_buffers_that_the_default_keeps():
    default, pinned = _growth_mb("default"), _growth_mb("pin")
    assert default >= 25, f"the churn no longer fragments the default heap ({default} MB): the test proves nothing"
    assert pinned <= default / 2, (pinned, default)
