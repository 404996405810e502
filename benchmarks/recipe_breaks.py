"""Where delayed scaling breaks: float8 recipes against bf16 over paired seeds, and when FP8
health saw it coming.

For each seed one comparison trains every precision through the engine as the worker does
(worker.execute: same data, seed and shuffling order for every precision); the order of the
precisions rotates from seed to seed, so a drift in machine load favours none. A callback
measures validation accuracy on a fixed slice of the validation split every `--val-every`
steps, so that a fall in accuracy is dated to a step, as the probe dates FP8 health.

Prints
  1. every run's test accuracy, by seed;
  2. mean ± standard deviation of the test accuracy per precision;
  3. the paired differences to bf16 (same seed): their mean ± standard deviation, and whether
     the mean lies beyond two standard deviations of the differences from zero;
  4. per float8 run, what FP8 health's probe flagged against when accuracy fell: the tensors
     flagged at step 0 (delayed scaling's initial scale 1.0), the first probe from step 2 on
     that flags a tensor and which, how many probes flagged any, and the first step from
     which the run's validation accuracy stays `--margin` below bf16's (same seed, same
     steps). A tensor is flagged by FP8 health's thresholds on the scaling the run trained
     with: the probe's delayed scales for fp8, the what-if statistics of its own recipe for
     a recipe run.

    nice -n 15 .venv/bin/python benchmarks/recipe_breaks.py --seeds 3
    .venv/bin/python benchmarks/recipe_breaks.py --quick            # a smoke run
    ... --home DIR --precision bf16,mxfp8 --rerun mxfp8              # mxfp8 again, paired

The settings are the preset "Where delayed scaling breaks"; any setting changes with its CLI
flag as for `python -m fp8demo train` (`--lr 3e-3`, `--precision bf16,fp8`). `--home DIR`
keeps the store (and the vocabulary cache) in DIR; `--report DIR` prints the tables of what
a store holds, without training: the latest comparison's settings, changed by any flags given.
"""

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

PRESET = "Where delayed scaling breaks"
BASELINE = "bf16"
# A smoke run: a small subset, short reviews, few steps, every probe and validation point.
QUICK = dict(
    subset=400,
    seq_len=64,
    vocab_size=2000,
    vocab_method="fast",
    epochs=1,
    batch_size=16,
    probe_every=5,
    precisions=("bf16", "fp8", "fp8-current", "mxfp8"),
)


# -- arguments and settings -----------------------------------------------------------------


def parse_args(argv=None):
    from fp8demo import config as config_lib

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds seed … seed + N − 1")
    parser.add_argument("--quick", action="store_true", help="a small smoke run (2 seeds)")
    parser.add_argument("--preset", default=PRESET, help="the settings to start from")
    parser.add_argument("--home", default="", help="keep the store here (default: a temp folder)")
    parser.add_argument("--report", default="", help="print the tables of this home's store")
    parser.add_argument(
        "--val-every", type=int, default=0, help="validation points every N steps (0: probe_every)"
    )
    parser.add_argument(
        "--val-reviews", type=int, default=512, help="validation reviews per point (fixed slice)"
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=0.10,
        help="accuracy fell: validation accuracy this far below bf16's (fraction)",
    )
    parser.add_argument(
        "--rerun",
        default="",
        help="precisions to train again although the store holds them (after a code change); "
        "the latest run of each counts",
    )
    parser.add_argument("--json", default="")
    for flag, options in config_lib.cli_flags():
        parser.add_argument(flag, **options)
    return parser.parse_args(argv)


def experiment_config(args):
    """The preset with the flags given on top (--quick: the smoke settings)."""
    from fp8demo.config import TrainConfig, from_flags, preset

    base = preset(args.preset)
    if args.quick:
        base = dataclasses.replace(base, **QUICK)
    config = from_flags(args, base)
    config = dataclasses.replace(config, ptq=False, data=config.data or str(_common.archive()))
    if BASELINE not in config.precisions:
        config = dataclasses.replace(config, precisions=(BASELINE, *config.precisions))
    return TrainConfig.validate(config)


# -- training -------------------------------------------------------------------------------


def validation_tracker(x, y, every: int, chunk: int = 64):
    """A Keras callback: accuracy on (x, y) every `every` steps (and before the first), in
    inference mode with the weights and scales of that moment, as `points` [(step, acc)].

    It reads the training state the way the recorder's probe does (`self.model` syncs it,
    then a stateless call), so it leaves the training untouched.
    """
    import jax
    import keras

    class ValidationTracker(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.points, self.step, self._predict = [], 0, None

        def on_train_begin(self, logs=None):
            model = self.model
            self._predict = jax.jit(
                lambda tv, ntv, batch: model.stateless_call(tv, ntv, batch, training=False)[0]
            )
            self.measure()

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if self.step % every == 0:
                self.measure()

        def measure(self):
            model = self.model  # the property writes the training state into the variables
            size = min(chunk, len(x))
            trainable = [v.value for v in model.trainable_variables]
            non_trainable = [v.value for v in model.non_trainable_variables]
            hits = 0
            for start in range(0, len(x) - size + 1, size):  # one compiled shape
                out = self._predict(trainable, non_trainable, x[start : start + size])
                predicted = np.asarray(out, np.float32).reshape(-1) > 0.5
                hits += int((predicted == (y[start : start + size] > 0.5)).sum())
            self.points.append((self.step, hits / (len(x) // size * size)))

    return ValidationTracker()


def train_seed(store, config, seed: int, rotation: int, val_every: int, val_reviews: int, rerun=()):
    """Train one comparison at `seed`, its precisions rotated by `rotation`, leaving out those
    the store holds a finished run of already (a stopped experiment resumes) unless `rerun`
    names them."""
    from fp8demo import tokenizer, worker

    done = collect(store, config)
    missing = [p for p in config.precisions if seed not in done.get(p, {}) or p in rerun]
    if not missing:
        return
    order = missing[rotation % len(missing) :] + missing[: rotation % len(missing)]
    seeded = dataclasses.replace(config, seed=seed, precisions=tuple(order))
    prepared = tokenizer.prepare(seeded, store.home, progress=lambda *_: None)
    x_val, y_val = prepared.x_val[:val_reviews], prepared.y_val[:val_reviews]
    _, run_ids = store.create_comparison(seeded, label=f"{PRESET} (seed {seed})")
    for _ in run_ids:
        run = store.claim_next_run(os.getpid())
        tracker = validation_tracker(x_val, y_val, val_every)
        worker.execute(store, run, callbacks=[tracker])
        row = store.run(run["id"])
        store.merge_summary(row["id"], validation_points=tracker.points)
        print(
            f"  seed {seed} {row['precision']:>12}: {row['status']}, test accuracy "
            f"{_common.fmt(row['test_accuracy'], '.2%')}, "
            f"{_common.fmt(row['steps_per_sec'], '.1f')} steps/s",
            flush=True,
        )
        if row["status"] != "finished":
            print(f"    {row.get('error')}", flush=True)


# -- analysis -------------------------------------------------------------------------------


def mean_std(values) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_differences(accuracy: dict, baseline: str = BASELINE) -> dict:
    """{precision: {mean, std, n, beyond}} of test accuracy − the baseline's, seed by seed.

    accuracy: {precision: {seed: test accuracy}}. `beyond`: the mean difference is more than
    two standard deviations of the paired differences away from zero (with at least 2 seeds).
    """
    out = {}
    for precision, by_seed in accuracy.items():
        if precision == baseline:
            continue
        seeds = sorted(set(by_seed) & set(accuracy.get(baseline, {})))
        diffs = [by_seed[s] - accuracy[baseline][s] for s in seeds]
        if not diffs:
            continue
        mean, std = mean_std(diffs)
        beyond = len(diffs) >= 2 and abs(mean) > 2 * std
        out[precision] = {"mean": mean, "std": std, "n": len(diffs), "beyond": beyond}
    return out


def probe_flags(store, run) -> list[tuple[int, dict]]:
    """[(probe step, {tensor: why})]: the tensors the probe flags at each probe, under the
    scaling the run trained with, by FP8 health's thresholds (fp8.SATURATION_AT_RISK % of the
    values saturated, fp8.UNDERFLOW_AT_RISK % of the nonzero values flushed to zero).

    fp8: the probe's saturation and underflow under the run's delayed scales. A recipe run:
    the what-if statistics of its own recipe (its delayed scales were never applied).
    Tensors are named "layer · role".
    """
    from fp8demo import fp8
    from fp8demo.config import RECIPE_PRECISIONS

    layers = [layer["name"] for layer in run["summary"].get("fp8_layers", [])]
    recipe = RECIPE_PRECISIONS.get(run["precision"])
    if recipe is None:
        steps, stats = store.fp8_probe(run["id"])
        saturation, underflow = stats[..., 0] * 100, stats[..., 1] * 100
    else:
        steps, names, stats = store.fp8_recipes(run["id"])
        if recipe not in names:
            return []
        k = names.index(recipe)
        underflow, saturation = stats[:, :, :, k, 0], stats[:, :, :, k, 1]
    timeline = []
    for p, step in enumerate(steps):
        flagged = {}
        for i, layer in enumerate(layers):
            for j, role in enumerate(fp8.ROLES):
                why = []
                if saturation[p, i, j] >= fp8.SATURATION_AT_RISK:
                    why.append(f"saturation {_pct(saturation[p, i, j])} %")
                if underflow[p, i, j] >= fp8.UNDERFLOW_AT_RISK:
                    why.append(f"underflow {_pct(underflow[p, i, j])} %")
                if why:
                    flagged[f"{layer} · {role}"] = ", ".join(why)
        timeline.append((int(step), flagged))
    return timeline


def gradients_vanish(store, run) -> tuple[int | None, list]:
    """The first training step from step 3 on at which a float8 layer's output gradient was
    zero throughout (its recorded amax 0), and those layers; (None, []) when none was.

    A layer whose output gradient is all zero learns nothing from that step: the amax
    heatmaps of Live and FP8 health leave such cells blank. The first two steps are left
    out (under delayed scaling they quantize with scale 1.0, which flushes small gradients).
    """
    from fp8demo.fp8 import ROLES

    layers = [layer["name"] for layer in run["summary"].get("fp8_layers", [])]
    steps, amax = store.fp8_amax(run["id"])
    if not len(steps):
        return None, []
    dead = amax[:, :, ROLES.index("outputs_grad")] == 0  # [steps, layers]
    for t in np.flatnonzero((steps >= 3) & dead.any(axis=1)):
        return int(steps[t]), [layers[i] for i in np.flatnonzero(dead[t])]
    return None, []


def probe_gradients_vanish(store, run) -> int | None:
    """The first probe from step 2 on at which a float8 layer's output gradient on the probe
    batch was all zero, or None: quantization is exact there under every recipe (SNR +inf,
    which real gradients never reach; "current" is the column read)."""
    from fp8demo.fp8 import ROLES

    steps, names, stats = store.fp8_recipes(run["id"])
    if "current" not in names:
        return None
    snr = stats[:, :, ROLES.index("outputs_grad"), names.index("current"), 2]
    zero = np.isposinf(snr).any(axis=1) & (steps >= 2)
    return int(steps[np.argmax(zero)]) if zero.any() else None


def _pct(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def first_flag(timeline) -> tuple[int | None, dict]:
    """The first probe from step 2 on that flags a tensor, and what it flags; (None, {})
    when none does. Earlier probes measure the initial scale 1.0 of delayed scaling, which
    flags small tensors in every fp8 run."""
    for step, flagged in timeline:
        if step >= 2 and flagged:
            return step, flagged
    return None, {}


def worst_flags(flagged: dict, shown: int = 2) -> str:
    """The `shown` flagged tensors that lose most, in a few words, and how many more."""
    worst = sorted(flagged, key=lambda t: -_percent_of(flagged[t]))[:shown]
    words = "; ".join(f"{t.split('/')[-1]} ({flagged[t]})" for t in worst)
    more = f" (+{len(flagged) - shown} more)" if len(flagged) > shown else ""
    return (words + more) or "–"


def _percent_of(why: str) -> float:
    """The largest percentage in a flag's reason ("saturation 2.1 %, underflow 7 %" → 7)."""
    import re

    return max(float(v) for v in re.findall(r"([\d.e+-]+) %", why))


def first_fall(points, baseline_points, margin: float, lasting: int = 2) -> int | None:
    """The first step from which validation accuracy lies `margin` below the baseline's at
    the same steps, for `lasting` validation points in a row (one point can be a run
    learning a few steps later), or None. Only steps both runs measured count."""
    baseline = dict(baseline_points)
    shared = [(step, accuracy) for step, accuracy in points if step in baseline]
    below = [accuracy < baseline[step] - margin for step, accuracy in shared]
    for k, (step, _) in enumerate(shared):
        if len(below[k : k + lasting]) == lasting and all(below[k : k + lasting]):
            return int(step)
    return None


# Settings that change nothing in a bf16 run: one bf16 run serves every value of them.
FLOAT8_ONLY = {"amax_history_length", "probe_every", "quantize_head"}


def health_against_accuracy(store, run, base, margin: float) -> dict:
    """When the probe first flagged a tensor of a float8 run, and when its validation
    accuracy first fell `margin` below the bf16 run `base` of the same seed (at a validation
    point, and at an epoch's end)."""
    timeline = probe_flags(store, run)
    flag_step, flagged = first_flag(timeline)
    vanished_step, vanished = gradients_vanish(store, run)
    points = run["summary"].get("validation_points") or []
    fall = first_fall(points, base["summary"].get("validation_points") or [], margin)
    base_epochs = {e["epoch"]: e["val_accuracy"] for e in store.epoch_metrics(base["id"])}
    fell_epoch = next(
        (
            e["epoch"] + 1
            for e in store.epoch_metrics(run["id"])
            if e["val_accuracy"] is not None
            and base_epochs.get(e["epoch"]) is not None
            and e["val_accuracy"] < base_epochs[e["epoch"]] - margin
        ),
        None,
    )
    return {
        "first_flag_step": flag_step,
        "flagged": flagged,
        "flagged_probes": [step for step, f in timeline if f and step >= 2],
        "flagged_at_start": timeline[0][1] if timeline and timeline[0][0] == 0 else {},
        "gradients_vanished_at_step": vanished_step,
        "probe_gradients_vanished_at_step": probe_gradients_vanish(store, run),
        "gradients_vanished_in": vanished,
        "probes": len(timeline),
        "accuracy_fell_at_step": fall,
        "accuracy_fell_in_epoch": fell_epoch,
    }


def same_setup(a, b, precision: str) -> bool:
    """Whether a run of `precision` with settings `a` belongs to an experiment with settings
    `b`: they differ at most in the seed, the precisions trained, for bf16 the float8
    settings and for any precision but nvfp4 nvfp4's parts."""
    ignored = {"seed", "precisions"} | (FLOAT8_ONLY if precision == BASELINE else set())
    if precision != "nvfp4":  # an nvfp4 ablation pairs with the bf16 runs already stored
        from fp8demo.config import NVFP4_PARTS

        ignored |= set(NVFP4_PARTS)
    return set(a.differences(b)) <= ignored


def collect(store, config) -> dict:
    """The store's finished runs with `config`'s settings, any seed: {precision: {seed: run}}
    (the latest run of each)."""
    runs = {}
    for comparison in reversed(store.comparisons()):  # oldest first: the latest run wins
        for run in store.runs(comparison["id"]):
            if run["status"] == "finished" and same_setup(run["config"], config, run["precision"]):
                runs.setdefault(run["precision"], {})[run["config"].seed] = run
    return runs


def report(store, config, margin: float) -> dict:
    """Print the tables of the finished runs in `store` with `config`'s settings; return
    them as a dict."""
    runs = collect(store, config)
    if BASELINE not in runs:
        print("No finished bf16 run in this store: nothing to compare.")
        return {}
    precisions = [BASELINE] + [p for p in runs if p != BASELINE]
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    accuracy = {p: {s: r["test_accuracy"] for s, r in runs[p].items()} for p in precisions}
    shown = {k: v for k, v in config.differences().items() if k not in ("seed", "precisions")}
    print(f"\nSettings (against the Keras example): {shown}")

    by_seed = [[s, *(_common.fmt(accuracy[p].get(s), ".2%") for p in precisions)] for s in seeds]
    print("\nTest accuracy by seed\n" + _common.table(["seed", *precisions], by_seed))
    paired = paired_differences(accuracy)
    rows = []
    for p in precisions:
        mean, std = mean_std(accuracy[p].values())
        d = paired.get(p)
        rows.append(
            [
                p,
                len(accuracy[p]),
                f"{mean:.2%} ± {std:.2%}",
                f"{d['mean'] * 100:+.2f} ± {d['std'] * 100:.2f} pp" if d else "",
                ("yes" if d["beyond"] else "no") if d else "",
            ]
        )
    print(
        "\nMean ± std over seeds; paired difference to bf16 (same seed), mean ± std\n"
        + _common.table(
            ["precision", "seeds", "test accuracy", "− bf16 (paired)", "beyond 2σ"], rows
        )
    )

    timing_rows, timing = [], {}
    for p in precisions[1:]:
        for s in seeds:
            if s not in runs[p] or s not in runs[BASELINE]:
                continue
            found = timing[f"{p} seed {s}"] = health_against_accuracy(
                store, runs[p][s], runs[BASELINE][s], margin
            )
            timing_rows.append(
                [
                    p,
                    s,
                    _common.fmt(accuracy[p][s], ".2%"),
                    worst_flags(found["flagged_at_start"]),
                    _common.fmt(found["first_flag_step"], "d"),
                    worst_flags(found["flagged"]),
                    f"{len(found['flagged_probes'])} of {found['probes']}",
                    _common.fmt(found["probe_gradients_vanished_at_step"], "d"),
                    _common.fmt(found["gradients_vanished_at_step"], "d")
                    + (
                        f" ({len(found['gradients_vanished_in'])} layers)"
                        if found["gradients_vanished_in"]
                        else ""
                    ),
                    _common.fmt(found["accuracy_fell_at_step"], "d"),
                    _common.fmt(found["accuracy_fell_in_epoch"], "d"),
                ]
            )
    if timing_rows:
        print(
            f"\nFP8 health against accuracy (fell: validation accuracy {margin:.0%} below "
            "bf16's, same seed and step)\n"
            + _common.table(
                [
                    "precision",
                    "seed",
                    "test accuracy",
                    "flagged at step 0",
                    "first flag from step 2",
                    "flagged then",
                    "probes flagging",
                    "probe: a gradient all zero (step)",
                    "training: a gradient all zero (step)",
                    "accuracy fell (step)",
                    "(epoch)",
                ],
                timing_rows,
            )
        )
    return {
        "config": config.to_dict(),
        "accuracy": accuracy,
        "paired": paired,
        "timing": timing,
        "cpu": _common.cpu_model(),
    }


# -- main -----------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        _common.setup_env(args.report)
        from fp8demo.store import Store

        store = Store(Path(args.report))
        comparisons = store.comparisons()
        if not comparisons:
            print(f"No comparison in the store at {args.report}.")
            return
        from fp8demo.config import from_flags

        # The latest comparison's settings, with the flags given on top.
        config = from_flags(args, comparisons[0]["config"])
        _common.write_json(args.json, report(store, config, args.margin))
        return
    if args.quick and args.seeds == 3:
        args.seeds = 2
    home = _common.setup_env(args.home or None, prefix="recipe-breaks-")
    _common.preload()
    from fp8demo.env import tensorflow
    from fp8demo.store import Store

    tensorflow()  # as the worker: hide GPUs from TensorFlow before anything initialises it
    config = experiment_config(args)
    val_every = args.val_every or config.probe_every or 25
    print(f"Preset {args.preset!r}{' (quick)' if args.quick else ''}: {config.differences()}")
    print(f"CPU: {_common.cpu_model()}; load average before: {_common.load_average()}")
    store = Store(home)
    try:
        for k in range(args.seeds):
            rerun = [p.strip() for p in args.rerun.split(",") if p.strip()]
            train_seed(store, config, config.seed + k, k, val_every, args.val_reviews, rerun)
        print(f"load average after: {_common.load_average()}")
        _common.write_json(args.json, report(store, config, args.margin))
    finally:
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
