"""FP8Monitor: your own Keras model in the dashboard, as TensorBoard's callback does it.

    from fp8demo import FP8Monitor
    model.fit(x, y, callbacks=[FP8Monitor(name="my-run", comparison="my-experiment",
                                          probe_data=(x[:32], y[:32]))])

Each fit the callback sees becomes one run of the run store (the same store, pages and CLI as
the engine's runs): per-step loss and metric, epochs and validation, every float8 layer's
scales and amax histories, and every `probe_every` steps FP8 health and the what-if
statistics of every scaling recipe on `probe_data`, through the model's own loss. The
recording is the engine's own (recorder.Recorder); this module adds what a user's script
needs around it:

    the run      created 'running' when fit begins, with this host, pid, script and start
                 time; precision inferred from the model (float8 layers: fp8; else its dtype
                 policy: bf16 or float32). Runs with the same `comparison` label join one
                 comparison (the latest of that label without a run of this precision), so
                 a user's bf16 and fp8 scripts pair on Results as the engine's runs do.
    liveness     a heartbeat thread while fitting (Store.alive: other hosts read it);
                 a script killed mid-fit (SIGKILL) has a dead pid, and the supervisor any
                 page starts reaps the run 'interrupted' with its data kept.
    failure      Keras 3 has no hook for an exception in fit: on_train_end is simply never
                 called. The monitor notices it in two places: the heartbeat thread sees a
                 new unhandled exception (sys.last_exc / sys.last_value, which Python sets
                 when a script's exception reaches the top and IPython sets for a notebook
                 cell), and at interpreter exit (atexit) a fit still in progress ends
                 'failed' with that exception's message (or a plain note when none). A fit
                 that begins again with the same callback ends a left-over run first.
    the end      on_train_end ends the run 'finished' with the final metrics; the last
                 validation stands in for the test split (test_loss, test_accuracy) that a
                 user's fit does not have, so Results can pair the runs.

A user's model cannot be rebuilt by the engine: the run's config is a TrainConfig holding
what is known (epochs, probe_every, amax history length, precision), its summary says
source "monitor", model_name and script; Predict explains this, or with `save_model=True`
uses the saved .keras file.
"""

import atexit
import sys
import time
import weakref
from pathlib import Path

import fp8demo.env  # noqa: F401  (sets KERAS_BACKEND: keras reads it when imported)

# isort: split
import jax
import keras
import numpy as np

from fp8demo import fp8
from fp8demo import probe as probe_lib
from fp8demo.config import TrainConfig
from fp8demo.recorder import Recorder
from fp8demo.store import Store
from fp8demo.store.heartbeat import HEARTBEAT_SECONDS, Heartbeat

SOURCE = "monitor"  # summary["source"] of a run this callback records (report.MONITOR_SOURCE)
MODEL_FILE = "model.keras"  # in the run's folder, with save_model=True
PROBE_EVERY = 25  # steps between probes by default (ProbePacer may space them further)
PROBE_BUDGET = 0.02  # the share of training time the default cadence lets probes take


def open_store(store=None) -> Store:
    """A Store from what the user gave: a Store, a database URL, a home folder, or None
    (FP8DEMO_STORE, else the home's runs.sqlite: FP8DEMO_HOME or ~/.fp8demo)."""
    if isinstance(store, Store):
        return store
    if isinstance(store, str) and "://" in store:
        return Store(url=store)
    return Store(home=store) if store is not None else Store()


def infer_precision(model) -> str:
    """fp8 when the model has float8 layers; else its layers' dtype policies: bf16 when any
    computes in bfloat16 (mixed_bfloat16), else float32."""
    if fp8.float8_layers(model):
        return "fp8"
    computes = {getattr(layer, "compute_dtype", None) for layer in [model, *fp8.all_layers(model)]}
    if "bfloat16" in computes:
        return "bf16"
    if "float16" in computes:
        raise ValueError(
            "FP8Monitor: the model computes in float16, which the dashboard does not compare; "
            'pass precision="float32" (or "bf16") to name it anyway.'
        )
    return "float32"


def script_name() -> str:
    """The script that trains (its file name), or what runs it (a notebook: "ipykernel")."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path:
        return Path(path).name
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "interactive"


def device_label() -> str:
    """What JAX computes on, as the engine's runs name it: "CPU", "NVIDIA H200", "2 × ..."."""
    devices = jax.devices()
    kind = devices[0].device_kind if devices[0].platform != "cpu" else "CPU"
    return kind if len(devices) == 1 else f"{len(devices)} × {kind}"


def history_length(layers) -> int:
    """The layers' amax history length (Keras' default 1024 when there are none)."""
    if not layers:
        return 1024
    return int(np.asarray(layers[0].inputs_amax_history.value).shape[-1])


# -- the run in the store ------------------------------------------------------------------


def last_exception():
    """The last unhandled exception Python (a script's end) or IPython (a cell) reported."""
    return getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)


def failure_text(error) -> str:
    if error is None:
        return "The script stopped while fit was running, without an exception reaching the top."
    text = str(error) or type(error).__name__
    return f"fit raised {type(error).__name__}: {text}"[:2000]


# -- the callback --------------------------------------------------------------------------


class FP8Monitor(keras.callbacks.Callback):
    """Records a fit of any Keras 3 model (JAX backend) into the fp8demo run store.

    name: the run's name (default: the script's name and the precision).
    comparison: a label; fits with the same label pair into one comparison (Results).
    probe_data: (x, y), one batch of the fit's batch size (gradient sizes depend on it), on
        which FP8 health and the recipes' what-if statistics are measured; None: no probe.
    probe_every: probe every this many steps (and before the first, after the last); None
        (the default): every 25 steps, or less often when a probe costs more than 2 % of
        the training time between two probes (ProbePacer: a large model on a CPU).
    store: a Store, a database URL (postgresql://...), a home folder, or None (default).
    precision: the run's precision; None: inferred (infer_precision).
    save_model: True saves the trained model as the run's model.keras, for Predict (which
        takes a JSON array for it); a Keras model saves that one instead, e.g. the trained
        model behind its tokenizer, `keras.Sequential([keras.Input((), dtype="string"),
        tokenizer, model])`, so that Predict takes text.
    seed: the seed the script trained with (keras.utils.set_random_seed), recorded so that
        Results pools comparisons of one label over their seeds; None: each comparison counts
        as a seed of its own.
    block_scales: True also measures, at each probe, every float8 tensor's block scales under
        the block recipes (FP8 health's Block scales view); it doubles the probe's compile time.

    After each fit: `run_id`, `comparison_id` (of the latest run), `run_ids` (all).
    """

    def __init__(
        self,
        name=None,
        comparison=None,
        probe_data=None,
        probe_every=None,
        store=None,
        precision=None,
        save_model=False,
        block_scales=False,
        seed=None,
    ):
        super().__init__()
        self.name, self.label = name, comparison or ""
        self.probe_data = probe_data
        self.probe_every = int(probe_every) if probe_every is not None else PROBE_EVERY
        self.paced = probe_every is None
        self.pacer = None
        self.store = open_store(store)
        self.precision, self.save_model = precision, save_model
        self.block_scales = bool(block_scales)
        self.seed = None if seed is None else int(seed)
        self.recorder = None  # the Recorder of the fit in progress
        self.heartbeat = None
        self.run_id = self.comparison_id = None
        self.run_ids = []
        self.exception_at_begin = None
        # At interpreter exit a fit still in progress failed (weakref: no leak in a notebook).
        reference = weakref.ref(self)
        atexit.register(lambda: (m := reference()) is not None and m.fail_if_unfinished())

    # -- fit --------------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self.fail_if_unfinished()  # a fit of this callback that raised earlier (a notebook)
        model, params = self.model, self.params or {}
        layers = fp8.float8_layers(model)
        precision = self.precision or infer_precision(model)
        epochs, steps = int(params.get("epochs") or 1), params.get("steps")
        config = TrainConfig(
            **({} if self.seed is None else {"seed": self.seed}),
            epochs=epochs,
            precisions=(precision,),
            probe_every=self.probe_every if self.probe_data is not None else 0,
            amax_history_length=history_length(layers),
            ptq=False,  # post-training quantization rebuilds the engine's model
        )
        summary = {
            "source": SOURCE,
            "seed_unknown": self.seed is None,
            "name": self.name or f"{script_name()} {precision}",
            "model_name": model.name,
            "script": script_name(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "fp8_layers": fp8.describe_layers(model),
            "fp8_before": fp8.variables_summary(layers),
            "params": int(model.count_params()),
        }
        self.comparison_id, self.run_id = self.store.start_own_run(
            self.label, precision, config, summary, new_label=summary["name"]
        )
        self.run_ids.append(self.run_id)
        self.store.update_run(
            self.run_id,
            device=device_label(),
            params=summary["params"],
            steps_per_epoch=steps,
            total_steps=steps * epochs if steps else None,
        )
        self.exception_at_begin = last_exception()
        self.recorder = self.make_recorder(model, steps, epochs, config)
        self.recorder.on_train_begin(logs)  # the first probe (compiled here)
        self.pacer = self.make_pacer()
        self.heartbeat = Heartbeat(
            self.store, self.run_id, every=HEARTBEAT_SECONDS, on_beat=self.check_alive
        ).__enter__()

    def make_pacer(self):
        """The automatic cadence (None: a cadence given, or no probe), with the seconds of one
        probe, compiled by the recorder's first: an extra probe before the first step."""
        probe = self.recorder.probe
        if not self.paced or probe is None:
            return None
        started = time.perf_counter()
        try:
            probe.measure()
        except Exception:  # the recorder's own probes report and turn off a failing probe
            return None
        return ProbePacer(self.probe_every, time.perf_counter() - started)

    def make_recorder(self, model, steps, epochs, config) -> Recorder:
        probe = None
        if self.probe_data is not None and config.probe_every:
            x, y = probe_batch(self.probe_data)
            probe = probe_lib.Probe(model, x, y, loss=model_loss(model), blocks=self.block_scales)
        recorder = Recorder(
            self.store,
            self.run_id,
            n_train=steps,
            batch_size=None,  # unknown to a callback: the steps count
            epochs=epochs,
            history_length=config.amax_history_length,
            probe=probe,
            probe_every=config.probe_every,
            keep_best=False,  # the user's script owns its weights
        )
        recorder.set_model(model)
        recorder.set_params(self.params)
        return recorder

    def on_epoch_begin(self, epoch, logs=None):
        self.recorder.on_epoch_begin(epoch, logs)

    def on_train_batch_end(self, batch, logs=None):
        recorder = self.recorder
        if recorder.step == 0:  # the logs' keys are known now: pick the stored metric
            recorder.metric = metric_name(logs)
            self.store.merge_summary(self.run_id, metric=recorder.metric)
        probing = recorder.probe is not None and (recorder.step + 1) % recorder.probe_every == 0
        started = time.perf_counter()
        recorder.on_train_batch_end(batch, logs)
        if self.pacer is not None:
            recorder.probe_every = self.pacer.after_step(started, probing)

    def on_epoch_end(self, epoch, logs=None):
        self.recorder.on_epoch_end(epoch, logs)

    def on_test_begin(self, logs=None):
        if self.recorder is not None:
            self.recorder.on_test_begin(logs)

    def on_test_batch_end(self, batch, logs=None):
        if self.recorder is not None:
            self.recorder.on_test_batch_end(batch, logs)

    def on_test_end(self, logs=None):
        if self.recorder is not None:
            self.recorder.on_test_end(logs)

    def on_train_end(self, logs=None):
        recorder, run_id = self.recorder, self.run_id
        recorder.on_train_end(logs)
        self.stop_heartbeat()
        self.recorder = None
        logs = logs or {}
        final = {key: float(value) for key, value in logs.items() if _is_number(value)}
        summary = {
            "final": final,
            "probe_every": recorder.probe_every if recorder.probe is not None else None,
            "fp8_after": fp8.variables_summary(recorder.layers),
            "weights_bytes": int(sum(np.asarray(v).nbytes for v in self.model.get_weights())),
        }
        if self.save_model:
            summary["model_file"] = self.write_model(run_id)
        # No test split in a user's fit: Results pairs the runs on the last validation.
        held_out = {
            "test_loss": final.get("val_loss"),
            "test_accuracy": final.get(f"val_{recorder.metric}"),
        }
        if held_out["test_loss"] is not None:
            summary["test"] = {"loss": held_out["test_loss"], "accuracy": held_out["test_accuracy"]}
            summary["test_source"] = "the fit's last validation (FP8Monitor)"
        self.store.merge_summary(run_id, **summary)
        status = "cancelled" if recorder.cancelled else "finished"
        self.store.end_run(
            run_id,
            status,
            fit_seconds=time.time() - recorder.started,
            steps_per_sec=recorder.steps_per_second(),
            **held_out,
        )

    # -- what a user's model holds ------------------------------------------------------------

    def write_model(self, run_id: int) -> str | None:
        """Save the model (or the one save_model names) as the run's model.keras, with the
        positions of its float8 layers (predict.load_keras_file quantizes them again: Keras
        alone cannot reload a float8 keras_hub block), and share it as the engine shares its
        weights (a PostgreSQL store: into the database, for every host). None, and a note in
        the summary, when it cannot be saved: the run still ends well."""
        model = self.save_model if isinstance(self.save_model, keras.Model) else self.model
        path = self.store.run_dir(run_id) / MODEL_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            model.save(path)
            float8 = {id(layer) for layer in fp8.float8_layers(model)}
            float8_at = [i for i, layer in enumerate(fp8.all_layers(model)) if id(layer) in float8]
            self.store.merge_summary(run_id, model_float8_layers=float8_at)
            self.store.share_artifacts(run_id)
        except Exception as e:  # keras, h5py and the store raise several types
            self.store.merge_summary(run_id, model_error=f"{type(e).__name__}: {e}"[:500])
            return None
        return MODEL_FILE

    # -- failures ---------------------------------------------------------------------------

    def check_alive(self):
        """In the heartbeat thread: an unhandled exception reported since fit began means fit
        died (Keras skips on_train_end); end the run 'failed' with its message."""
        error = last_exception()
        if self.recorder is not None and error is not None and error is not self.exception_at_begin:
            self.fail_if_unfinished(error)

    def fail_if_unfinished(self, error=None):
        """End the run of a fit that began and never ended: 'failed', with the message."""
        recorder, self.recorder = self.recorder, None
        if recorder is None:
            return
        self.stop_heartbeat()
        error = error if error is not None else last_exception()
        if error is self.exception_at_begin:
            error = None
        try:
            try:
                recorder.write_steps()  # the steps taken before it failed are kept
            except Exception:  # noqa: S110  (a diverged loss: its rows are written already)
                pass
            self.store.end_run(self.run_id, "failed", error=failure_text(error))
        except Exception as e:  # at exit the store may be gone: the supervisor reaps it
            print(f"FP8Monitor: could not mark run {self.run_id} failed: {e}", file=sys.stderr)

    def stop_heartbeat(self):
        heartbeat, self.heartbeat = self.heartbeat, None
        if heartbeat is not None:
            heartbeat.stop()


class ProbePacer:
    """The automatic probe cadence: every `least` steps, or less often so that probes take
    at most PROBE_BUDGET of the training time (a probe of a large model on a CPU costs as
    much as a few steps). The seconds of a probe (timed once, compiled, before the first
    step; then each probe's) against the median seconds of a training step (between two
    batch ends, the monitor's own work left out)."""

    def __init__(self, least: int, probe_seconds: float):
        self.every = self.least = least
        self.probe_seconds = probe_seconds
        self.steps = []  # recent training step seconds
        self.last_end = None  # when the monitor's previous batch-end work ended

    def after_step(self, started: float, probed: bool) -> int:
        """The cadence after a batch end whose monitor work began at `started`."""
        now = time.perf_counter()
        if self.last_end is not None:
            self.steps = [*self.steps[-31:], started - self.last_end]
        if probed:
            self.probe_seconds = now - started
        step = float(np.median(self.steps)) if len(self.steps) >= 3 else 0.0
        if step > 0:
            needed = int(np.ceil(self.probe_seconds / (PROBE_BUDGET * step)))
            self.every = max(self.least, needed)
        self.last_end = now
        return self.every


def model_loss(model):
    """The model's own loss as (y, outputs) -> loss, for the probe; None: binary
    cross-entropy (the probe's default). A loss function is wrapped as compile() wraps it,
    so labels of shape (n,) meet outputs of shape (n, 1) as in training."""
    loss = getattr(model, "loss", None)
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss) or not callable(loss):
        return loss

    def same_rank(y, outputs):  # labels (n,) for outputs (n, 1), as compile() lines them up
        y = keras.ops.cast(y, outputs.dtype)
        if len(y.shape) == len(outputs.shape) - 1 and outputs.shape[-1] == 1:
            y = keras.ops.expand_dims(y, -1)
        return loss(y, outputs)

    return same_rank


def probe_batch(probe_data) -> tuple:
    """(x, y) as numpy for the probe, from (x, y) whose x may be a one-input dict (the
    Keras example's {"input_ids": ...}) and whose values may be tensors."""
    x, y = probe_data
    if isinstance(x, dict) and len(x) == 1:
        x = next(iter(x.values()))
    return np.asarray(x), np.asarray(y)


def metric_name(logs) -> str:
    """The metric of a training batch's logs stored as the run's "accuracy" (the pages'
    second curve): one named like an accuracy if any, else the first besides the loss."""
    names = [key for key in (logs or {}) if key != "loss" and not key.startswith("val_")]
    for name in names:
        if "acc" in name:
            return name
    return names[0] if names else "accuracy"


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return np.ndim(value) == 0
