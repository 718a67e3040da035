"""File-system fixtures of the hardening tests: a folder that no process can write to."""

from __future__ import annotations

import os
import subprocess

import pytest


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no process can write to: a read-only tmpfs when running as root (chmod does not stop root), else
    a folder with mode 0555."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root (chmod does not stop writes) and cannot mount a read-only tmpfs: "
                    f"{mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)
