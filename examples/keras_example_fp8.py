"""Float8 training of a simple Transformer, as the Keras example writes it, monitored by fp8demo.

The script is keras.io's "Float8 training and inference with a simple Transformer model"
(IMDB, a WordPiece tokenizer, TokenAndPositionEmbedding + one TransformerDecoder, trained in
mixed_bfloat16, then the same model after model.quantize("float8")) with three lines added,
marked `# fp8demo`: the import, the callback, and the comparison label that pairs the two
fits on the dashboard's Results page. Everything else is the example's.

    python examples/keras_example_fp8.py                       # the example's sizes
    python examples/keras_example_fp8.py --subset 512 --epochs 1   # a quick look
    FP8DEMO_IMDB=/path/to/aclImdb_v1.tar.gz python examples/keras_example_fp8.py

Data: --data or FP8DEMO_IMDB (the aclImdb folder or the archive), else the archive is
downloaded as the example does. Then `python -m fp8demo dashboard` (or `./start.sh`) shows the
two runs live on Live and FP8 health, and paired on Results.
"""

import argparse
import os
import sys
import tarfile
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # fp8demo of this checkout

import keras  # noqa: E402
import keras_hub  # noqa: E402
import tensorflow as tf  # noqa: E402

from fp8demo import FP8Monitor  # noqa: E402  # fp8demo

keras.config.set_dtype_policy("mixed_bfloat16")

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--data", default=os.environ.get("FP8DEMO_IMDB", ""), help="aclImdb or archive")
parser.add_argument("--subset", type=int, default=0, help="reviews per split (0: all)")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--comparison", default="keras-example", help="the dashboard's label")
args = parser.parse_args()

# Model hyperparameters, as the example's.
vocabulary_size = 20000
max_sequence_length = 200
hidden_dim = 32
intermediate_dim = 32
num_heads = 2
dropout_rate = 0.1
batch_size = 32
EPOCHS = args.epochs

"""
## Dataset: IMDB, as the example downloads and splits it
"""


def imdb_folder(data: str) -> Path:
    """The aclImdb folder: --data's folder, its archive extracted next to it, or a download."""
    if data and Path(data).is_dir():
        root = Path(data)
        return root / "aclImdb" if (root / "aclImdb").is_dir() else root
    archive = Path(data) if data else None
    if archive is None:
        archive = Path(
            keras.utils.get_file(
                origin="https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
            )
        )
    target = archive.parent / "aclImdb"
    if not target.is_dir():
        with tarfile.open(archive) as tar:
            members = [m for m in tar if "/train/unsup/" not in m.name]  # the example rm -r's it
            tar.extractall(archive.parent, members=members, filter="data")
    return target


def take(dataset, subset: int):
    return dataset.take(-(-subset // batch_size)) if subset else dataset


root = imdb_folder(args.data)
splits = dict(batch_size=batch_size, class_names=["neg", "pos"], seed=42)
train_ds = keras.utils.text_dataset_from_directory(
    root / "train", validation_split=0.2, subset="training", **splits
)
val_ds = keras.utils.text_dataset_from_directory(
    root / "train", validation_split=0.2, subset="validation", **splits
)
test_ds = keras.utils.text_dataset_from_directory(root / "test", **splits)
train_ds, val_ds, test_ds = (take(d, args.subset) for d in (train_ds, val_ds, test_ds))

train_ds = train_ds.map(lambda x, y: (tf.strings.lower(x), y))
val_ds = val_ds.map(lambda x, y: (tf.strings.lower(x), y))
test_ds = test_ds.map(lambda x, y: (tf.strings.lower(x), y))

"""
## Tokenizing the data: a WordPiece vocabulary trained on the training split
"""


def train_word_piece(ds, vocab_size, reserved_tokens):
    word_piece_ds = ds.unbatch().map(lambda x, y: x)
    vocab = keras_hub.tokenizers.compute_word_piece_vocabulary(
        word_piece_ds.batch(1000).prefetch(2),
        vocabulary_size=vocab_size,
        reserved_tokens=reserved_tokens,
    )
    return vocab


reserved_tokens = ["[PAD]", "[UNK]"]
vocab = train_word_piece(train_ds, vocabulary_size, reserved_tokens)
tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
    vocabulary=vocab, lowercase=False, sequence_length=max_sequence_length
)


def format_dataset(sentence, label):
    sentence = tokenizer(sentence)
    return ({"input_ids": sentence}, label)


def make_dataset(dataset):
    dataset = dataset.map(format_dataset, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.shuffle(512).prefetch(16).cache()


train_ds = make_dataset(train_ds)
val_ds = make_dataset(val_ds)
test_ds = make_dataset(test_ds)

"""
## The model: TokenAndPositionEmbedding, one TransformerDecoder, a sigmoid head
"""


def build_model(
    vocabulary_size=20000,
    max_sequence_length=200,
    hidden_dim=32,
    num_heads=2,
    intermediate_dim=32,
    dropout=0.1,
):
    token_id_input = keras.layers.Input(shape=(None,), dtype="int32", name="input_ids")
    x = keras_hub.layers.TokenAndPositionEmbedding(
        vocabulary_size=vocabulary_size,
        sequence_length=max_sequence_length,
        embedding_dim=hidden_dim,
    )(token_id_input)
    x = keras.layers.Dropout(rate=dropout)(x)
    x = keras_hub.layers.TransformerDecoder(
        intermediate_dim=intermediate_dim,
        num_heads=num_heads,
        dropout=dropout,
    )(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs=token_id_input, outputs=outputs)


"""
## Training in mixed_bfloat16, then in float8
"""

probe = next(iter(val_ds))  # one validation batch: FP8 health is measured on it
monitor = FP8Monitor(comparison=args.comparison, probe_data=probe)  # fp8demo

model = build_model(vocabulary_size, max_sequence_length, hidden_dim, num_heads, intermediate_dim)
model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
model.fit(train_ds, epochs=EPOCHS, validation_data=val_ds, callbacks=[monitor])  # fp8demo
result = model.evaluate(test_ds)
print(f"Accuracy (mixed_bfloat16): {result[1]:.2%}")

model = build_model(vocabulary_size, max_sequence_length, hidden_dim, num_heads, intermediate_dim)
model.quantize("float8")
model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
model.fit(train_ds, epochs=EPOCHS, validation_data=val_ds, callbacks=[monitor])
result = model.evaluate(test_ds)
print(f"Accuracy (float8): {result[1]:.2%}")
print(f"fp8demo: runs {monitor.run_ids} in comparison {monitor.comparison_id}")
