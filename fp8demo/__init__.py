"""fp8demo: watch, live, what FP8 training does to a small Transformer.

The engine follows the Keras example's narrative order:
data.py → tokenizer.py → model.py → training.py (with fp8.py) → predict.py,
with store.py as the one contract between the training process and the dashboard.

The public API for a user's own Keras model: `from fp8demo import FP8Monitor` (monitor.py).
"""

__version__ = "0.1.0"
__all__ = ["FP8Monitor"]


def __getattr__(name):
    """FP8Monitor on first use: `import fp8demo` stays light (no keras, no JAX)."""
    if name == "FP8Monitor":
        from fp8demo.monitor import FP8Monitor  # lazy: keras loads in ~3 s

        return FP8Monitor
    raise AttributeError(f"module 'fp8demo' has no attribute {name!r}")
