"""What FP8Monitor costs a user's own fit: step time with the callback against without it.

monitoring_overhead.py measures the engine's own recording (train_run). This one measures
the public callback in a plain `model.fit`, on two float8 models built as a user builds them:

    example    the Keras example's model (TokenAndPositionEmbedding(20000, 200, 32), one
               TransformerDecoder, a sigmoid head): 7 float8 layers
    causal-lm  examples/causal_lm_fp8.py's model (4 TransformerDecoder blocks, hidden 64,
               a softmax head over 1,000 tokens, windows of 64 tokens): 25 float8 layers

Each model is built and compiled once; fits of `--steps` steps then alternate with and
without FP8Monitor(probe_data=one batch) at the default probe cadence (every 25 steps, or
less often when a probe costs more than 2 % of the steps between: ProbePacer), the order
flipping each repeat, in one process. Step time = the mean interval between training
batch ends from the third step on (the first steps compile the step and the probe once per
fit); the probes in between and the store writes count. Inputs are random token ids: the
speed of a step does not depend on the text. Target: median overhead ≤ 3 %.

    .venv/bin/python benchmarks/monitor_overhead.py [--steps 100 --repeats 3 --models example]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

TARGET = 0.03
BATCH = 32
SKIPPED = 2  # intervals left out of each fit: the step's and the first probe's compilation
# The causal LM's vocabulary: the example's 4,000 makes the probe ask XLA for 33 GB on a CPU
# (probe.py's what-if statistics of the (batch, 64, 4000) head), and a failed probe turns off.
LM_VOCABULARY = 1000


def build(name: str):
    """(float8 model compiled with its loss, x, y) for `name`, as a user's script builds it."""
    import keras
    import keras_hub
    import numpy as np

    keras.config.set_dtype_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    if name == "example":
        vocabulary, seq_len = 20000, 200
        ids = keras.Input((None,), dtype="int32", name="input_ids")
        x = keras_hub.layers.TokenAndPositionEmbedding(vocabulary, seq_len, 32)(ids)
        x = keras.layers.Dropout(0.1)(x)
        x = keras_hub.layers.TransformerDecoder(intermediate_dim=32, num_heads=2, dropout=0.1)(x)
        x = keras.layers.GlobalAveragePooling1D()(x)
        x = keras.layers.Dropout(0.1)(x)
        model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(x))
        loss, y_shape = "binary_crossentropy", (1,)
    else:
        vocabulary, seq_len = LM_VOCABULARY, 64
        ids = keras.Input((seq_len,), dtype="int32", name="token_ids")
        x = keras_hub.layers.TokenAndPositionEmbedding(vocabulary, seq_len, 64)(ids)
        for _ in range(4):
            x = keras_hub.layers.TransformerDecoder(intermediate_dim=128, num_heads=4)(x)
        logits = keras.layers.Dense(vocabulary, dtype="float32")(x)
        model = keras.Model(ids, logits, name="causal_lm")
        loss, y_shape = keras.losses.SparseCategoricalCrossentropy(from_logits=True), (seq_len,)
    model.quantize("float8")
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    n = BATCH * 400
    x = rng.integers(2, vocabulary, size=(n, seq_len), dtype=np.int32)
    high = 2 if name == "example" else vocabulary
    y = rng.integers(0, high, size=(n, *y_shape)).astype(np.float32 if high == 2 else np.int32)
    return model, x, y


def LossOnHost():  # noqa: N802  (a class made on first use: keras loads late)
    """A callback that reads each step's loss, as fit's progress bar (verbose=1) does: then
    both arms wait for every step to finish. Without it a fit with no callback that reads
    its logs dispatches steps ahead of the computation, and on a busy 2-core host that
    Python loop competes with XLA's threads: the arms then differed by tens of percent,
    either way, from one run to the next."""
    import keras

    class Reader(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            float((logs or {}).get("loss", 0.0))

    return Reader()


def step_seconds(model, x, y, steps: int, monitor) -> float:
    """Mean seconds per training step of one fit (monitor: an FP8Monitor or None)."""
    timer = _common.StepTimer()
    callbacks = [timer, LossOnHost()] + ([monitor] if monitor is not None else [])
    model.fit(
        x[: BATCH * steps],
        y[: BATCH * steps],
        batch_size=BATCH,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=callbacks,
    )
    kept = timer.intervals[SKIPPED:]
    return sum(kept) / len(kept)


def measure(name: str, steps: int, repeats: int, log=print) -> dict:
    from fp8demo import FP8Monitor

    model, x, y = build(name)
    probe = (x[-BATCH:], y[-BATCH:])
    started = time.perf_counter()
    step_seconds(model, x, y, SKIPPED + 2, None)  # compile the training step, untimed
    log(f"  {name}: compiled in {time.perf_counter() - started:.1f} s")
    on, off, cadence = [], [], []
    for repeat in range(repeats):
        for with_monitor in (True, False) if repeat % 2 == 0 else (False, True):
            monitor = (
                FP8Monitor(name=f"{name} overhead", probe_data=probe) if with_monitor else None
            )
            seconds = step_seconds(model, x, y, steps, monitor)
            (on if with_monitor else off).append(seconds)
            if with_monitor:  # the default cadence, as ProbePacer left it
                summary = monitor.store.run(monitor.run_id)["summary"]
                if summary.get("probe_error"):  # then no probe was timed: say so
                    log(f"  {name}: the probe failed and turned off: {summary['probe_error']}")
                cadence.append(summary.get("probe_every") or "off")
            log(
                f"  {name} repeat {repeat + 1} {'with' if with_monitor else 'without'}: "
                f"{seconds * 1000:.1f} ms/step"
            )
    paired = [a / b - 1 for a, b in zip(on, off)]
    return {
        "model": name,
        "probe_every": cadence,
        "with_ms": [s * 1000 for s in on],
        "without_ms": [s * 1000 for s in off],
        "ratio_of_medians": statistics.median(on) / statistics.median(off),
        "median_paired_overhead": statistics.median(paired),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per fit")
    parser.add_argument("--repeats", type=int, default=3, help="with/without pairs per model")
    parser.add_argument(
        "--models", nargs="+", default=["example", "causal-lm"], choices=["example", "causal-lm"]
    )
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    _common.setup_env()
    started = time.perf_counter()
    print(f"CPU: {_common.cpu_model()}; load average {_common.load_average()}")
    results = [measure(name, args.steps, args.repeats) for name in args.models]
    rows = [
        [
            r["model"],
            " / ".join(str(c) for c in r["probe_every"]),
            " / ".join(f"{v:.1f}" for v in r["with_ms"]),
            " / ".join(f"{v:.1f}" for v in r["without_ms"]),
            f"{(r['ratio_of_medians'] - 1) * 100:+.1f} %",
            f"**{r['median_paired_overhead'] * 100:+.1f} %**",
            _common.met(r["median_paired_overhead"] <= TARGET),
        ]
        for r in results
    ]
    headers = [
        "model",
        "probe every",
        "with FP8Monitor ms/step",
        "without ms/step",
        "ratio of medians − 1",
        "median paired overhead",
        "≤ 3 %",
    ]
    print(_common.table(headers, rows))
    print(
        f"{args.steps} steps per fit, batch {BATCH}, {args.repeats} alternated pairs; "
        f"{time.perf_counter() - started:.0f} s in all; load average {_common.load_average()}"
    )
    _common.write_json(
        args.json, {"args": vars(args), "cpu": _common.cpu_model(), "results": results}
    )


if __name__ == "__main__":
    main()
