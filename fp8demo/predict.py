"""Rebuild a finished run's model from the store and predict review sentiment.

A quantized model does not round-trip through `.keras` (keras_hub's composite layers reject
the extra float8 variables), so each run saves weights + config + vocabulary; here we rebuild
the same architecture with the same layer names, quantize it the same way and load the
weights. Only files inside the store are read, and only as HDF5 weights (no pickle).
"""

import json

import numpy as np

import fp8demo.env
from fp8demo import model as model_lib
from fp8demo import tokenizer
from fp8demo.config import TrainConfig
from fp8demo.data import lowercase
from fp8demo.store import Store, StoreError

MAX_REVIEW_CHARS = 100_000  # longer text is cut: the model sees seq_len tokens anyway
MAX_REVIEWS = 1000
# The model's sigmoid output is P(positive); from this probability on a review counts as positive
# (the threshold of the accuracy the model is trained and evaluated with).
POSITIVE_THRESHOLD = 0.5


class PredictError(ValueError):
    """A prediction that cannot be made; the message says why."""


class LoadedRun:
    """A finished run's model and tokenizer, ready to predict."""

    def __init__(self, store: Store, run_id, post_training: str | None = None):
        try:
            run = store.run(run_id)
        except StoreError as e:
            raise PredictError(str(e)) from e
        note = own_model_note(run)
        if note:
            raise PredictError(note)
        if run["status"] != "finished":
            raise PredictError(
                f"Run {run['id']} is {run['status']}, not finished: it has no model "
                "to predict with."
            )
        folder = store.run_dir(run["id"])
        weights = folder / "model.weights.h5"
        try:
            saved = json.loads((folder / "config.json").read_text())
            vocabulary = (folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
            self.config = TrainConfig.from_dict(saved["config"]).validate()
            self.precision = saved["precision"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PredictError(
                f"Run {run['id']}'s saved config or vocabulary in {folder} is "
                f"missing or unreadable ({type(e).__name__})."
            ) from e
        if not weights.is_file():
            raise PredictError(f"Run {run['id']}'s weights file {weights} is missing.")
        fp8demo.env.use_compilation_cache(store.home)  # a restarted dashboard loads, not compiles
        self.run_id = run["id"]
        self.model = model_lib.build(self.config, self.precision)
        try:
            self.model.load_weights(weights)
        except Exception as e:  # h5py and keras raise several types for a bad file
            raise PredictError(
                f"Run {run['id']}'s weights file {weights} is corrupt or does not "
                f"match its config ({type(e).__name__}: {str(e)[:200]})."
            ) from e
        if post_training:
            if self.precision != "bf16" or post_training not in model_lib.PTQ_MODES:
                raise PredictError(
                    f"Post-training {post_training} applies to a bf16 run, not to "
                    f"run {run['id']} ({self.precision})."
                )
            model_lib.quantize_post_training(self.model, post_training)
        self.label = f"{post_training} (post-training)" if post_training else self.precision
        self.vocabulary = vocabulary
        self.tokenizer = tokenizer.make_tokenizer(vocabulary, self.config.seq_len)
        # Compile the predict step once; the batch is padded to a power of two so
        # repeated calls reuse compiled shapes.
        self.predict(["warm up"])

    def token_ids(self, texts) -> np.ndarray:
        return np.asarray(self.tokenizer(lowercase(texts)), dtype=np.int32)

    def predict(self, texts) -> np.ndarray:
        """Positive-review probability for each text."""
        texts = check_texts(texts)
        ids = self.token_ids(texts)
        size = 1 << max(0, (len(ids) - 1).bit_length())
        # Padding repeats the last review: under current scaling (fp8-current) the reviews of
        # one batch share each tensor's amax, which a repeated row leaves unchanged and a row
        # of padding tokens could raise.
        padded = np.concatenate([ids, np.repeat(ids[-1:], size - len(ids), axis=0)])
        outputs = self.model.predict_on_batch(padded)
        return np.asarray(outputs, dtype=np.float32)[: len(ids), 0]

    def tokens(self, text: str) -> list[str]:
        ids = self.token_ids(check_texts([text]))[0]
        return [self.vocabulary[i] for i in ids if i != 0]


def own_model_note(run: dict) -> str | None:
    """Why a run recorded by FP8Monitor (a user's own model and script) cannot predict
    here: the engine can only rebuild its own model. None for the engine's runs."""
    summary = run.get("summary") or {}
    if summary.get("source") != "monitor":
        return None
    saved = summary.get("model_file")
    where = (
        f" Its trained model was saved as {saved}: `keras.saving.load_model` it in Python."
        if saved
        else " Pass `save_model=True` to FP8Monitor to keep the trained model as a .keras file."
    )
    return (
        f"Run {run['id']} trained your own model `{summary.get('model_name', '?')}` in "
        f"{summary.get('script', 'a script')} (FP8Monitor): Predict rebuilds only the engine's "
        f"review classifier, so ask that model in your own code.{where}"
    )


def sentiment(probability: float) -> str:
    """The label a positive-review probability stands for: "positive" or "negative"."""
    return "positive" if probability >= POSITIVE_THRESHOLD else "negative"


def check_texts(texts) -> list[str]:
    if texts is None:
        texts = []
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise PredictError("Type a review first.")
    if len(texts) > MAX_REVIEWS:
        raise PredictError(f"At most {MAX_REVIEWS} reviews at once, got {len(texts)}.")
    for i, text in enumerate(texts):
        where = f" (line {i + 1})" if len(texts) > 1 else ""
        if not isinstance(text, str):
            raise PredictError(f"The review{where} is not text (got {type(text).__name__}).")
        if not text.strip():
            raise PredictError(f"The review{where} is empty: type some words.")
    return [_encodable(t[:MAX_REVIEW_CHARS]) for t in texts]


def _encodable(text: str) -> str:
    """Lone surrogates (undecodable bytes on a command line) cannot be encoded as UTF-8 for
    the tokenizer: they become U+FFFD, like any other unreadable character."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)


def load_run(store: Store, run_id, post_training: str | None = None) -> LoadedRun:
    """A finished run's model; post_training="int8"/"int4" quantizes a bf16 run's model."""
    return LoadedRun(store, run_id, post_training)
