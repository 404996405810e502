"""One training configuration: the Keras example's hyperparameters, validated in one place.

The dataclass is the one description of every setting. Its fields (with the help text and
choices in their metadata) give the run store its JSON, the dashboard its URL query parameters
and the CLI its flags; `from_strings` parses the text of both.
"""

import dataclasses
import difflib
import json
from dataclasses import dataclass

from fp8demo import fallback

# Float8 training with another scaling recipe than Keras' delayed one (see model.py), by the
# precision's name: the recipe of recipes.py its layers quantize their matmul operands with.
RECIPE_PRECISIONS = {
    "fp8-current": "current",
    "fp8-rowwise": "rowwise",
    "fp8-rowwise-gw-hp": "rowwise-gw-hp",
    "fp8-block128": "block128",
    "mxfp8": "mxfp8",
    "nvfp4": "nvfp4",
}
FLOAT8_PRECISIONS = ("fp8", *RECIPE_PRECISIONS)
PRECISIONS = ("bf16", *FLOAT8_PRECISIONS, "float32")
VOCAB_METHODS = ("keras", "fast")
DROPOUT_MASKS = ("keras", "fast")
SIDE_BY_SIDE = ("auto", "on", "off")
BLOCK_SCALES = ("auto", "on", "off")
# The precisions whose recipe scales each block of values (block_scales.BLOCK_RECIPES; a test
# keeps the two in step): by default only their runs measure block scales.
BLOCK_SCALE_PRECISIONS = ("fp8-block128", "mxfp8", "nvfp4")
RESERVED_TOKENS = ("[PAD]", "[UNK]")
# The model's float8-capable layers (every Dense and EinsumDense of model.py), in model order,
# named by their paths as FP8 health lists them. The architecture is fixed, so they are known
# without building it; model.float8_capable_layers reads the same names off a built model.
MODEL_LAYERS = (
    "decoder/self_attention/query",
    "decoder/self_attention/key",
    "decoder/self_attention/value",
    "decoder/self_attention/attention_output",
    "decoder/feedforward_intermediate_dense",
    "decoder/feedforward_output_dense",
    "dense",
    "classifier",
)
HEAD = "classifier"  # the sigmoid head: quantize_head=False keeps it in bf16
# The switchable parts of the nvfp4 precision (TrainConfig fields, on by default).
NVFP4_PARTS = ("nvfp4_2d_weights", "nvfp4_rht", "nvfp4_stochastic_rounding")


class ConfigError(ValueError):
    """A configuration that cannot be trained; the message says what to change."""


def layer_selector(item: str) -> tuple[str, ...] | None:
    """The layers one bf16_layers item names: a layer of MODEL_LAYERS, or first:N / last:N
    (N from 1 to their number) in model order; None when it names none."""
    if item in MODEL_LAYERS:
        return (item,)
    end, colon, count = item.partition(":")
    if colon and end in ("first", "last") and count.isdigit():
        n = int(count)
        if 1 <= n <= len(MODEL_LAYERS):
            return MODEL_LAYERS[:n] if end == "first" else MODEL_LAYERS[-n:]
    return None


def whole_number_problem(name: str, value, low: int, high: int, why_low: str = "") -> str:
    """What is wrong with a whole-number setting, or "" when it is in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{name} must be a whole number, got {value!r}."
    if not low <= value <= high:
        why = why_low if value < low else ""
        return f"{name} must be between {low:,} and {high:,}, got {value:,}{why}."
    return ""


def setting(default, help: str, choices: tuple = (), flag: str = ""):
    """A TrainConfig field with its help text, its allowed values (if a fixed few) and, where
    it differs from the field's name, the name of its CLI flag."""
    return dataclasses.field(
        default=default, metadata={"help": help, "choices": choices, "flag": flag}
    )


@dataclass(frozen=True)
class TrainConfig:
    # Training, as the example: adam, binary cross-entropy, batch 32, 3 epochs.
    epochs: int = setting(3, "passes over the training data")
    batch_size: int = setting(32, "reviews per training step")
    lr: float = setting(1e-3, "Adam's learning rate; the example uses Adam's default")
    seed: int = setting(42, "seeds the weights, dropout and the shuffling order")
    # Tokenizer.
    vocab_size: int = setting(20000, "WordPiece vocabulary size, reserved tokens included")
    seq_len: int = setting(200, "tokens per review: longer reviews are cut, shorter padded")
    vocab_method: str = setting(
        "keras",
        "keras: compute_word_piece_vocabulary, as the example; fast: the Hugging Face "
        "WordPiece trainer",
        choices=VOCAB_METHODS,
    )
    # Model.
    hidden_dim: int = setting(32, "embedding and attention width")
    heads: int = setting(2, "attention heads; each gets hidden_dim / heads dimensions")
    intermediate_dim: int = setting(32, "width of the feed-forward layer")
    dropout: float = setting(0.1, "dropout rate, in [0, 1)")
    dropout_masks: str = setting(
        "keras",
        "keras: dropout masks from 32 random bits per value, as the example; fast: "
        "from 8 bits, a quarter of the random-number work (see model.fast_dropout)",
        choices=DROPOUT_MASKS,
    )
    quantize_head: bool = setting(
        True, "compute the sigmoid head in float8 too, as the example quantizes every Dense"
    )
    bf16_layers: tuple = setting(
        (),
        "float8 layers kept in bf16 under any fp8 recipe, comma-separated: names as FP8 "
        "health lists them (decoder/self_attention/query, dense, classifier, ...), or "
        "first:N / last:N in model order",
    )
    fallback: str = setting(
        "",
        "move a float8 layer to bf16 for the rest of the run when a probe of one of its "
        "tensors crosses a threshold, e.g. underflow>5%,mse>1e-4 (any of underflow, "
        "saturation, mse, snr<); empty = never",
    )
    # NVIDIA's NVFP4 recipe (arXiv 2509.25149), part by part: all on, as the paper trains.
    nvfp4_2d_weights: bool = setting(
        True, "nvfp4: kernels in 16x16 blocks, so W and its transpose quantize alike"
    )
    nvfp4_rht: bool = setting(
        True,
        "nvfp4: a 16x16 random Hadamard transform (signs from the seed) on both operands of "
        "the weight-gradient matmul",
    )
    nvfp4_stochastic_rounding: bool = setting(
        True, "nvfp4: round the output gradients stochastically (random from the seed and step)"
    )
    ptq: bool = setting(
        True,
        "evaluate the bf16 run's post-training int8 and int4 (weight-only) quantization "
        "after training, as queued work for a worker (Results and show can ask later too)",
    )
    # The example overfits after epoch 1, hence the option to keep its best epoch.
    restore_best: bool = setting(
        False,
        "evaluate and predict with the weights of the epoch with the best validation "
        "accuracy; the final weights are evaluated too",
    )
    early_stopping: int = setting(
        0, "stop after this many epochs without a better validation accuracy; 0 = never"
    )
    amax_history_length: int = setting(
        1024, "the delayed-scaling window of every float8 tensor, in steps; Keras' default"
    )
    probe_every: int = setting(
        250,
        "every this many steps (0 = never), measure saturation and underflow of every "
        "float8 tensor on a fixed validation batch (see probe.py)",
    )
    block_scales: str = setting(
        "auto",
        "at each probe also measure every float8 tensor's block scales under the block "
        "recipes (FP8 health's Block scales view; about twice the probe's compile time): "
        "auto = in runs of a block recipe (fp8-block128, mxfp8, nvfp4); on = every float8 "
        "run; off = never",
        choices=BLOCK_SCALES,
    )
    data_parallel: bool = setting(
        False, "train data-parallel over every device JAX sees (keras.distribution.DataParallel)"
    )
    side_by_side: str = setting(
        "auto",
        "train the precisions at the same time, each in a worker of its own: auto = at the "
        "same time when the host has a device per precision (GPUs), one after the other on a "
        "CPU; on = at the same time, sharing the devices or cores there are; off = one after "
        "the other",
        choices=SIDE_BY_SIDE,
    )
    precisions: tuple = setting(
        ("bf16", "fp8"),
        "the precisions one launch trains, in order, comma-separated: "
        f"any of {', '.join(PRECISIONS)}",
        flag="precision",
    )
    data: str = setting(
        "",
        "a local aclImdb_v1.tar.gz or the folder it was extracted to; "
        "empty: the cached or downloaded archive",
    )
    subset: int = setting(
        0, "reviews per split (train, validation, test), half positive and half negative; 0 = all"
    )

    def probes_block_scales(self, precision: str) -> bool:
        """Whether the probe of this config's `precision` run measures block scales."""
        if self.block_scales == "auto":
            return precision in BLOCK_SCALE_PRECISIONS
        return self.block_scales == "on"

    def errors(self) -> list[str]:
        """Every problem with this configuration, as sentences a user can act on, in field
        order: whole numbers, real numbers, choices, precisions, then types."""
        return (
            self.whole_number_errors()
            + self.real_number_errors()
            + self.choice_errors()
            + self.precision_errors()
            + self.type_errors()
            + self.layer_errors()
            + self.fallback_errors()
        )

    def layer_errors(self) -> list[str]:
        """Problems with bf16_layers: a name that is no float8 layer of the model, layers kept
        in bf16 without a float8 precision to keep them from, or every layer kept in bf16."""
        items = self.bf16_layers
        if not isinstance(items, (tuple, list)) or not all(isinstance(i, str) for i in items):
            return [f"bf16_layers must be a list of layer names, got {items!r}."]
        unknown = [item for item in items if layer_selector(item) is None]
        if unknown:
            return [
                f"Unknown layer{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} in "
                "bf16_layers: choose from "
                f"{', '.join(MODEL_LAYERS)}, or first:N / last:N (N from 1 to "
                f"{len(MODEL_LAYERS)})."
            ]
        precisions = self.precisions if isinstance(self.precisions, (tuple, list)) else ()
        if items and not set(precisions) & set(FLOAT8_PRECISIONS):
            return [
                "bf16_layers keeps float8 layers in bf16, but no precision trains in float8: "
                "add fp8 (or a scaling recipe) to the precisions, or clear bf16_layers."
            ]
        if items and len(self.bf16_layer_names()) == len(MODEL_LAYERS):
            return [
                "bf16_layers keeps every float8 layer in bf16: leave at least one in float8, "
                "or train bf16."
            ]
        return []

    def bf16_layer_names(self) -> tuple[str, ...]:
        """The float8-capable layers a float8 run keeps in bf16, in model order: bf16_layers
        with first:N / last:N spelled out, and the head when quantize_head is off (the same
        thing said the older way). Unknown names are left out (layer_errors names them)."""
        chosen = {HEAD} if self.quantize_head is False else set()
        for item in self.bf16_layers if isinstance(self.bf16_layers, (tuple, list)) else ():
            chosen.update(layer_selector(item) or ())
        return tuple(name for name in MODEL_LAYERS if name in chosen)

    def fallback_errors(self) -> list[str]:
        """Problems with fallback: text fallback.parse cannot read (its one-line message), or
        thresholds without the probe that measures them."""
        try:
            thresholds = fallback.parse(self.fallback)
        except ValueError as e:
            return [str(e)]
        if thresholds and self.probe_every == 0:
            return ["fallback needs the probe's measurements: set probe_every above 0."]
        return []

    def whole_number_errors(self) -> list[str]:
        vocab_why = (
            f": the vocabulary holds the reserved tokens {' and '.join(RESERVED_TOKENS)} plus "
            "the single letters, digits and punctuation that WordPiece starts from"
        )
        ranges = {
            "epochs": (1, 1000),
            "batch_size": (1, 65536),
            "seed": (0, 2**31 - 1),
            "vocab_size": (64, 1_000_000, vocab_why),
            "seq_len": (4, 32768),
            "hidden_dim": (1, 65536),
            "heads": (1, 256),
            "intermediate_dim": (1, 262144),
            "subset": (0, 1_000_000),
            "early_stopping": (0, 1000),
            "amax_history_length": (1, 65536),
            "probe_every": (0, 1_000_000),
        }
        problems = {
            name: whole_number_problem(name, getattr(self, name), *limits)
            for name, limits in ranges.items()
        }
        found = [problem for problem in problems.values() if problem]
        shape_ok = not problems["hidden_dim"] and not problems["heads"]
        if shape_ok and self.hidden_dim % self.heads:
            found.append(
                f"hidden_dim ({self.hidden_dim}) must be divisible by heads ({self.heads}): "
                "each attention head gets hidden_dim / heads dimensions."
            )
        return found

    def real_number_errors(self) -> list[str]:
        problems = []
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
        return problems

    def choice_errors(self) -> list[str]:
        choices = {
            "vocab_method": VOCAB_METHODS,
            "dropout_masks": DROPOUT_MASKS,
            "side_by_side": SIDE_BY_SIDE,
            "block_scales": BLOCK_SCALES,
        }
        return [
            f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}."
            for name, allowed in choices.items()
            if getattr(self, name) not in allowed
        ]

    def precision_errors(self) -> list[str]:
        # A bare string would be read letter by letter ("bf16" → b, f, 1, 6).
        if not isinstance(self.precisions, (tuple, list)):
            return [
                f"precisions must be a list of names (bf16, fp8, float32), got {self.precisions!r}."
            ]
        precisions = tuple(self.precisions)
        unknown = [p for p in precisions if p not in PRECISIONS]
        if unknown:
            return [
                f"Unknown precision {', '.join(map(str, unknown))}: "
                f"choose from {', '.join(PRECISIONS)}."
            ]
        if not precisions:
            return ["Choose at least one precision (bf16, fp8 or float32)."]
        if len(set(precisions)) != len(precisions):
            return ["Each precision may appear only once."]
        return []

    def type_errors(self) -> list[str]:
        problems = [] if isinstance(self.data, str) else ["data must be a path (text)."]
        booleans = ("quantize_head", "ptq", "restore_best", "data_parallel", *NVFP4_PARTS)
        for name in booleans:
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
        if isinstance(self.bf16_layers, (tuple, list)):
            d["bf16_layers"] = list(self.bf16_layers)
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
        for name in ("precisions", "bf16_layers"):  # lists in JSON, tuples here
            if name in values:
                p = values[name]
                values[name] = tuple(p.split(",") if p else ()) if isinstance(p, str) else tuple(p)
        return cls(**values)

    @classmethod
    def from_strings(cls, values: dict, base: "TrainConfig | None" = None) -> "TrainConfig":
        """Build from text values (URL query parameters, CLI flags), with clear messages.

        Settings not given keep `base`'s values (default: the example's). Values that do not
        parse are reported all at once, as ConfigError.
        """
        typed, problems = {}, []
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, raw in values.items():
            if name not in fields:
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
        return dataclasses.replace(base or cls(), **typed)

    def differences(self, other: "TrainConfig | None" = None) -> dict:
        """Settings that differ from `other` (default: the example's)."""
        base = (other or TrainConfig()).to_dict()
        return {k: v for k, v in self.to_dict().items() if base.get(k) != v}


EXAMPLE = TrainConfig()

# Presets shown in the dashboard and accepted by the CLI (--preset).
PRESETS = {
    "Keras example": {},
    # The example's model, data and training, with the vocabulary trained by Hugging Face's
    # WordPiece trainer and 8-bit dropout masks (benchmarks/README.md compares the two).
    "Keras example, fast": dict(vocab_method="fast", dropout_masks="fast"),
    # The example's model and sequence length on 12,000 training reviews, one epoch at a
    # higher learning rate with the fast dropout masks: it learns in one pass, in about a
    # minute on two CPU cores (benchmarks/quick_demo.py).
    "Quick demo": dict(subset=12000, vocab_size=5000, epochs=1, lr=3e-3, dropout_masks="fast"),
    "Wider (hidden 256)": dict(hidden_dim=256, heads=4, intermediate_dim=1024),
    "Large (hidden 1024)": dict(hidden_dim=1024, heads=8, intermediate_dim=4096, epochs=1),
    "XL (hidden 4096)": dict(hidden_dim=4096, heads=32, intermediate_dim=16384, epochs=1),
    # The example's model on 10,000 training reviews, one epoch at a learning rate high enough
    # that how the first steps are scaled can decide whether a seed learns at all, from a seed
    # where it does; bf16, Keras' delayed scaling and two recipes that scale from the current
    # values, probed often enough to date what FP8 health saw (benchmarks/recipe_breaks.py).
    "Where delayed scaling breaks": dict(
        subset=10000,
        vocab_size=5000,
        epochs=1,
        lr=5e-3,
        seed=43,
        probe_every=25,
        precisions=("bf16", "fp8", "fp8-current", "mxfp8"),
    ),
}

# What a preset trades against the example, shown next to the preset picker.
PRESET_NOTES = {
    "Quick demo": "the example's model and sequence length, trained for one epoch on 12,000 "
    "of its 20,000 training reviews at 3× its learning rate, with a 5,000-word vocabulary "
    "and the fast dropout masks; validated on 5,000 and tested on 12,000 reviews. About "
    "80 % test accuracy instead of the example's 80–81 % after 3 epochs, in a fraction of "
    "its time.",
    "Where delayed scaling breaks": "the example's model and sequence length, one epoch on "
    "10,000 of its training reviews at 5× its learning rate, with a 5,000-word vocabulary, "
    "seed 43 and a probe every 25 steps; trains bf16, fp8 (Keras' delayed scaling), "
    "fp8-current and mxfp8 from that seed. At this learning rate the model trains at the edge "
    "of a stall: a ReLU layer can die, every gradient behind it turns zero and the prediction "
    "stays constant. Delayed scaling takes its first two steps at scale 1.0, before any amax "
    "is known, which flushes the smallest output gradients to zero (FP8 health's probe at "
    "step 0); on this seed that start tips fp8 into the stall, while bf16 and the recipes, "
    "which scale from the current values, learn. Most seeds learn in every precision: repeat "
    "over seeds to see how rare it is.",
}


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}: choose from {', '.join(PRESETS)}.")
    return dataclasses.replace(EXAMPLE, **{**PRESETS[name], **overrides})


# -- settings as text: URL query parameters and CLI flags ------------------------------------
#
# Both come from the fields: a URL parameter is named as its field, a CLI flag is the field's
# name (or its metadata's "flag") with dashes, and from_strings parses the text of either.


def to_text(value) -> str:
    """A setting's value as text that from_strings reads back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(value)
    return str(value)


def to_query(config: TrainConfig) -> dict[str, str]:
    """URL query parameters for the settings that differ from the example's (its link is bare)."""
    return {name: to_text(value) for name, value in config.differences().items()}


def _problems_alone(name: str, value) -> list[str]:
    """Problems of one setting on its own (with the example's other values)."""
    probe = {name: value}
    # Judge hidden_dim and heads each on its own: divisibility is a cross-field rule, explained
    # next to the settings rather than by dropping one of the two from a link.
    if name == "heads" and isinstance(value, int) and 1 <= value <= 65536:
        probe["hidden_dim"] = value
    if name == "hidden_dim":
        probe["heads"] = 1
    return dataclasses.replace(EXAMPLE, **probe).errors()


def from_query(params: dict, ignore=()) -> tuple[dict, list[str]]:
    """The settings in URL query parameters (typed values), plus a warning for each one dropped:
    an unknown name, or a value that does not parse or is out of range. The parameters named
    in `ignore` belong to other pages and are skipped silently."""
    values, warnings = {}, []
    for name, raw in params.items():
        if name in ignore:
            continue
        try:
            value = getattr(TrainConfig.from_strings({name: raw}), name)
        except ConfigError as e:
            warnings.append(str(e))
            continue
        problems = _problems_alone(name, value)
        if problems:
            warnings.extend(problems)
        else:
            values[name] = value
    return values, warnings


# What a flag's value looks like in --help, when it is not one of a few choices.
METAVARS = {bool: "{true,false}", int: "N", float: "X", tuple: "A,B", str: "TEXT"}


def cli_flags() -> list[tuple[str, dict]]:
    """(flag, argparse.add_argument options) for every setting: --batch-size for batch_size.

    Values stay text (None when a flag is not given) so that from_flags parses them with the
    same one-line messages as a URL's; the choices are shown, and checked by validate().
    """
    flags = []
    for field in dataclasses.fields(TrainConfig):
        choices = field.metadata["choices"]
        metavar = "{" + ",".join(choices) + "}" if choices else METAVARS[type(field.default)]
        default = to_text(field.default)
        text = field.metadata["help"] + (f" (default: {default})" if default else "")
        name = "--" + (field.metadata["flag"] or field.name).replace("_", "-")
        flags.append(
            (
                name,
                dict(dest=field.name, default=None, metavar=metavar, help=text.replace("%", "%%")),
            )
        )  # argparse formats help
    return flags


def from_flags(args, base: TrainConfig | None = None) -> TrainConfig:
    """The configuration given by the cli_flags of parsed arguments; the rest is `base`'s."""
    given = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(TrainConfig)
        if getattr(args, field.name, None) is not None
    }
    return TrainConfig.from_strings(given, base)
