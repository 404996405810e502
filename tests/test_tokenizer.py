"""Vocabulary and tokenized splits: cached by everything that changes them."""

import dataclasses

import numpy as np

from fp8demo import data, tokenizer
from fp8demo.config import TrainConfig

SMALL = TrainConfig(subset=200, vocab_size=600, seq_len=48)


def prepare(config, home):
    return tokenizer.prepare(config, home, progress=lambda *_: None)


def test_second_preparation_is_served_from_cache(home):
    first = prepare(SMALL, home)
    assert first.from_cache == {"vocabulary": False, "tokens": False}
    assert "build vocabulary" in first.seconds
    assert first.vocabulary[:2] == ["[PAD]", "[UNK]"]
    assert first.x_train.shape == (200, 48) and first.x_train.dtype == np.int32
    assert first.x_test.shape == (200, 48)
    vocab_files = list((home / "cache").glob("vocab-*.txt"))
    stamp = vocab_files[0].stat().st_mtime_ns

    second = prepare(SMALL, home)
    assert second.from_cache == {"vocabulary": True, "tokens": True}
    assert "build vocabulary" not in second.seconds and "tokenize" not in second.seconds
    assert vocab_files[0].stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.y_val, second.y_val)


def test_changed_settings_recompute_what_they_change(home):
    prepare(SMALL, home)
    longer = prepare(dataclasses.replace(SMALL, seq_len=64), home)
    # Same vocabulary, new tokenization.
    assert longer.from_cache == {"vocabulary": True, "tokens": False}
    assert longer.x_train.shape[1] == 64
    bigger = prepare(dataclasses.replace(SMALL, vocab_size=700), home)
    assert bigger.from_cache == {"vocabulary": False, "tokens": False}
    other_subset = prepare(dataclasses.replace(SMALL, subset=100), home)
    assert other_subset.from_cache["vocabulary"] is False
    assert len(list((home / "cache").glob("vocab-*.txt"))) == 3


def test_keras_vocabulary_is_the_examples_keras_hub_call(home):
    import keras_hub

    from fp8demo.env import tensorflow

    prepared = prepare(SMALL, home)
    texts = data.load(subset=SMALL.subset, home=home, progress=lambda *_: None).train.texts
    dataset = tensorflow().data.Dataset.from_tensor_slices(texts).batch(1000)
    assert prepared.vocabulary == keras_hub.tokenizers.compute_word_piece_vocabulary(
        dataset, vocabulary_size=SMALL.vocab_size, reserved_tokens=["[PAD]", "[UNK]"]
    )


def test_fast_vocabulary_has_reserved_tokens_and_wordpieces(home):
    fast = prepare(dataclasses.replace(SMALL, vocab_method="fast"), home)
    assert fast.vocabulary[:2] == ["[PAD]", "[UNK]"]
    assert any(t.startswith("##") for t in fast.vocabulary)
    assert 300 < len(fast.vocabulary) <= 600
    # Real words survive tokenization: most tokens of the training set are not [UNK].
    ids = fast.x_train[fast.x_train > 0]
    assert (ids == 1).mean() < 0.05


def test_the_fast_vocabulary_is_the_same_in_every_process(home, tmp_path):
    """The trainer numbers word-inner pieces in the order of a Rust hash map seeded anew in
    each process; the vocabulary (and so the run a seed gives) must not change with it."""
    import json
    import subprocess
    import sys

    texts = data.load(subset=SMALL.subset, home=home, progress=lambda *_: None).train.texts
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    learn = (
        "import json, sys; from fp8demo.tokenizer import compute_vocabulary; "
        "texts = json.load(open(sys.argv[1])); "
        "print(json.dumps(compute_vocabulary(texts, 600, 'fast')))"
    )
    learned = [
        subprocess.run(
            [sys.executable, "-c", learn, str(tmp_path / "texts.json")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for _ in range(2)
    ]
    vocabularies = [json.loads(out.splitlines()[-1]) for out in learned]
    assert vocabularies[0] == vocabularies[1]
    assert vocabularies[0] == tokenizer.compute_vocabulary(texts, 600, "fast")


def test_preview_uses_the_cached_vocabulary(home):
    config = dataclasses.replace(SMALL, seq_len=16)
    try:
        tokenizer.preview(config, "A great movie")
        raise AssertionError("preview needs a vocabulary")
    except LookupError as e:
        assert "No vocabulary is cached" in str(e)
    prepare(config, home)
    shown = tokenizer.preview(config, "A great movie")
    assert shown["tokens"][0] == "a" and len(shown["ids"]) == len(shown["tokens"])
    assert shown["detokenized"].replace(" ", "") == "agreatmovie"


def test_batched_tokenization_equals_the_tokenizer_called_directly(home):
    """tokenize() runs the tokenizer through tf.data in parallel batches: same ids, same order."""
    prepared = prepare(SMALL, home)
    tok = tokenizer.make_tokenizer(prepared.vocabulary, SMALL.seq_len)
    texts = [
        "",
        "   ",
        "a film <br /><br />with html",
        "émotions, 映画 and emoji 🎬🍿",
        "word " * 500,
        "UPPER case kept (lowercase=False)",
    ] * 3
    texts += [f"review {i}" for i in range(40)]
    direct = np.asarray(tok(texts), dtype=np.int32)
    for batch_size in (1, 7, 512):
        batched = tokenizer.tokenize(tok, texts, batch_size=batch_size)
        assert batched.dtype == np.int32 and batched.shape == (len(texts), SMALL.seq_len)
        np.testing.assert_array_equal(batched, direct)
    assert tokenizer.tokenize(tok, []).shape == (0, SMALL.seq_len)
