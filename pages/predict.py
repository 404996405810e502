"""Predict: ask every model of a finished comparison what it thinks of a review, or, for a
user's own models saved by FP8Monitor (save_model=True), what it outputs for raw inputs."""

import pandas as pd
import streamlit as st

from fp8demo.paths import default_home
from fp8demo.predict import (
    PredictError,
    SavedModel,
    describe_output,
    load_run,
    own_model_note,
    sentiment,
)
from pages import common

OWN = "Write your own"
EXAMPLES = {
    "Positive": "One of the best films I have seen in years. The cast is wonderful, the story "
    "moved me, and I would happily watch it again.",
    "Negative": "A dull, badly acted mess. The plot makes no sense and I was checking my watch "
    "after twenty minutes. Avoid.",
    "Mixed": "The photography is gorgeous and the lead actress does her best, but the script "
    "is weak and the ending falls completely flat.",
}


@st.cache_resource(show_spinner="Loading the model…", max_entries=12)
def load_model(home: str, run_id: int, post_training: str | None = None):
    """Rebuild one run's model from its saved weights, once per server (imports keras)."""
    return load_run(common._open_store(home), run_id, post_training)


def load_models(runs) -> dict:
    """{precision: model} for every finished run that loads; errors are shown, not raised."""
    models = {}
    for r in runs:
        if own_model_note(r):  # a user's own model (FP8Monitor): explained, not loaded
            st.info(f"{r['precision']}: {own_model_note(r)}")
            continue
        try:
            models[r["precision"]] = load_model(str(default_home()), r["id"])
        except PredictError as e:
            st.error(f"{r['precision']}: {e}")
        # The bf16 model after post-training int8 quantization: the calibration-free
        # alternative the example contrasts FP8 training with (quantized here, on first use).
        if r["precision"] == "bf16" and r["status"] == "finished" and r["config"].ptq:
            try:
                models["int8 (PTQ)"] = load_model(str(default_home()), r["id"], "int8")
            except PredictError as e:
                st.error(f"int8 (PTQ): {e}")
    return models


def pick_example():
    name = st.session_state["example"]
    if name in EXAMPLES:
        st.session_state["review"] = EXAMPLES[name]


def single_review(models):
    st.selectbox("Example review", [OWN, *EXAMPLES], key="example", on_change=pick_example)
    text = st.text_area(
        "Review",
        key="review",
        height=120,
        placeholder="Type a movie review, e.g. “I loved every minute of it.”",
    )
    if not text.strip():
        st.info("Type a review (or pick an example) to see what each model thinks of it.")
        return
    try:
        probabilities = {p: float(m.predict([text])[0]) for p, m in models.items()}
    except PredictError as e:
        st.error(str(e))
        return
    cols = st.columns(len(probabilities))
    for col, (precision, prob) in zip(cols, probabilities.items()):
        col.metric(f"{precision}: P(positive)", f"{prob:.1%}", border=True)
        col.markdown(f"→ **{sentiment(prob)}**")
    labels = {sentiment(p) for p in probabilities.values()}
    if len(probabilities) > 1:
        spread = max(probabilities.values()) - min(probabilities.values())
        if len(labels) == 1:
            st.success(f"The models agree: {labels.pop()} (probabilities within {spread:.1%}).")
        else:
            st.warning(f"The models disagree (probabilities {spread:.1%} apart).")
    with st.expander("Tokens the model saw"):
        tokens = next(iter(models.values())).tokens(text)
        st.markdown(" ".join(f"`{t}`" for t in tokens) or "(no tokens)")
        st.caption(
            f"{len(tokens)} wordpieces; the model reads at most the first "
            f"sequence-length of them, padded with [PAD]."
        )


def many_reviews(models):
    text = st.text_area("Several reviews, one per line", key="batch", height=140)
    reviews = [line.strip() for line in text.splitlines() if line.strip()]
    if not reviews:
        st.caption("Paste reviews here, one per line, to get a table.")
        return
    table = pd.DataFrame({"review": reviews})
    try:
        for precision, model in models.items():
            table[f"{precision} P(positive)"] = model.predict(reviews)
    except PredictError as e:
        st.error(str(e))
        return
    for precision in models:
        table[f"{precision} label"] = table[f"{precision} P(positive)"].map(sentiment)
    labels = table[[f"{p} label" for p in models]]
    table["agree"] = labels.nunique(axis=1) == 1
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            f"{p} P(positive)": st.column_config.ProgressColumn(
                format="percent", min_value=0.0, max_value=1.0
            )
            for p in models
        },
    )


def raw_inputs(models):
    """A user's own saved models: the raw input they take, each one's output per example."""
    first = next(iter(models.values()))
    raw = st.text_area(
        "Input",
        key="raw_input",
        height=140,
        help=f"This model takes {first.describe_input()}.",
        placeholder="One example per line" if first.takes_text else "[[1, 2, 3], [4, 5, 6]]",
    )
    if not raw.strip():
        st.info(f"Your own model takes {first.describe_input()}: type one to see its output.")
        return
    rows = {}
    for precision, model in models.items():
        try:
            outputs = model.predict(model.parse(raw))
        except PredictError as e:
            st.error(f"{precision}: {e}")
            continue
        for i, output in enumerate(outputs):
            rows.setdefault(i, {"example": i})[precision] = describe_output(output)
    if rows:
        st.dataframe(pd.DataFrame(list(rows.values())), hide_index=True, width="stretch")


# -- the page -----------------------------------------------------------------------------

store = common.page_store()
st.title("Predict")
comparisons = store.comparisons()
finished = [c for c in comparisons if any(r["status"] == "finished" for r in c["runs"])]
if not finished:
    training = next((c for c in comparisons if common.is_active(c)), None)
    if training:
        common.next_step(
            f"No finished runs yet: comparison #{training['id']} is training. Follow it on "
            "Live; its models can be asked here once a run finishes.",
            page="pages/live.py",
            query_params={"comparison": str(training["id"])},
        )
    else:
        common.next_step(
            f"No finished runs yet: launch a comparison on Train ({common.QUICK_DEMO_HINT}); "
            "its models can be asked here once a run finishes."
        )
    st.stop()

cid = common.pick_comparison(
    finished, key="predict_comparison", preferred=common.query_int("comparison")
)
comparison = next(c for c in finished if c["id"] == cid)
runs = [r for r in comparison["runs"] if r["status"] == "finished"]
if len(runs) < len(comparison["runs"]):
    st.caption(
        "Only finished runs are shown: "
        + ", ".join(r["precision"] for r in comparison["runs"] if r["status"] != "finished")
        + " did not finish."
    )
models = load_models(runs)
own = {p: m for p, m in models.items() if isinstance(m, SavedModel)}
models = {p: m for p, m in models.items() if p not in own}
if own:
    raw_inputs(own)
if not models:
    st.stop()
single_review(models)
st.divider()
many_reviews(models)
