"""Post-training quantization: the calibration-free INT8 the Keras example contrasts FP8
training with, and int4 weight-only, of a finished bf16 run's saved weights.

Queued work, as training is: asking for it (Results, `show`, or the worker itself after a bf16
run with ptq) queues an evaluation in the store (launcher.request_post_training); a worker
claims it when no run may start and calls evaluate_run, which keeps the results in the run's
summary["ptq"]. A comparison never waits for it, and a page never computes it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

import fp8demo.env
from fp8demo import model as model_lib
from fp8demo import tokenizer
from fp8demo.config import ConfigError
from fp8demo.store import Store

# fp8demo.training is imported where evaluating needs it: it loads keras and JAX (about 1.5 s),
# which the CLI's listings and the pages, asking only post_training_pending, never use.
if TYPE_CHECKING:
    from fp8demo.training import EvaluationSet


def post_training_pending(run: dict) -> bool:
    """Whether a run has post-training quantization results still to evaluate."""
    config = run["config"]
    return (
        run["status"] == "finished"
        and run["precision"] == "bf16"
        and bool(config.ptq)
        and set(run["summary"].get("ptq") or {}) != set(model_lib.PTQ_MODES)
    )


def evaluate_run(store: Store, run_id) -> dict:
    """{mode: test results, weight bytes and seconds} of a finished bf16 run's post-training
    quantization: from its summary, else evaluated now and merged into it (what a worker runs
    for a claimed evaluation). Runs without PTQ give {}.

    Under the store's lock "ptq-<run>" (any host of the store): two workers never evaluate
    the same run twice; the second reads the first one's results.
    """
    run = store.run(run_id)
    if not post_training_pending(run):
        return run["summary"].get("ptq") or {}
    with store.lock(f"ptq-{run['id']}"):
        run = store.run(run["id"])  # another worker may have finished meanwhile
        if not post_training_pending(run):
            return run["summary"].get("ptq") or {}
        config, folder = run["config"], store.run_dir(run["id"])
        from fp8demo.training import eval_batch_size

        fp8demo.env.use_compilation_cache(store.home)
        test = test_set_of(store, run)
        batch = eval_batch_size(config.seq_len)
        results = {}
        for mode in model_lib.PTQ_MODES:
            started = time.time()
            results[mode] = evaluate_post_training(folder, config, mode, test, batch)
            results[mode]["seconds"] = time.time() - started
        store.merge_summary(run["id"], ptq=results)
    return results


def test_set_of(store: Store, run: dict) -> EvaluationSet:
    """The test split a run was evaluated on, tokenized with the vocabulary it saved: from the
    token cache of the data it recorded, else prepared again from its data source."""
    from fp8demo.training import EvaluationSet

    fingerprint = (run["summary"].get("data") or {}).get("fingerprint")
    if fingerprint:
        path = tokenizer.tokens_cache_path(run["config"], fingerprint, store.home)
        try:
            with np.load(path) as arrays:
                return EvaluationSet(arrays["x_test"], arrays["y_test"])
        except (OSError, KeyError, ValueError):  # evicted or damaged: prepare it again
            pass
    prepared = tokenizer.prepare(run["config"], store.home, progress=lambda *_: None)
    saved = (store.run_dir(run["id"]) / "vocabulary.txt").read_text(encoding="utf-8")
    if saved.split("\n") != list(prepared.vocabulary):
        raise ConfigError(
            f"Run {run['id']}'s saved vocabulary differs from the one its settings give now "
            "(was the data changed?): its post-training quantization cannot be evaluated."
        )
    return EvaluationSet(prepared.x_test, prepared.y_test)


def evaluate_post_training(folder, config, mode: str, test: EvaluationSet, batch_size: int) -> dict:
    """Test results and weight bytes of the saved bf16 weights quantized to `mode`."""
    from fp8demo.training import evaluate

    quantized = model_lib.build(config, "bf16")
    quantized.load_weights(folder / "model.weights.h5")
    model_lib.compile(model_lib.quantize_post_training(quantized, mode), config)
    return {
        **evaluate(quantized, test, batch_size),
        "weights_bytes": model_lib.weights_bytes(quantized),
    }
