"""One training configuration: the Keras example's hyperparameters, validated in one place.

The same dataclass is serialised into the run store, the dashboard's URL and the CLI flags.
"""

import dataclasses
import json
import math
from dataclasses import dataclass

PRECISIONS = ("bf16", "fp8", "float32")
VOCAB_METHODS = ("keras", "fast")
DROPOUT_MASKS = ("keras", "fast")
RESERVED_TOKENS = ("[PAD]", "[UNK]")


class ConfigError(ValueError):
    """A configuration that cannot be trained; the message says what to change."""


@dataclass(frozen=True)
class TrainConfig:
    # Training, as the example: adam, binary cross-entropy, batch 32, 3 epochs.
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3  # adam's default, which the example uses
    seed: int = 42
    # Tokenizer.
    vocab_size: int = 20000
    seq_len: int = 200
    # "keras": compute_word_piece_vocabulary as the example (about 100 s on the full data);
    # "fast": the Hugging Face WordPiece trainer (seconds).
    vocab_method: str = "keras"
    # Model.
    hidden_dim: int = 32
    heads: int = 2
    intermediate_dim: int = 32
    dropout: float = 0.1
    # "keras": dropout masks from 32 random bits per value, as the example; "fast": from 8 bits
    # (a quarter of the random-number work, ~20 % of a CPU step; see model.fast_dropout).
    dropout_masks: str = "keras"
    # The example quantizes every Dense, the sigmoid head included.
    quantize_head: bool = True
    # After the bf16 run: evaluate its post-training int8 and int4 (weight-only) quantization.
    ptq: bool = True
    # Keep the weights of the epoch with the best validation accuracy (the example overfits
    # after epoch 1) for evaluation and prediction; the final weights are evaluated too.
    restore_best: bool = False
    # Stop after this many epochs without a better validation accuracy (0 = never).
    early_stopping: int = 0
    # The delayed-scaling window of every float8 tensor (Keras' default is 1024 steps).
    amax_history_length: int = 1024
    # Every this many steps, measure saturation and underflow of every float8 tensor on a
    # fixed validation batch (0 = never; see probe.py).
    probe_every: int = 250
    # Train data-parallel over every device JAX sees (keras.distribution.DataParallel).
    data_parallel: bool = False
    # Which precisions one launch trains, in order.
    precisions: tuple = ("bf16", "fp8")
    # Data: "" = the cached or downloaded archive; otherwise a local archive or folder.
    data: str = ""
    # Reviews per split (train, validation, test), half positive and half negative; 0 = all.
    subset: int = 0

    def errors(self) -> list[str]:
        """Every problem with this configuration, as sentences a user can act on."""
        problems = []

        def check_int(name, low, high, why_low=""):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{name} must be a whole number, got {value!r}.")
                return False
            if not low <= value <= high:
                why = why_low if value < low else ""
                problems.append(f"{name} must be between {low:,} and {high:,}, got {value:,}{why}.")
                return False
            return True

        check_int("epochs", 1, 1000)
        check_int("batch_size", 1, 65536)
        check_int("seed", 0, 2**31 - 1)
        check_int("vocab_size", 64, 1_000_000, why_low=(
            f": the vocabulary holds the reserved tokens {' and '.join(RESERVED_TOKENS)} plus "
            "the single letters, digits and punctuation that WordPiece starts from"))
        check_int("seq_len", 4, 32768)
        hidden_ok = check_int("hidden_dim", 1, 65536)
        heads_ok = check_int("heads", 1, 256)
        check_int("intermediate_dim", 1, 262144)
        check_int("subset", 0, 1_000_000)
        check_int("early_stopping", 0, 1000)
        check_int("amax_history_length", 1, 65536)
        check_int("probe_every", 0, 1_000_000)
        if hidden_ok and heads_ok and self.hidden_dim % self.heads:
            problems.append(
                f"hidden_dim ({self.hidden_dim}) must be divisible by heads ({self.heads}): "
                "each attention head gets hidden_dim / heads dimensions."
            )
        numbers = set()
        for name in ("dropout", "lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                problems.append(f"{name} must be a number, got {value!r}.")
            else:
                numbers.add(name)  # only a real number gets a range message as well
        if "dropout" in numbers and not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}.")
        if "lr" in numbers and not 0.0 < self.lr <= 10.0:
            problems.append(f"lr must be greater than 0 (and at most 10), got {self.lr}.")
        if self.vocab_method not in VOCAB_METHODS:
            problems.append(
                f"vocab_method must be one of {', '.join(VOCAB_METHODS)}, got {self.vocab_method!r}."
            )
        if self.dropout_masks not in DROPOUT_MASKS:
            problems.append(f"dropout_masks must be one of {', '.join(DROPOUT_MASKS)}, "
                            f"got {self.dropout_masks!r}.")
        # A bare string would be read letter by letter ("bf16" → b, f, 1, 6).
        listed = isinstance(self.precisions, (tuple, list))
        precisions = tuple(self.precisions) if listed else ()
        unknown = [p for p in precisions if p not in PRECISIONS]
        if not listed:
            problems.append(f"precisions must be a list of names (bf16, fp8, float32), "
                            f"got {self.precisions!r}.")
        elif unknown:
            problems.append(
                f"Unknown precision {', '.join(map(str, unknown))}: choose from {', '.join(PRECISIONS)}."
            )
        elif not precisions:
            problems.append("Choose at least one precision (bf16, fp8 or float32).")
        elif len(set(precisions)) != len(precisions):
            problems.append("Each precision may appear only once.")
        if not isinstance(self.data, str):
            problems.append("data must be a path (text).")
        for name in ("quantize_head", "ptq", "restore_best", "data_parallel"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false.")
        return problems

    def validate(self) -> "TrainConfig":
        problems = self.errors()
        if problems:
            raise ConfigError(" ".join(problems))
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["precisions"] = list(self.precisions)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a dict of already-typed values; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"Unknown setting(s): {', '.join(unknown)}.")
        values = dict(values)
        if "precisions" in values:
            p = values["precisions"]
            values["precisions"] = tuple(p.split(",")) if isinstance(p, str) else tuple(p)
        return cls(**values)

    @classmethod
    def from_strings(cls, values: dict) -> "TrainConfig":
        """Build from text values (URL query parameters, CLI flags), with clear messages.

        Values that do not parse are reported all at once, as ConfigError.
        """
        typed, problems = {}, []
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, raw in values.items():
            if name not in fields:
                import difflib

                close = difflib.get_close_matches(str(name), list(fields), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                problems.append(f"Unknown setting {name!r}{hint}.")
                continue
            default = fields[name].default
            text = str(raw).strip()
            try:
                if isinstance(default, bool):
                    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    typed[name] = text.lower() in ("true", "1", "yes")
                elif isinstance(default, int):
                    typed[name] = int(text)
                elif isinstance(default, float):
                    number = float(text)
                    if number != number or number in (float("inf"), float("-inf")):
                        problems.append(f"{name} must be a finite number, got {text[:40]!r}.")
                        continue
                    typed[name] = number
                elif isinstance(default, tuple):
                    typed[name] = tuple(p.strip() for p in text.split(",") if p.strip())
                else:
                    typed[name] = text
            except ValueError:
                kind = "true or false" if isinstance(default, bool) else type(default).__name__
                kind = {"int": "a whole number", "float": "a number"}.get(kind, kind)
                problems.append(f"{name} must be {kind}, got {text[:40]!r}.")
        if problems:
            raise ConfigError(" ".join(problems))
        return cls(**typed)

    def differences(self, other: "TrainConfig | None" = None) -> dict:
        """Settings that differ from `other` (default: the example's)."""
        base = (other or TrainConfig()).to_dict()
        return {k: v for k, v in self.to_dict().items() if base.get(k) != v}


EXAMPLE = TrainConfig()

# Presets shown in the dashboard and accepted by the CLI (--preset).
PRESETS = {
    "Keras example": {},
    # The example's model, data and training, with the vocabulary trained by Hugging Face's
    # WordPiece trainer and 8-bit dropout masks: accuracy within noise over seeds, about 0.4×
    # the example's time on a CPU (README: Performance).
    "Keras example, fast": dict(vocab_method="fast", dropout_masks="fast"),
    "Quick demo": dict(subset=2000, vocab_size=5000, seq_len=128, epochs=1, vocab_method="keras"),
    "Wider (hidden 256)": dict(hidden_dim=256, heads=4, intermediate_dim=1024),
    "Large (hidden 1024)": dict(hidden_dim=1024, heads=8, intermediate_dim=4096, epochs=1),
    "XL (hidden 4096)": dict(hidden_dim=4096, heads=32, intermediate_dim=16384, epochs=1),
}


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}: choose from {', '.join(PRESETS)}.")
    return dataclasses.replace(EXAMPLE, **{**PRESETS[name], **overrides})


# -- will it fit? ---------------------------------------------------------------------------


def _params(config: TrainConfig) -> int:
    """About how many weights the model has (embeddings, attention, feed-forward, head)."""
    h, i, v, s = config.hidden_dim, config.intermediate_dim, config.vocab_size, config.seq_len
    return v * h + s * h + 4 * h * h + 2 * h * i + h * i + i + 10 * h


def estimate_memory_bytes(config: TrainConfig) -> int:
    """A rough upper estimate of one run's memory: weights + Adam state, activations, data."""
    h, i, s, b = config.hidden_dim, config.intermediate_dim, config.seq_len, config.batch_size
    weights = _params(config) * 16  # float32 weights, gradients and Adam's two moments
    # Per example: ~24 hidden-sized and 4 intermediate-sized float32 tensors per position kept
    # for the backward pass, plus the attention scores (heads × seq × seq, a few copies).
    activations = b * s * (24 * h + 4 * i) * 4 + b * config.heads * s * s * 4 * 3
    data = 50_000 * s * 4  # the tokenized splits
    return int(weights + activations + data)


def memory_limit_bytes() -> int:
    """FP8DEMO_MAX_MEMORY_GB, else 80 % of this machine's RAM."""
    import os

    if os.environ.get("FP8DEMO_MAX_MEMORY_GB"):
        return int(float(os.environ["FP8DEMO_MAX_MEMORY_GB"]) * 2**30)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.8)
    except (ValueError, OSError, AttributeError):
        return 2**62


def resource_problems(config: TrainConfig) -> list[str]:
    """A launch that clearly would not fit, with the estimate (empty when it fits)."""
    needed, limit = estimate_memory_bytes(config), memory_limit_bytes()
    if needed <= limit:
        return []
    return [f"This configuration needs about {needed / 2**30:,.1f} GiB of memory (weights, Adam "
            f"state and activations of one batch), more than the {limit / 2**30:,.1f} GiB "
            "allowed here. Use a smaller vocabulary, hidden size, sequence length or batch size "
            "(the limit is FP8DEMO_MAX_MEMORY_GB)."]


# -- disk -------------------------------------------------------------------------------------

MIN_FREE_MB = 100  # FP8DEMO_MIN_FREE_MB: disk space a launch must leave free (default)


def estimate_disk_bytes(config: TrainConfig) -> int:
    """A rough upper estimate of what one comparison writes: weights, metrics, caches."""
    s = config.seq_len
    weights = _params(config) * 4 * 4  # float32 weights; save_weights keeps the optimizer's too
    examples = config.subset * 3 if config.subset else 75_000
    steps = math.ceil((config.subset or 20_000) / config.batch_size) * config.epochs
    metrics = steps * (64 + 8 * 3 * 4 * 2)  # step rows + per-step amax of 8 layers (+ index)
    caches = examples * s * 4 + 300 * 2**20 * (not config.data)  # tokens; IMDB extraction
    return int(weights * len(config.precisions) + metrics * len(config.precisions) + caches)


def min_free_bytes() -> int:
    import os

    try:
        return int(float(os.environ.get("FP8DEMO_MIN_FREE_MB") or MIN_FREE_MB) * 2**20)
    except ValueError:
        return MIN_FREE_MB * 2**20


def disk_problems(config: TrainConfig, home, repeats: int = 1) -> list[str]:
    """A launch that would fill the disk holding the run store (empty when it fits)."""
    import shutil

    try:
        free = shutil.disk_usage(home).free
    except OSError:
        return []  # the store reports an unusable home itself
    needed, keep = estimate_disk_bytes(config) * repeats, min_free_bytes()
    if needed + keep <= free:
        return []
    return [f"Not enough disk space in {home}: this launch writes up to about "
            f"{needed / 2**20:,.0f} MB (weights, metrics, data caches) and {free / 2**20:,.0f} MB "
            f"are free, of which {keep / 2**20:,.0f} MB must stay free (FP8DEMO_MIN_FREE_MB). "
            "Delete old comparisons on Results, free some space, or set FP8DEMO_HOME to "
            "another disk."]
