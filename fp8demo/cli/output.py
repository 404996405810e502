"""The CLI's text: progress lines, result tables, run and sweep records as aligned text."""

import json

from fp8demo import block_scales, fp8, post_training, probe, recipes, records, sweep, verdicts
from fp8demo.records import RUN_FIELDS
from fp8demo.store import Store


def progress_line(run) -> str:
    total = run["total_steps"] or 0
    done = run["step"] or 0
    width = 24
    filled = int(width * done / total) if total else 0
    bar = "█" * filled + "·" * (width - filled)
    parts = [
        f"run {run['id']:>3} {run['precision']:<12} [{bar}] {done}/{total or '?'}",
        f"epoch {run['epoch']}/{run['config'].epochs}",
        run["phase"],
    ]
    if run["steps_per_sec"]:
        parts.append(f"{run['steps_per_sec']:.1f} steps/s")
    if run["eta"] is not None and run["status"] == "running":
        parts.append(f"ETA {run['eta']:.0f}s")
    return "  ".join(parts)


def results_table(runs) -> str:
    header = (
        f"{'precision':<13}{'status':<12}{'test acc':>10}{'test loss':>11}{'fit s':>9}"
        f"{'steps/s':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in runs:
        acc = f"{r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "-"
        loss = f"{r['test_loss']:.4f}" if r["test_loss"] is not None else "-"
        fit = f"{r['fit_seconds']:.1f}" if r["fit_seconds"] is not None else "-"
        rate = f"{r['steps_per_sec']:.1f}" if r["steps_per_sec"] is not None else "-"
        lines.append(f"{r['precision']:<13}{r['status']:<12}{acc:>10}{loss:>11}{fit:>9}{rate:>9}")
        if r["error"]:
            lines.append(f"    {r['error']}")
        for mode, result in (r["summary"].get("ptq") or {}).items():
            lines.append(
                f"{mode + ' PTQ':<10}{'(of bf16)':<12}{result['test_accuracy']:>10.4f}"
                f"{result['test_loss']:>11.4f}"
            )
        if post_training.post_training_pending(r):
            lines.append(f"    int8/int4 PTQ: python -m fp8demo show {r['id']} evaluates them")
    return "\n".join(lines)


def print_run_record(detail: dict):
    """The record of `run_record` as aligned text."""
    for key in RUN_FIELDS:
        if detail[key] is not None:
            print(f"{key:>16}: {detail[key]}")
    print(f"{'config':>16}: {json.dumps(detail['config'])}")
    if detail["phase_seconds"]:
        print(
            f"{'seconds':>16}: "
            + ", ".join(
                f"{name} {seconds:.1f}" for name, seconds in detail["phase_seconds"].items()
            )
        )
    for e in detail["epochs"]:
        print(
            f"{'epoch ' + str(e['epoch'] + 1):>16}: loss {e['loss']:.4f} acc {e['accuracy']:.4f} "
            f"val_loss {e['val_loss'] or float('nan'):.4f} "
            f"val_acc {e['val_accuracy'] or float('nan'):.4f}"
        )
    if detail["compiled_step"]:
        print(f"{'compiled step':>16}: {detail['compiled_step_verdict']}")
    if best := detail["best_epoch"]:
        print(
            f"{'best epoch':>16}: {best['epoch'] + 1} (validation accuracy "
            f"{best['val_accuracy']:.4f}, test accuracy {best['test_accuracy']:.4f}"
            f"{', restored' if best['restored'] else ''})"
        )
    for r in detail["post_training"]:
        print(
            f"{r['mode'] + ' PTQ':>16}: test accuracy {r['test_accuracy']:.4f}, "
            f"loss {r['test_loss']:.4f}, weights {r['weights_bytes'] or 0:,} bytes"
        )
    if verdict := detail.get("paired_verdict"):
        name = f"{detail['precision']} − bf16"
        print(f"{'verdict':>16}: {verdicts.verdict_line(verdict, name)}")
    if detail.get("fallback_summary"):
        print(f"{'fallback':>16}: {detail['fallback_summary']}")
        for e in detail["fallback_events"]:
            why = f"{e['role']} {e['reason']}: {e['value']:.4g}"
            print(f"{'':>16}  step {e['step']}: {e['layer']} ({why})")
    if health := detail["fp8_health"]:
        at_risk = ", ".join(f"{t['layer']} {t['role']}" for t in health["tensors_at_risk"])
        print(
            f"{'fp8 health':>16}: {health['overflows']} overflows; at risk: {at_risk or 'none'}"
            " (python -m fp8demo health RUN for the table)"
        )
        for sentence in health["dead_summary"]:
            print(f"{'':>16}  {sentence}")
        if health.get("bf16_layers"):
            print(f"{'kept in bf16':>16}: {', '.join(health['bf16_layers'])}")
    if detail["float8_layers"]:
        print(f"{'float8 layers':>16}: {len(detail['float8_layers'])}")
        for layer in detail["float8_layers"]:
            scales = "  ".join(f"{role}_scale={v:.3g}" for role, v in layer["scales"].items())
            print(f"  {layer['name']:<44} {layer['policy']:<28} {scales}")


def trial_line(row: dict) -> str:
    """One trial: number, state, params, value, comparison (and why it was pruned or failed)."""
    value = f"  {row['value']:.4f}" if row["value"] is not None else ""
    where = f"  comparison {row['comparison_id']}" if row["comparison_id"] else ""
    ended = row["reason"] and row["state"] in ("pruned", "failed")
    reason = f"  ({row['reason']})" if ended else ""
    params = params_text(row["params"])
    return f"trial {row['number']:>3} {row['state']:<9} {params}{value}{where}{reason}"


def params_text(params: dict) -> str:
    return " ".join(
        f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
        for name, value in params.items()
    )


def print_sweep(store: Store, sweep_id):
    """A sweep's trials as a table, then its best trial."""
    record = store.sweep(sweep_id)
    rows = sweep.trial_rows(store, sweep_id)
    space = ", ".join(f"{name}={spec}" for name, spec in record["space"].items())
    print(
        f"sweep {record['id']} ({record['state']}): {record['objective']} ({record['direction']})"
        f" over {space}, {len(rows)} of {record['trials']} trials asked"
    )
    if record["error"]:
        print(f"  {record['error']}")

    def number(value):
        return f"{value:.4f}" if value is not None else "-"

    header = (
        f"{'trial':>5}  {'state':<9}{'value':>8}{'bf16 val':>10}{'fp8 val':>9}{'bf16 test':>11}"
        f"{'fp8 test':>10}{'cmp':>6}  params"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['number']:>5}  {r['state']:<9}{number(r['value']):>8}"
            f"{number(r['bf16_val_accuracy']):>10}{number(r['fp8_val_accuracy']):>9}"
            f"{number(r['bf16_test_accuracy']):>11}{number(r['fp8_test_accuracy']):>10}"
            f"{r['comparison_id'] or '-':>6}  {params_text(r['params'])}"
        )
        if r["reason"] and r["state"] in ("pruned", "failed"):
            print(f"{'':>7}{r['reason']}")
    best = sweep.sweep_record(store, sweep_id)["best_trial"]
    if best is None:
        print("\nno completed trial yet")
        return
    row = rows[best]
    print(
        f"\nbest: trial {best}, {record['objective']} {row['value']:.4f} with "
        f"{params_text(row['params'])} (comparison {row['comparison_id']})"
    )
    verdict = records.trial_verdicts(store, [row])[best]
    if verdict:
        print(f"verdict: {verdicts.verdict_line(verdict)}")


# -- fp8 health -------------------------------------------------------------------------------


def number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_health(health: records.Health):
    """The health table (one row per float8 tensor), the dead tensors in words, the probe."""
    rows = records.table_rows(health)
    width = max([7] + [len(r["format"]) + 1 for r in rows])  # "bf16 (from step 12)" too
    print(
        f"{'layer':<40}{'role':<13}{'format':<{width}}{'overflows':>10}{'min hr':>8}"
        f"{'median hr':>10}{'sat %':>8}{'under %':>9}  risk"
    )
    for r in rows:
        print(
            f"{r['layer']:<40}{r['role']:<13}{r['format']:<{width}}"
            f"{number(r['overflows'], 'd'):>10}"
            f"{number(r['min headroom'], '.2f'):>8}{number(r['median headroom'], '.2f'):>10}"
            f"{number(r.get('saturation %'), '.3g'):>8}{number(r.get('underflow %'), '.3g'):>9}"
            f"  {'AT RISK' if r['at risk'] else ''}"
            + (f" (dead since step {r['dead since']})" if r["dead since"] is not None else "")
        )
    for sentence in fp8.dead_summary(health.rows):
        print(f"\n{sentence}")
    steps = health.probe_steps
    if len(steps):
        print(f"\nProbe: {len(steps)} measurements, latest at step {int(steps[-1])}.")


def print_replay(replay: list[dict], history_length: int):
    """fp8.history_length_effect's rows: the run's amaxes under other history lengths."""
    print(f"\nReplayed under other amax history lengths (this run: {history_length}); all layers:")
    print(
        f"{'history':>8}  {'role':<13}{'overflows':>10}{'overflow %':>11}{'median hr':>10}"
        f"{'max hr':>8}"
    )
    for r in replay:
        print(
            f"{r['history length']:>8}  {r['role']:<13}{r['overflows']:>10}"
            f"{r['overflow %']:>11.3f}{number(r['median headroom'], '.2f'):>10}"
            f"{number(r['max headroom'], '.2f'):>8}"
        )


def print_recipes(steps, names: list[str], stats, layers: list[str]):
    """SNR (dB) per tensor and scaling recipe at the latest probe, the summary in words, and
    what each recipe and statistic means."""
    print(f"SNR (dB) on the probe batch at step {int(steps[-1])}, under each scaling recipe:")
    print(f"{'layer':<40}{'role':<13}" + "".join(f"{name:>12}" for name in names))
    for i, layer in enumerate(layers):
        for j, role in enumerate(probe.ROLES):
            cells = (probe.snr_words(v) for v in stats[-1, i, j, :, 2])
            print(f"{layer:<40}{role:<13}" + "".join(f"{c:>12}" for c in cells))
    print()
    for sentence in probe.recipe_summary(names, stats[-1], layers):
        print(sentence.replace("`", ""))
    print()
    for name in names:
        print(f"{name}: {recipes.RECIPE_HELP.get(name, '')}")
    for name, text in recipes.STATISTICS_HELP.items():
        print(f"{name}: {text}")


def print_blocks(rows: list[dict]):
    """Store.fp8_blocks' rows as a table (log2 block scales, limit share, worst block), then
    what each recipe's limit and each statistic mean."""
    print(f"Block scales on the probe batch (probe at step {rows[-1]['step']}; log2 of scales):")
    print(
        f"{'layer':<40}{'role':<13}{'gemm':<7}{'recipe':<12}{'min':>7}{'max':>7}{'std':>6}"
        f"{'limit %':>9}{'worst SNR':>11}  worst block"
    )
    for r in rows:
        worst = r["details"]["worst"]
        where = block_scales.block_words(r["recipe"], r["role"], worst[0][:2]) if worst else "-"
        limit = None if r["limit_share"] is None else 100 * r["limit_share"]
        print(
            f"{r['layer']:<40}{r['role']:<13}{r['gemm']:<7}{r['recipe']:<12}"
            f"{number(r['scale_log2_min'], '.1f'):>7}{number(r['scale_log2_max'], '.1f'):>7}"
            f"{number(r['scale_log2_std'], '.2f'):>6}{number(limit, '.3g'):>9}"
            f"{probe.snr_words(_worst_snr(r)):>11}  {where}"
        )
    print()
    for name, text in block_scales.STATISTICS_HELP.items():
        print(f"{name}: {text}")
    for name, text in block_scales.LIMIT_HELP.items():
        print(f"limit of {name}: {text}")
    print("Blocks are numbered on each tensor as its GEMM blocks it, the blocked axis last.")


def _worst_snr(row: dict) -> float:
    """A stored row's worst-block SNR; None there means every block was exact (+inf), or no
    block held a nonzero value (NaN: no limit share either)."""
    if row["worst_block_snr_db"] is not None:
        return row["worst_block_snr_db"]
    return float("nan") if row["limit_share"] is None else float("inf")
