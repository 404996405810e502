"""A small causal language model on the IMDB reviews' text, in bf16 and in float8, monitored.

Not a classifier this time: next-token prediction with 4 TransformerDecoder blocks (causal
self-attention) and a vocabulary-wide softmax head, whose output gradients are spread over
thousands of logits, where FP8's E5M2 gradients behave unlike a one-logit sigmoid head's.
Trained once in mixed_bfloat16 and once after model.quantize("float8"); FP8Monitor records
both into one comparison of the fp8demo dashboard ("causal-lm").

    python examples/causal_lm_fp8.py --subset 512 --epochs 1
    FP8DEMO_IMDB=/path/to/aclImdb python examples/causal_lm_fp8.py

Data: --data or FP8DEMO_IMDB (the aclImdb folder, or the archive: it is extracted next to it).
"""

import argparse
import os
import re
import sys
import tarfile
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # fp8demo of this checkout

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fp8demo import FP8Monitor  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--data", default=os.environ.get("FP8DEMO_IMDB", ""), help="aclImdb or archive")
parser.add_argument("--subset", type=int, default=4000, help="training reviews (0: all 25,000)")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--seq-len", type=int, default=64, help="tokens per training window")
parser.add_argument("--vocabulary", type=int, default=4000, help="WordPiece vocabulary size")
parser.add_argument("--comparison", default="causal-lm", help="the dashboard's label")
args = parser.parse_args()

hidden_dim, num_heads, intermediate_dim, blocks, dropout = 64, 4, 128, 4, 0.1
batch_size = 32


def imdb_folder(data: str) -> Path:
    """The aclImdb folder: --data's folder, or its archive extracted next to it."""
    path = Path(data) if data else None
    if path is None or not path.exists():
        sys.exit("Give the IMDB data: --data PATH or FP8DEMO_IMDB (aclImdb or its archive).")
    if path.is_dir():
        return path / "aclImdb" if (path / "aclImdb").is_dir() else path
    target = path.parent / "aclImdb"
    if not target.is_dir():
        with tarfile.open(path) as tar:
            members = [m for m in tar if "/train/unsup/" not in m.name]
            tar.extractall(path.parent, members=members, filter="data")
    return target


def read_reviews(root: Path, split: str, n: int) -> list[str]:
    """n reviews of a split, positive and negative alternating, lower-cased, without <br />."""
    files = [sorted((root / split / label).glob("*.txt")) for label in ("pos", "neg")]
    mixed = [f for pair in zip(*files) for f in pair][: n or None]
    return [re.sub(r"<br\s*/?>", " ", f.read_text(encoding="utf-8")).lower() for f in mixed]


def windows(tokenizer, reviews: list[str], seq_len: int) -> np.ndarray:
    """Every review's token ids, concatenated and cut into windows of seq_len + 1 tokens."""
    ids = np.concatenate([np.asarray(t) for t in tokenizer(tf.constant(reviews))])
    n = len(ids) // (seq_len + 1)
    return ids[: n * (seq_len + 1)].reshape(n, seq_len + 1).astype(np.int32)


def build_model(vocabulary_size: int, seq_len: int) -> keras.Model:
    token_ids = keras.layers.Input(shape=(seq_len,), dtype="int32", name="token_ids")
    x = keras_hub.layers.TokenAndPositionEmbedding(
        vocabulary_size=vocabulary_size, sequence_length=seq_len, embedding_dim=hidden_dim
    )(token_ids)
    for _ in range(blocks):  # no encoder input: causal self-attention
        x = keras_hub.layers.TransformerDecoder(
            intermediate_dim=intermediate_dim, num_heads=num_heads, dropout=dropout
        )(x)
    logits = keras.layers.Dense(vocabulary_size, name="next_token", dtype="float32")(x)
    return keras.Model(token_ids, logits, name="causal_lm")


root = imdb_folder(args.data)
train_text = read_reviews(root, "train", args.subset)
val_text = read_reviews(root, "test", max(args.subset // 8, 64))
vocab = keras_hub.tokenizers.compute_word_piece_vocabulary(
    tf.data.Dataset.from_tensor_slices(train_text).batch(1000),
    vocabulary_size=args.vocabulary,
    reserved_tokens=["[PAD]", "[UNK]"],
)
tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocab, lowercase=False)
train, val = (
    windows(tokenizer, train_text, args.seq_len),
    windows(tokenizer, val_text, args.seq_len),
)
x_train, y_train, x_val, y_val = train[:, :-1], train[:, 1:], val[:, :-1], val[:, 1:]
print(f"{len(x_train)} training windows of {args.seq_len} tokens, vocabulary {len(vocab)}")

monitor = FP8Monitor(
    comparison=args.comparison, probe_data=(x_val[:batch_size], y_val[:batch_size]), seed=42
)
for precision in ("bf16", "fp8"):
    keras.config.set_dtype_policy("mixed_bfloat16")
    keras.utils.set_random_seed(monitor.seed)  # the seed the monitor records
    model = build_model(len(vocab), args.seq_len)
    if precision == "fp8":
        model.quantize("float8")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    model.fit(
        x_train,
        y_train,
        batch_size=batch_size,
        epochs=args.epochs,
        validation_data=(x_val, y_val),
        callbacks=[monitor],
        verbose=2,
    )
    loss, accuracy = model.evaluate(x_val, y_val, batch_size=batch_size, verbose=0)
    print(
        f"{precision}: validation perplexity {np.exp(loss):.1f}, next-token accuracy {accuracy:.2%}"
    )
print(f"fp8demo: runs {monitor.run_ids} in comparison {monitor.comparison_id}")
