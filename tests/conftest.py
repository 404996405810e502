"""Shared fixtures: the real IMDB archive, isolated stores, one trained subset comparison."""

import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# A real PostgreSQL server for the store tests on both backends (tests/postgres.py).
from postgres import postgres_server, postgres_url, store_url  # noqa: E402,F401

import fp8demo.env  # noqa: E402,F401
from fp8demo.config import TrainConfig  # noqa: E402

# Small settings that still exercise every part (about 10 s of training per precision).
TINY = dict(subset=256, vocab_size=1000, seq_len=64, epochs=1)

# One bf16 run each, for tests of the training process (queue, cancel, kill, several hosts):
# TINY_RUN ends quickly; SLOW_RUN trains long enough to be caught mid-training and starts as
# fast. Whole TrainConfigs, unlike TINY above, which tests combine with other settings.
TINY_RUN = TrainConfig(subset=64, vocab_size=800, seq_len=64, epochs=1, precisions=("bf16",))
SLOW_RUN = TrainConfig(subset=1600, vocab_size=800, seq_len=64, epochs=4, precisions=("bf16",))


def pytest_configure(config):
    """One XLA compilation cache for the whole test run, in a fresh temporary folder.

    Tests train the same tiny models again and again, each in a new home whose own cache
    starts empty (env.use_compilation_cache); a shared cache compiles each program once, in
    this process, the xdist workers and every process a test starts (they inherit the
    variables). A cache the user set is kept. test_compilation_cache.py unsets it to test
    the homes' own caches."""
    if hasattr(config, "workerinput") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return  # an xdist worker inherits the controller's folder
    import tempfile

    config.xla_cache = tempfile.mkdtemp(prefix="fp8demo-tests-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = config.xla_cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


def pytest_unconfigure(config):
    import shutil

    if getattr(config, "xla_cache", None):
        shutil.rmtree(config.xla_cache, ignore_errors=True)


def wait_for(predicate, timeout, what):
    """Poll `predicate` until it returns something true, and return that; fail after
    `timeout` seconds, naming `what` was awaited."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def all_runs_ended(store, comparisons) -> bool:
    """Whether every run of `comparisons` has ended (read only: the supervisor process reaps
    the runs of dead workers and restarts the queue, with nobody watching)."""
    return all(r["status"] not in ("queued", "running") for c in comparisons for r in store.runs(c))


def backend() -> str:
    """The platform JAX computes on ("cpu", "gpu", …): tests of device facts assert the fact
    of the backend they run on. Starts JAX, so call it inside a test, not at import."""
    import jax

    return jax.default_backend()


def make_tar(path, members: dict) -> Path:
    """A small .tar.gz at `path` holding {member name: text} (for layout/extraction tests)."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            payload = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _find_archive() -> Path:
    """The IMDB archive for tests: FP8DEMO_TEST_IMDB, ../shared/data, or a real download."""
    named = os.environ.get("FP8DEMO_TEST_IMDB")
    if named:
        return Path(named)
    shared = ROOT.parent / "shared" / "data" / "aclImdb_v1.tar.gz"
    if shared.exists():
        return shared
    from fp8demo import data

    return data.download(Path.home() / ".fp8demo" / "data")


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A folder `build(folder)` fills once per test session, shared by every xdist worker.

    Under pytest-xdist each worker is a process with its own session fixtures; the first to
    ask builds under a file lock in the folder the workers share, the others wait for it and
    read the result (only tests that do not write into it may use it)."""
    from fp8demo.paths import hold_lock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # pytest-of-<user>/pytest-N/, above each worker's own folder
    folder, done = shared / name, shared / f"{name}.done"
    with hold_lock(shared / f"{name}.lock"):
        if not done.exists():
            if folder.exists():  # a build that failed in another worker: start over
                import shutil

                shutil.rmtree(folder)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def imdb_archive() -> Path:
    return _find_archive()


@pytest.fixture(scope="session")
def imdb_folder(imdb_archive, tmp_path_factory) -> Path:
    """The archive extracted once per test session (train/unsup skipped)."""
    from fp8demo import data

    def extract(folder):
        (folder / "root.txt").write_text(
            str(data.extract_archive(imdb_archive, folder, progress=lambda *_: None)[0])
        )

    return Path((built_once(tmp_path_factory, "imdb", extract) / "root.txt").read_text())


@pytest.fixture
def home(request, tmp_path, monkeypatch, imdb_folder) -> Path:
    """An empty store whose data source is the extracted test archive: the home's SQLite
    file, or (for a test marked postgres_too, run once per backend) a new PostgreSQL
    database named by FP8DEMO_STORE, which every process the test starts inherits."""
    monkeypatch.setenv("FP8DEMO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FP8DEMO_IMDB", str(imdb_folder))
    monkeypatch.delenv("FP8DEMO_STORE", raising=False)
    if getattr(request, "param", "sqlite") == "postgresql":
        database = request.getfixturevalue("postgres_server").new_database()
        monkeypatch.setenv("FP8DEMO_STORE", database)
    return tmp_path / "home"


def pytest_generate_tests(metafunc):
    """`home` on both backends for a test marked postgres_too: only where the SQL differs
    (queue, claims, locks, several hosts, one end to end); every other test runs on SQLite."""
    if "home" in metafunc.fixturenames and metafunc.definition.get_closest_marker("postgres_too"):
        metafunc.parametrize("home", ["sqlite", "postgresql"], indirect=True)


# Fixtures of end-to-end tests: `home` comes with a data source, for a test that trains or
# starts workers; the others start a browser, several hosts or train every precision.
E2E_FIXTURES = {"home", "browser", "server", "hosts", "six"}


# The test files that take longest, longest first (summed test time of a clean run). The
# two processes take whole files (pytest.ini: --dist loadfile) in collection order: started
# first, the long files overlap the many short ones instead of ending the run alone.
LONGEST_FILES = [
    "test_worker.py",
    "test_browser.py",
    "test_bad_inputs.py",
    "test_recipe_training.py",
    "test_sweep.py",
    "test_cli.py",
    "test_monitor.py",
    "test_pages.py",
    "test_pool.py",
]


def pytest_collection_modifyitems(items):
    """Mark e2e every test that takes an end-to-end fixture (a module or a test may also be
    marked by hand): `pytest -m "not e2e"` is the fast loop. Then the longest files first."""
    for item in items:
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files keep order


def train_comparison(home, imdb_folder, config, texts) -> dict:
    """Train `config`'s comparison in-process by the engine into the store at `home`.

    Returns the store home, comparison and run ids, and each model's predictions on `texts`
    taken just before its weights were saved.
    """
    from fp8demo import tokenizer
    from fp8demo.data import lowercase
    from fp8demo.predict import check_texts
    from fp8demo.store import Store
    from fp8demo.worker import evaluate, execute, queue_post_training

    old = {k: os.environ.get(k) for k in ("FP8DEMO_HOME", "FP8DEMO_IMDB")}
    os.environ["FP8DEMO_HOME"], os.environ["FP8DEMO_IMDB"] = str(home), str(imdb_folder)
    store = Store(home)
    comparison_id, run_ids = store.create_comparison(config)
    before = {}

    def remember(run_id):
        def on_trained(model, prepared):
            tok = tokenizer.make_tokenizer(prepared.vocabulary, config.seq_len)
            ids = tokenizer.tokenize(tok, lowercase(check_texts(texts)))
            before[run_id] = model.predict(ids, verbose=0)[:, 0].astype("float32")

        return on_trained

    try:
        while (run := store.claim_next_run(os.getpid())) is not None:
            execute(store, run, on_trained=remember(run["id"]))
            queue_post_training(store, run["id"])  # as a worker does after each run
        while (evaluation := store.claim_next_evaluation(os.getpid())) is not None:
            evaluate(store, evaluation)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {
        "home": home,
        "comparison_id": comparison_id,
        "run_ids": dict(zip(config.precisions, run_ids)),
        "texts": texts,
        "predictions_before_save": before,
        "config": config,
    }


def copy_home(source: Path, destination: Path) -> Path:
    """Copy an fp8demo home whose store this process may have open.

    Never copy runs.sqlite as a file: closing a descriptor of it drops every POSIX lock this
    process holds on it, SQLite's too, and another process may then checkpoint and delete the
    WAL under a live connection (a corrupt store). SQLite's backup API copies it safely."""
    import shutil
    import sqlite3

    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("runs.sqlite*"))
    with (
        sqlite3.connect(source / "runs.sqlite") as src,
        sqlite3.connect(destination / "runs.sqlite") as dst,
    ):
        src.backup(dst)
    src.close(), dst.close()
    return destination


def trained_once(tmp_path_factory, imdb_folder, name: str, config, texts) -> dict:
    """train_comparison of `config` once per test session (shared by the xdist workers, as
    built_once), returned as train_comparison returns it."""
    import json

    import numpy as np

    def train(folder):
        done = train_comparison(folder / "home", imdb_folder, config, texts)
        kept = {
            "comparison_id": done["comparison_id"],
            "run_ids": done["run_ids"],
            "predictions": {k: v.tolist() for k, v in done["predictions_before_save"].items()},
        }
        (folder / "trained.json").write_text(json.dumps(kept))

    folder = built_once(tmp_path_factory, name, train)
    kept = json.loads((folder / "trained.json").read_text())
    return {
        "home": folder / "home",
        "comparison_id": kept["comparison_id"],
        "run_ids": kept["run_ids"],
        "texts": texts,
        "predictions_before_save": {
            int(k): np.asarray(v, dtype="float32") for k, v in kept["predictions"].items()
        },
        "config": config,
    }


@pytest.fixture(scope="session")
def trained(tmp_path_factory, imdb_folder):
    """A finished bf16 + fp8 comparison on a small subset (see train_comparison)."""
    config = TrainConfig(**TINY, precisions=("bf16", "fp8"), probe_every=4, block_scales="on")
    texts = ["a wonderful, moving film with great acting", "boring and awful, a waste of time"]
    return trained_once(tmp_path_factory, imdb_folder, "trained", config, texts)
