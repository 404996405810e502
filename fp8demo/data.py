"""IMDB reviews, exactly as the Keras example uses them.

Sources, in order: a local archive or extracted folder the user names (argument or
FP8DEMO_IMDB); an extraction already in the cache; otherwise the original archive is
downloaded with keras.utils.get_file (progress, sha256 check).

Splits follow `keras.utils.text_dataset_from_directory(..., validation_split=0.2, seed=42)`:
the same file listing, the same seeded shuffle, the last 20 % of `train` for validation.
We read the files ourselves so the texts can be cached and tokenized once.
"""

import contextlib
import hashlib
import os
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import fp8demo.env  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
from fp8demo.paths import default_home, pid_alive

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


def resolve_source(
    data: str = "", home: Path | None = None, progress=print, extract: bool = True
) -> tuple[Path, str]:
    """Return (aclImdb folder, fingerprint) for a user-named path, the cache, or a download.

    extract=False leaves a named archive packed: the path returned is then the archive
    itself unless an extraction of it exists (read_splits reads the reviews from either, and
    unpacking 50,000 small files costs far more than reading them from the archive once).
    """
    home = Path(home) if home else default_home()
    named = data or os.environ.get("FP8DEMO_IMDB", "")
    if named:
        if missing_path(named):
            raise DataError(missing_path(named))
        path = Path(named).expanduser()
        if path.is_dir():
            root = _find_root(path)
            check_layout(root)
            return root, "dir-" + _listing_hash(root)
        if not extract:
            return packed_archive(path, home / "data")
        return extract_archive(path, home / "data", progress=progress)

    cached = cached_extractions(home)
    if cached:
        root = cached[0].parent
        return root, root.parent.name
    archive = download(home / "data", progress=progress)
    return extract_archive(archive, home / "data", progress=progress)


def cached_extractions(home: Path) -> list:
    """The completion markers of the extractions already in the cache, in a stable order."""
    return sorted((home / "data").glob("*/aclImdb/.complete"))


def default_source_description(home: Path | None = None) -> str:
    """What an empty data source uses, in words: resolve_source's choice when no path is named.

    FP8DEMO_IMDB when set (a launch records it as the runs' data), else an extraction already
    in the cache, else the original archive downloaded once into the cache.
    """
    home = Path(home) if home else default_home()
    named = os.environ.get("FP8DEMO_IMDB", "")
    if named:
        gone = " (which does not exist)" if missing_path(named) else ""
        return f"FP8DEMO_IMDB = {Path(named).expanduser()}{gone}"
    if cached_extractions(home):
        return f"the IMDB reviews already extracted in {home / 'data'}"
    return f"the IMDB archive, downloaded once into {home / 'data'}"


def missing_path(named: str) -> str:
    """Why a named data source cannot be used because it is not there ("" when it is).

    Launches check this up front, so a mistyped path is refused before anything is queued.
    """
    path = Path(named).expanduser()
    if path.exists():
        return ""
    return (
        f"The IMDB path {path} does not exist. Name the aclImdb_v1.tar.gz archive or the "
        "folder it was extracted to."
    )


def download(folder: Path, progress=print) -> Path:
    import keras  # lazy: keras loads JAX (seconds); only a download needs it

    progress(f"Downloading the IMDB reviews from {URL} (84 MB) …")
    try:
        path = keras.utils.get_file(
            fname="aclImdb_v1.tar.gz",
            origin=URL,
            file_hash=SHA256,
            hash_algorithm="sha256",
            cache_dir=str(folder.parent),
            cache_subdir=folder.name,
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


def packed_archive(archive: Path, folder: Path) -> tuple[Path, str]:
    """(the archive's extraction if there is one, else the archive; its fingerprint)."""
    if not tarfile.is_tarfile(archive):
        raise DataError(
            f"{archive} is not a tar archive (a corrupted or truncated download?). "
            "Download aclImdb_v1.tar.gz again or name the extracted folder."
        )
    fingerprint = sha256_of(archive)[:16]  # the same as extract_archive's
    extracted = folder / fingerprint / "aclImdb"
    return (extracted if (extracted / ".complete").exists() else archive), fingerprint


def extract_archive(archive: Path, folder: Path, progress=print) -> tuple[Path, str]:
    """Extract the labeled part of an aclImdb archive once (train/unsup is skipped).

    The archive is unpacked into a scratch folder and moved into place only once its layout
    checks out, so a failure leaves nothing behind and never touches a good extraction.
    """
    if not tarfile.is_tarfile(archive):
        raise DataError(
            f"{archive} is not a tar archive (a corrupted or truncated download?). "
            "Download aclImdb_v1.tar.gz again or name the extracted folder."
        )
    fingerprint = sha256_of(archive)[:16]
    target = folder / fingerprint
    if (target / "aclImdb" / ".complete").exists():
        return target / "aclImdb", fingerprint
    progress(f"Extracting {archive.name} …")
    # Outside the `*/aclImdb/.complete` pattern the cache is found by; one per process.
    scratch = folder / ".extracting" / f"{fingerprint}-{os.getpid()}"
    _remove_abandoned_extractions(scratch.parent, fingerprint)
    try:
        _extract_checked(archive, scratch)
        shutil.rmtree(target, ignore_errors=True)  # an unfinished extraction, never a good one
        try:
            scratch.rename(target)
        except OSError:
            if not (target / "aclImdb" / ".complete").exists():
                raise
            # Another process finished the same extraction first: use theirs.
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            scratch.parent.rmdir()  # only when no other extraction is under way
    return target / "aclImdb", fingerprint


def _remove_abandoned_extractions(scratch_folder: Path, fingerprint: str):
    """Scratch folders of this archive whose process was killed mid-extraction."""
    for scratch in scratch_folder.glob(f"{fingerprint}-*"):
        pid = scratch.name.rsplit("-", 1)[1]
        if not (pid.isdigit() and pid_alive(int(pid)) and int(pid) != os.getpid()):
            shutil.rmtree(scratch, ignore_errors=True)


def _extract_checked(archive: Path, scratch: Path):
    """Extract into `scratch` and check the aclImdb layout; DataError says what is wrong."""
    scratch.mkdir(parents=True)
    root = scratch / "aclImdb"
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                # The 50,000 unlabeled reviews would become a third class.
                if "/train/unsup/" in f"/{member.name}/" or member.name.endswith((".feat",)):
                    continue
                tar.extract(member, scratch, filter="data")
    except (tarfile.TarError, EOFError, OSError, zlib_error()) as e:
        raise DataError(
            f"{archive} could not be read completely ({e}): the archive is corrupted "
            "or truncated. Download aclImdb_v1.tar.gz again."
        ) from e
    if not root.is_dir():
        found = sorted(p.name for p in scratch.iterdir())
        raise DataError(
            f"{archive} does not contain an aclImdb/ folder (it has: "
            f"{', '.join(found[:5]) or 'nothing'}). Is it the IMDB reviews archive?"
        )
    check_layout(root, archive)
    (root / ".complete").write_text(str(archive))


def zlib_error():
    return zlib.error


def _find_root(path: Path) -> Path:
    """Accept the aclImdb folder itself or a folder containing it."""
    if (path / "aclImdb").is_dir():
        return path / "aclImdb"
    return path


def check_layout(root: Path, archive: Path | None = None):
    """DataError unless `root` has the aclImdb layout; `archive`: the one it came from.

    An archive's problems are named inside the archive: its scratch extraction is removed.
    """
    shown = f"The aclImdb folder in {archive}" if archive else str(root)
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(
                f"{shown} has no {split}/ folder: expected the aclImdb layout "
                "(train/pos, train/neg, test/pos, test/neg)."
            )
        for cls in CLASSES:
            folder = root / split / cls
            if not folder.is_dir():
                raise DataError(
                    f"{shown} has no {split}/{cls}/ folder: expected the aclImdb "
                    "layout (train/pos, train/neg, test/pos, test/neg)."
                )
            if not any(name.endswith(".txt") for name in os.listdir(folder)):
                where = f"aclImdb/{split}/{cls} in {archive}" if archive else folder
                raise DataError(f"The class folder {where} holds no .txt reviews.")


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
    from keras.src.utils import dataset_utils  # lazy: keras loads JAX (seconds)

    directory = root / ("test" if split == "test" else "train")
    paths, labels, _ = dataset_utils.index_directory(
        str(directory),
        "inferred",
        formats=(".txt",),
        class_names=list(CLASSES),
        shuffle=True,
        seed=SPLIT_SEED,
        verbose=False,
    )
    if split != "test":
        subset = "training" if split == "train" else "validation"
        paths, labels = dataset_utils.get_training_or_validation_split(
            paths, labels, VALIDATION_SPLIT, subset
        )
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
    from fp8demo.env import tensorflow  # lazy: TensorFlow loads in seconds

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
    root, fingerprint = resolve_source(data, home, progress=progress, extract=False)
    splits = read_splits(root, fingerprint, subset, home)
    return Imdb(root, fingerprint, splits["train"], splits["validation"], splits["test"])


# -- the review cache ----------------------------------------------------------------------

SPLITS = ("train", "validation", "test")
# Part of the cache file's name: change it whenever reading or splitting changes the result.
REVIEWS_CACHE_VERSION = 1


def read_splits(root: Path, fingerprint: str, subset: int = 0, home=None) -> dict:
    """{split name: Split} from the review cache of this data and subset, else from the
    review files (then cached): one array file instead of listing, reading and lowercasing
    thousands of files."""
    path = (
        (Path(home) if home else default_home())
        / "cache"
        / (f"reviews-{fingerprint}-{subset or 'all'}-v{REVIEWS_CACHE_VERSION}.npz")
    )
    if path.exists():
        try:
            return read_reviews_cache(path)
        except Exception:  # a damaged cache file (truncated, foreign) is rebuilt below
            pass
    if root.is_file():
        splits = read_archive_splits(root, subset)
    else:
        splits = {}
        for name in SPLITS:
            paths, labels = list_split(root, name)
            keep = balanced_subset(labels, subset)
            paths = [paths[i] for i in keep]
            splits[name] = Split(
                read_texts(paths), labels[keep], [os.path.relpath(p, root) for p in paths]
            )
    try:
        write_reviews_cache(path, splits)
    except OSError:  # a full disk or read-only home costs speed next time, nothing else
        pass
    return splits


def read_archive_splits(archive: Path, subset: int = 0) -> dict:
    """{split name: Split} read straight from an aclImdb archive, in one pass, with the same
    texts, labels, order and paths as list_split gives for its extraction."""
    reviews = {}  # "train/neg/0_3.txt" -> raw bytes, for the class folders' .txt files
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = member.name.split("/")
                if len(parts) < 4 or parts[-4:-2] == ["train", "unsup"] or not member.isfile():
                    continue
                split, cls, name = parts[-3:]
                if split in ("train", "test") and cls in CLASSES and name.lower().endswith(".txt"):
                    reviews[f"{split}/{cls}/{name}"] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib_error()) as e:
        raise DataError(
            f"{archive} could not be read completely ({e}): the archive is corrupted "
            "or truncated. Download aclImdb_v1.tar.gz again."
        ) from e
    splits = {}
    for name in SPLITS:
        paths, labels = list_archive_split(reviews, name)
        if not paths:
            raise DataError(
                f"{archive} holds no aclImdb/{name if name == 'test' else 'train'}/{{neg,pos}} "
                "reviews: expected the aclImdb layout (train/pos, train/neg, test/pos, test/neg)."
            )
        keep = balanced_subset(labels, subset)
        paths = [paths[i] for i in keep]
        texts = lowercase([reviews[p] for p in paths])
        splits[name] = Split(texts, labels[keep], paths)
    return splits


def list_archive_split(reviews, split: str) -> tuple[list, np.ndarray]:
    """list_split for the relative paths of an archive's reviews: index_directory's order
    (class by class, files sorted, then one seeded shuffle) and validation split."""
    from keras.src.utils import dataset_utils  # lazy: keras loads JAX (seconds)

    folder = "test" if split == "test" else "train"
    paths, labels = [], []
    for label, cls in enumerate(CLASSES):
        names = sorted(p.rsplit("/", 1)[1] for p in reviews if p.startswith(f"{folder}/{cls}/"))
        paths += [f"{folder}/{cls}/{name}" for name in names]
        labels += [label] * len(names)
    labels = np.asarray(labels, dtype=np.int32)
    np.random.RandomState(SPLIT_SEED).shuffle(paths)
    np.random.RandomState(SPLIT_SEED).shuffle(labels)
    if split != "test":
        subset = "training" if split == "train" else "validation"
        paths, labels = dataset_utils.get_training_or_validation_split(
            paths, labels, VALIDATION_SPLIT, subset
        )
    return list(paths), np.asarray(labels, dtype=np.int32)


def write_reviews_cache(path: Path, splits: dict):
    """Each split as three arrays: its texts as one UTF-8 blob with the texts' end offsets
    (in characters), its labels, and its paths joined by NUL (which no file name holds)."""
    arrays = {}
    for name, split in splits.items():
        arrays[f"{name}_text"] = np.frombuffer("".join(split.texts).encode("utf-8"), np.uint8)
        arrays[f"{name}_ends"] = np.cumsum([len(t) for t in split.texts], dtype=np.int64)
        arrays[f"{name}_labels"] = np.asarray(split.labels, np.int32)
        paths = "\0".join(split.paths).encode("utf-8", "surrogateescape")  # any file name
        arrays[f"{name}_paths"] = np.frombuffer(paths, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written under another name and renamed, so a killed process never leaves half a file.
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(scratch, "wb") as f:
            np.savez(f, **arrays)
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)


def read_reviews_cache(path: Path) -> dict:
    splits = {}
    with np.load(path) as arrays:
        for name in SPLITS:
            text = arrays[f"{name}_text"].tobytes().decode("utf-8")
            ends = arrays[f"{name}_ends"].tolist()
            texts = [text[start:end] for start, end in zip([0] + ends[:-1], ends, strict=True)]
            labels = arrays[f"{name}_labels"].astype(np.int32)
            paths = arrays[f"{name}_paths"].tobytes().decode("utf-8", "surrogateescape")
            paths = paths.split("\0") if paths else []
            if not len(texts) == len(labels) == len(paths) or (ends and ends[-1] != len(text)):
                raise ValueError(f"{path} is inconsistent")
            splits[name] = Split(texts, labels, paths)
    return splits
