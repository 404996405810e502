"""IMDB reviews, exactly as the Keras example uses them.

Sources, in order: a local archive or extracted folder the user names (argument or
FP8DEMO_IMDB); an extraction already in the cache; otherwise the original archive is
downloaded with keras.utils.get_file (progress, sha256 check).

Splits follow `keras.utils.text_dataset_from_directory(..., validation_split=0.2, seed=42)`:
the same file listing, the same seeded shuffle, the last 20 % of `train` for validation.
We read the files ourselves so the texts can be cached and tokenized once.
"""

import hashlib
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import fp8demo.env  # noqa: F401  (sets KERAS_BACKEND before keras is imported)

URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
SPLIT_SEED = 42
VALIDATION_SPLIT = 0.2
CLASSES = ("neg", "pos")  # alphabetical, as text_dataset_from_directory labels them: neg=0, pos=1


class DataError(RuntimeError):
    """The IMDB data cannot be found or read; the message names the problem and the fix."""


@dataclass
class Split:
    texts: list  # lowercased review texts (str)
    labels: np.ndarray  # int32, 1 = positive
    paths: list  # file paths relative to the aclImdb folder, in split order


@dataclass
class Imdb:
    root: Path  # the aclImdb folder
    fingerprint: str  # identifies the data (archive sha256 or folder listing hash)
    train: Split
    validation: Split
    test: Split


# -- finding the data --------------------------------------------------------------------


def resolve_source(data: str = "", home: Path | None = None, progress=print) -> tuple[Path, str]:
    """Return (aclImdb folder, fingerprint) for a user-named path, the cache, or a download."""
    from fp8demo.store import default_home

    home = Path(home) if home else default_home()
    named = data or os.environ.get("FP8DEMO_IMDB", "")
    if named:
        path = Path(named).expanduser()
        if not path.exists():
            raise DataError(f"The IMDB path {path} does not exist. Name the aclImdb_v1.tar.gz "
                            "archive or the folder it was extracted to.")
        if path.is_dir():
            root = _find_root(path)
            check_layout(root)
            return root, "dir-" + _listing_hash(root)
        return extract_archive(path, home / "data", progress=progress)

    cached = sorted((home / "data").glob("*/aclImdb/.complete"))
    if cached:
        root = cached[0].parent
        return root, root.parent.name
    archive = download(home / "data", progress=progress)
    return extract_archive(archive, home / "data", progress=progress)


def download(folder: Path, progress=print) -> Path:
    import keras

    progress(f"Downloading the IMDB reviews from {URL} (84 MB) …")
    try:
        path = keras.utils.get_file(
            fname="aclImdb_v1.tar.gz", origin=URL, file_hash=SHA256, hash_algorithm="sha256",
            cache_dir=str(folder.parent), cache_subdir=folder.name,
        )
    except Exception as e:  # keras wraps network and hash errors in several types
        raise DataError(
            f"Could not download the IMDB reviews ({type(e).__name__}: {str(e)[:200]}). "
            "Without network, point at a local copy of aclImdb_v1.tar.gz (or its extracted "
            "folder) with --data PATH, the dashboard's data field, or FP8DEMO_IMDB=PATH."
        ) from e
    return Path(path)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_archive(archive: Path, folder: Path, progress=print) -> tuple[Path, str]:
    """Extract the labeled part of an aclImdb archive once (train/unsup is skipped)."""
    if not tarfile.is_tarfile(archive):
        raise DataError(f"{archive} is not a tar archive (a corrupted or truncated download?). "
                        "Download aclImdb_v1.tar.gz again or name the extracted folder.")
    fingerprint = sha256_of(archive)[:16]
    target = folder / fingerprint
    root = target / "aclImdb"
    if (root / ".complete").exists():
        return root, fingerprint
    progress(f"Extracting {archive.name} …")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                # The 50,000 unlabeled reviews would become a third class.
                if "/train/unsup/" in f"/{member.name}/" or member.name.endswith((".feat",)):
                    continue
                tar.extract(member, target, filter="data")
    except (tarfile.TarError, EOFError, OSError, zlib_error()) as e:
        shutil.rmtree(target, ignore_errors=True)
        raise DataError(f"{archive} could not be read completely ({e}): the archive is corrupted "
                        "or truncated. Download aclImdb_v1.tar.gz again.") from e
    if not root.is_dir():
        found = sorted(p.name for p in target.iterdir())
        shutil.rmtree(target, ignore_errors=True)
        raise DataError(f"{archive} does not contain an aclImdb/ folder (it has: "
                        f"{', '.join(found[:5]) or 'nothing'}). Is it the IMDB reviews archive?")
    check_layout(root)
    (root / ".complete").write_text(str(archive))
    return root, fingerprint


def zlib_error():
    import zlib

    return zlib.error


def _find_root(path: Path) -> Path:
    """Accept the aclImdb folder itself or a folder containing it."""
    if (path / "aclImdb").is_dir():
        return path / "aclImdb"
    return path


def check_layout(root: Path):
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"{root} has no {split}/ folder: expected the aclImdb layout "
                            "(train/pos, train/neg, test/pos, test/neg).")
        for cls in CLASSES:
            folder = root / split / cls
            if not folder.is_dir():
                raise DataError(f"{root} has no {split}/{cls}/ folder: expected the aclImdb "
                                "layout (train/pos, train/neg, test/pos, test/neg).")
            if not any(name.endswith(".txt") for name in os.listdir(folder)):
                raise DataError(f"The class folder {folder} holds no .txt reviews.")


def _listing_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for split in ("train", "test"):
        for cls in CLASSES:
            folder = root / split / cls
            for name in sorted(os.listdir(folder)):
                digest.update(f"{split}/{cls}/{name}:{(folder / name).stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


# -- splitting -----------------------------------------------------------------------------


def list_split(root: Path, split: str) -> tuple[list, np.ndarray]:
    """File paths and labels of one split, in text_dataset_from_directory's order."""
    # The same helpers text_dataset_from_directory calls; unsup (if present) is excluded
    # by naming the two classes.
    from keras.src.utils import dataset_utils

    directory = root / ("test" if split == "test" else "train")
    paths, labels, _ = dataset_utils.index_directory(
        str(directory), "inferred", formats=(".txt",), class_names=list(CLASSES),
        shuffle=True, seed=SPLIT_SEED, verbose=False,
    )
    if split != "test":
        subset = "training" if split == "train" else "validation"
        paths, labels = dataset_utils.get_training_or_validation_split(
            paths, labels, VALIDATION_SPLIT, subset)
    return list(paths), np.asarray(labels, dtype=np.int32)


def balanced_subset(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first ceil(n/2) negative and floor(n/2) positive items, in split order.

    The split order is already a seeded shuffle, so "first" is reproducible and unbiased.
    """
    if not n or n >= len(labels):
        return np.arange(len(labels))
    neg = np.flatnonzero(labels == 0)[: (n + 1) // 2]
    pos = np.flatnonzero(labels == 1)[: n // 2]
    return np.sort(np.concatenate([neg, pos]))


def lowercase(texts) -> list:
    """Lowercase as the example does (tf.strings.lower: ASCII letters only)."""
    from fp8demo.env import tensorflow

    tf = tensorflow()
    raw = [t.encode("utf-8") if isinstance(t, str) else t for t in texts]
    if not raw:
        return []
    return [t.decode("utf-8", errors="replace") for t in tf.strings.lower(tf.constant(raw)).numpy()]


def read_texts(paths) -> list:
    raw = []
    for path in paths:
        with open(path, "rb") as f:
            raw.append(f.read())
    return lowercase(raw)


def load(data: str = "", subset: int = 0, home=None, progress=print) -> Imdb:
    """The three splits (train 20,000 / validation 5,000 / test 25,000 unless `subset`)."""
    root, fingerprint = resolve_source(data, home, progress=progress)
    splits = {}
    for split in ("train", "validation", "test"):
        paths, labels = list_split(root, split)
        keep = balanced_subset(labels, subset)
        paths = [paths[i] for i in keep]
        splits[split] = Split(read_texts(paths), labels[keep],
                              [os.path.relpath(p, root) for p in paths])
    return Imdb(root, fingerprint, splits["train"], splits["validation"], splits["test"])
