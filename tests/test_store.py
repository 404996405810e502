"""The run store: its schema (versioned, migrated forward, refused when newer), and the same
behaviour on SQLite and PostgreSQL."""

import sqlite3

import numpy as np
import pytest
from conftest import ROOT

from fp8demo.config import TrainConfig
from fp8demo.database import Database
from fp8demo.store import APPLICATION_ID, SCHEMA_VERSION, Store, StoreError


@pytest.fixture
def store(store_url, tmp_path) -> Store:
    """A new store on each backend: tests taking it run on SQLite and on PostgreSQL."""
    return Store(tmp_path / "home", url=store_url)


V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE comparisons (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at REAL NOT NULL,
                          config TEXT NOT NULL, label TEXT NOT NULL DEFAULT '');
INSERT INTO meta VALUES ('schema_version', '1');
"""


def test_a_version_1_store_is_migrated_and_keeps_its_rows(tmp_path):
    path = tmp_path / "runs.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(V1)
        conn.execute(
            "INSERT INTO comparisons (created_at, config, label) VALUES (1.0, ?, 'old')",
            (TrainConfig().to_json(),),
        )
    store = Store(tmp_path)
    old = store.comparison(1)
    assert old["label"] == "old" and old["group_id"] is None
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
    cid, _ = store.create_comparison(TrainConfig(), group_id="self")
    assert store.comparison(cid)["group_id"] == cid
    assert _application_id(path) == APPLICATION_ID  # recognised by its tables, then stamped


def _application_id(path) -> int:
    with sqlite3.connect(path) as conn:
        value = conn.execute("PRAGMA application_id").fetchone()[0]
    conn.close()
    return value


def test_a_new_store_is_stamped_as_fp8demos(tmp_path):
    Store(tmp_path)
    assert _application_id(tmp_path / "runs.sqlite") == APPLICATION_ID


def test_an_unstamped_store_keeps_opening_and_is_stamped(tmp_path):
    store = Store(tmp_path)
    cid, run_ids = store.create_comparison(TrainConfig(), label="kept")
    with sqlite3.connect(store.path) as conn:  # a store as written without the stamp
        conn.execute("PRAGMA application_id = 0")
    conn.close()
    assert _application_id(store.path) == 0
    reopened = Store(tmp_path)
    assert reopened.comparison(cid)["label"] == "kept"
    assert [r["id"] for r in reopened.runs(cid)] == run_ids
    assert _application_id(store.path) == APPLICATION_ID


def test_an_empty_sqlite_file_becomes_a_store(tmp_path):
    (tmp_path / "runs.sqlite").touch()
    sqlite3.connect(tmp_path / "runs.sqlite").close()
    store = Store(tmp_path)
    store.create_comparison(TrainConfig())
    assert len(store.runs()) == len(TrainConfig().precisions)


def test_a_store_that_sqlite_itself_cannot_read_is_still_refused_clearly(tmp_path):
    store = Store(tmp_path)
    store.create_comparison(TrainConfig())
    del store
    path = tmp_path / "runs.sqlite"
    damaged = bytearray(path.read_bytes())
    damaged[100:] = b"\xff" * (len(damaged) - 100)  # the header survives, the pages do not
    path.write_bytes(bytes(damaged))
    (tmp_path / "runs.sqlite-wal").unlink(missing_ok=True)
    try:
        Store(tmp_path)
    except StoreError as e:
        assert str(e).startswith(f"The run store {path} is not usable: ")
        assert str(e).endswith("Move it away or set FP8DEMO_HOME to another folder.")
    else:
        raise AssertionError("a damaged store opened")
    assert path.read_bytes() == bytes(damaged)


@pytest.mark.parametrize("run_id", ["2", " 2 ", 2, 2.0, np.int64(2), np.float32(2)], ids=repr)
def test_a_whole_number_names_a_run_in_any_form(run_id, store):
    store.create_comparison(TrainConfig(precisions=("bf16", "fp8")))
    run = store.run(run_id)
    assert run["id"] == 2 and run["precision"] == "fp8"


def test_a_version_3_store_gets_the_recipe_table_and_keeps_its_probes(tmp_path):
    store = Store(tmp_path)
    _, (run_id,) = store.create_comparison(TrainConfig(precisions=("fp8",)))
    store.merge_summary(run_id, fp8_layers=[{"name": "a"}, {"name": "b"}])
    probe = np.full((2, 3, 2), 0.25, np.float32)
    store.add_fp8_probe(run_id, [(0, probe)])
    with sqlite3.connect(store.path) as conn:  # the store as schema 3 left it
        conn.execute("DROP TABLE fp8_recipes")
        conn.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    conn.close()

    store = Store(tmp_path)
    np.testing.assert_array_equal(store.fp8_probe(run_id)[1], [probe])
    steps, names, stats = store.fp8_recipes(run_id)
    assert len(steps) == 0 and names == () and stats.shape == (0, 2, 3, 0, 3)
    # [layers, roles, recipes, (underflow %, saturation %, SNR dB)], +inf SNR kept as is.
    measured = np.arange(2 * 3 * 2 * 3, dtype=np.float32).reshape(2, 3, 2, 3)
    measured[1, 2, 0, 2] = np.inf
    store.add_fp8_recipes(run_id, ("mxfp8", "delayed"), [(0, measured), (4, measured + 1)])
    steps, names, stats = store.fp8_recipes(run_id)
    assert list(steps) == [0, 4] and names == ("delayed", "mxfp8")  # recipes.RECIPES' order
    np.testing.assert_array_equal(stats[0], measured[:, :, ::-1])
    np.testing.assert_array_equal(stats[1], measured[:, :, ::-1] + 1)
    assert len(store.fp8_recipes(run_id, since_step=0)[0]) == 1
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
    conn.close()


def test_opening_a_store_again_keeps_sqlites_locks_for_live_connections(tmp_path):
    """A second Store on the same file in this process must not drop the POSIX locks SQLite
    holds for the first: another process would then take this store for unused, checkpoint
    and delete its write-ahead log under a live connection (a corrupt store)."""
    import subprocess
    import sys

    home = tmp_path / "home"
    first = Store(home)
    first.create_comparison(TrainConfig(precisions=("bf16",)))  # a live connection, a WAL
    Store(home).runs()  # the same file opened again in this process
    other = "import sys; from fp8demo.store import Store; Store(sys.argv[1]).runs()"
    subprocess.run([sys.executable, "-c", other, str(home)], check=True, cwd=ROOT)
    # Only the last connection to close may remove the log; this process still holds one.
    assert (home / "runs.sqlite-wal").exists()
    assert [r["precision"] for r in first.runs()] == ["bf16"]


# -- the same behaviour on both backends ---------------------------------------------------------


def test_comparisons_runs_and_the_queue(store):
    config = TrainConfig(precisions=("bf16", "fp8"))
    first, (bf16, fp8) = store.create_comparison(config, label="a", group_id="self")
    second, (only,) = store.create_comparison(TrainConfig(precisions=("fp8",)), group_id=first)
    assert [c["id"] for c in store.comparisons()] == [second, first]
    assert store.latest_comparison_id() == second
    assert [c["id"] for c in store.group(first)] == [first, second]
    assert store.comparison(first)["label"] == "a"
    assert [r["precision"] for r in store.runs(first)] == ["bf16", "fp8"]
    claimed = store.claim_next_run(4321)
    assert (claimed["id"], claimed["status"], claimed["worker_pid"]) == (bf16, "running", 4321)
    assert [r["id"] for r in store.queue()] == [bf16, fp8, only]  # running first, then queued
    store.update_run(bf16, step=2**40, summary={"k": [1, 2]})  # 64-bit counts on both
    store.merge_summary(bf16, more=True)
    run = store.run(bf16)
    assert run["step"] == 2**40 and run["summary"] == {"k": [1, 2], "more": True}
    store.end_run(bf16, "finished", test_accuracy=0.875)
    assert (store.run(bf16)["status"], store.run(bf16)["test_accuracy"]) == ("finished", 0.875)


def test_cancelling_a_queued_and_a_running_run(store):
    _, (running, queued) = store.create_comparison(TrainConfig(precisions=("bf16", "fp8")))
    store.claim_next_run(1)
    assert store.request_cancel(queued) == "queued" and store.run(queued)["status"] == "cancelled"
    assert store.request_cancel(running) == "running" and store.cancel_requested(running)
    assert store.run(running)["status"] == "running"  # it stops at its next step
    with pytest.raises(StoreError, match="^There is no run 99.$"):
        store.request_cancel(99)
    with pytest.raises(StoreError) as raised:
        store.run(99)
    assert str(raised.value) == f"There is no run 99 in {store.where}."


def test_metrics_and_fp8_snapshots_round_trip(store):
    _, (run_id,) = store.create_comparison(TrainConfig(precisions=("fp8",)))
    store.merge_summary(run_id, fp8_layers=[{"name": "a"}, {"name": "b"}])
    store.add_steps(run_id, [(0, 0, 1.0, 0.7, 0.5), (1, 0, 2.0, float("nan"), 0.25)])
    store.add_steps(run_id, [(1, 0, 2.0, 0.6, 0.75)])  # a step written again replaces it
    np.testing.assert_array_equal(store.step_metrics(run_id)["loss"], [0.7, 0.6])
    assert list(store.step_metrics(run_id, since_step=0)["step"]) == [1]
    store.add_epoch(run_id, 0, 2, loss=0.6, val_accuracy=float("nan"))
    store.add_epoch(run_id, 0, 2, loss=0.5, val_accuracy=0.8)
    (epoch,) = store.epoch_metrics(run_id)
    assert (epoch["loss"], epoch["val_accuracy"], epoch["accuracy"]) == (0.5, 0.8, None)
    amax = np.random.default_rng(0).random((3, 2, 3)).astype(np.float32)
    store.add_fp8_amax(run_id, 10, amax)
    store.add_fp8_scales(run_id, 12, amax[0] * 2)
    store.add_fp8_probe(run_id, [(12, np.full((2, 3, 2), 0.5, np.float32))])
    steps, values = store.fp8_amax(run_id)
    assert list(steps) == [10, 11, 12]
    np.testing.assert_array_equal(values, amax)
    np.testing.assert_array_equal(store.fp8_amax(run_id, since_step=11)[1], amax[2:])
    np.testing.assert_array_equal(store.fp8_scales(run_id)[1], [amax[0] * 2])
    np.testing.assert_array_equal(store.fp8_probe(run_id)[1], np.full((1, 2, 3, 2), 0.5))
    measured = np.arange(2 * 3 * 2 * 3, dtype=np.float32).reshape(2, 3, 2, 3)
    measured[1, 2, 0, 2] = np.inf  # an exact quantization's SNR
    store.add_fp8_recipes(run_id, ("mxfp8", "delayed"), [(12, measured)])
    steps, names, stats = store.fp8_recipes(run_id)
    assert list(steps) == [12] and names == ("delayed", "mxfp8")
    np.testing.assert_array_equal(stats[0], measured[:, :, ::-1])


def _save_files(store, run_id) -> dict:
    """The files training.save_artifacts writes for a run, then shares."""
    files = {
        "model.weights.h5": bytes(range(256)) * 40,
        "config.json": b'{"precision": "fp8"}',
        "vocabulary.txt": "[PAD]\nfilm\nété".encode(),
    }
    folder = store.run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    store.share_artifacts(run_id)
    return files


def _count(store, table: str) -> int:
    return Database(store.url).connection().execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_deleting_a_comparison_removes_its_runs_metrics_and_files(store):
    gone, (run_id,) = store.create_comparison(TrainConfig(precisions=("fp8",)))
    kept, (kept_run,) = store.create_comparison(TrainConfig(precisions=("bf16",)))
    store.add_steps(run_id, [(0, 0, 1.0, 0.7, 0.5)])
    _save_files(store, run_id)
    # The SQLite store keeps the files in the home only; PostgreSQL in the database too.
    assert _count(store, "artifacts") == (0 if store.backend == "sqlite" else 3)
    store.end_run(run_id, "finished")
    with pytest.raises(StoreError, match="Stop the comparison's runs before deleting it."):
        store.delete_comparison(kept)
    store.delete_comparison(gone)
    assert [r["id"] for r in store.runs()] == [kept_run]
    assert len(store.step_metrics(run_id)["step"]) == 0
    assert not store.run_dir(run_id).exists() and _count(store, "artifacts") == 0


def test_a_store_of_a_newer_version_is_refused_and_left_as_it_is(store, tmp_path):
    store.create_comparison(TrainConfig(precisions=("bf16",)))
    raw = Database(store.url).connection()
    raw.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError) as raised:
        Store(tmp_path / "another home", url=store.url)
    assert str(raised.value).startswith(
        f"The run store {store.where} was written by a newer fp8demo (schema "
        f"{SCHEMA_VERSION + 1}); this version reads schema {SCHEMA_VERSION}. Upgrade fp8demo or "
    )
    assert raw.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1


def test_a_schema_4_store_is_migrated_and_keeps_its_rows(store, tmp_path):
    cid, run_ids = store.create_comparison(TrainConfig(precisions=("bf16",)), label="old")
    raw = Database(store.url).connection()  # the store as schema 4 left it
    raw.execute("DROP TABLE sweeps")
    raw.execute("DROP TABLE workers")  # schema 5 added nothing else
    for column in ("runs.host", "runs.slot", "runs.heartbeat_at", "comparisons.sweep_id"):
        raw.execute("ALTER TABLE {} DROP COLUMN {}".format(*column.split(".")))
    raw.execute("ALTER TABLE comparisons DROP COLUMN trial_number")
    raw.execute("UPDATE meta SET value='4' WHERE key='schema_version'")
    reopened = Store(tmp_path / "another home", url=store.url)
    assert reopened.comparison(cid)["label"] == "old" and reopened.run(run_ids[0])["host"] is None
    assert {"sweeps", "workers"} <= set(raw.tables()) and "heartbeat_at" in raw.columns("runs")
    assert raw.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)


def test_processes_opening_a_new_store_at_once_create_it_once(store_url, tmp_path):
    import subprocess
    import sys

    code = "import sys; from fp8demo.store import Store; Store(sys.argv[1], url=sys.argv[2]).runs()"
    opening = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / f"host {k}"), store_url],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    for process in opening:
        assert process.wait(timeout=120) == 0, process.stderr.read()
    raw = Database(store_url).connection()
    assert [tuple(r) for r in raw.execute("SELECT * FROM meta")] == [
        ("schema_version", str(SCHEMA_VERSION))
    ]
    assert {"comparisons", "runs", "sweeps", "artifacts"} <= set(raw.tables())


def test_the_store_url_comes_from_fp8demo_store(postgres_url, tmp_path, monkeypatch):
    monkeypatch.setenv("FP8DEMO_STORE", postgres_url)
    store = Store(tmp_path / "home")
    assert (store.backend, store.url, store.path) == ("postgresql", postgres_url, None)
    assert (tmp_path / "home" / "runs").is_dir()  # caches and logs stay local to each host
    assert not (tmp_path / "home" / "runs.sqlite").exists()
    monkeypatch.delenv("FP8DEMO_STORE")
    store = Store(tmp_path / "home")
    assert store.backend == "sqlite" and store.path == tmp_path / "home" / "runs.sqlite"
    assert store.url == f"sqlite:///{tmp_path / 'home' / 'runs.sqlite'}"


# -- a run's files on every host -----------------------------------------------------------------


def test_a_runs_files_reach_a_host_that_did_not_train_it(postgres_url, tmp_path):
    trainer = Store(tmp_path / "host a", url=postgres_url)
    _, (run_id,) = trainer.create_comparison(TrainConfig(precisions=("fp8",)))
    files = _save_files(trainer, run_id)
    assert _count(trainer, "artifacts") == len(files)
    viewer = Store(tmp_path / "host b", url=postgres_url)
    folder = viewer.run_dir(run_id)
    assert folder == tmp_path / "host b" / "runs" / str(run_id)
    assert {f.name: f.read_bytes() for f in folder.iterdir() if f.name[0] != "."} == files
    # Fetched once: later calls use this host's copy.
    Database(postgres_url).connection().execute("DELETE FROM artifacts")
    assert viewer.run_dir(run_id) == folder and (folder / "config.json").exists()


def test_a_file_over_the_limit_is_refused_with_what_to_do(postgres_url, tmp_path, monkeypatch):
    import fp8demo.store.artifacts

    monkeypatch.setattr(fp8demo.store.artifacts, "MAX_ARTIFACT_BYTES", 10_000)
    store = Store(tmp_path / "home", url=postgres_url)
    _, (run_id,) = store.create_comparison(TrainConfig(precisions=("fp8",)))
    with pytest.raises(StoreError) as raised:
        _save_files(store, run_id)
    assert str(raised.value) == (
        f"Run {run_id}'s model.weights.h5 has 10,240 bytes, more than the 10,000 the database "
        "store keeps per file: set FP8DEMO_ARTIFACTS to a folder every host mounts to keep "
        "larger models."
    )
    assert _count(store, "artifacts") == 0  # nothing half-shared
    assert (store.run_dir(run_id) / "model.weights.h5").exists()  # this host keeps its copy


def test_a_shared_folder_holds_the_files_on_either_backend(store_url, tmp_path, monkeypatch):
    monkeypatch.setenv("FP8DEMO_ARTIFACTS", str(tmp_path / "mounted"))
    trainer = Store(tmp_path / "host a", url=store_url)
    _, (run_id,) = trainer.create_comparison(TrainConfig(precisions=("fp8",)))
    files = _save_files(trainer, run_id)
    viewer = Store(tmp_path / "host b", url=store_url)
    folder = tmp_path / "mounted" / str(run_id)
    assert trainer.run_dir(run_id) == viewer.run_dir(run_id) == folder
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == files
    assert _count(trainer, "artifacts") == 0


def test_a_store_lock_holds_off_other_processes_until_released(store_url, tmp_path):
    """SQLite: processes of one home; PostgreSQL: of every host (here another home)."""
    import subprocess
    import sys
    import time

    holder = Store(tmp_path / "home", url=store_url)
    other_home = tmp_path / ("home" if holder.backend == "sqlite" else "host b")
    code = (
        "import sys; from fp8demo.store import Store\n"
        "store = Store(sys.argv[1], url=sys.argv[2])\n"
        "print('waiting', flush=True)\n"
        "with store.lock('sweep-1'):\n"
        "    print('got it', flush=True)\n"
    )
    with holder.lock("sweep-1"):
        other = subprocess.Popen(
            [sys.executable, "-c", code, str(other_home), store_url],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert other.stdout.readline() == "waiting\n"
        time.sleep(1.0)
        assert other.poll() is None  # still waiting for the lock
        with holder.lock("sweep-2"):  # another name is free
            pass
    assert other.stdout.read() == "got it\n" and other.wait(timeout=60) == 0


def test_live_workers_of_every_host(store, monkeypatch):
    """A worker is alive on this host while its pid is; on another host while its heartbeat
    is younger than the timeout. A worker that leaves is gone at once."""
    import os
    import subprocess
    import sys
    import time

    from fp8demo.paths import host_name
    from fp8demo.store import HEARTBEAT_TIMEOUT_SECONDS

    monkeypatch.setenv("FP8DEMO_HOST", "here")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.worker_alive("here", 0, os.getpid())
    store.worker_alive("here", 1, dead.pid)
    store.worker_alive("there", 0, 4242)
    store.worker_alive("gone quiet", 0, 4343)
    store._write(
        "UPDATE workers SET heartbeat_at=? WHERE host='gone quiet'",
        (time.time() - HEARTBEAT_TIMEOUT_SECONDS - 1,),
    )
    live = [(w["host"], w["slot"], w["pid"]) for w in store.live_workers()]
    assert host_name() == "here"
    assert live == [("here", "0", os.getpid()), ("there", "0", 4242)]
    # A heartbeat refreshes the row (the slot keeps its start time); a new pid takes it over.
    started = store.live_workers()[1]["started_at"]
    store.worker_alive("there", 0, 4242)
    assert store.live_workers()[1]["started_at"] == started
    store.worker_alive("there", 0, 5151)
    assert [w["pid"] for w in store.live_workers()] == [os.getpid(), 5151]
    store.worker_gone("there", 0, 4242)  # not that slot's worker any more: nothing changes
    store.worker_gone("here", 0, os.getpid())
    assert [(w["host"], w["pid"]) for w in store.live_workers()] == [("there", 5151)]


# -- atomic summaries, liveness, reaping -----------------------------------------------------------


def test_concurrent_summary_merges_lose_no_key(store):
    """Two writers (each its own Store, as two processes would be) merging different keys into
    one run's summary at the same time: every key of both ends up there."""
    import threading

    _, (run_id,) = store.create_comparison(TrainConfig(precisions=("bf16",)))
    rounds = 40

    def writer(name):
        other = Store(store.home, url=store.url)
        for k in range(rounds):
            other.merge_summary(run_id, **{f"{name}{k}": k})

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summary = store.run(run_id)["summary"]
    assert {f"{n}{k}" for n in "ab" for k in range(rounds)} <= set(summary)
    assert summary["side_by_side"] is False  # what create_comparison wrote is kept too


def test_liveness_is_the_pid_here_and_the_heartbeat_elsewhere(store, monkeypatch):
    import os
    import time

    from fp8demo.store import HEARTBEAT_TIMEOUT_SECONDS

    monkeypatch.setenv("FP8DEMO_HOST", "here")
    now = time.time()
    assert store.alive("here", os.getpid(), None) and store.alive(None, os.getpid(), None)
    assert not store.alive("here", 2**22 + 12345, now)  # no such pid: its heartbeat is no help
    assert store.alive("there", 1, now - 1) and store.alive("there", 1, None, started_at=now)
    assert not store.alive("there", 1, now - HEARTBEAT_TIMEOUT_SECONDS - 1)


def test_reap_interrupts_dead_runs_with_the_callers_note(store, monkeypatch):
    import os

    monkeypatch.setenv("FP8DEMO_HOST", "here")
    config = TrainConfig(precisions=("bf16",), side_by_side="on")
    _, (dead,) = store.create_comparison(config)
    _, (live,) = store.create_comparison(config)
    store.claim_next_run(2**22 + 12345)
    store.claim_next_run(os.getpid())
    assert [r["id"] for r in store.active_runs()] == [dead, live]
    assert store.reap(note="The disk is full.") == [dead]
    run = store.run(dead)
    assert run["status"] == "interrupted" and run["error"] == (
        f"The training process (pid {2**22 + 12345}) stopped during 'starting' without "
        "finishing; partial metrics are kept. The disk is full."
    )
    assert store.run(live)["status"] == "running" and store.reap() == []


def test_create_comparison_records_the_launchers_side_by_side_decision(store):
    config = TrainConfig(precisions=("bf16", "fp8"))
    _, (first, _) = store.create_comparison(config, side_by_side=True)
    _, (second, _) = store.create_comparison(config)  # the setting alone: "auto" is not "on"
    assert store.run(first)["summary"] == {"side_by_side": True}
    assert store.run(second)["summary"] == {"side_by_side": False}


# -- evaluations: post-training quantization as queued work ----------------------------------------


def _finished_bf16(store) -> int:
    _, (run_id,) = store.create_comparison(TrainConfig(precisions=("bf16",)))
    store.end_run(run_id, "finished")
    return run_id


def test_asking_for_an_evaluation_queues_it_once(store):
    run_id = _finished_bf16(store)
    assert store.evaluation(run_id) is None and store.queued_evaluations() == 0
    asked = store.request_evaluation(run_id)
    assert (asked["run_id"], asked["status"], asked["started_at"]) == (run_id, "queued", None)
    assert store.request_evaluation(run_id) == asked == store.evaluation(run_id)  # queued: kept
    assert store.queued_evaluations() == 1
    claimed = store.claim_next_evaluation(4321, host="here")
    assert (claimed["id"], claimed["status"], claimed["worker_pid"]) == (
        asked["id"],
        "running",
        4321,
    )
    assert claimed["host"] == "here" and store.request_evaluation(run_id) == claimed  # running
    assert store.claim_next_evaluation(4322) is None and store.queued_evaluations() == 0
    store.end_evaluation(claimed["id"], "finished")
    done = store.request_evaluation(run_id)  # finished: kept
    assert (done["id"], done["status"]) == (asked["id"], "finished") and done["finished_at"]
    store.end_evaluation(done["id"], "failed", error="out of memory")
    again = store.request_evaluation(run_id)  # failed: asking again queues a new one
    assert again["id"] != asked["id"] and again["status"] == "queued"


def test_only_finished_bf16_runs_are_evaluated(store):
    _, (bf16, fp8) = store.create_comparison(TrainConfig(precisions=("bf16", "fp8")))
    store.end_run(fp8, "finished")
    for run_id, what in ((bf16, "queued bf16"), (fp8, "finished fp8")):
        with pytest.raises(StoreError) as raised:
            store.request_evaluation(run_id)
        assert str(raised.value) == (
            f"Run {run_id} is a {what} run: post-training quantization evaluates finished "
            "bf16 runs."
        )
    with pytest.raises(StoreError, match="^There is no run 99 "):
        store.request_evaluation(99)


def test_two_claimers_of_one_evaluation_one_wins(store):
    import threading

    run_ids = [_finished_bf16(store) for _ in range(6)]
    for run_id in run_ids:
        store.request_evaluation(run_id)
    claimed = {}

    def claimer(pid):
        own = Store(store.home, url=store.url)
        while (evaluation := own.claim_next_evaluation(pid)) is not None:
            claimed.setdefault(evaluation["run_id"], []).append(pid)

    threads = [threading.Thread(target=claimer, args=(pid,)) for pid in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == run_ids and all(len(pids) == 1 for pids in claimed.values())


def test_reap_fails_the_evaluation_of_a_dead_worker(store, monkeypatch):
    import os
    import time

    from fp8demo.store import HEARTBEAT_TIMEOUT_SECONDS

    monkeypatch.setenv("FP8DEMO_HOST", "here")
    dead, live, quiet, heard = (_finished_bf16(store) for _ in range(4))
    for run_id, pid, host in (
        (dead, 2**22 + 12345, "here"),
        (live, os.getpid(), "here"),
        (quiet, 77, "there"),
        (heard, 88, "there"),
    ):
        store.request_evaluation(run_id)
        store.claim_next_evaluation(pid, host=host)
    store.worker_alive("there", 0, 88)  # the other host's worker heartbeats
    store._write(
        "UPDATE evaluations SET started_at=? WHERE worker_pid=77",
        (time.time() - HEARTBEAT_TIMEOUT_SECONDS - 1,),
    )
    store.reap()
    status = {run_id: store.evaluation(run_id)["status"] for run_id in (dead, live, quiet, heard)}
    assert status == {dead: "failed", live: "running", quiet: "failed", heard: "running"}
    assert store.evaluation(dead)["error"] == (
        f"The evaluating process (pid {2**22 + 12345}) stopped without finishing; ask again "
        "to evaluate anew."
    )
    assert "on host there (pid 77)" in store.evaluation(quiet)["error"]
    assert store.request_evaluation(dead)["status"] == "queued"  # asking again re-queues


def test_deleting_a_comparison_deletes_its_evaluations(store):
    run_id = _finished_bf16(store)
    store.request_evaluation(run_id)
    store.delete_comparison(store.run(run_id)["comparison_id"])
    assert store.evaluation(run_id) is None and _count(store, "evaluations") == 0


def test_a_schema_6_store_gets_the_evaluations_table(store, tmp_path):
    run_id = _finished_bf16(store)
    raw = Database(store.url).connection()  # the store as schema 6 left it
    raw.execute("DROP TABLE evaluations")
    raw.execute("UPDATE meta SET value='6' WHERE key='schema_version'")
    reopened = Store(tmp_path / "another home", url=store.url)
    assert "evaluations" in raw.tables() and reopened.run(run_id)["status"] == "finished"
    assert reopened.request_evaluation(run_id)["status"] == "queued"
    assert raw.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
