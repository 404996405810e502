"""WordPiece vocabulary and tokenized splits, cached on disk.

The vocabulary is trained on the training split as the example does: the list
`compute_word_piece_vocabulary` returns (reserved [PAD] and [UNK]), computed by
fp8demo.wordpiece. The splits are tokenized with
`WordPieceTokenizer(lowercase=False, sequence_length=...)` once, for every precision.
Both are cached under <home>/cache, keyed by everything that changes them, so a second
run with the same settings skips the vocabulary and the tokenization.
"""

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import fp8demo.env  # noqa: F401
from fp8demo import data, wordpiece
from fp8demo.config import RESERVED_TOKENS, TrainConfig
from fp8demo.paths import default_home

CACHE_VERSION = 1


@dataclass
class Prepared:
    """Everything training needs, as numpy arrays (no per-epoch tf.data work)."""

    vocabulary: list
    fingerprint: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    from_cache: dict = field(default_factory=dict)  # {"vocabulary": bool, "tokens": bool}
    seconds: dict = field(default_factory=dict)  # time spent per phase


def _key(**parts) -> str:
    return hashlib.sha256(
        json.dumps({**parts, "v": CACHE_VERSION}, sort_keys=True).encode()
    ).hexdigest()[:20]


def vocabulary_key(config: TrainConfig, fingerprint: str) -> str:
    return _key(
        data=fingerprint,
        subset=config.subset,
        vocab_size=config.vocab_size,
        method=config.vocab_method,
    )


def tokens_cache_path(config: TrainConfig, fingerprint: str, home=None) -> Path:
    """Where the tokenized splits of these settings and data are cached."""
    key = _key(vocab=vocabulary_key(config, fingerprint), seq_len=config.seq_len)
    return cache_dir(home) / f"tokens-{key}.npz"


def cache_dir(home=None) -> Path:
    path = Path(home or default_home()) / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_write(path: Path, write):
    """Write via a temporary file so a killed process never leaves half a cache entry."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


# -- vocabulary ---------------------------------------------------------------------------


def compute_vocabulary(texts, vocab_size: int, method: str = "keras") -> list:
    """The vocabulary by `method`: "keras" is the example's
    `keras_hub.tokenizers.compute_word_piece_vocabulary(texts, vocab_size, reserved_tokens=
    ["[PAD]", "[UNK]"])` word for word (fp8demo.wordpiece computes it with arrays); "fast" is
    Hugging Face's WordPiece trainer."""
    if method == "fast":
        return _fast_vocabulary(texts, vocab_size)
    return wordpiece.compute_word_piece_vocabulary(texts, vocab_size, RESERVED_TOKENS)


def _fast_vocabulary(texts, vocab_size: int) -> list:
    """Hugging Face's WordPiece trainer: the same kind of vocabulary in seconds, the same
    vocabulary on every run.

    The trainer numbers the word-inner pieces ("##e") in the order of a Rust hash map, which
    changes from process to process, and breaks ties between merges of equal counts by those
    numbers. A first pass finds the pieces (vocabulary size 1: no merges, only the alphabet,
    which the trainer always keeps); the second fixes their numbers, in sorted order, by
    declaring them before training (as special tokens: they are only numbered first)."""
    first = _hf_wordpiece(texts, 1, [])
    pieces = sorted(t for t in first if t.startswith("##") and len(t) == 3)
    return _hf_wordpiece(texts, vocab_size, pieces)


def _hf_wordpiece(texts, vocab_size: int, numbered_first: list) -> list:
    # lazy: only the fast vocabulary learner needs it
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    # Split on whitespace and punctuation, as keras_hub's WordPieceTokenizer does.
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=[*RESERVED_TOKENS, *numbered_first],
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    vocab = tokenizer.get_vocab()
    return sorted(vocab, key=vocab.get)


def make_tokenizer(vocabulary, seq_len: int):
    import keras_hub  # lazy: keras_hub loads TensorFlow (seconds)

    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=list(vocabulary), lowercase=False, sequence_length=seq_len
    )


def tokenize(tokenizer, texts, batch_size: int = 512) -> np.ndarray:
    """Token ids (len(texts), sequence_length), int32.

    Through tf.data, as the example maps its tokenizer: the batches run as a graph on two
    threads, far faster than calling the tokenizer eagerly, with the same ids."""
    from fp8demo.env import tensorflow  # lazy: TensorFlow loads in seconds

    if not len(texts):
        return np.zeros((0, tokenizer.sequence_length), np.int32)
    tf = tensorflow()
    batches = (
        tf.data.Dataset.from_tensor_slices(list(texts))
        .batch(batch_size)
        .map(tokenizer, num_parallel_calls=2, deterministic=True)
    )
    return np.concatenate([np.asarray(ids, dtype=np.int32) for ids in batches])


# -- the cached pipeline -------------------------------------------------------------------


def prepare(
    config: TrainConfig, home=None, on_phase=lambda phase: None, progress=print
) -> Prepared:
    """Vocabulary and tokenized train/validation/test arrays for `config`, cached."""
    seconds = {}
    started = time.time()
    on_phase("loading data")
    root, fingerprint = data.resolve_source(config.data, home, progress=progress, extract=False)
    seconds["locate data"] = time.time() - started
    cache = cache_dir(home)
    vocab_key = vocabulary_key(config, fingerprint)
    vocab_path = cache / f"vocab-{vocab_key}.txt"
    tokens_path = tokens_cache_path(config, fingerprint, home)
    from_cache = {"vocabulary": vocab_path.exists(), "tokens": tokens_path.exists()}

    if from_cache["vocabulary"] and from_cache["tokens"]:
        vocabulary = vocab_path.read_text(encoding="utf-8").split("\n")
        with np.load(tokens_path) as arrays:
            splits = {name: arrays[name] for name in arrays.files}
        return Prepared(vocabulary, fingerprint, **splits, from_cache=from_cache, seconds=seconds)

    t = time.time()
    imdb = data.load(config.data, config.subset, home, progress=progress)
    seconds["read reviews"] = time.time() - t
    if from_cache["vocabulary"]:
        vocabulary = vocab_path.read_text(encoding="utf-8").split("\n")
    else:
        on_phase("building vocabulary")
        t = time.time()
        vocabulary = compute_vocabulary(imdb.train.texts, config.vocab_size, config.vocab_method)
        seconds["build vocabulary"] = time.time() - t
        _atomic_write(vocab_path, lambda p: p.write_text("\n".join(vocabulary), encoding="utf-8"))

    on_phase("tokenizing")
    t = time.time()
    tokenizer = make_tokenizer(vocabulary, config.seq_len)
    splits = {
        "x_train": tokenize(tokenizer, imdb.train.texts),
        "y_train": imdb.train.labels,
        "x_val": tokenize(tokenizer, imdb.validation.texts),
        "y_val": imdb.validation.labels,
        "x_test": tokenize(tokenizer, imdb.test.texts),
        "y_test": imdb.test.labels,
    }
    seconds["tokenize"] = time.time() - t

    def save(path):
        with open(path, "wb") as f:
            np.savez(f, **splits)

    _atomic_write(tokens_path, save)
    return Prepared(vocabulary, fingerprint, **splits, from_cache=from_cache, seconds=seconds)


def cached_vocabulary(config: TrainConfig, home=None) -> list | None:
    """The cached vocabulary for these settings, or None (never downloads or trains)."""
    home = Path(home or default_home())
    named = config.data or os.environ.get("FP8DEMO_IMDB", "")
    try:
        if named or data.cached_extractions(home):
            _, fingerprint = data.resolve_source(
                config.data, home, progress=lambda *_: None, extract=False
            )
        else:
            return None
    except data.DataError:
        return None
    path = cache_dir(home) / f"vocab-{vocabulary_key(config, fingerprint)}.txt"
    return path.read_text(encoding="utf-8").split("\n") if path.exists() else None


def preview(config: TrainConfig, text: str, home=None) -> dict:
    """Token ids, wordpieces and detokenized text of `text` under the cached vocabulary."""
    vocabulary = cached_vocabulary(config, home)
    if vocabulary is None:
        raise LookupError(
            "No vocabulary is cached for these settings yet; it is built when "
            "the first run with them starts."
        )
    tokenizer = make_tokenizer(vocabulary, config.seq_len)
    ids = [int(i) for i in np.asarray(tokenizer(data.lowercase([text])))[0] if i != 0]
    detokenized = tokenizer.detokenize([ids])
    detokenized = np.asarray(detokenized).reshape(-1)[0]
    if isinstance(detokenized, bytes):
        detokenized = detokenized.decode("utf-8", errors="replace")
    return {"ids": ids, "tokens": [vocabulary[i] for i in ids], "detokenized": str(detokenized)}
