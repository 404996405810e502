"""Train one precision of a comparison, recording everything into the run store.

Narrative order, as the Keras example: prepare data and tokenizer (cached) → build the
model (bf16, or bf16 + quantize("float8")) → fit with a recording callback → evaluate on
the test split → save what prediction needs (weights + config + vocabulary).
"""

import json
import math
import time

import fp8demo.env
from fp8demo import compiled, fp8, model as model_lib, probe as probe_lib, tokenizer
from fp8demo.store import Store

RECORD_EVERY_SECONDS = 0.5  # store writes, fp8 snapshots and cancel checks
TOKENS_PER_CPU_BATCH = 4096  # past this, a CPU step costs 2–4× more per token (README: Scaling)


class Cancelled(Exception):
    pass


def eval_batch_size(seq_len: int, multiple_of: int = 1) -> int:
    """Batch size for evaluation (same metric whatever the size): 256 on an accelerator (fewer
    dispatches); on a CPU about 4,096 tokens, past which the attention scores outgrow the caches
    (25,000 test reviews of 200 tokens: 3.1 s at batch 16, 12.9 s at 256). Data-parallel
    batches split evenly over the devices, so the size is a multiple of their number."""
    import jax

    size = 256 if jax.default_backend() != "cpu" else min(256, TOKENS_PER_CPU_BATCH // seq_len)
    return max(multiple_of, size // multiple_of * multiple_of)


def device_description() -> str:
    from fp8demo.device import describe

    return describe()["text"]


def make_recorder(store: Store, run_id: int, n_train: int, batch_size: int, epochs: int,
                  record: bool = True, history_length: int = 1024, early_stopping: int = 0,
                  probe=None, probe_every: int = 0):
    """A Keras callback that writes per-step metrics, progress and fp8 snapshots to the store.

    probe: a probe.Probe run before the first step and every `probe_every` steps.
    """
    import keras

    steps_per_epoch = math.ceil(n_train / batch_size)

    class Recorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.step = 0  # global training steps done (1-based once training)
            self.epoch = 0
            self.cancelled = False
            self.in_fit = False
            self.pending = []  # (step, epoch, time, running loss, running accuracy, seen)
            self.prev = (0, 0.0, 0.0)  # (samples seen, running loss, running accuracy) this epoch
            self.last_flush = 0.0
            self.fp8_step = 0  # last step whose amax is in the store
            self.layers = []
            self.first_step_time = None
            self.last_step_time = None
            self.validation_seconds = 0.0  # spent validating between epochs (not steps)
            self.validation_started = None
            self.started = None
            # Best validation accuracy so far: (epoch, val_accuracy, weights as numpy).
            self.best = None
            self.stopped_early_at = None
            self.probe = probe if (record and probe_every > 0 and probe is not None) else None
            self.probe_rows = []  # (step, stats) not yet in the store

        # -- fit ------------------------------------------------------------------

        def on_train_begin(self, logs=None):
            self.in_fit = True
            self.started = time.time()
            self.layers = fp8.float8_layers(self.model)
            if not self.layers:
                self.probe = None  # nothing in float8 to probe
            self.run_probe()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            self.prev = (0, 0.0, 0.0)

        def on_train_batch_end(self, batch, logs=None):
            now = time.time()
            self.step += 1
            self.last_step_time = now
            if self.first_step_time is None:
                self.first_step_time = now  # the first step includes XLA compilation
                store.update_run(run_id, phase="training")
            if self.probe is not None and self.step % probe_every == 0:
                self.run_probe()
            seen = min((batch + 1) * batch_size, n_train)
            self.pending.append((self.step, self.epoch, now - self.started,
                                 logs.get("loss"), logs.get("accuracy"), seen))
            # Flush before the amax history wraps, so no step's amax is lost.
            if (now - self.last_flush >= RECORD_EVERY_SECONDS
                    or (self.layers and self.step - self.fp8_step >= history_length // 2)):
                self.flush(now)

        def on_epoch_end(self, epoch, logs=None):
            self.flush(time.time())
            logs = logs or {}
            if record:
                store.add_epoch(run_id, epoch, self.step, logs.get("loss"), logs.get("accuracy"),
                                logs.get("val_loss"), logs.get("val_accuracy"))
            val_accuracy = logs.get("val_accuracy")
            if val_accuracy is not None and (self.best is None or val_accuracy > self.best[1]):
                self.best = (epoch, float(val_accuracy), self.model.get_weights())
            elif early_stopping and self.best and epoch - self.best[0] >= early_stopping:
                self.stopped_early_at = epoch
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            if self.probe is not None and self.step % probe_every:
                self.run_probe()  # the final weights and scales, as finished runs keep them
            self.flush(time.time())
            self.in_fit = False

        # -- validation and test ---------------------------------------------------

        def on_test_begin(self, logs=None):
            if self.in_fit:
                self.validation_started = time.time()
                store.update_run(run_id, phase=f"validating epoch {self.epoch + 1}")

        def on_test_batch_end(self, batch, logs=None):
            now = time.time()
            if now - self.last_flush >= RECORD_EVERY_SECONDS:
                self.last_flush = now
                if store.cancel_requested(run_id):
                    self.cancelled = True
                    self.model.stop_evaluating = True
                    self.model.stop_training = True

        def on_test_end(self, logs=None):
            if self.in_fit and self.validation_started is not None:
                self.validation_seconds += time.time() - self.validation_started
                self.validation_started = None
            if self.in_fit and not self.cancelled:
                store.update_run(run_id, phase="training")

        # -- recording -------------------------------------------------------------

        def flush(self, now):
            self.last_flush = now
            if self.pending and record:
                rows = []
                seen_prev, loss_prev, acc_prev = self.prev
                for step, epoch, t, loss, acc, seen in self.pending:
                    if seen < seen_prev:  # a new epoch started inside this batch of rows
                        seen_prev, loss_prev, acc_prev = 0, 0.0, 0.0
                    n = seen - seen_prev
                    # logs hold running means over the epoch; recover this batch's values.
                    batch_loss = (seen * loss - seen_prev * loss_prev) / n
                    batch_acc = (seen * acc - seen_prev * acc_prev) / n
                    rows.append((step, epoch, t, batch_loss, batch_acc))
                    if not math.isfinite(loss):
                        store.add_steps(run_id, rows)
                        raise FloatingPointError(
                            f"The loss became {loss} at step {step} (epoch {epoch + 1}): training "
                            "diverged. Lower the learning rate or use a smaller model.")
                    seen_prev, loss_prev, acc_prev = seen, loss, acc
                self.prev = (seen_prev, loss_prev, acc_prev)
                store.add_steps(run_id, rows)
            elif self.pending:
                last = self.pending[-1]
                self.prev = (last[5], last[3], last[4])
            self.pending = []
            if record and self.layers and self.step > self.fp8_step:
                self.snapshot()
            if self.probe_rows:
                store.add_fp8_probe(run_id, self.probe_rows)
                self.probe_rows = []
            self.report_progress(now)
            if store.cancel_requested(run_id):
                self.cancelled = True
                self.model.stop_training = True

        def run_probe(self):
            """Saturation/underflow on the fixed batch; a failing probe only turns itself off."""
            if self.probe is None:
                return
            try:
                _ = self.model  # sync the training state into the variables
                self.probe_rows.append((self.step, self.probe()))
            except Exception as e:  # monitoring must never end a training run
                self.probe = None
                store.merge_summary(run_id, probe_error=f"{type(e).__name__}: {e}"[:500])

        def snapshot(self):
            _ = self.model  # the property writes JAX's training state back into the variables
            histories, scales = fp8.read_state(self.layers)
            new = fp8.newest_amax(histories, self.step - self.fp8_step)
            store.add_fp8_amax(run_id, self.step - len(new) + 1, new)
            store.add_fp8_scales(run_id, self.step, scales)
            self.fp8_step = self.step

        def training_seconds(self, until):
            """Time spent in training steps after the first (compiling) one."""
            return until - self.first_step_time - self.validation_seconds

        def report_progress(self, now):
            total = steps_per_epoch * epochs
            fields = {"epoch": self.epoch + 1, "step": self.step, "elapsed": now - self.started}
            if self.first_step_time is not None and self.step > 1:
                rate = (self.step - 1) / max(self.training_seconds(now), 1e-9)
                fields.update(steps_per_sec=rate, samples_per_sec=rate * batch_size,
                              eta=(total - self.step) / rate if rate > 0 else None)
            store.update_run(run_id, **fields)

    return Recorder()


def train_run(store: Store, run: dict, **options) -> dict:
    """Train one run, data-parallel over all devices when its config asks for it."""
    import keras

    config = run["config"]
    if not config.data_parallel:
        return _train_run(store, run, **options)
    import jax

    from fp8demo.config import ConfigError

    devices = jax.devices()
    if config.batch_size % len(devices):
        raise ConfigError(f"Data-parallel training on {len(devices)} devices needs a batch size "
                          f"divisible by {len(devices)}; got {config.batch_size}.")
    store.merge_summary(run["id"], devices=[str(d) for d in devices])
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    try:
        return _train_run(store, run, **options)
    finally:
        keras.distribution.set_distribution(None)


def _train_run(store: Store, run: dict, record: bool = True, progress=print,
               on_trained=None) -> dict:
    """Train, evaluate and save one queued run; returns its final fields.

    Raises Cancelled when a cancel was requested; other exceptions propagate (the worker
    marks the run failed with their message).
    """
    import jax
    import keras

    run_id, config, precision = run["id"], run["config"], run["precision"]

    timeline = []  # (phase, when it began): each phase's seconds go into the run's summary

    def phase(name):
        timeline.append((name, time.time()))
        store.update_run(run_id, phase=name)
        if store.cancel_requested(run_id):
            raise Cancelled()

    store.update_run(run_id, device=device_description())
    fp8demo.env.use_compilation_cache(store.home)

    # 1. Data and tokenizer (cached: the second precision of a comparison starts here at once).
    prepared = tokenizer.prepare(config, store.home, on_phase=phase, progress=progress)
    store.merge_summary(run_id, data={
        "fingerprint": prepared.fingerprint, "from_cache": prepared.from_cache,
        "seconds": prepared.seconds, "vocabulary": len(prepared.vocabulary),
        "sizes": {"train": len(prepared.y_train), "validation": len(prepared.y_val),
                  "test": len(prepared.y_test)}})

    # 2. Model.
    phase("building model")
    model = model_lib.build(config, precision)
    model_lib.compile(model, config)
    layers = fp8.float8_layers(model)
    params = model_lib.count_params(model)
    store.merge_summary(run_id, params=params, fp8_layers=fp8.describe_layers(model),
                        fp8_before=fp8.variables_summary(layers))

    # 3. Fit. The first step compiles; the recorder switches the phase to "training".
    steps_per_epoch = math.ceil(len(prepared.y_train) / config.batch_size)
    store.update_run(run_id, phase="compiling", params=params, steps_per_epoch=steps_per_epoch,
                     total_steps=steps_per_epoch * config.epochs)
    recorder = make_recorder(store, run_id, len(prepared.y_train), config.batch_size,
                             config.epochs, record=record,
                             history_length=config.amax_history_length,
                             early_stopping=config.early_stopping,
                             probe=probe_lib.Probe(model, prepared.x_val[:config.batch_size],
                                                   prepared.y_val[:config.batch_size]),
                             probe_every=config.probe_every)
    keras.utils.set_random_seed(config.seed)  # the same shuffling order for every precision
    # Validation and test use one evaluation batch: one compiled test step, sized for the device.
    eval_batch = eval_batch_size(config.seq_len, len(jax.devices()) if config.data_parallel else 1)
    started = time.time()
    timeline.append(("fit (compiling, training, validating)", started))
    with model_lib.dropout_masks(config.dropout_masks):  # the training step is traced here
        model.fit(prepared.x_train, prepared.y_train, batch_size=config.batch_size,
                  epochs=config.epochs, validation_data=(prepared.x_val, prepared.y_val),
                  validation_batch_size=eval_batch,
                  shuffle=True, callbacks=[recorder], verbose=0)
        fit_seconds = time.time() - started
        if recorder.cancelled:
            raise Cancelled()
        if layers:
            # Does XLA run the float8 layers as FP8 GEMMs? Read the step fit just compiled
            # (inside the dropout-mask block, so a cache miss traces the same step).
            phase("inspecting the compiled step")
            batch = slice(0, config.batch_size)
            store.merge_summary(run_id, compiled_step=compiled.inspect(
                model, prepared.x_train[batch], prepared.y_train[batch]))

    # 4. Evaluate on the test split: the final weights, and the best epoch's if it was earlier.
    phase("evaluating")

    def evaluate():
        loss, accuracy = model.evaluate(prepared.x_test, prepared.y_test, batch_size=eval_batch,
                                        callbacks=[recorder], verbose=0)
        if recorder.cancelled:
            raise Cancelled()
        return {"test_loss": float(loss), "test_accuracy": float(accuracy)}

    final = {**evaluate(), "epoch": recorder.epoch}
    best = None
    if recorder.best is not None:
        best_epoch, best_val_accuracy, best_weights = recorder.best
        best = {"epoch": best_epoch, "val_accuracy": best_val_accuracy}
        if best_epoch == recorder.epoch:
            best.update(final)
        else:
            phase("evaluating the best epoch")
            final_weights = model.get_weights()
            model.set_weights(best_weights)
            best.update(evaluate())
            if not config.restore_best:
                model.set_weights(final_weights)
    kept = best if (config.restore_best and best) else final
    test_loss, test_accuracy = kept["test_loss"], kept["test_accuracy"]
    store.merge_summary(run_id, final=final, best=best, restored_best=bool(config.restore_best),
                        stopped_early_at=recorder.stopped_early_at)

    if on_trained is not None:
        on_trained(model, prepared)

    # 5. Save what prediction needs: weights + config + vocabulary (a quantized model
    #    cannot round-trip through .keras; see predict.py).
    phase("saving")
    save_artifacts(store, run_id, model, config, precision, prepared.vocabulary)
    # 6. Post-training quantization of the trained bf16 model: the calibration-free INT8
    #    the example contrasts FP8 training with, and int4 weight-only.
    ptq = {}
    if precision == "bf16" and config.ptq:
        for mode in model_lib.PTQ_MODES:
            phase(f"evaluating {mode} post-training quantization")
            quantized = model_lib.build(config, "bf16")
            quantized.load_weights(store.run_dir(run_id) / "model.weights.h5")
            model_lib.compile(model_lib.quantize_post_training(quantized, mode), config)
            loss, accuracy = quantized.evaluate(prepared.x_test, prepared.y_test,
                                                batch_size=eval_batch, verbose=0)
            ptq[mode] = {"test_loss": float(loss), "test_accuracy": float(accuracy),
                         "weights_bytes": model_lib.weights_bytes(quantized)}

    steps = recorder.step
    measured = (max(recorder.training_seconds(recorder.last_step_time), 1e-9)
                if recorder.first_step_time else 1e-9)
    results = {
        "test_loss": float(test_loss), "test_accuracy": float(test_accuracy),
        "fit_seconds": fit_seconds, "params": params,
        "steps_per_sec": (steps - 1) / measured if steps > 1 else None,
    }
    if results["steps_per_sec"]:
        results["samples_per_sec"] = results["steps_per_sec"] * config.batch_size
    timeline.append(("", time.time()))
    seconds = {}
    for (name, began), (_, ended) in zip(timeline, timeline[1:]):
        seconds[name] = seconds.get(name, 0.0) + ended - began
    store.merge_summary(run_id, phase_seconds=seconds, fp8_after=fp8.variables_summary(layers),
                        ptq=ptq, weights_bytes=model_lib.weights_bytes(model),
                        test={"loss": results["test_loss"], "accuracy": results["test_accuracy"]})
    return results


def save_artifacts(store: Store, run_id: int, model, config, precision: str, vocabulary):
    """Weights, config and vocabulary; nothing half-written is left behind (e.g. disk full)."""
    import shutil

    folder = store.run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        model.save_weights(folder / "model.weights.h5")
        (folder / "config.json").write_text(json.dumps(
            {"precision": precision, "config": config.to_dict()}, indent=2))
        (folder / "vocabulary.txt").write_text("\n".join(vocabulary), encoding="utf-8")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
