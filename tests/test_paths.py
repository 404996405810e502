"""The base layer's facts about this host: home, host name, live pids, free disk, file locks."""

import os
import subprocess
import sys

from conftest import ROOT

from fp8demo import paths


def test_home_and_host_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FP8DEMO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FP8DEMO_HOST", "host a")
    assert paths.default_home() == tmp_path / "home" and paths.host_name() == "host a"


def test_a_pid_is_alive_until_its_process_has_exited():
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    assert paths.pid_alive(os.getpid()) and not paths.pid_alive(done.pid)
    assert not paths.pid_alive(None) and not paths.pid_alive(0)


def test_free_megabytes_of_a_folder_and_of_nothing(tmp_path):
    assert paths.free_megabytes(tmp_path) > 0
    assert paths.free_megabytes(tmp_path / "missing") is None


def test_a_lock_is_held_by_one_handle_and_names_its_holder(tmp_path):
    path = tmp_path / "worker-0.lock"
    assert paths.lock_holder(path) is None
    held = paths.try_lock(path)
    held.write(str(os.getpid()))
    held.flush()
    code = "import sys; from fp8demo import paths; print(paths.try_lock(sys.argv[1]))"
    other = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert other.stdout == "None\n", other.stderr  # another process cannot take it
    assert paths.lock_holder(path) == os.getpid()
    held.close()
    assert paths.lock_holder(path) is None
    with paths.hold_lock(path):
        assert paths.try_lock(path) is None  # flock: a second handle of this process waits too
    assert paths.try_lock(path) is not None
