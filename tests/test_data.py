"""IMDB data: the example's split, subsets, and clear errors for bad sources."""

import shutil

import pytest
from conftest import make_tar

from fp8demo import data


def test_full_archive_splits_match_the_example(imdb_folder):
    sizes, positives = {}, {}
    for split in ("train", "validation", "test"):
        paths, labels = data.list_split(imdb_folder, split)
        sizes[split] = len(paths)
        positives[split] = int(labels.sum())
        # Labels follow the class folder: neg = 0, pos = 1.
        assert all(("/pos/" in p) == bool(y) for p, y in zip(paths, labels))
    assert sizes == {"train": 20000, "validation": 5000, "test": 25000}
    assert positives["train"] + positives["validation"] == 12500
    assert positives["test"] == 12500
    train, _ = data.list_split(imdb_folder, "train")
    validation, _ = data.list_split(imdb_folder, "validation")
    assert not set(train) & set(validation)


def test_validation_split_is_exactly_text_dataset_from_directorys(imdb_folder):
    import keras

    ds = keras.utils.text_dataset_from_directory(
        str(imdb_folder / "train"),
        batch_size=None,
        validation_split=0.2,
        subset="validation",
        seed=42,
        class_names=["neg", "pos"],
    )
    theirs = sorted(t.decode() for t, _ in ds.as_numpy_iterator())
    paths, _ = data.list_split(imdb_folder, "validation")
    ours = sorted(open(p, "rb").read().decode() for p in paths)
    assert ours == theirs


def test_subset_is_balanced_reproducible_and_lowercased(imdb_folder, tmp_path):
    first = data.load(str(imdb_folder), subset=101, home=tmp_path)  # read from the files
    again = data.load(str(imdb_folder), subset=101, home=tmp_path)  # from the review cache
    for split in ("train", "validation", "test"):
        a, b = getattr(first, split), getattr(again, split)
        assert a.paths == b.paths and a.texts == b.texts and a.labels.tolist() == b.labels.tolist()
        assert len(a.texts) == 101
        assert int(a.labels.sum()) == 50  # 51 negative, 50 positive
    assert all(t == t.lower() for t in first.train.texts[:50])
    # The subset keeps the split's seeded order: its items are the first of each class.
    paths, labels = data.list_split(imdb_folder, "train")
    first_neg = [p for p, y in zip(paths, labels) if y == 0][:51]
    assert [p for p, y in zip(first.train.paths, first.train.labels) if y == 0] == [
        str(__import__("os").path.relpath(p, imdb_folder)) for p in first_neg
    ]


def test_missing_path_is_named(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.resolve_source(str(tmp_path / "nowhere.tar.gz"), tmp_path)


def test_not_an_archive(tmp_path):
    bogus = tmp_path / "aclImdb_v1.tar.gz"
    bogus.write_bytes(b"this is not an archive" * 100)
    with pytest.raises(data.DataError, match="is not a tar archive"):
        data.resolve_source(str(bogus), tmp_path)


def test_truncated_archive(imdb_archive, tmp_path):
    truncated = tmp_path / "aclImdb_v1.tar.gz"
    with open(imdb_archive, "rb") as f:
        truncated.write_bytes(f.read(3_000_000))
    with pytest.raises(data.DataError, match="corrupted or truncated"):
        data.resolve_source(str(truncated), tmp_path / "home")
    # Nothing half-extracted is left to be mistaken for a cache.
    assert not list((tmp_path / "home" / "data").glob("*/aclImdb/.complete"))


def test_archive_without_acl_imdb_folder(tmp_path):
    archive = tmp_path / "other.tar.gz"
    make_tar(archive, {"photos/a.txt": "x"})
    with pytest.raises(data.DataError, match="does not contain an aclImdb/ folder"):
        data.resolve_source(str(archive), tmp_path / "home")


def test_folder_without_train(tmp_path):
    (tmp_path / "aclImdb" / "test" / "pos").mkdir(parents=True)
    with pytest.raises(data.DataError, match="has no train/ folder"):
        data.resolve_source(str(tmp_path / "aclImdb"), tmp_path)


def test_empty_class_folder(tmp_path, imdb_folder):
    root = tmp_path / "aclImdb"
    for split in ("train", "test"):
        for cls in ("neg", "pos"):
            (root / split / cls).mkdir(parents=True)
            if (split, cls) != ("train", "pos"):
                shutil.copy(next((imdb_folder / split / cls).iterdir()), root / split / cls)
    with pytest.raises(data.DataError, match=r"train/pos holds no \.txt reviews"):
        data.resolve_source(str(root), tmp_path)


def test_a_named_archive_is_read_without_extracting_it(imdb_archive, imdb_folder, tmp_path):
    """Reviews read straight from the archive, in one pass: the same paths, labels, order and
    texts as its extraction gives, and nothing unpacked."""
    import os

    home = tmp_path / "home"
    packed = data.load(str(imdb_archive), subset=2000, home=home)
    assert not list((home / "data").glob("*/aclImdb"))
    assert packed.fingerprint == data.sha256_of(imdb_archive)[:16]  # the extraction's too
    for split in data.SPLITS:
        paths, labels = data.list_split(imdb_folder, split)
        keep = data.balanced_subset(labels, 2000)
        ours = getattr(packed, split)
        assert ours.paths == [os.path.relpath(paths[i], imdb_folder) for i in keep]
        assert ours.labels.tolist() == labels[keep].tolist()
        assert ours.texts[:200] == data.read_texts([paths[i] for i in keep[:200]])


def test_unsup_is_skipped_when_extracting(tmp_path):
    members = {
        f"aclImdb/{s}/{c}/{i}_7.txt": f"review {s} {c} {i}"
        for s in ("train", "test")
        for c in ("neg", "pos")
        for i in range(5)
    }
    members.update({f"aclImdb/train/unsup/{i}_0.txt": "unlabeled" for i in range(5)})
    archive = tmp_path / "aclImdb_v1.tar.gz"
    make_tar(archive, members)
    root, _ = data.resolve_source(str(archive), tmp_path / "home")
    assert not (root / "train" / "unsup").exists()
    paths, labels = data.list_split(root, "train")
    assert len(paths) == 8 and set(labels.tolist()) == {0, 1}


def _labeled(n=3) -> dict:
    """Members of a small archive with the aclImdb layout (and no unsup)."""
    return {
        f"aclImdb/{s}/{c}/{i}_7.txt": f"review {s} {c} {i}"
        for s in ("train", "test")
        for c in ("neg", "pos")
        for i in range(n)
    }


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    "members, message",
    [
        (
            {"aclImdb/train/pos/1_9.txt": "good", "aclImdb/train/neg/2_1.txt": "bad"},
            "has no test/ folder",
        ),
        (
            {
                **{k: v for k, v in _labeled().items() if "/test/neg/" not in k},
                "aclImdb/test/neg/README": "not a review",
            },
            r"aclImdb/test/neg in .* holds no \.txt",
        ),
        ({"photos/a.txt": "x"}, "does not contain an aclImdb/ folder"),
    ],
)
def test_a_wrong_layout_archive_leaves_nothing_behind(members, message, tmp_path):
    home = tmp_path / "home"
    good = make_tar(tmp_path / "good.tar.gz", _labeled())
    root, fingerprint = data.resolve_source(str(good), home)
    kept = _listing(home)
    wrong = make_tar(tmp_path / "wrong.tar.gz", members)
    with pytest.raises(data.DataError, match=message):
        data.resolve_source(str(wrong), home)
    # Not one extracted file remains, and the good extraction is untouched and still used.
    assert _listing(home) == kept
    assert data.resolve_source(str(good), home) == (root, fingerprint)
    assert data.resolve_source("", home) == (root, fingerprint)


def test_an_extraction_abandoned_by_a_killed_process_is_cleared(tmp_path):
    import subprocess
    import sys

    archive = make_tar(tmp_path / "aclImdb_v1.tar.gz", _labeled())
    fingerprint = data.sha256_of(archive)[:16]
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    abandoned = tmp_path / "home" / "data" / ".extracting" / f"{fingerprint}-{dead}"
    (abandoned / "aclImdb" / "train").mkdir(parents=True)
    root, _ = data.resolve_source(str(archive), tmp_path / "home")
    assert [p.name for p in (tmp_path / "home" / "data").iterdir()] == [fingerprint]
    assert (root / ".complete").exists()


def test_no_network_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("FP8DEMO_IMDB", raising=False)
    # A real connection attempt to a closed local port: what "no network" looks like.
    monkeypatch.setattr(data, "URL", "http://127.0.0.1:9/aclImdb_v1.tar.gz")
    with pytest.raises(data.DataError, match="FP8DEMO_IMDB"):
        data.resolve_source("", tmp_path)


def test_environment_variable_names_the_source(tmp_path, monkeypatch, imdb_folder):
    monkeypatch.setenv("FP8DEMO_IMDB", str(imdb_folder))
    root, fingerprint = data.resolve_source("", tmp_path)
    assert root == imdb_folder and fingerprint.startswith("dir-")


def test_review_cache_holds_exactly_what_the_files_hold(imdb_folder, tmp_path):
    import numpy as np

    from_files = data.read_splits(imdb_folder, "dir-test", 0, tmp_path)
    [cache] = (tmp_path / "cache").glob("reviews-dir-test-all-*.npz")
    from_cache = data.read_splits(imdb_folder, "dir-test", 0, tmp_path)
    assert [len(from_cache[name].texts) for name in data.SPLITS] == [20000, 5000, 25000]
    assert any(not text.isascii() for text in from_cache["train"].texts)
    for name in data.SPLITS:
        a, b = from_files[name], from_cache[name]
        assert a.texts == b.texts and a.paths == b.paths
        assert b.labels.dtype == np.int32 and a.labels.tolist() == b.labels.tolist()


def test_review_cache_is_what_a_later_load_returns_and_a_damaged_one_is_rebuilt(
    imdb_folder, tmp_path
):
    from_files = data.read_splits(imdb_folder, "dir-test", 50, tmp_path)
    [cache] = (tmp_path / "cache").glob("reviews-dir-test-50-*.npz")
    test = from_files["test"]
    edited = data.Split(["edited"] + test.texts[1:], test.labels, test.paths)
    data.write_reviews_cache(cache, {**from_files, "test": edited})
    assert data.read_splits(imdb_folder, "dir-test", 50, tmp_path)["test"].texts[0] == "edited"

    cache.write_bytes(cache.read_bytes()[:1000])  # truncated
    assert data.read_splits(imdb_folder, "dir-test", 50, tmp_path)["test"].texts == test.texts
    assert data.read_reviews_cache(cache)["test"].texts == test.texts
