"""TensorBoard export: the event files read back hold what the run store holds."""

import numpy as np
import pytest

from fp8demo.store import Store


def read_events(folder):
    """{tag: [(step, value)]} of every summary in the folder's event files."""
    import tensorflow as tf

    found = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value))
    return found


def scalar(value) -> float:
    import tensorflow as tf

    return float(tf.make_ndarray(value.tensor))


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    from fp8demo.tensorboard_export import export_run

    store = Store(trained["home"])
    folder = tmp_path_factory.mktemp("tensorboard")
    run_id = trained["run_ids"]["fp8"]
    export_run(store, run_id, folder)
    target = export_run(store, run_id, folder)  # twice: the second replaces the first
    return store, store.run(run_id), target


def test_one_event_file_per_export(exported):
    _, run, target = exported
    assert target.name == f"run{run['id']}-fp8"
    assert len(list(target.glob("events.out.tfevents.*"))) == 1


def test_step_and_epoch_metrics_match_the_store(exported):
    store, run, target = exported
    events = read_events(target)
    steps = store.step_metrics(run["id"])
    written = events["train/loss"]
    assert [step for step, _ in written] == steps["step"].astype(int).tolist()
    np.testing.assert_allclose([scalar(v) for _, v in written], steps["loss"], rtol=1e-6)
    epochs = store.epoch_metrics(run["id"])
    assert len(events["epoch/val_accuracy"]) == len(epochs)
    assert scalar(events["epoch/val_accuracy"][-1][1]) == pytest.approx(epochs[-1]["val_accuracy"])
    assert scalar(events["test/accuracy"][0][1]) == pytest.approx(
        run["summary"]["test"]["accuracy"]
    )


def test_scales_and_amax_histories_are_written(exported):
    store, run, target = exported
    events = read_events(target)
    layer = run["summary"]["fp8_layers"][0]["name"]
    scale_steps, scales = store.fp8_scales(run["id"])
    written = events[f"fp8_scale/{layer}/kernel"]
    assert [s for s, _ in written] == [int(s) for s in scale_steps]
    np.testing.assert_allclose([scalar(v) for _, v in written], scales[:, 0, 1], rtol=1e-6)
    amax_steps, amax = store.fp8_amax(run["id"])
    assert len(events[f"fp8_amax/{layer}/inputs"]) == len(amax_steps)
    histograms = events[f"fp8_amax_history/{layer}/outputs_grad"]
    assert 1 <= len(histograms) <= len(amax_steps)
    assert "config" in events


def test_bf16_run_has_metrics_and_no_fp8_tags(trained, tmp_path):
    from fp8demo.tensorboard_export import export_run

    store = Store(trained["home"])
    events = read_events(export_run(store, trained["run_ids"]["bf16"], tmp_path))
    assert "train/accuracy" in events
    assert not [tag for tag in events if tag.startswith("fp8_")]
