"""The recording callback: true per-batch metrics from Keras's running means, cancel requests."""

import numpy as np
import pytest

from fp8demo.config import TrainConfig
from fp8demo.recorder import Recorder, RunningMeans, per_batch_metrics
from fp8demo.store import Store

# On SQLite: recording is the store's SQL, tested on PostgreSQL in test_store.


def test_per_batch_values_from_running_means_across_an_epoch_boundary():
    # Epoch 0: batches of 4, 4 and 2 samples with losses 1.0, 0.5, 0.25 and accuracies
    # 0.25, 0.5, 1.0; epoch 1 starts over: batches with losses 0.2, 0.4.
    # Running means after each batch: (4·1.0)/4, (4 + 2)/8, (6 + 0.5)/10; accuracy alike.
    epoch_0 = [
        RunningMeans(0, 4, 1.0, 0.25),
        RunningMeans(0, 8, 0.75, 0.375),
        RunningMeans(0, 10, 0.65, 0.5),
    ]
    epoch_1 = [RunningMeans(1, 4, 0.2, 0.5), RunningMeans(1, 8, 0.3, 0.625)]
    expected = [(1.0, 0.25), (0.5, 0.5), (0.25, 1.0), (0.2, 0.5), (0.4, 0.75)]

    # All in one flush, the epoch boundary inside it.
    np.testing.assert_allclose(per_batch_metrics(epoch_0 + epoch_1), expected)
    # Flushed in pieces: each continues from the running means of the batch before it.
    assert per_batch_metrics(epoch_0[:1]) == [(1.0, 0.25)]
    np.testing.assert_allclose(
        per_batch_metrics(epoch_0[1:] + epoch_1[:1], epoch_0[0]), expected[1:4]
    )
    np.testing.assert_allclose(per_batch_metrics(epoch_1[1:], epoch_1[0]), expected[4:])
    # A one-batch epoch after a one-batch epoch: the same `seen`, yet a new epoch.
    assert per_batch_metrics([RunningMeans(1, 4, 0.2, 0.5)], RunningMeans(0, 4, 1.0, 0.25)) == [
        (0.2, 0.5)
    ]


def reviews_as_features(home, n):
    """A few numbers per real IMDB training review (length, counts of telling words)."""
    from fp8demo import data

    imdb = data.load(subset=n, home=home, progress=lambda *_: None)
    words = ("great", "best", "bad", "worst", "boring")
    x = np.array(
        [[len(t) / 1000] + [t.count(w) for w in words] for t in imdb.train.texts], np.float32
    )
    return x, imdb.train.labels.astype(np.float32)


def small_model():
    import keras

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1, activation="sigmoid")])
    # A learning rate of 0 keeps the weights, so every batch can be evaluated on its own.
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.0),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


def running_run(home) -> tuple[Store, int]:
    store = Store(home)
    store.create_comparison(TrainConfig(subset=64, precisions=("bf16",)))
    return store, store.claim_next_run(0)["id"]


def test_the_store_gets_each_batchs_own_loss_and_accuracy(home):
    """Two epochs of 64 reviews in batches of 24, 24 and 16, through a real Keras fit."""
    store, run_id = running_run(home)
    x, y = reviews_as_features(home, 64)
    model = small_model()
    recorder = Recorder(store, run_id, n_train=64, batch_size=24, epochs=2)
    model.fit(x, y, batch_size=24, epochs=2, shuffle=False, callbacks=[recorder], verbose=0)

    batches = [slice(0, 24), slice(24, 48), slice(48, 64)]
    truth = np.array([model.evaluate(x[b], y[b], batch_size=24, verbose=0) for b in batches] * 2)
    steps = store.step_metrics(run_id)
    assert list(steps["step"]) == [1, 2, 3, 4, 5, 6]
    assert list(steps["epoch"]) == [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(steps["loss"], truth[:, 0], rtol=1e-5)
    np.testing.assert_allclose(steps["accuracy"], truth[:, 1], atol=1e-6)
    assert [e["step"] for e in store.epoch_metrics(run_id)] == [3, 6]
    run = store.run(run_id)
    assert (run["epoch"], run["step"]) == (2, 6)
    assert recorder.steps_per_second() > 0 and not recorder.cancelled


@pytest.mark.parametrize("record", [True, False])
def test_a_cancel_request_stops_fit_at_the_next_flush(home, record):
    store, run_id = running_run(home)
    x, y = reviews_as_features(home, 64)
    recorder = Recorder(store, run_id, n_train=64, batch_size=8, epochs=3, record=record)
    store.request_cancel(run_id)
    small_model().fit(x, y, batch_size=8, epochs=3, callbacks=[recorder], verbose=0)
    assert recorder.cancelled
    assert recorder.step == 1  # the first step's flush saw the request
    assert len(store.step_metrics(run_id)["step"]) == (1 if record else 0)


def test_steps_per_second_leaves_out_validation_before_and_after_the_steps(home):
    """Two epochs with a slow validation after each: the first falls between steps and is
    left out, the last comes after the last step and is not subtracted from the steps' time."""
    import time

    import keras

    class SlowValidation(keras.callbacks.Callback):  # runs inside the recorder's window
        def on_test_begin(self, logs=None):
            time.sleep(1.0)

    store, run_id = running_run(home)
    x, y = reviews_as_features(home, 64)
    recorder = Recorder(store, run_id, n_train=48, batch_size=16, epochs=2)
    small_model().fit(
        x[:48],
        y[:48],
        batch_size=16,
        epochs=2,
        validation_data=(x[48:], y[48:]),
        shuffle=False,
        callbacks=[recorder, SlowValidation()],
        verbose=0,
    )

    stepping = recorder.last_step_time - recorder.first_step_time
    assert recorder.validation_seconds >= 2.0  # both validations were timed
    measured = (recorder.step - 1) / recorder.steps_per_second()
    assert 0 < measured <= stepping - 1.0  # the first epoch's validation only
    assert measured == pytest.approx(stepping - recorder.validation_seconds_at_last_step)
