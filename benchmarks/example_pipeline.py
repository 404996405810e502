"""The Keras example's own pipeline, reimplemented faithfully, with phase timings.

"Float8 training and inference with a simple Transformer model" (keras.io, Hongyu Chiu):
  extract aclImdb (train/unsup removed) → text_dataset_from_directory(validation_split=0.2,
  seed=42, batch 32) → map(tf.strings.lower) → compute_word_piece_vocabulary on the
  unbatched training texts re-batched by 1000 → WordPieceTokenizer(lowercase=False,
  sequence_length=200) → dataset.map(tokenize).shuffle(512).prefetch().cache() →
  build_model under mixed_bfloat16, fit 3 epochs with validation, evaluate →
  a fresh build_model, model.quantize("float8"), fit, evaluate.

Also kept from the example: `train_sentences = [element[0] for element in train_ds]` (one
more pass over the training files). Left out: the printing of samples and variables.
Added: keras.utils.set_random_seed(seed) up front, for repeatable accuracies.

--subset N selects the same reviews as fp8demo's --subset (first N per split in the seeded
order, half per class) and builds the datasets with the function text_dataset_from_directory
itself calls (paths_and_labels_to_dataset) on those files; subset 0 calls
text_dataset_from_directory exactly as the example.

    .venv/bin/python benchmarks/example_pipeline.py [--subset 2000] [--epochs 1]
"""

import argparse
import re
import shutil
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

EPOCHS = 3
BATCH_SIZE = 32
VOCABULARY_SIZE = 20000
MAX_SEQUENCE_LENGTH = 200
MODEL_KWARGS = dict(hidden_dim=32, num_heads=2, intermediate_dim=32, dropout=0.1)


def extract(archive: Path, target: Path) -> Path:
    """tar -xzf archive -C target, skipping train/unsup (the example's `rm -rf`)."""
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if "/train/unsup/" in f"/{member.name}/" or member.name.endswith("/train/unsup"):
                continue
            tar.extract(member, target, filter="data")
    return target / "aclImdb"


def _datasets(root: Path, subset: int, batch_size: int, seed: int = 42):
    import keras
    import tensorflow as tf

    if not subset:
        kw = dict(batch_size=batch_size, validation_split=0.2, seed=seed)
        train_ds = keras.utils.text_dataset_from_directory(
            str(root / "train"), subset="training", **kw
        )
        val_ds = keras.utils.text_dataset_from_directory(
            str(root / "train"), subset="validation", **kw
        )
        test_ds = keras.utils.text_dataset_from_directory(str(root / "test"), batch_size=batch_size)
        return train_ds, val_ds, test_ds
    # The same files fp8demo's --subset picks, through text_dataset_from_directory's own helper.
    from keras.src.utils.text_dataset_utils import paths_and_labels_to_dataset

    from fp8demo import data

    out = []
    for split in ("train", "validation", "test"):
        paths, labels = data.list_split(root, split)
        keep = data.balanced_subset(labels, subset)
        ds = paths_and_labels_to_dataset(
            [paths[i] for i in keep],
            labels[keep],
            label_mode="int",
            num_classes=2,
            max_length=None,
            shuffle=split != "validation",
            shuffle_buffer_size=batch_size * 8,
            seed=seed,
        )
        out.append(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))
    return tuple(out)


def build_model(
    vocabulary_size=20000,
    max_sequence_length=200,
    hidden_dim=32,
    num_heads=2,
    intermediate_dim=32,
    dropout=0.1,
):
    """The example's build_model, verbatim (unnamed layers)."""
    import keras
    import keras_hub

    token_id_input = keras.layers.Input(shape=(None,), dtype="int32", name="input_ids")
    x = keras_hub.layers.TokenAndPositionEmbedding(
        vocabulary_size=vocabulary_size,
        sequence_length=max_sequence_length,
        embedding_dim=hidden_dim,
    )(token_id_input)
    x = keras.layers.Dropout(rate=dropout)(x)
    x = keras_hub.layers.TransformerDecoder(
        intermediate_dim=intermediate_dim, num_heads=num_heads, dropout=dropout
    )(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(intermediate_dim, activation="relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs=token_id_input, outputs=outputs)


def run(
    archive=None,
    subset=0,
    epochs=EPOCHS,
    seed=42,
    log=print,
    cleanup=True,
    vocabulary_size=VOCABULARY_SIZE,
) -> dict:
    """The whole example, timed by phase. Returns phases, accuracies, steps/s, wall time.

    cleanup=False leaves the extracted reviews (result["workdir"]) for the caller to delete
    later: deleting 50,000 files slows the next extraction on a disk with online discard
    (ext4 with discard), which would be charged to whatever runs next."""
    archive = Path(archive or _common.archive())
    phases = _common.Phases(log)
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="example-pipeline-"))
    result = {"subset": subset, "epochs": epochs, "vocabulary_size": vocabulary_size}
    try:
        with phases("extract archive"):
            root = extract(archive, workdir)
        with phases("import keras, keras_hub, tensorflow"):
            import keras
            import keras_hub
            import tensorflow as tf

            from fp8demo.env import tensorflow

            tensorflow()  # hide a GPU from TF, as fp8demo does (no-op on CPU)
        previous_policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_bfloat16")
        keras.utils.set_random_seed(seed)
        try:
            with phases("datasets (text_dataset_from_directory + lower)"):
                train_ds, val_ds, test_ds = _datasets(root, subset, BATCH_SIZE, seed)
                train_ds = train_ds.map(lambda x, y: (tf.strings.lower(x), y))
                val_ds = val_ds.map(lambda x, y: (tf.strings.lower(x), y))
                test_ds = test_ds.map(lambda x, y: (tf.strings.lower(x), y))

            with phases("vocabulary (compute_word_piece_vocabulary)"):
                reserved_tokens = ["[PAD]", "[UNK]"]
                train_sentences = [element[0] for element in train_ds]  # noqa: F841 (as the example)
                word_piece_ds = train_ds.unbatch().map(lambda x, y: x)
                vocab = keras_hub.tokenizers.compute_word_piece_vocabulary(
                    word_piece_ds.batch(1000).prefetch(2),
                    vocabulary_size=vocabulary_size,
                    reserved_tokens=reserved_tokens,
                )
            result["vocabulary"] = len(vocab)

            with phases("tokenizer + dataset pipeline"):
                tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
                    vocabulary=vocab, lowercase=False, sequence_length=MAX_SEQUENCE_LENGTH
                )

                def format_dataset(sentence, label):
                    return ({"input_ids": tokenizer(sentence)}, label)

                def make_dataset(dataset):
                    dataset = dataset.map(format_dataset, num_parallel_calls=tf.data.AUTOTUNE)
                    return dataset.shuffle(512).prefetch(tf.data.AUTOTUNE).cache()

                train_ds, val_ds, test_ds = map(make_dataset, (train_ds, val_ds, test_ds))

            kwargs = dict(
                vocabulary_size=vocabulary_size,
                max_sequence_length=MAX_SEQUENCE_LENGTH,
                **MODEL_KWARGS,
            )
            for precision in ("bf16", "fp8"):
                with phases(f"{precision}: build + compile"):
                    model = build_model(**kwargs)
                    if precision == "fp8":
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore", UserWarning)
                            model.quantize("float8")
                    model.compile(
                        optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"]
                    )
                timer = _common.StepTimer()
                with phases(f"{precision}: fit ({epochs} epochs + validation)"):
                    model.fit(
                        train_ds,
                        epochs=epochs,
                        validation_data=val_ds,
                        callbacks=[timer],
                        verbose=0,
                    )
                with phases(f"{precision}: evaluate"):
                    loss, accuracy = model.evaluate(test_ds, verbose=0)
                result[precision] = {
                    "test_accuracy": float(accuracy),
                    "test_loss": float(loss),
                    "steps_per_sec": timer.steps_per_sec(),
                }
                if precision == "fp8":
                    result["fp8"]["float8_layers"] = sum(
                        1
                        for layer in model._flatten_layers(recursive=True)
                        if "float8" in str(layer.dtype_policy)
                    )
                    pattern = r"(scale|amax_history)$"
                    result["fp8"]["fp8_variables"] = sum(
                        1 for v in model.trainable_variables if re.search(pattern, v.path)
                    )
                log(
                    f"  {precision}: test accuracy {accuracy:.2%}, "
                    f"{_common.fmt(timer.steps_per_sec(), '.1f')} steps/s"
                )
                del model
        finally:
            keras.config.set_dtype_policy(previous_policy)
    finally:
        if cleanup:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            result["workdir"] = str(workdir)
    result["phases"] = dict(phases.seconds)
    result["wall_seconds"] = time.perf_counter() - started
    return result


def report(result) -> str:
    rows = [(name, f"{seconds:.1f}") for name, seconds in result["phases"].items()]
    rows.append(("**wall time**", f"**{result['wall_seconds']:.1f}**"))
    lines = [_common.table(["phase", "seconds"], rows)]
    for precision in ("bf16", "fp8"):
        r = result[precision]
        lines.append(
            f"{precision}: test accuracy {r['test_accuracy']:.2%}, "
            f"{_common.fmt(r['steps_per_sec'], '.1f')} steps/s (training steps only)"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", default="", help="aclImdb_v1.tar.gz (default: FP8DEMO_IMDB or ../shared/data)"
    )
    parser.add_argument("--subset", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    home = _common.setup_env()  # only for fp8demo.env; the example writes no store
    try:
        result = run(args.data or None, args.subset, args.epochs)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(report(result))
    _common.write_json(args.json, result)


if __name__ == "__main__":
    main()
