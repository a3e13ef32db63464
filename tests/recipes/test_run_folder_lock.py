"""``--resume`` of a run folder that another live process is still writing is refused (two runs in one folder
overwrote each other's steps, and the resume deleted the live run's temporary files: seen when a run that
ignored Ctrl-C kept going while the user resumed it); a lock left by a killed run is stale and ignored."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from netcompress.core.errors import ConfigError
from netcompress.recipes import run_recipe
from netcompress.recipes.run_folder import LOCK_FILE

from .test_run_folders import _recipe


def _lock(folder, pid, host=None):
    (folder / LOCK_FILE).write_text(
        json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "x"})
    )


def test_resume_refused_while_another_process_writes_the_folder(tmp_path):
    out = tmp_path / "r"
    run_recipe(_recipe(), out_dir=out, progress=False)
    assert not (out / LOCK_FILE).exists()  # a finished run leaves no lock
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock(out, other.pid)
        with pytest.raises(
            ConfigError, match=rf"run folder .* is in use by process {other.pid} .*then --resume"
        ):
            run_recipe(_recipe(), out_dir=out, resume=True, progress=False)
        assert {
            p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != LOCK_FILE
        } == before
        _lock(out, other.pid, host="another-host")
        with pytest.raises(ConfigError, match=f"in use by process {other.pid} on another-host"):
            run_recipe(_recipe(), out_dir=out, resume=True, progress=False)
    finally:
        other.kill()
        other.wait()


def test_stale_lock_of_a_killed_run_does_not_block_resume(tmp_path):
    out = tmp_path / "r"
    first = run_recipe(_recipe(), out_dir=out, progress=False)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _lock(out, gone.pid)
    again = run_recipe(_recipe(), out_dir=out, resume=True, progress=False)
    assert again.final["accuracy"] == first.final["accuracy"]
    assert not (out / LOCK_FILE).exists()
