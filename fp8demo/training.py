"""Train one precision of a comparison, recording everything into the run store.

Narrative order, as the Keras example: prepare data and tokenizer (cached) → build the
model (bf16, or bf16 + quantize("float8")) → fit with a recording callback (recorder.py) →
evaluate the final weights, and the best epoch's, on the test split → save what prediction
needs (weights + config + vocabulary). The post-training quantization of a bf16 model is
queued work of its own (post_training.py), so it never delays a comparison.
"""

import json
import math
import shutil
import time
from typing import NamedTuple

import numpy as np

import fp8demo.env  # sets KERAS_BACKEND: keras reads it when imported

# isort: split
import jax
import keras

from fp8demo import compiled, device, fp8, tokenizer
from fp8demo import fallback as fallback_lib
from fp8demo import model as model_lib
from fp8demo import probe as probe_lib
from fp8demo.config import ConfigError
from fp8demo.store import Store

# Past this, a CPU step costs more per token (benchmarks/README.md: Scaling).
TOKENS_PER_CPU_BATCH = 4096


class Cancelled(Exception):
    """A cancel was requested; the worker marks the run cancelled."""


def stop_if_cancel_requested(store: Store, run_id: int):
    """Between Keras's loops, phase changes are where a cancel request is honoured (inside
    them the recorder watches for one)."""
    if store.cancel_requested(run_id):
        raise Cancelled()


class PhaseTimer:
    """Wall-clock seconds per phase: starting a phase ends the one before; a phase started
    more than once adds up."""

    def __init__(self):
        self.starts = []  # (phase, when it began)

    def start(self, phase: str):
        self.starts.append((phase, time.time()))

    def seconds(self) -> dict:
        """Seconds per phase, the last one up to now."""
        ends = [began for _, began in self.starts[1:]] + [time.time()]
        seconds = {}
        for (phase, began), ended in zip(self.starts, ends):
            seconds[phase] = seconds.get(phase, 0.0) + ended - began
        return seconds


def train_run(
    store: Store,
    run: dict,
    record: bool = True,
    progress=print,
    on_trained=None,
    callbacks=(),
    on_epoch_end=None,
) -> dict:
    """Train one run, data-parallel over all devices when its config asks for it.

    record: False trains without writing metrics (see recorder.Recorder).
    on_trained(model, prepared): called after evaluation, before saving.
    callbacks: more Keras callbacks for fit (benchmarks time the steps with one).
    on_epoch_end(store, run_id): the recorder's hook after each recorded epoch (the worker
    passes the sweep's, which reports a trial's objective).
    """
    options = dict(
        record=record,
        progress=progress,
        on_trained=on_trained,
        callbacks=callbacks,
        on_epoch_end=on_epoch_end,
    )
    config = run["config"]
    if not config.data_parallel:
        return _train_run(store, run, **options)
    devices = jax.devices()
    if config.batch_size % len(devices):
        raise ConfigError(
            f"Data-parallel training on {len(devices)} devices needs a batch size "
            f"divisible by {len(devices)}; got {config.batch_size}."
        )
    store.merge_summary(run["id"], devices=[str(d) for d in devices])
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    try:
        return _train_run(store, run, **options)
    finally:
        keras.distribution.set_distribution(None)


def _train_run(
    store: Store, run: dict, record: bool, progress, on_trained, callbacks, on_epoch_end
) -> dict:
    """Train, evaluate and save one queued run; returns its final fields.

    Raises Cancelled when a cancel was requested; other exceptions propagate (the worker
    marks the run failed with their message).
    """
    run_id, config, precision = run["id"], run["config"], run["precision"]
    timer = PhaseTimer()

    def show(phase):  # time it and show it on the Live page
        timer.start(phase)
        store.update_run(run_id, phase=phase)

    def show_data_phase(phase):  # data preparation's own phases, each a chance to cancel
        show(phase)
        stop_if_cancel_requested(store, run_id)

    store.update_run(run_id, device=device.describe()["label"])
    fp8demo.env.use_compilation_cache(store.home)

    # 1. Data and tokenizer (cached: the second precision of a comparison starts here at once).
    prepared = tokenizer.prepare(config, store.home, on_phase=show_data_phase, progress=progress)
    record_data(store, run_id, prepared)
    devices = batch_devices(config, len(prepared.y_train))
    validation, test = evaluation_sets(prepared, devices)
    eval_batch = eval_batch_size(config.seq_len, devices)  # one compiled step for both

    # 2. Model.
    show("building model")
    stop_if_cancel_requested(store, run_id)
    model, layers, params = build_model(store, run_id, config, precision)

    # 3. Fit. The first step compiles; the recorder switches the phase to "training".
    recorder = start_recording(store, run, model, prepared, params, record, on_epoch_end)
    timer.start("fit (compiling, training, validating)")
    with model_lib.dropout_masks(config.dropout_masks):  # the training step is traced here
        fit_seconds = fit(model, config, prepared, validation, eval_batch, [recorder, *callbacks])
        if recorder.cancelled:
            raise Cancelled()
        if layers:  # inside the dropout-mask block, so a cache miss traces the same step
            show("inspecting the compiled step")
            stop_if_cancel_requested(store, run_id)
            inspect_compiled_step(store, run_id, model, prepared, config.batch_size)

    # 4. Evaluate on the test split: the final weights, and the best epoch's if it was earlier.
    show("evaluating")
    stop_if_cancel_requested(store, run_id)
    final = {**evaluate(model, test, eval_batch, recorder), "epoch": recorder.epoch}
    if recorder.best is not None and recorder.best.epoch != recorder.epoch:
        show("evaluating the best epoch")
        stop_if_cancel_requested(store, run_id)
    best = evaluate_best_epoch(model, test, eval_batch, recorder, final, config.restore_best)
    store.merge_summary(
        run_id,
        final=final,
        best=best,
        restored_best=bool(config.restore_best),
        stopped_early_at=recorder.stopped_early_at,
    )
    if on_trained is not None:
        on_trained(model, prepared)

    # 5. Save what prediction needs (a quantized model cannot round-trip through .keras).
    show("saving")
    stop_if_cancel_requested(store, run_id)
    save_artifacts(store, run_id, model, config, precision, prepared.vocabulary)

    # 6. The post-training quantization of a bf16 run is queued after it (by the worker).
    kept = best if (config.restore_best and best) else final
    store.merge_summary(
        run_id,
        phase_seconds=timer.seconds(),
        fp8_after=fp8.variables_summary(layers),
        weights_bytes=model_lib.weights_bytes(model),
        test={"loss": kept["test_loss"], "accuracy": kept["test_accuracy"]},
    )
    return run_results(kept, fit_seconds, params, recorder, config.batch_size)


# -- 1. data ---------------------------------------------------------------------------------


def record_data(store: Store, run_id: int, prepared):
    store.merge_summary(
        run_id,
        data={
            "fingerprint": prepared.fingerprint,
            "from_cache": prepared.from_cache,
            "seconds": prepared.seconds,
            "vocabulary": len(prepared.vocabulary),
            "sizes": {
                "train": len(prepared.y_train),
                "validation": len(prepared.y_val),
                "test": len(prepared.y_test),
            },
        },
    )


def batch_devices(config, n_train: int) -> int:
    """How many devices every batch splits over: all of them when data-parallel, else 1.

    The last training batch must split evenly too, and padding it would change the training
    (Keras divides a batch's loss by its rows), so a training split that does not is refused.
    """
    if not config.data_parallel:
        return 1
    devices = len(jax.devices())
    if n_train % devices:
        raise ConfigError(
            f"Data-parallel training on {devices} devices needs a training split divisible by "
            f"{devices}, so that its last batch splits evenly over them; this one holds "
            f"{n_train:,} reviews. Choose a subset (reviews per split) divisible by {devices}."
        )
    return devices


def eval_batch_size(seq_len: int, multiple_of: int = 1) -> int:
    """Batch size for evaluation (same metric whatever the size): 256 on an accelerator (fewer
    dispatches); on a CPU about TOKENS_PER_CPU_BATCH tokens, past which the attention scores
    outgrow the caches. Data-parallel batches split evenly over the devices, so the size is a
    multiple of their number."""
    size = 256 if jax.default_backend() != "cpu" else min(256, TOKENS_PER_CPU_BATCH // seq_len)
    return max(multiple_of, size // multiple_of * multiple_of)


def evaluation_sets(prepared, devices: int):
    """The validation and test splits, padded to split over `devices` (see EvaluationSet)."""
    return (
        EvaluationSet.split_over(prepared.x_val, prepared.y_val, devices),
        EvaluationSet.split_over(prepared.x_test, prepared.y_test, devices),
    )


class EvaluationSet(NamedTuple):
    """Inputs, labels and Keras sample weights (None: all samples count alike)."""

    x: np.ndarray
    y: np.ndarray
    sample_weight: np.ndarray | None = None

    @classmethod
    def split_over(cls, x, y, devices: int) -> "EvaluationSet":
        """(x, y) padded so that every batch, the last one too, splits evenly over `devices`,
        with the same mean loss and accuracy as (x, y) alone.

        The padding repeats the first samples with weight 0; the real samples get weight
        padded/real. Keras divides a batch's weighted loss sum by its rows and weights each
        batch by its rows, so the mean loss is Σ weight·loss / padded = Σ loss / real; the
        accuracy is a weighted mean: Σ weight·hit / Σ weight = Σ hit / real.
        """
        real = len(y)
        padded = -(-real // devices) * devices
        if padded == real:
            return cls(x, y)
        repeat = np.arange(padded - real) % real
        weights = np.zeros(padded, np.float32)
        weights[:real] = padded / real
        return cls(np.concatenate([x, x[repeat]]), np.concatenate([y, y[repeat]]), weights)


# -- 2. model -------------------------------------------------------------------------------


def build_model(store: Store, run_id: int, config, precision: str):
    """The compiled model, its float8 layers and its parameter count (also in the summary)."""
    model = model_lib.build(config, precision)
    model_lib.compile(model, config)
    layers = fp8.float8_layers(model)
    params = model_lib.count_params(model)
    store.merge_summary(
        run_id,
        params=params,
        fp8_layers=fp8.describe_layers(model),
        fp8_before=fp8.variables_summary(layers),
    )
    if parts := model_lib.recipe_parts(model):  # an nvfp4 run: which of its parts were on
        store.merge_summary(run_id, nvfp4_parts=parts)
    return model, layers, params


# -- 3. fit ---------------------------------------------------------------------------------


def start_recording(
    store: Store, run: dict, model, prepared, params: int, record: bool, on_epoch_end
):
    """The run's Recorder (its probe watches the first validation batch, on_epoch_end is its
    hook after each epoch); the run's phase becomes "compiling", as the first step compiles."""
    from fp8demo.recorder import Recorder  # lazy: it imports keras (seconds)

    run_id, config = run["id"], run["config"]
    n_train = len(prepared.y_train)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    store.update_run(
        run_id,
        phase="compiling",
        params=params,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * config.epochs,
    )
    probe = probe_lib.Probe(
        model,
        prepared.x_val[: config.batch_size],
        prepared.y_val[: config.batch_size],
        blocks=config.probes_block_scales(run["precision"]),
    )
    return Recorder(
        store,
        run_id,
        n_train,
        config.batch_size,
        config.epochs,
        record=record,
        history_length=config.amax_history_length,
        early_stopping=config.early_stopping,
        probe=probe,
        probe_every=config.probe_every,
        on_epoch_end=on_epoch_end,
        fallback=fallback_lib.parse(config.fallback),
    )


def fit(model, config, prepared, validation: EvaluationSet, eval_batch: int, callbacks) -> float:
    """model.fit as the example calls it, validating after every epoch; returns its seconds.
    Every precision of a comparison shuffles in the same order (the config's seed)."""
    import keras  # lazy: keras loads in seconds

    keras.utils.set_random_seed(config.seed)
    started = time.time()
    model.fit(
        prepared.x_train,
        prepared.y_train,
        batch_size=config.batch_size,
        epochs=config.epochs,
        validation_data=tuple(validation),
        validation_batch_size=eval_batch,
        shuffle=True,
        callbacks=callbacks,
        verbose=0,
    )
    return time.time() - started


def inspect_compiled_step(store: Store, run_id: int, model, prepared, batch_size: int):
    """Does XLA run the float8 layers as FP8 GEMMs? Read back the step fit just compiled."""
    batch = slice(0, batch_size)
    store.merge_summary(
        run_id,
        compiled_step=compiled.inspect(model, prepared.x_train[batch], prepared.y_train[batch]),
    )


# -- 4. evaluate ----------------------------------------------------------------------------


def evaluate(model, test: EvaluationSet, batch_size: int, recorder=None) -> dict:
    """Test loss and accuracy. With a recorder, a cancel request stops the evaluation and
    raises Cancelled."""
    loss, accuracy = model.evaluate(
        test.x,
        test.y,
        sample_weight=test.sample_weight,
        batch_size=batch_size,
        verbose=0,
        callbacks=[recorder] if recorder else [],
    )
    if recorder is not None and recorder.cancelled:
        raise Cancelled()
    return {"test_loss": float(loss), "test_accuracy": float(accuracy)}


def evaluate_best_epoch(
    model, test: EvaluationSet, batch_size: int, recorder, final: dict, restore_best: bool
) -> dict | None:
    """The best validation epoch with its test results (None without validation). Its weights
    stay in the model when `restore_best`; otherwise the final weights go back."""
    if recorder.best is None:
        return None
    best = {"epoch": recorder.best.epoch, "val_accuracy": recorder.best.val_accuracy}
    if recorder.best.epoch == recorder.epoch:
        return {**best, **final}
    final_weights = model.get_weights()
    model.set_weights(recorder.best.weights)
    best.update(evaluate(model, test, batch_size, recorder))
    if not restore_best:
        model.set_weights(final_weights)
    return best


# -- 5. save --------------------------------------------------------------------------------


def save_artifacts(store: Store, run_id: int, model, config, precision: str, vocabulary):
    """Weights, config and vocabulary; nothing half-written is left behind (e.g. disk full).

    Weights rather than a .keras file: a quantized model with composite layers cannot be
    loaded back from one (predict.py rebuilds the model and loads the weights). The float8
    layers a fallback moved to bf16 are listed in config.json's "fallback_layers" (the
    rebuilt model moves them too: fallback.apply_saved)."""
    folder = store.run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        model.save_weights(folder / "model.weights.h5")
        (folder / "config.json").write_text(
            json.dumps(
                {
                    "precision": precision,
                    "config": config.to_dict(),
                    "fallback_layers": fallback_lib.moved_layers(model),
                },
                indent=2,
            )
        )
        (folder / "vocabulary.txt").write_text("\n".join(vocabulary), encoding="utf-8")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    store.share_artifacts(run_id)  # a PostgreSQL store: into the database, for every host


def run_results(kept: dict, fit_seconds: float, params: int, recorder, batch_size: int) -> dict:
    """The run's final fields: the kept weights' test results and the training speed."""
    rate = recorder.steps_per_second()
    results = {
        "test_loss": kept["test_loss"],
        "test_accuracy": kept["test_accuracy"],
        "fit_seconds": fit_seconds,
        "params": params,
        "steps_per_sec": rate,
    }
    if rate:
        results["samples_per_sec"] = rate * batch_size
    return results
