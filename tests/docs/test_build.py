"""Building the package (`pip install .`, `pip wheel .`) leaves the checkout's `git status` clean: what a build
writes into the source tree is ignored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.test_walkthrough import fresh_clone, git

pytestmark = pytest.mark.e2e


def test_pip_install_and_pip_wheel_of_a_clone_leave_git_status_clean(tmp_path: Path) -> None:
    """`pip install .` builds in the source tree (setuptools' `build/`, `proxy.egg-info/`) and `pip wheel .` drops
    the wheel there too: a newcomer's clone then shows untracked files they did not make. Built offline, with this
    venv's setuptools (no index is asked)."""
    clone = fresh_clone(tmp_path / "clone")
    offline = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    build = ["--no-deps", "--no-build-isolation", "--no-index"]
    for command in (
        [*offline, "install", *build, "--target", str(tmp_path / "target"), "."],
        [*offline, "wheel", *build, "."],  # the wheel lands in the current folder, as `pip wheel .` does
    ):
        done = subprocess.run(command, cwd=clone, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
    assert (clone / "build").is_dir() and list(clone.glob("proxy-*.whl")), "the build wrote elsewhere: test nothing"
    assert (tmp_path / "target" / "proxy" / "cli" / "main.py").is_file()
    assert git(clone, "status", "--porcelain", "--untracked-files=all") == ""
