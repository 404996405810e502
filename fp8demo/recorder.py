"""The recording callback: what a training run writes into the store while Keras fits.

Keras calls the Recorder after every step; about every RECORD_EVERY_SECONDS the Recorder
flushes: it writes each pending step's own loss and accuracy (recovered from Keras's running
means), the float8 scales and amax histories, the probe rows and the progress, then looks
for a cancel request. At each epoch's end it records the epoch and the best epoch so far,
and calls its on_epoch_end hook (the worker passes the sweep's: a trial reports its objective).
With fallback thresholds, each probe may also move float8 layers to bf16 (fallback.py).
"""

import math
import time
from typing import NamedTuple

import numpy as np

import fp8demo.env  # noqa: F401  (sets KERAS_BACKEND: keras reads it when imported)

# isort: split
import keras

from fp8demo import fallback as fallback_lib
from fp8demo import fp8
from fp8demo import model as model_lib
from fp8demo.store import Store

RECORD_EVERY_SECONDS = 0.5  # store writes, fp8 snapshots and cancel checks


class RunningMeans(NamedTuple):
    """Keras's logs after a training batch: means over the epoch's first `seen` samples."""

    epoch: int
    seen: int
    loss: float
    accuracy: float


class PendingStep(NamedTuple):
    step: int  # global training step, 1-based
    seconds: float  # since training began
    means: RunningMeans


class BestEpoch(NamedTuple):
    epoch: int
    val_accuracy: float
    weights: list  # numpy arrays, as model.get_weights() gives them


def per_batch_metrics(means: list, before: RunningMeans | None = None) -> list:
    """Each batch's own (loss, accuracy), from the running means Keras logs after it.

    A batch's value is the difference of two sums over the epoch so far:
    (seen · mean − seen_before · mean_before) / (seen − seen_before). `before` holds the
    running means of the batch just before means[0] (None at the start of training); a batch
    of a new epoch starts from empty sums.
    """
    values = []
    for now in means:
        if before is None or before.epoch != now.epoch:
            before = RunningMeans(now.epoch, 0, 0.0, 0.0)
        n = now.seen - before.seen
        values.append(
            (
                (now.seen * now.loss - before.seen * before.loss) / n,
                (now.seen * now.accuracy - before.seen * before.accuracy) / n,
            )
        )
        before = now
    return values


class Recorder(keras.callbacks.Callback):
    """Writes a run's training into the store as Keras fits and evaluates it.

    n_train, batch_size, epochs: the fit's shape, for samples seen and progress.
    record: False keeps progress, best epoch and cancel checks but writes no metrics, fp8
        state or probes (to measure what recording costs).
    history_length: the float8 amax history length; flushes come often enough that no
        step's amax is overwritten before it is read.
    early_stopping: stop after this many epochs without a better validation accuracy (0: never).
    probe: a probe.Probe, run before the first step, every `probe_every` steps and after the last.
    on_epoch_end: called (store, run_id) after each recorded epoch; a cancel it requests (a
        pruned sweep trial) stops the fit before the next epoch.
    metric: the logs' key stored as each step's and epoch's "accuracy" (a user's model,
        monitor.py, may name its metric otherwise; a missing one is stored as a gap).
    keep_best: keep a copy of the best epoch's weights (the engine evaluates them).
    fallback: fallback thresholds (fallback.parse; () for none): after each probe a float8
        layer one of whose tensors crosses one computes in bf16 for the rest of the run.
    batch_size None: unknown (a user's fit, monitor.py); n_train is then the steps per epoch
        (None: unknown too) and every batch weighs the same.

    After fit: `cancelled` (a cancel request stopped Keras), `best` (a BestEpoch or None),
    `stopped_early_at`, `epoch` (the last epoch), `step`, steps_per_second() and
    fallback_layers() (the paths of the layers moved to bf16).
    """

    def __init__(
        self,
        store: Store,
        run_id: int,
        n_train: int,
        batch_size: int,
        epochs: int,
        record: bool = True,
        history_length: int = 1024,
        early_stopping: int = 0,
        probe=None,
        probe_every: int = 0,
        on_epoch_end=None,
        metric: str = "accuracy",
        keep_best: bool = True,
        fallback=(),
    ):
        super().__init__()
        self.store, self.run_id = store, run_id
        self.n_train, self.batch_size, self.epochs = n_train, batch_size, epochs
        self.record, self.history_length = record, history_length
        self.early_stopping = early_stopping
        self.probe = probe if (record and probe_every > 0) else None
        self.probe_every = probe_every
        self.on_epoch_end_hook = on_epoch_end  # (store, run_id) after each recorded epoch
        self.metric, self.keep_best = metric, keep_best
        self.thresholds = tuple(fallback)
        self.fallback = None  # a fallback.Fallback once the float8 layers are known

        self.step = 0  # global training steps done
        self.epoch = 0
        self.cancelled = False
        self.best = None
        self.stopped_early_at = None
        self.in_fit = False
        self.layers = []  # float8 layers, found when training begins
        self.pending = []  # PendingStep rows not yet in the store
        self.last_means = None  # running means of the last step taken out of `pending`
        self.probe_rows = []  # (step, stats) not yet in the store
        self.recipe_rows = []  # (step, what-if stats per scaling recipe) not yet in the store
        self.second_rows = []  # the same with each tensor in its other GEMM (Probe.second_gemm)
        self.block_rows = []  # block recipes' block scales (Probe.block_records) not yet stored
        self.recipes = self.probe.recipes if self.probe is not None else ()
        self.fp8_step = 0  # last step whose amax is in the store
        self.last_flush = 0.0
        self.started = None
        self.first_step_time = None  # the first step includes XLA compilation
        self.last_step_time = None
        self.validation_seconds = 0.0  # spent validating between epochs (not in steps)
        self.validation_seconds_at_last_step = 0.0  # the last epoch's validation comes after
        self.validation_started = None

    # -- fit --------------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self.in_fit = True
        self.started = time.time()
        self.layers = fp8.float8_layers(self.model)
        if not self.layers:
            self.probe = None  # nothing in float8 to probe
        if self.thresholds and self.probe is not None:
            self.fallback = fallback_lib.Fallback(self.thresholds, [x.path for x in self.layers])
        self.run_probe()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        now = time.time()
        self.step += 1
        self.last_step_time = now
        self.validation_seconds_at_last_step = self.validation_seconds
        if self.first_step_time is None:
            self.first_step_time = now
            self.store.update_run(self.run_id, phase="training")
        if self.probe is not None and self.step % self.probe_every == 0:
            self.run_probe()
        if self.batch_size is None:  # unknown: count batches
            seen = batch + 1
        else:
            seen = min((batch + 1) * self.batch_size, self.n_train)
        means = RunningMeans(self.epoch, seen, _number(logs, "loss"), _number(logs, self.metric))
        self.pending.append(PendingStep(self.step, now - self.started, means))
        # Flush before the amax history wraps, so no step's amax is lost.
        if now - self.last_flush >= RECORD_EVERY_SECONDS or (
            self.layers and self.step - self.fp8_step >= self.history_length // 2
        ):
            self.flush(now)

    def on_epoch_end(self, epoch, logs=None):
        self.flush(time.time())
        logs = logs or {}
        if self.record:
            self.store.add_epoch(
                self.run_id,
                epoch,
                self.step,
                logs.get("loss"),
                logs.get(self.metric),
                logs.get("val_loss"),
                logs.get(f"val_{self.metric}"),
            )
            if self.on_epoch_end_hook is not None:  # a sweep trial: report, maybe prune
                self.on_epoch_end_hook(self.store, self.run_id)
            self.check_cancel()  # pruned: stop before the next epoch
        val_accuracy = logs.get(f"val_{self.metric}")
        if not self.keep_best:
            return
        best_so_far = self.best.val_accuracy if self.best else None
        if val_accuracy is not None and (best_so_far is None or val_accuracy > best_so_far):
            self.best = BestEpoch(epoch, float(val_accuracy), self.model.get_weights())
        elif self.early_stopping and self.best and epoch - self.best.epoch >= self.early_stopping:
            self.stopped_early_at = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.probe is not None and self.step % self.probe_every:
            self.run_probe()  # the final weights and scales, as finished runs keep them
        self.flush(time.time())
        self.in_fit = False

    # -- validation and test ----------------------------------------------------------------

    def on_test_begin(self, logs=None):
        if self.in_fit:
            self.validation_started = time.time()
            self.store.update_run(self.run_id, phase=f"validating epoch {self.epoch + 1}")

    def on_test_batch_end(self, batch, logs=None):
        now = time.time()
        if now - self.last_flush >= RECORD_EVERY_SECONDS:
            self.last_flush = now
            self.check_cancel()

    def on_test_end(self, logs=None):
        if self.in_fit and self.validation_started is not None:
            self.validation_seconds += time.time() - self.validation_started
            self.validation_started = None
        if self.in_fit and not self.cancelled:
            self.store.update_run(self.run_id, phase="training")

    # -- flushing ---------------------------------------------------------------------------

    def flush(self, now: float):
        """Write what piled up since the last flush, then look for a cancel request."""
        self.last_flush = now
        self.write_steps()
        self.write_fp8_state()
        self.write_probes()
        self.report_progress(now)
        self.check_cancel()

    def write_steps(self):
        """Each pending step's own loss and accuracy; a non-finite loss ends training, with
        the curve up to it kept."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        if self.record:
            values = per_batch_metrics([p.means for p in pending], self.last_means)
            rows = [
                (p.step, p.means.epoch, p.seconds, loss, accuracy)
                for p, (loss, accuracy) in zip(pending, values)
            ]
            for i, p in enumerate(pending):
                if not math.isfinite(p.means.loss):
                    self.store.add_steps(self.run_id, rows[: i + 1])
                    raise FloatingPointError(
                        f"The loss became {p.means.loss} at step {p.step} (epoch "
                        f"{p.means.epoch + 1}): training diverged. Lower the learning rate or "
                        "use a smaller model."
                    )
            self.store.add_steps(self.run_id, rows)
        self.last_means = pending[-1].means

    def write_fp8_state(self):
        """The newest amax of every step since the last write, and the current scales."""
        if not (self.record and self.layers and self.step > self.fp8_step):
            return
        _ = self.model  # the property writes JAX's training state back into the variables
        histories, scales = fp8.read_state(self.layers)
        new = fp8.newest_amax(histories, self.step - self.fp8_step)
        first = self.step - len(new) + 1
        self.store.add_fp8_amax(self.run_id, first, self.without_bf16_steps(new, first))
        self.store.add_fp8_scales(self.run_id, self.step, scales)
        self.fp8_step = self.step

    def without_bf16_steps(self, amax, first_step: int):
        """amax [steps from first_step, layers, roles] with NaN (no amax: a gap in the
        heatmaps, not a dead tensor in FP8 health) where a layer computed in bf16: every
        step after the probe that moved it. Its frozen history would repeat stale values."""
        if self.fallback is None or not self.fallback.events:
            return amax
        amax = np.array(amax, np.float32)
        steps = np.arange(first_step, first_step + len(amax))
        for event in self.fallback.events:
            i = self.fallback.layer_names.index(event.layer)
            amax[steps > event.step, i] = np.nan
        return amax

    def write_probes(self):
        if self.probe_rows:
            self.store.add_fp8_probe(self.run_id, self.probe_rows)
            self.probe_rows = []
        if self.recipe_rows:
            self.store.add_fp8_recipes(self.run_id, self.recipes, self.recipe_rows)
            self.store.add_fp8_recipes(self.run_id, self.recipes, self.second_rows, second=True)
            self.recipe_rows, self.second_rows = [], []
        if self.block_rows:
            self.store.add_fp8_blocks(self.run_id, self.block_rows)
            self.block_rows = []

    def report_progress(self, now: float):
        fields = {"epoch": self.epoch + 1, "step": self.step, "elapsed": now - self.started}
        rate = self.steps_per_second(until=now)
        if rate is not None:
            fields["steps_per_sec"] = rate
            if self.batch_size is not None:
                fields["samples_per_sec"] = rate * self.batch_size
            if self.n_train:
                total = math.ceil(self.n_train / (self.batch_size or 1)) * self.epochs
                fields["eta"] = (total - self.step) / rate if rate > 0 else None
        self.store.update_run(self.run_id, **fields)

    def check_cancel(self):
        """On a cancel request, ask Keras to stop; the run raises Cancelled once Keras returns."""
        if self.store.cancel_requested(self.run_id):
            self.cancelled = True
            self.model.stop_evaluating = True
            self.model.stop_training = True

    # -- measuring --------------------------------------------------------------------------

    def run_probe(self):
        """Saturation/underflow on the fixed batch, and the same tensors under every scaling
        recipe (one compiled call); a failing probe only turns itself off."""
        if self.probe is None:
            return
        try:
            _ = self.model  # sync the training state into the variables
            stats, by_recipe = self.probe.measure()
            self.probe_rows.append((self.step, stats))
            if self.recipes:
                self.recipe_rows.append((self.step, by_recipe))
                self.second_rows.append((self.step, self.probe.second_gemm))
                self.block_rows.extend(self.probe.block_records(self.step))
        except Exception as e:  # monitoring must never end a training run
            self.probe = None
            self.store.merge_summary(self.run_id, probe_error=f"{type(e).__name__}: {e}"[:500])
            return
        if self.fallback is not None:
            self.fall_back(stats, by_recipe)

    def fall_back(self, stats, by_recipe):
        """Move the layers whose tensors cross a fallback threshold at this probe to bf16, and
        record the events; the model's steps then retrace once (fallback.py)."""
        recipe = model_lib.scaling_recipe(self.model)
        statistics = fallback_lib.tensor_statistics(
            stats, by_recipe, self.recipes, recipe, self.probe.mean_square
        )
        events = self.fallback.check(self.step, statistics)
        if not events:
            return
        for event in events:
            fallback_lib.use_bf16(self.layers[self.fallback.layer_names.index(event.layer)])
        fallback_lib.retrace(self.model)
        self.store.merge_summary(
            self.run_id,
            fallback_events=fallback_lib.event_rows(self.fallback.events),
            fallback_layers=self.fallback_layers(),
            fallback_summary=fallback_lib.layers_summary(self.fallback.moved, len(self.layers)),
        )

    def fallback_layers(self) -> list[str]:
        """The paths of the float8 layers moved to bf16 so far, in model order."""
        if self.fallback is None:
            return []
        return [self.fallback.layer_names[i] for i in sorted(self.fallback.moved)]

    def steps_per_second(self, until: float | None = None) -> float | None:
        """Training steps per second after the first (compiling) one, validation excluded,
        up to `until` (default: the last step); None before two steps."""
        if self.first_step_time is None or self.step < 2:
            return None
        if until is None:
            until, validation = self.last_step_time, self.validation_seconds_at_last_step
        else:
            validation = self.validation_seconds
        seconds = until - self.first_step_time - validation
        return (self.step - 1) / max(seconds, 1e-9)


def _number(logs, key) -> float:
    """A logged metric as a float; NaN (a gap in the store) when the logs lack it."""
    value = (logs or {}).get(key)
    return float("nan") if value is None else float(value)
