"""Train: choose the settings of one bf16-vs-fp8 comparison and launch it.

Each widget's key is the TrainConfig field it sets. The settings live in the URL (only those
that differ from the Keras example), so a link reproduces a configuration.
"""

import dataclasses

import streamlit as st

from fp8demo import launcher, model, tokenizer
from fp8demo.config import (
    BLOCK_SCALES,
    DROPOUT_MASKS,
    EXAMPLE,
    FLOAT8_PRECISIONS,
    MODEL_LAYERS,
    PRECISIONS,
    PRESET_NOTES,
    PRESETS,
    SIDE_BY_SIDE,
    VOCAB_METHODS,
    ConfigError,
    TrainConfig,
    from_query,
    layer_selector,
    preset,
    to_query,
)
from fp8demo.data import default_source_description
from fp8demo.resources import estimate_memory_bytes, launch_problems
from fp8demo.store import StoreError
from pages import common

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
CUSTOM = "Custom"
# Settings a preset leaves as the user chose them: they are about the launch, not the model,
# unless the preset names them (an experiment about precisions sets its own).
KEPT_BY_PRESETS = ("precisions", "data")
OTHER_PAGES_PARAMS = ("comparison",)
SAMPLE_REVIEW = "This movie was a wonderful surprise: sharp writing, and the acting is superb!"


# -- URL <-> settings (fp8demo.config parses and writes them) -----------------------------


def init_state():
    """Fill the widgets once per session: from the URL, else the example's values.

    Later visits restore the last settings (widget state is dropped on page switches).
    """
    if "train_config" not in st.session_state:
        # A Live link that landed here carries its comparison too.
        values, warnings = from_query(dict(st.query_params), ignore=OTHER_PAGES_PARAMS)
        if warnings:
            st.session_state["url_warnings"] = warnings
        st.session_state["train_config"] = dataclasses.replace(EXAMPLE, **values)
    saved = st.session_state["train_config"]
    for name in FIELDS:
        if name not in st.session_state:
            st.session_state[name] = widget_value(name, getattr(saved, name))


def widget_value(field: str, value):
    """A TrainConfig value as its widget holds it; bf16_layers: the multiselect's layer
    names, first:N / last:N spelled out."""
    if field == "bf16_layers":
        chosen = {name for item in value for name in layer_selector(item) or ()}
        return [name for name in MODEL_LAYERS if name in chosen]
    return common.widget_value(field, value)


def float8_chosen() -> bool:
    return bool(set(st.session_state.get("precisions") or ()) & set(FLOAT8_PRECISIONS))


def current_config() -> TrainConfig:
    values = {name: st.session_state[name] for name in FIELDS}
    values["precisions"] = tuple(values["precisions"])
    # The layer picker shows only with a float8 precision, and counts only then.
    values["bf16_layers"] = tuple(values["bf16_layers"]) if float8_chosen() else ()
    return TrainConfig(**values)


def write_url(config: TrainConfig):
    wanted = to_query(config)
    if dict(st.query_params) != wanted:
        st.query_params.from_dict(wanted)


def kept_by(name: str) -> tuple:
    """The settings preset `name` leaves as the user chose them."""
    return tuple(k for k in KEPT_BY_PRESETS if k not in PRESETS[name])


def matching_preset(config: TrainConfig) -> str:
    for name in PRESETS:
        if preset(name, **{k: getattr(config, k) for k in kept_by(name)}) == config:
            return name
    return CUSTOM


def apply_preset():
    name = st.session_state["preset"]
    if name == CUSTOM:
        return
    values, kept = preset(name), kept_by(name)
    for field in FIELDS:
        if field not in kept:
            st.session_state[field] = widget_value(field, getattr(values, field))


# -- cached previews (keras / keras_hub load only when one is opened) ----------------------


@st.cache_data(show_spinner="Tokenizing…", max_entries=64)
def tokenizer_preview(config: TrainConfig, text: str) -> dict:
    return tokenizer.preview(config, text)


@st.cache_data(show_spinner="Building the model…", max_entries=32)
def model_summary(config: TrainConfig, precision: str) -> list[dict]:
    return model.summarize(config, precision)


LARGE_HIDDEN = 1024  # the "Large" preset and up: where FP8 GEMMs can beat bf16 on a GPU


# -- layout -------------------------------------------------------------------------------


def settings_form():
    """Every TrainConfig field as a widget keyed by its name."""
    preset_picker()
    training_settings()
    tokenizer_settings()
    model_settings()
    runs_and_data_settings()
    with st.expander("Advanced"):
        advanced_settings()


def preset_picker():
    st.selectbox(
        "Preset",
        [CUSTOM, *PRESETS],
        key="preset",
        on_change=apply_preset,
        help="Fills the settings below. Precisions and data source are kept, unless the "
        "preset is about precisions (Where delayed scaling breaks trains four).",
    )
    if note := PRESET_NOTES.get(st.session_state.get("preset")):
        st.caption(f"{st.session_state['preset']}: {note}")


def training_settings():
    st.markdown("**Training**")
    c = st.columns(4)
    c[0].number_input("Epochs", min_value=1, step=1, key="epochs")
    c[1].number_input("Batch size", min_value=1, step=1, key="batch_size")
    c[2].number_input("Learning rate (adam)", min_value=0.0, step=1e-4, format="%.1e", key="lr")
    c[3].number_input("Seed", min_value=0, step=1, key="seed")


def tokenizer_settings():
    st.markdown("**Tokenizer**")
    c = st.columns(4)
    c[0].number_input("Vocabulary size", min_value=1, step=1000, key="vocab_size")
    c[1].number_input("Sequence length", min_value=1, step=8, key="seq_len")
    c[2].selectbox(
        "Vocabulary method",
        VOCAB_METHODS,
        key="vocab_method",
        help="keras: the vocabulary the example's compute_word_piece_vocabulary "
        "builds, word for word, by a faster implementation of its algorithm; "
        "fast: the Hugging Face WordPiece trainer (a different vocabulary). "
        "Cached per data and settings.",
    )


def model_settings():
    st.markdown("**Model**")
    c = st.columns(4)
    c[0].number_input("Hidden dim", min_value=1, step=8, key="hidden_dim")
    c[1].number_input("Attention heads", min_value=1, step=1, key="heads")
    c[2].number_input("Intermediate dim", min_value=1, step=8, key="intermediate_dim")
    c[3].number_input(
        "Dropout", min_value=0.0, max_value=1.0, step=0.05, format="%.2f", key="dropout"
    )
    st.checkbox("Quantize the sigmoid head too (as the example does)", key="quantize_head")


def runs_and_data_settings():
    st.markdown("**Runs and data**")
    empty_source = default_source_description()
    c = st.columns([2, 3, 1])
    c[0].multiselect(
        "Precisions",
        PRECISIONS,
        key="precisions",
        help="One run per precision, on the same data and seed (one after another, or side "
        "by side: Advanced). fp8 "
        "scales as Keras does (delayed, from an amax history); fp8-current, fp8-rowwise, "
        "fp8-block128 and mxfp8 quantize each matmul's operands with the scaling recipe "
        "they name, as Transformer Engine and torchao do; fp8-rowwise-gw-hp is torchao's "
        "rowwise with the weight-gradient matmul in bf16; nvfp4 is NVIDIA's 4-bit recipe, "
        "its parts switchable under Advanced. The NVFP4 paper keeps about 15 % of the linear "
        "layers in bf16: 'Layers kept in bf16' (Advanced) does that.",
    )
    c[1].text_input(
        "Data source",
        key="data",
        placeholder=f"empty: {empty_source}",
        help=f"Empty uses {empty_source}. Or name a local aclImdb folder or "
        "aclImdb_v1.tar.gz path.",
    )
    c[2].number_input(
        "Subset (0 = all)",
        min_value=0,
        step=500,
        key="subset",
        help="Reviews per split, half positive, half negative.",
    )


def advanced_settings():
    """Devices, scheduling, best epoch and early stopping, the fp8 window, PTQ, the probe."""
    devices = common.device_info().get("devices") or []
    st.checkbox(
        f"Data-parallel over every device ({len(devices)} seen)",
        key="data_parallel",
        help="keras.distribution.DataParallel: each batch is split across the "
        "devices JAX sees; the batch size must divide evenly. Devices: "
        + (", ".join(devices) or "unknown"),
    )
    st.selectbox(
        "Precisions side by side",
        SIDE_BY_SIDE,
        key="side_by_side",
        help="Train the precisions at the same time, each in a worker of its own, so "
        "that their Live curves race. auto: at the same time when the host has a GPU per "
        "precision, one after the other on a CPU (where they would share the cores); on: "
        "at the same time, sharing the devices or cores there are; off: one after the "
        "other.",
    )
    c = st.columns(4)
    c[0].checkbox(
        "Restore the best epoch",
        key="restore_best",
        help="Evaluate and keep the weights of the epoch with the best validation "
        "accuracy (the example overfits after epoch 1). The final weights "
        "are evaluated too.",
    )
    c[1].number_input(
        "Early stopping patience (0 = off)",
        min_value=0,
        step=1,
        key="early_stopping",
        help="Stop after this many epochs without a better validation accuracy.",
    )
    c[2].number_input(
        "Amax history length",
        min_value=1,
        step=64,
        key="amax_history_length",
        help="The delayed-scaling window of the fp8 run: each scale comes from "
        "the largest amax of this many past steps (Keras' default 1024).",
    )
    c[3].checkbox(
        "int8/int4 post-training quantization of bf16",
        key="ptq",
        help="After the bf16 run, evaluate its post-training int8 (and int4 "
        "weight-only) quantization: the calibration FP8 training avoids.",
    )
    probe_settings()
    if float8_chosen():
        st.multiselect(
            "Layers kept in bf16 in the float8 runs",
            MODEL_LAYERS,
            key="bf16_layers",
            placeholder="none: every layer computes in float8",
            help="These float8-capable layers (the model's Dense and EinsumDense, in model "
            "order) stay in bf16 under every float8 precision: no float8 scales or amax "
            "histories. FP8 health's suggested policy names candidates. The head is also "
            "kept in bf16 when 'Quantize the sigmoid head too' is off.",
        )
    if "nvfp4" in (st.session_state.get("precisions") or ()):
        nvfp4_settings()


def probe_settings():
    """The probe's cadence and what it measures, and the dropout masks' random bits."""
    c = st.columns(4)
    c[0].number_input(
        "Probe every N steps (0 = off)",
        min_value=0,
        step=50,
        key="probe_every",
        help="Saturation and underflow % of every float8 tensor, measured on a "
        "fixed validation batch every N steps (FP8 health page).",
    )
    c[1].selectbox(
        "Dropout masks",
        DROPOUT_MASKS,
        key="dropout_masks",
        help="keras: 32 random bits per mask value, as the example; fast: 8 bits "
        "(the rate rounds to a multiple of 1/256), a faster training step on a "
        "CPU, where drawing the random numbers is a large part of the step.",
    )
    c[2].selectbox(
        "Block scales at each probe",
        BLOCK_SCALES,
        key="block_scales",
        help="Also measure every float8 tensor's block scales under the block recipes "
        "(FP8 health's Block scales view); the probe then takes about twice as long to "
        "compile. auto: in fp8-block128, mxfp8 and nvfp4 runs; on: every float8 run; off: "
        "never.",
    )


def nvfp4_settings():
    """The three switchable parts of NVIDIA's NVFP4 recipe (arXiv 2509.25149), on as in the
    paper; switching one off ablates it."""
    st.caption(
        "nvfp4: the parts of NVIDIA's recipe (all on as in the paper; switch one off to see "
        "what it does). The paper also keeps about 15 % of the linear layers in bf16: pick "
        "them in 'Layers kept in bf16' above."
    )
    c = st.columns(3)
    c[0].checkbox(
        "16x16 weight blocks",
        key="nvfp4_2d_weights",
        help="Kernels quantized in 16x16 blocks instead of 1x16, so the weight and its "
        "transpose (forward and input-gradient matmuls) quantize to the same values.",
    )
    c[1].checkbox(
        "Random Hadamard transform",
        key="nvfp4_rht",
        help="A 16x16 random Hadamard transform (signs from the seed) on both operands of "
        "the weight-gradient matmul, spreading outliers over their block; it cancels in "
        "the product.",
    )
    c[2].checkbox(
        "Stochastic rounding",
        key="nvfp4_stochastic_rounding",
        help="Output gradients rounded up or down at random, in proportion to the distance, "
        "so rounding is unbiased on average; the numbers come from the seed and the step, "
        "so a rerun is identical.",
    )


def show_tokenizer_preview(config: TrainConfig):
    box = st.expander("Tokenizer preview", key="preview_expander", on_change="rerun")
    if not box.open:
        return
    with box:
        text = st.text_input("Text", SAMPLE_REVIEW, key="preview_text")
        if not text.strip():
            st.info("Type some text to see its wordpieces.")
            return
        try:
            result = tokenizer_preview(config, text)
        except LookupError:
            st.info(
                "The tokenizer preview appears once the vocabulary for these settings has "
                "been built (the first run with them builds it)."
            )
            return
        except Exception as e:
            st.warning(f"No tokenizer preview: {e}")
            return
        st.markdown(" ".join(f"`{t}`" for t in result["tokens"]))
        st.caption(
            f"{len(result['ids'])} token ids: {result['ids'][:40]}"
            f"{' …' if len(result['ids']) > 40 else ''}"
        )
        st.caption(f"Detokenized: {result['detokenized']}")


def show_model_summary(config: TrainConfig):
    box = st.expander("Model summary", key="summary_expander", on_change="rerun")
    if not box.open:
        return
    with box:
        # Every float8 precision has the fp8 model's layers: summarize that one.
        float8 = any(p in FLOAT8_PRECISIONS for p in config.precisions)
        precision = "fp8" if float8 else config.precisions[0]
        try:
            layers = model_summary(config, precision)
        except Exception as e:
            st.error(f"Could not build the model for these settings: {e}")
            return
        # Nested layers (decoder/...) are already counted in their parent.
        total = sum(layer["params"] for layer in layers if "/" not in layer["name"])
        n_fp8 = sum(bool(layer["float8"]) for layer in layers)
        st.markdown(
            f"**{total:,} parameters**, {len(layers)} layers"
            + (
                f"; in the float8 runs **{n_fp8}** of them compute in float8."
                if precision == "fp8"
                else "."
            )
        )
        st.dataframe(
            layers,
            hide_index=True,
            width="stretch",
            column_config={"float8": st.column_config.CheckboxColumn("float8 in fp8 run")},
        )


def launch(store, config: TrainConfig, label: str, repeats: int = 1):
    try:
        cid = launcher.launch_repeats(config, repeats, store=store, label=label)[0]
    except (ConfigError, StoreError) as e:
        st.error(str(e))
        return
    st.session_state["live_comparison"] = cid
    st.switch_page("pages/live.py", query_params={"comparison": str(cid)})


# -- the page -----------------------------------------------------------------------------

store = common.page_store()
init_state()
# Show which preset the current settings equal (set before the selectbox is drawn).
st.session_state["preset"] = matching_preset(current_config())

st.title("Train")
st.caption(
    "bf16 vs fp8 on the same data and seed: each precision trains one run, one after "
    "another or side by side. Defaults are the Keras example's."
)
url_warnings = st.session_state.pop("url_warnings", [])
if url_warnings:
    st.warning(
        "Some settings in the link were ignored; their defaults are used instead:\n\n"
        + "\n".join(f"- {w}" for w in url_warnings)
    )

settings_form()
config = current_config()
st.session_state["train_config"] = config
write_url(config)

problems = config.errors()
if not problems:
    # The checks the launch makes, with its messages, while the settings are being chosen.
    problems = launch_problems(config, store.home, int(st.session_state.get("repeats", 1)))
    st.caption(f"Estimated memory of one run: {estimate_memory_bytes(config) / 2**20:,.0f} MiB.")
for problem in problems:
    st.error(problem)
if not problems:
    platform = common.device_info().get("platform")
    if platform == "cpu" and not config.subset:
        st.info(
            "Training runs on the CPU here: the full data takes a while. The “Quick demo” "
            "preset trains on 12,000 reviews in about a minute; “Keras example, "
            "fast” trains the full example with the fast dropout masks and vocabulary."
        )
    if config.hidden_dim >= LARGE_HIDDEN and set(config.precisions) & set(FLOAT8_PRECISIONS):
        st.info(
            "Large matmuls are where fp8 can pay off, on a GPU with fp8 tensor cores and only "
            "if XLA runs the float8 layers as FP8 GEMMs. After its fit, each float8 run says "
            "how many of its matmuls did (Live card, Results), and Results compares the training "
            "speed of fp8 with bf16 (and of every other precision). fp8-current and fp8-rowwise "
            "can run FP8 GEMMs, mxfp8 and nvfp4 block-scaled GEMMs on a Blackwell GPU; "
            "fp8-rowwise-gw-hp and fp8-block128 are emulated: numerics, not speed."
            + (
                " On this CPU fp8 is simulated: it shows fp8's numerics, never a speed-up."
                if platform != "gpu"
                else ""
            ),
            icon=":material/speed:",
        )
    show_tokenizer_preview(config)
    show_model_summary(config)

c = st.columns([3, 1])
label = c[0].text_input("Label (optional)", key="label", placeholder="e.g. wider model")
repeats = c[1].number_input(
    "Repeats over seeds",
    min_value=1,
    max_value=100,
    value=1,
    step=1,
    key="repeats",
    help="Train the same comparison with seeds seed, seed+1, …; Results "
    "shows mean ± std, so “no accuracy drop” is a measured claim.",
)
if common.launch_button("Launch", "launch", problems, "Queue one run per precision."):
    launch(store, config, label, int(repeats))
