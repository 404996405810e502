"""Every bad input gets a clear answer: the exact message a user sees, and nothing lost.

One table per place a user can type something: hyperparameters (typed values and the
URL/CLI text path), the data path, review texts, run ids, a run's saved artifacts, the
store folder, and the command line. Each row is a real call into the engine, no mocks.
"""

import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, TINY, make_tar

from fp8demo import data
from fp8demo.config import ConfigError, TrainConfig
from fp8demo.predict import MAX_REVIEW_CHARS, MAX_REVIEWS, PredictError, check_texts, load_run
from fp8demo.store import SCHEMA_VERSION, Store, StoreError

CHOOSE_PRECISION = (
    "choose from bf16, fp8, fp8-current, fp8-rowwise, fp8-rowwise-gw-hp, fp8-block128, mxfp8, "
    "nvfp4, float32."
)
LAYOUT = "expected the aclImdb layout (train/pos, train/neg, test/pos, test/neg)."
VOCAB_WHY = (
    ": the vocabulary holds the reserved tokens [PAD] and [UNK] plus the single "
    "letters, digits and punctuation that WordPiece starts from."
)


# -- hyperparameters, typed (the dashboard's widgets, presets, the Python API) --------------

TYPED = [
    (dict(epochs=0), "epochs must be between 1 and 1,000, got 0."),
    (dict(epochs=-1), "epochs must be between 1 and 1,000, got -1."),
    (dict(epochs=10**6), "epochs must be between 1 and 1,000, got 1,000,000."),
    (dict(epochs=3.5), "epochs must be a whole number, got 3.5."),
    (dict(epochs="3"), "epochs must be a whole number, got '3'."),
    (dict(epochs=None), "epochs must be a whole number, got None."),
    (dict(epochs=True), "epochs must be a whole number, got True."),
    (dict(batch_size=0), "batch_size must be between 1 and 65,536, got 0."),
    (dict(seed=-1), "seed must be between 0 and 2,147,483,647, got -1."),
    (dict(vocab_size=10**9), "vocab_size must be between 64 and 1,000,000, got 1,000,000,000."),
    # Below the minimum the message says why 64: reserved tokens plus a minimal alphabet.
    (dict(vocab_size=10), "vocab_size must be between 64 and 1,000,000, got 10" + VOCAB_WHY),
    (dict(vocab_size=63), "vocab_size must be between 64 and 1,000,000, got 63" + VOCAB_WHY),
    (dict(vocab_size=0), "vocab_size must be between 64 and 1,000,000, got 0" + VOCAB_WHY),
    # seq_len: the position embedding is built with sequence_length=seq_len and the tokenizer
    # pads or cuts every review to seq_len tokens, so no review can overflow it; the only
    # limit is the configured range (4 to 32,768), checked here.
    (dict(seq_len=10**6), "seq_len must be between 4 and 32,768, got 1,000,000."),
    (dict(seq_len=32769), "seq_len must be between 4 and 32,768, got 32,769."),
    (dict(seq_len=3), "seq_len must be between 4 and 32,768, got 3."),
    (dict(hidden_dim=0), "hidden_dim must be between 1 and 65,536, got 0."),
    (
        dict(heads=3),
        "hidden_dim (32) must be divisible by heads (3): each attention head gets "
        "hidden_dim / heads dimensions.",
    ),
    (dict(heads=0), "heads must be between 1 and 256, got 0."),
    (dict(heads=512, hidden_dim=512), "heads must be between 1 and 256, got 512."),
    (dict(intermediate_dim=-5), "intermediate_dim must be between 1 and 262,144, got -5."),
    (dict(subset=-1), "subset must be between 0 and 1,000,000, got -1."),
    (dict(dropout=1.0), "dropout must be in [0, 1), got 1.0."),
    (dict(dropout=-0.1), "dropout must be in [0, 1), got -0.1."),
    (dict(dropout=float("nan")), "dropout must be a number, got nan."),  # one message, not two
    (dict(dropout=True), "dropout must be a number, got True."),
    (dict(dropout="0.1"), "dropout must be a number, got '0.1'."),
    (dict(lr=0), "lr must be greater than 0 (and at most 10), got 0."),
    (dict(lr=-1e-3), "lr must be greater than 0 (and at most 10), got -0.001."),
    (dict(lr=float("inf")), "lr must be greater than 0 (and at most 10), got inf."),
    (dict(lr=float("nan")), "lr must be a number, got nan."),
    (dict(lr=100.0), "lr must be greater than 0 (and at most 10), got 100.0."),
    (dict(precisions=("fp16",)), f"Unknown precision fp16: {CHOOSE_PRECISION}"),
    (
        dict(precisions=("bf16", "int4", "fp4")),
        f"Unknown precision int4, fp4: {CHOOSE_PRECISION}",
    ),
    (dict(precisions=()), "Choose at least one precision (bf16, fp8 or float32)."),
    (dict(precisions=("bf16", "bf16")), "Each precision may appear only once."),
    # A bare string would otherwise be read letter by letter (b, f, 1, 6).
    (
        dict(precisions="bf16"),
        "precisions must be a list of names (bf16, fp8, float32), got 'bf16'.",
    ),
    (dict(precisions=None), "precisions must be a list of names (bf16, fp8, float32), got None."),
    (
        dict(vocab_method="sentencepiece"),
        "vocab_method must be one of keras, fast, got 'sentencepiece'.",
    ),
    (dict(dropout_masks="philox"), "dropout_masks must be one of keras, fast, got 'philox'."),
    (dict(quantize_head="yes"), "quantize_head must be true or false."),
    (dict(data=5), "data must be a path (text)."),
    (dict(amax_history_length=0), "amax_history_length must be between 1 and 65,536, got 0."),
    (dict(probe_every=-1), "probe_every must be between 0 and 1,000,000, got -1."),
    (dict(probe_every=2.5), "probe_every must be a whole number, got 2.5."),
]


@pytest.mark.parametrize("values, message", TYPED, ids=[repr(v) for v, _ in TYPED])
def test_typed_setting(values, message):
    config = TrainConfig(**values)
    assert config.errors() == [message]
    with pytest.raises(ConfigError) as raised:
        config.validate()
    assert str(raised.value) == message


def test_every_problem_is_reported_at_once():
    config = TrainConfig(epochs=0, heads=3, dropout=1.0, precisions=())
    assert str(pytest.raises(ConfigError, config.validate).value) == (
        "epochs must be between 1 and 1,000, got 0. hidden_dim (32) must be divisible by heads "
        "(3): each attention head gets hidden_dim / heads dimensions. dropout must be in [0, 1), "
        "got 1.0. Choose at least one precision (bf16, fp8 or float32)."
    )


# -- hyperparameters as text (URL query parameters, CLI flags) -------------------------------

# Text that does not parse: from_strings raises at once.
UNPARSABLE = [
    ({"epochs": "3.5"}, "epochs must be a whole number, got '3.5'."),
    ({"epochs": "abc"}, "epochs must be a whole number, got 'abc'."),
    ({"epochs": ""}, "epochs must be a whole number, got ''."),
    ({"seq_len": "1e6"}, "seq_len must be a whole number, got '1e6'."),
    # Python refuses int() on more than 4,300 digits: still a message, cut to 40 characters.
    ({"vocab_size": "9" * 5000}, f"vocab_size must be a whole number, got {'9' * 40!r}."),
    ({"dropout": "abc"}, "dropout must be a number, got 'abc'."),
    ({"dropout": "nan"}, "dropout must be a finite number, got 'nan'."),
    ({"lr": "inf"}, "lr must be a finite number, got 'inf'."),
    ({"lr": "-Infinity"}, "lr must be a finite number, got '-Infinity'."),
    ({"lr": "1e-3x"}, "lr must be a number, got '1e-3x'."),
    ({"quantize_head": "maybe"}, "quantize_head must be true or false, got 'maybe'."),
    # A tampered link: an unknown query parameter is named, with a hint when one is close.
    ({"epoch": "3"}, "Unknown setting 'epoch' (did you mean epochs?)."),
    ({"utm_source": "mail"}, "Unknown setting 'utm_source'."),
    (
        {"epochs": "x", "heads": "2.5", "bogus": "1"},
        "epochs must be a whole number, got 'x'. heads must be a whole number, got '2.5'. "
        "Unknown setting 'bogus'.",
    ),
]


@pytest.mark.parametrize("values, message", UNPARSABLE, ids=[repr(v)[:60] for v, _ in UNPARSABLE])
def test_text_setting_that_does_not_parse(values, message):
    with pytest.raises(ConfigError) as raised:
        TrainConfig.from_strings(values)
    assert str(raised.value) == message


# Text that parses but is out of range: the config's own check names it.
OUT_OF_RANGE = [
    ({"epochs": "0"}, "epochs must be between 1 and 1,000, got 0."),
    ({"epochs": "-3"}, "epochs must be between 1 and 1,000, got -3."),
    ({"epochs": "1000000"}, "epochs must be between 1 and 1,000, got 1,000,000."),
    (
        {"vocab_size": "1000000000"},
        "vocab_size must be between 64 and 1,000,000, got 1,000,000,000.",
    ),
    ({"vocab_size": "32"}, "vocab_size must be between 64 and 1,000,000, got 32" + VOCAB_WHY),
    ({"seq_len": "1000000"}, "seq_len must be between 4 and 32,768, got 1,000,000."),
    (
        {"heads": "3"},
        "hidden_dim (32) must be divisible by heads (3): each attention head gets "
        "hidden_dim / heads dimensions.",
    ),
    ({"dropout": "1"}, "dropout must be in [0, 1), got 1.0."),
    ({"dropout": "-0.1"}, "dropout must be in [0, 1), got -0.1."),
    ({"lr": "0"}, "lr must be greater than 0 (and at most 10), got 0.0."),
    ({"lr": "-0.01"}, "lr must be greater than 0 (and at most 10), got -0.01."),
    ({"precisions": ""}, "Choose at least one precision (bf16, fp8 or float32)."),
    ({"precisions": " , "}, "Choose at least one precision (bf16, fp8 or float32)."),
    ({"precisions": "bf16,int3"}, f"Unknown precision int3: {CHOOSE_PRECISION}"),
    ({"precisions": "fp8,fp8"}, "Each precision may appear only once."),
    ({"vocab_method": "bpe"}, "vocab_method must be one of keras, fast, got 'bpe'."),
    ({"dropout_masks": "8"}, "dropout_masks must be one of keras, fast, got '8'."),
]


@pytest.mark.parametrize("values, message", OUT_OF_RANGE, ids=[repr(v) for v, _ in OUT_OF_RANGE])
def test_text_setting_out_of_range(values, message):
    config = TrainConfig.from_strings(values)
    assert config.errors() == [message]


# -- the data path ------------------------------------------------------------------------------


def _layout(root, skip=()):
    """A tiny aclImdb folder with one review per class, minus the `skip` class folders."""
    for split in ("train", "test"):
        for cls in ("neg", "pos"):
            if (split, cls) in skip:
                continue
            (root / split / cls).mkdir(parents=True)
            if (split, cls, "empty") not in skip:
                (root / split / cls / "0_5.txt").write_text(f"A {cls} review.")
    return root


def _missing(tmp, _):
    path = tmp / "nowhere" / "aclImdb_v1.tar.gz"
    return path, re.escape(
        f"The IMDB path {path} does not exist. Name the aclImdb_v1.tar.gz "
        "archive or the folder it was extracted to."
    )


def _not_tar(name, payload):
    def make(tmp, _):
        path = tmp / name
        path.write_bytes(payload)
        return path, re.escape(
            f"{path} is not a tar archive (a corrupted or truncated download?). "
            "Download aclImdb_v1.tar.gz again or name the extracted folder."
        )

    return make


def _truncated(tmp, archive):
    path = tmp / "aclImdb_v1.tar.gz"
    with open(archive, "rb") as f:
        path.write_bytes(f.read(3_000_000))
    return path, (
        re.escape(f"{path} could not be read completely (")
        + r".+"
        + re.escape("): the archive is corrupted or truncated. Download aclImdb_v1.tar.gz again.")
    )


def _wrong_archive(members, listing):
    def make(tmp, _):
        path = make_tar(tmp / "other.tar.gz", members)
        return path, re.escape(
            f"{path} does not contain an aclImdb/ folder (it has: {listing}). "
            "Is it the IMDB reviews archive?"
        )

    return make


def _archive_without_test(tmp, _):
    path = make_tar(
        tmp / "half.tar.gz",
        {"aclImdb/train/pos/1_9.txt": "good", "aclImdb/train/neg/2_1.txt": "bad"},
    )
    return path, re.escape(f"The aclImdb folder in {path} has no test/ folder: " + LAYOUT)


def _archive_with_an_empty_class(tmp, _):
    members = {
        f"aclImdb/{s}/{c}/0_5.txt": "a review"
        for s in ("train", "test")
        for c in ("neg", "pos")
        if (s, c) != ("test", "neg")
    }
    members["aclImdb/test/neg/README"] = "no reviews here"
    path = make_tar(tmp / "odd.tar.gz", members)
    return path, re.escape(f"The class folder aclImdb/test/neg in {path} holds no .txt reviews.")


def _folder(skip, what):
    def make(tmp, _):
        root = _layout(tmp / "aclImdb", skip)
        return root, re.escape(f"{root} has no {what} folder: " + LAYOUT)

    return make


def _empty_folder(tmp, _):
    (tmp / "empty").mkdir()
    return tmp / "empty", re.escape(f"{tmp / 'empty'} has no train/ folder: " + LAYOUT)


def _empty_class(tmp, _):
    root = _layout(tmp / "aclImdb", skip=[("train", "pos", "empty")])
    return root, re.escape(f"The class folder {root / 'train' / 'pos'} holds no .txt reviews.")


def _parent_of(tmp, _):
    # The folder *containing* aclImdb is accepted, so its errors name the aclImdb folder.
    root = _layout(tmp / "download" / "aclImdb", skip=[("test", "neg")])
    return tmp / "download", re.escape(f"{root} has no test/neg/ folder: " + LAYOUT)


DATA = {
    "missing path": _missing,
    "not an archive": _not_tar("aclImdb_v1.tar.gz", b"this is not an archive" * 100),
    "plain text file": _not_tar("review.txt", b"A plain text review, not the dataset.\n"),
    "empty file": _not_tar("aclImdb_v1.tar.gz", b""),
    "truncated archive": _truncated,
    "archive without aclImdb/": _wrong_archive(
        {"photos/a.txt": "x", "b.txt": "y"}, "b.txt, photos"
    ),
    "empty archive": _wrong_archive({}, "nothing"),
    "archive without test/": _archive_without_test,
    "archive with an empty class": _archive_with_an_empty_class,
    "folder without train/": _folder([("train", "pos"), ("train", "neg")], "train/"),
    "folder without a class": _folder([("train", "neg")], "train/neg/"),
    "parent folder without a class": _parent_of,
    "empty folder": _empty_folder,
    "empty class folder": _empty_class,
}


@pytest.mark.parametrize("case", DATA)
def test_bad_data_path(case, tmp_path, imdb_archive):
    path, pattern = DATA[case](tmp_path, imdb_archive)
    home = tmp_path / "home"
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(data.DataError) as raised:
        data.resolve_source(str(path), home)
    assert re.fullmatch(pattern, str(raised.value), re.DOTALL), str(raised.value)
    # The user's file is untouched, and nothing extracted from it is left behind.
    if before is not None:
        assert path.read_bytes() == before
    assert not (home / "data").exists() or not any((home / "data").iterdir())


def test_bad_path_in_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FP8DEMO_IMDB", str(tmp_path / "gone"))
    with pytest.raises(data.DataError) as raised:
        data.resolve_source("", tmp_path / "home")
    assert str(raised.value) == (
        f"The IMDB path {tmp_path / 'gone'} does not exist. Name the "
        "aclImdb_v1.tar.gz archive or the folder it was extracted to."
    )


def test_no_path_and_no_network(tmp_path, monkeypatch):
    monkeypatch.delenv("FP8DEMO_IMDB", raising=False)
    # A real refused connection to a closed local port: what "no network" looks like.
    monkeypatch.setattr(data, "URL", "http://127.0.0.1:9/aclImdb_v1.tar.gz")
    with pytest.raises(data.DataError) as raised:
        data.resolve_source("", tmp_path / "home", progress=lambda *_: None)
    assert re.fullmatch(
        re.escape("Could not download the IMDB reviews (")
        + r"\w+: .*"
        + re.escape(
            "). Without network, point at a local copy of aclImdb_v1.tar.gz (or its extracted "
            "folder) with --data PATH, the dashboard's data field, or FP8DEMO_IMDB=PATH."
        ),
        str(raised.value),
        re.DOTALL,
    ), str(raised.value)
    assert not list((tmp_path / "home" / "data").glob("*/aclImdb"))


# -- review texts -------------------------------------------------------------------------------

REFUSED_TEXTS = [
    ("", "The review is empty: type some words."),
    ("   \n\t  ", "The review is empty: type some words."),
    ("\u3000\u00a0", "The review is empty: type some words."),  # ideographic and no-break spaces
    ([], "Type a review first."),
    (None, "Type a review first."),
    (["a fine film", "  "], "The review (line 2) is empty: type some words."),
    (["a fine film", 5], "The review (line 2) is not text (got int)."),
    ([b"bytes"], "The review is not text (got bytes)."),
    (["ok"] * (MAX_REVIEWS + 1), f"At most {MAX_REVIEWS} reviews at once, got {MAX_REVIEWS + 1}."),
]


@pytest.mark.parametrize(
    "texts, message", REFUSED_TEXTS, ids=[repr(t)[:30] for t, _ in REFUSED_TEXTS]
)
def test_refused_review_text(texts, message, loaded):
    with pytest.raises(PredictError) as raised:
        check_texts(texts)
    assert str(raised.value) == message
    # The loaded model says the same, and still works afterwards.
    with pytest.raises(PredictError) as again:
        loaded.predict(texts)
    assert str(again.value) == message
    assert 0.0 <= float(loaded.predict(["a fine film"])[0]) <= 1.0


ACCEPTED_TEXTS = {
    "1 MB": "this film was great, " * 50_000,
    "emoji": "😍😍😍 loved it 👍🎬🍿",
    "only emoji": "🤮🤮🤮",
    "html": "<br /><br />This <b>movie</b> was <i>awful</i> &amp; boring.<script>x</script>",
    "chinese": "这部电影非常好看，演员的表演很精彩。",
    "arabic": "كان هذا الفيلم رائعا جدا",
    "cyrillic": "Этот фильм был ужасен, скучный и длинный.",
    "mixed scripts": "Great film! 非常好 отличный رائع",
    "control characters": "good\x00film\x07\r\n\tbad",
    "punctuation only": "!!! ??? ...",
    "unknown word": "qzxwvkjhgf",
    # A byte that is not UTF-8 on a command line arrives as a lone surrogate.
    "lone surrogate": "a good film \udcff indeed",
}


@pytest.mark.parametrize("name", ACCEPTED_TEXTS)
def test_unusual_review_gets_a_probability(name, loaded):
    text = ACCEPTED_TEXTS[name]
    probability = loaded.predict([text])
    assert probability.shape == (1,)
    assert math.isfinite(float(probability[0])) and 0.0 <= float(probability[0]) <= 1.0
    tokens = loaded.tokens(text)
    assert len(tokens) <= loaded.config.seq_len


def test_long_review_is_cut_to_what_the_model_sees(loaded):
    text = "this film was great, " * 50_000
    assert len(text) > 1_000_000
    assert check_texts([text]) == [text[:MAX_REVIEW_CHARS]]
    # The tokenizer cuts to seq_len: the position embedding (built for seq_len) never overflows.
    ids = loaded.token_ids(check_texts([text]))
    assert ids.shape == (1, loaded.config.seq_len) and ids.min() > 0


def test_as_many_reviews_as_allowed(loaded):
    probabilities = loaded.predict(["good"] * MAX_REVIEWS)
    assert probabilities.shape == (MAX_REVIEWS,)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


# -- run ids ------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path, store_url):
    """An empty store on each backend: ids and artifacts are refused alike on both."""
    return Store(tmp_path / "home", url=store_url)


def _queued(store, precisions=("bf16",)):
    return store.create_comparison(TrainConfig(**TINY, precisions=precisions))


RUN_IDS = [
    ("999", "There is no run 999 in {path}."),
    (-1, "There is no run -1 in {path}."),
    ("99999999999999999999", "There is no run 99999999999999999999 in {path}."),
    ("abc", "'abc' is not a run id (a whole number)."),
    ("1.5", "'1.5' is not a run id (a whole number)."),
    (1.5, "1.5 is not a run id (a whole number)."),  # not run 1
    (True, "True is not a run id (a whole number)."),  # not run 1 either
    (float("nan"), "nan is not a run id (a whole number)."),
    ("1e0", "'1e0' is not a run id (a whole number)."),
    ("", "'' is not a run id (a whole number)."),
    (None, "None is not a run id (a whole number)."),
]


@pytest.mark.parametrize("run_id, message", RUN_IDS, ids=[repr(r) for r, _ in RUN_IDS])
def test_bad_run_id(run_id, message, store):
    _queued(store)
    message = message.format(path=store.where)
    with pytest.raises(StoreError) as raised:
        store.run(run_id)
    assert str(raised.value) == message
    with pytest.raises(PredictError) as raised:
        load_run(store, run_id)
    assert str(raised.value) == message
    with pytest.raises(StoreError) as raised:  # cancel names the run without the path
        store.request_cancel(run_id)
    assert str(raised.value) == message.replace(f" in {store.where}", "")
    assert store.run(1)["status"] == "queued"  # the real run is untouched


@pytest.mark.parametrize(
    "comparison_id, message",
    [
        ("x", "'x' is not a comparison id."),
        (999, "There is no comparison 999."),
        ("99999999999999999999", "There is no comparison 99999999999999999999."),
    ],
)
def test_bad_comparison_id(comparison_id, message, store):
    with pytest.raises(StoreError) as raised:
        store.comparison(comparison_id)
    assert str(raised.value) == message


def test_deleted_run(store):
    comparison_id, (run_id,) = _queued(store)
    store.end_run(run_id, "cancelled")
    kept_id, (kept_run,) = _queued(store)
    store.delete_comparison(comparison_id)
    with pytest.raises(StoreError) as raised:
        store.run(run_id)
    assert str(raised.value) == f"There is no run {run_id} in {store.where}."
    with pytest.raises(PredictError) as raised:
        load_run(store, run_id)
    assert str(raised.value) == f"There is no run {run_id} in {store.where}."
    assert [r["id"] for r in store.runs()] == [kept_run]  # only the deleted one is gone


def test_deleting_an_active_comparison_is_refused(store):
    comparison_id, run_ids = _queued(store, ("bf16", "fp8"))
    with pytest.raises(StoreError) as raised:
        store.delete_comparison(comparison_id)
    assert str(raised.value) == "Stop the comparison's runs before deleting it."
    assert [r["id"] for r in store.runs(comparison_id)] == run_ids


@pytest.mark.parametrize("status", ["queued", "running", "failed", "cancelled"])
def test_predict_on_an_unfinished_run(status, store):
    _, (run_id,) = _queued(store)
    if status == "running":
        store.claim_next_run(os.getpid())
    elif status != "queued":
        store.end_run(run_id, status, error="boom" if status == "failed" else None)
    with pytest.raises(PredictError) as raised:
        load_run(store, run_id)
    assert str(raised.value) == (
        f"Run {run_id} is {status}, not finished: it has no model to predict with."
    )


# -- a finished run's artifacts ----------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(trained):
    return load_run(Store(trained["home"]), trained["run_ids"]["fp8"])


def _finished_copy(store, trained, precision, weights=None, config=None, vocabulary=True):
    """A finished run in `store` whose folder holds copies of the trained run's files."""
    _, (run_id,) = _queued(store, (precision,))
    store.end_run(run_id, "finished")
    source = Store(trained["home"]).run_dir(trained["run_ids"][precision])
    folder = store.run_dir(run_id)
    folder.mkdir(parents=True)
    if config is None:
        shutil.copy(source / "config.json", folder)
    elif config is not False:
        (folder / "config.json").write_bytes(config)
    if vocabulary:
        shutil.copy(source / "vocabulary.txt", folder)
    if weights is not None:
        (folder / "model.weights.h5").write_bytes(weights)
    return run_id, folder


def _saved_config(trained, **changes):
    source = Store(trained["home"]).run_dir(trained["run_ids"]["bf16"])
    saved = json.loads((source / "config.json").read_text())
    saved["config"].update(changes)
    return json.dumps(saved).encode()


UNREADABLE = {
    "config.json not JSON": (dict(config=b"{not json"), "JSONDecodeError"),
    "config.json missing": (dict(config=False), "FileNotFoundError"),
    "config.json a list": (dict(config=b"[1, 2]"), "TypeError"),
    "config.json without precision": (dict(config=b'{"config": {}}'), "KeyError"),
    "config.json unknown setting": (
        dict(config=b'{"config": {"colour": 1}, "precision": "bf16"}'),
        "ConfigError",
    ),
    "config.json impossible config": ("heads=3", "ConfigError"),
    "vocabulary missing": (dict(vocabulary=False), "FileNotFoundError"),
}


@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable_saved_config(case, store, trained):
    files, kind = UNREADABLE[case]
    if files == "heads=3":
        files = dict(config=_saved_config(trained, heads=3))
    run_id, folder = _finished_copy(store, trained, "bf16", weights=b"unused", **files)
    with pytest.raises(PredictError) as raised:
        load_run(store, run_id)
    assert str(raised.value) == (
        f"Run {run_id}'s saved config or vocabulary in {folder} is missing or unreadable ({kind})."
    )


def test_missing_weights(store, trained):
    run_id, folder = _finished_copy(store, trained, "bf16")
    with pytest.raises(PredictError) as raised:
        load_run(store, run_id)
    assert (
        str(raised.value)
        == f"Run {run_id}'s weights file {folder / 'model.weights.h5'} is missing."
    )


def _weights_error(run_id, folder):
    return (
        re.escape(
            f"Run {run_id}'s weights file {folder / 'model.weights.h5'} is corrupt or "
            "does not match its config ("
        )
        + r"\w+: .*\)\."
    )


def test_corrupt_weights(store, trained):
    run_id, folder = _finished_copy(store, trained, "bf16", weights=b"\x89HDF garbage" * 1000)
    with pytest.raises(PredictError) as raised:
        load_run(store, run_id)
    assert re.fullmatch(_weights_error(run_id, folder), str(raised.value), re.DOTALL), str(
        raised.value
    )
    assert (folder / "model.weights.h5").read_bytes() == b"\x89HDF garbage" * 1000  # kept as is


@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
def test_weights_of_another_precision(store, trained):
    # bf16 weights under an fp8 config: the float8 scaling variables are missing.
    bf16_weights = (
        Store(trained["home"]).run_dir(trained["run_ids"]["bf16"]) / "model.weights.h5"
    ).read_bytes()
    run_id, folder = _finished_copy(store, trained, "fp8", weights=bf16_weights)
    with pytest.raises(PredictError) as raised:
        load_run(store, run_id)
    assert re.fullmatch(_weights_error(run_id, folder), str(raised.value), re.DOTALL), str(
        raised.value
    )


def test_trained_runs_are_untouched(trained, loaded):
    # After every failure above, the original runs still load and predict as they did.
    again = loaded.predict(trained["texts"])
    np.testing.assert_allclose(again, trained["predictions_before_save"][loaded.run_id], atol=1e-6)


# -- the store folder ---------------------------------------------------------------------------


def test_store_written_by_a_newer_version(tmp_path):
    home = tmp_path / "home"
    store = Store(home)
    _queued(store)
    with sqlite3.connect(store.path) as conn:
        conn.execute(
            "UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    conn.close()
    del store
    before = (home / "runs.sqlite").read_bytes()
    with pytest.raises(StoreError) as raised:
        Store(home)
    assert str(raised.value) == (
        f"The run store {home / 'runs.sqlite'} was written by a newer fp8demo (schema "
        f"{SCHEMA_VERSION + 1}); this version reads schema {SCHEMA_VERSION}. Upgrade fp8demo or "
        "set FP8DEMO_HOME to another folder."
    )
    assert (home / "runs.sqlite").read_bytes() == before
    with sqlite3.connect(home / "runs.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    conn.close()


def test_store_with_an_unreadable_schema_version(tmp_path):
    home = tmp_path / "home"
    Store(home)
    with sqlite3.connect(home / "runs.sqlite") as conn:
        conn.execute("UPDATE meta SET value='two' WHERE key='schema_version'")
    conn.close()
    with pytest.raises(StoreError) as raised:
        Store(home)
    assert str(raised.value) == (
        f"The run store {home / 'runs.sqlite'} has an unreadable schema version ('two'). "
        "Move it away or set FP8DEMO_HOME to another folder."
    )


@pytest.mark.parametrize("payload", [b"these are my notes, not a database\n" * 100, b"x"])
def test_store_file_that_is_not_sqlite(payload, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "runs.sqlite").write_bytes(payload)
    with pytest.raises(StoreError) as raised:
        Store(home)
    assert str(raised.value) == (
        f"{home / 'runs.sqlite'} is not an fp8demo run store: it is not a SQLite database at "
        "all. Move it away or set FP8DEMO_HOME to another folder."
    )
    assert (home / "runs.sqlite").read_bytes() == payload


FOREIGN = {  # another program's SQLite file at the store's path → what the message says it holds
    "tables": (
        "CREATE TABLE notes (body TEXT); CREATE TABLE tags (name TEXT);"
        "INSERT INTO notes VALUES ('keep me');",
        "it holds notes, tags",
    ),
    "its own meta table": (
        "CREATE TABLE meta (name TEXT, size INTEGER);INSERT INTO meta VALUES ('a', 1);",
        "it holds meta",
    ),
    "a view only": ("CREATE VIEW answer AS SELECT 42;", "it holds answer"),
    "another application_id": ("PRAGMA application_id = 1234;", "its application_id is 0x4d2"),
    "our tables, another application_id": (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema_version', '3'); PRAGMA application_id = 7;",
        "it holds meta",
    ),
}


@pytest.mark.parametrize("case", FOREIGN)
def test_store_file_of_another_program(case, tmp_path):
    script, holds = FOREIGN[case]
    home = tmp_path / "home"
    home.mkdir()
    path = home / "runs.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(script)
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError) as raised:
        Store(home)
    assert str(raised.value) == (
        f"{path} is a SQLite database of another program ({holds}), not an fp8demo run store; "
        "it was left untouched. Move it away or set FP8DEMO_HOME to another folder."
    )
    assert path.read_bytes() == before  # no table added, no WAL switch, no stamp


def test_store_file_that_is_a_folder(tmp_path):
    home = tmp_path / "home"
    (home / "runs.sqlite").mkdir(parents=True)
    with pytest.raises(StoreError) as raised:
        Store(home)
    assert str(raised.value) == (
        f"Cannot open the run store {home / 'runs.sqlite'}: unable to open database file"
    )


@pytest.mark.parametrize("where", ["under a file", "is a file", "runs is a file", "env var"])
def test_home_that_cannot_be_created(where, tmp_path, monkeypatch):
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    home = {
        "under a file": blocker / "sub",
        "is a file": blocker,
        "env var": blocker / "sub",
        "runs is a file": tmp_path / "home",
    }[where]
    if where == "runs is a file":
        home.mkdir()
        blocker = home / "runs"
        blocker.write_text("keep me")
    with pytest.raises(StoreError) as raised:
        if where == "env var":
            monkeypatch.setenv("FP8DEMO_HOME", str(home))
            Store()
        else:
            Store(home)
    assert str(raised.value) == (
        f"Cannot create the fp8demo home folder {home}: {blocker} is a "
        "file, not a folder. Set FP8DEMO_HOME to a writable folder."
    )
    assert blocker.read_text() == "keep me"


# -- the command line ----------------------------------------------------------------------------


def cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "fp8demo", *args],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        **kwargs,
    )


CLI = [
    (["show", "abc"], "error: 'abc' is not a run id (a whole number)."),
    (["cancel", "abc"], "error: 'abc' is not a run id (a whole number)."),
    (["show", "1.5"], "error: '1.5' is not a run id (a whole number)."),  # not run 1
    (
        ["show", "99999999999999999999"],
        "error: There is no run 99999999999999999999 in {home}/runs.sqlite.",
    ),
    # argparse's own answer: its usage lines (which list every flag), then one error line.
    (
        ["predict", "1"],
        "python -m fp8demo predict: error: the following arguments are required: INPUT",
    ),
    (["predict", "1", "  "], "error: There is no run 1 in {home}/runs.sqlite."),
    (["train", "--dropout", "2", "--no-wait"], "error: dropout must be in [0, 1), got 2.0."),
    (["train", "--lr", "inf", "--no-wait"], "error: lr must be a finite number, got 'inf'."),
    (
        ["train", "--precision", "fp16", "--no-wait"],
        f"error: Unknown precision fp16: {CHOOSE_PRECISION}",
    ),
]


@pytest.fixture
def cli_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FP8DEMO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FP8DEMO_IMDB", str(tmp_path / "no-data-needed"))
    return tmp_path / "home"


@pytest.mark.parametrize("args, message", CLI, ids=[" ".join(a) for a, _ in CLI])
@pytest.mark.e2e  # starts the CLI
def test_cli_bad_input(args, message, cli_home):
    home = cli_home
    done = cli(*args, text=True)
    assert done.returncode == 2, done.stderr
    if args == ["predict", "1"]:
        assert done.stderr.startswith("usage: python -m fp8demo predict ")
        assert done.stderr.strip().splitlines()[-1] == message
    else:
        assert done.stderr.strip() == message.format(home=home)
    assert done.stdout == ""
    assert Store(home).runs() == []  # nothing was queued


@pytest.mark.e2e  # starts the CLI
def test_cli_predict_with_undecodable_bytes(trained):
    env = dict(os.environ, FP8DEMO_HOME=str(trained["home"]))
    run_id = str(trained["run_ids"]["bf16"]).encode()
    done = cli(b"predict", run_id, b"great \xff film", b"--json", env=env)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    (row,) = json.loads(done.stdout)
    assert row["text"] == "great \udcff film"
    assert 0.0 <= row["positive_probability"] <= 1.0
