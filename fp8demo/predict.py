"""Rebuild a finished run's model from the store and predict review sentiment.

A quantized model does not round-trip through `.keras` (keras_hub's composite layers reject
the extra float8 variables), so each run saves weights + config + vocabulary; here we rebuild
the same architecture with the same layer names, quantize it the same way and load the
weights. Only files inside the store are read, and only as HDF5 weights (no pickle).

A user's own model (FP8Monitor, save_model=True) is its run's model.keras: SavedModel loads
it (a float8 one too, see load_keras_file) and predicts on raw inputs, text for a model
whose first layer takes strings, else a JSON array checked against the model's input shape.
"""

import json
import zipfile
from pathlib import Path

import numpy as np

import fp8demo.env
from fp8demo import fallback, fp8, tokenizer
from fp8demo import model as model_lib
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
        if is_own_model(run):  # a user's own model: SavedModel (load_run picks it)
            raise PredictError(own_model_note(run) or f"Run {run['id']} is a saved model.")
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
        # Layers a fallback moved to bf16 while training predict in bf16, as training ended.
        fallback.apply_saved(self.model, saved.get("fallback_layers", []))
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
    here: the engine rebuilds only its own model, and the script saved none. None for the
    engine's runs and for a monitor run that saved its model (SavedModel loads it)."""
    summary = run.get("summary") or {}
    if summary.get("source") != "monitor" or summary.get("model_file"):
        return None
    error = summary.get("model_error")
    why = (
        f" Saving its model failed: {error}."
        if error
        else " Pass `save_model=True` to FP8Monitor to keep the trained model as a .keras "
        "file: Predict then takes raw inputs for it."
    )
    return (
        f"Run {run['id']} trained your own model `{summary.get('model_name', '?')}` in "
        f"{summary.get('script', 'a script')} (FP8Monitor) without saving it: Predict "
        f"rebuilds only the engine's review classifier.{why}"
    )


def is_own_model(run: dict) -> bool:
    """A run recorded by FP8Monitor: a user's own model (SavedModel), not the engine's."""
    return (run.get("summary") or {}).get("source") == "monitor"


# -- a user's own model: its run's .keras file ----------------------------------------------


class SavedModel:
    """A finished FP8Monitor run's saved .keras model, predicting on raw inputs."""

    def __init__(self, store: Store, run: dict):
        note = own_model_note(run)
        if note:
            raise PredictError(note)
        if run["status"] != "finished":
            raise PredictError(
                f"Run {run['id']} is {run['status']}, not finished: it saved no model."
            )
        summary = run["summary"]
        path = store.run_dir(run["id"]) / Path(summary["model_file"]).name
        if not path.is_file():
            raise PredictError(f"Run {run['id']}'s model file {path} is missing.")
        fp8demo.env.use_compilation_cache(store.home)
        self.run_id, self.precision, self.label = run["id"], run["precision"], run["precision"]
        self.model_path = path
        self.model = load_keras_file(path, summary.get("model_float8_layers") or [])
        inputs = self.model.inputs or []
        if len(inputs) != 1:
            raise PredictError(
                f"Run {run['id']}'s model takes {len(inputs)} inputs: Predict gives it one "
                "(call the model in your own code)."
            )
        self.input_shape = tuple(inputs[0].shape)
        self.input_dtype = str(inputs[0].dtype)
        self.takes_text = self.input_dtype == "string"

    def describe_input(self) -> str:
        """What this model takes, in words, for a page's or a command's hint."""
        if self.takes_text:
            return "text (its first layer takes strings): one example per line"
        return (
            f"a JSON array of {self.input_dtype} values, one example of shape "
            f"{example_text(self.input_shape[1:])} or a batch of them"
        )

    def parse(self, raw: str):
        """The inputs in `raw` (text lines, or a JSON array) as this model takes them."""
        if raw is None or not str(raw).strip():
            raise PredictError(f"Give the model an input: {self.describe_input()}.")
        if self.takes_text:
            return np.asarray(check_texts([t for t in raw.splitlines() if t.strip()]))
        return check_array(raw, self.input_shape, self.input_dtype)

    def predict(self, inputs) -> np.ndarray:
        """The model's outputs for a batch of parsed inputs (the first output of several)."""
        model = self.model
        if self.takes_text:  # strings cannot enter a JAX graph: the first layer runs eagerly
            inputs, model = np.asarray(model.layers[0](inputs)), rest_of_model(model)
        try:
            outputs = model.predict_on_batch(inputs)
        except Exception as e:  # keras raises several types for inputs a layer rejects
            raise PredictError(
                f"Run {self.run_id}'s model rejected the input "
                f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})."
            ) from e
        if isinstance(outputs, (list, tuple, dict)):
            outputs = list(outputs.values() if isinstance(outputs, dict) else outputs)[0]
        return np.asarray(outputs, dtype=np.float32)


def load_keras_file(path: Path, float8_layers: list[int]):
    """A model saved by model.save(path), a float8 one too.

    keras.saving.load_model rebuilds a composite layer (keras_hub's TransformerDecoder) with
    plain inner Dense layers, which then reject their saved float8 variables. So: the model
    from the file's config, the layers that were float8 (indices in fp8.all_layers order,
    recorded by FP8Monitor) quantized again, then the file's weights and assets loaded as
    load_model loads them. Nothing is compiled; keras_hub is imported only for a config
    that names it; safe mode (no lambdas) as load_model's default."""
    import keras  # lazy: only a user's saved model needs it here (the engine rebuilds its own)

    try:
        with zipfile.ZipFile(path) as archive:
            config = archive.read("config.json").decode()
            if "keras_hub" in config:
                import keras_hub  # noqa: F401  lazy: registers the layers the config names
            model = keras.models.model_from_json(config)
            missing = [
                layer
                for i, layer in enumerate(fp8.all_layers(model))
                if i in set(float8_layers) and getattr(layer, "quantization_mode", None) is None
            ]
            if missing:
                model.quantize("float8", filters=lambda layer: any(layer is m for m in missing))
            load_state(model, archive)
    except PredictError:
        raise
    except Exception as e:  # zipfile, json, keras and h5py raise several types
        raise PredictError(
            f"Cannot load the model file {path} ({type(e).__name__}: {str(e)[:300]})."
        ) from e
    return model


def load_state(model, archive: zipfile.ZipFile):
    """The archive's weights and assets (a tokenizer's vocabulary) into the model, as
    keras.saving.load_model does after building it (keras 3.15's saving_lib)."""
    from keras.src.saving import saving_lib  # lazy: keras

    weights = saving_lib.H5IOStore("model.weights.h5", archive=archive, mode="r")
    has_assets = any(name.startswith("assets/") for name in archive.namelist())
    assets = saving_lib.DiskIOStore("assets", archive=archive, mode="r") if has_assets else None
    failed, errors = set(), {}
    try:
        saving_lib._load_state(
            model,
            weights_store=weights,
            assets_store=assets,
            inner_path="",
            visited_saveables=set(),
            failed_saveables=failed,
            error_msgs=errors,
        )
    finally:
        weights.close()
        if assets is not None:
            assets.close()
    if failed:
        first = str(next(iter(errors.values()), ("?", "?"))[1])
        raise PredictError(f"{len(failed)} layers of the saved model did not load: {first[:300]}")


def rest_of_model(model):
    """The model after its first layer (the one that takes strings)."""
    import keras  # lazy: keras

    if isinstance(model, keras.Sequential):
        rest = model.layers[1:]
        return rest[0] if len(rest) == 1 else keras.Sequential(rest)
    return keras.Model(model.layers[1].output, model.outputs)


def check_array(raw: str, input_shape: tuple, dtype: str) -> np.ndarray:
    """A JSON array as a batch of the model's input: one example (the shape without the
    batch) or a batch; the fixed sizes checked; whole numbers for an integer input."""
    try:
        values = np.asarray(json.loads(raw), dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise PredictError(
            "The input is not a JSON array of numbers (e.g. [[1, 2, 3]]): "
            f"{str(e).splitlines()[0][:120]}."
        ) from e
    example = input_shape[1:]
    if values.ndim == len(example):
        values = values[None]
    if values.ndim != len(input_shape):
        raise PredictError(
            f"The model takes examples of {len(example)} dimensions (shape "
            f"{example_text(example)}), one or a batch; the array has {values.ndim} dimensions."
        )
    for axis, (want, got) in enumerate(zip(example, values.shape[1:]), start=1):
        if want is not None and want != got:
            raise PredictError(
                f"The model takes examples of shape {example_text(example)}; the array's "
                f"axis {axis} has {got} values, not {want}."
            )
    if not len(values) or len(values) > MAX_REVIEWS:
        raise PredictError(f"Give 1 to {MAX_REVIEWS} examples, not {len(values)}.")
    if not np.isfinite(values).all():
        raise PredictError("The input holds a NaN or an infinity.")
    if "int" in dtype and not (values == np.round(values)).all():
        raise PredictError(f"The model takes {dtype} values: the input has fractions.")
    return values.astype(dtype if dtype in ("int32", "int64") else np.float32)


def example_text(example: tuple) -> str:
    return "(" + ", ".join("any" if d is None else str(d) for d in example) + ")"


def describe_output(output: np.ndarray, top: int = 5) -> str:
    """One example's output in a line: the values when few, else the top entries of the
    last axis (at its last position: a language model's next token)."""
    values = np.asarray(output, dtype=np.float32)
    if values.size <= 8:
        return "[" + ", ".join(f"{v:.4g}" for v in values.ravel()) + "]"
    last = values.reshape(-1, values.shape[-1])[-1]
    best = np.argsort(last)[::-1][:top]
    tops = ", ".join(f"{i}: {last[i]:.4g}" for i in best)
    return f"shape {values.shape}; top {top} of the last axis (at its last position): {tops}"


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


def load_run(store: Store, run_id, post_training: str | None = None):
    """A finished run's model: LoadedRun for the engine's runs (post_training="int8"/"int4"
    quantizes a bf16 run's model), SavedModel for an FP8Monitor run that saved its model."""
    try:
        run = store.run(run_id)
    except StoreError as e:
        raise PredictError(str(e)) from e
    if not is_own_model(run):
        return LoadedRun(store, run["id"], post_training)
    if post_training:
        raise PredictError(
            f"Post-training quantization rebuilds the engine's model, not run {run['id']}'s own."
        )
    return SavedModel(store, run)
