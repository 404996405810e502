"""fp8demo: watch, live, what FP8 training does to a small Transformer.

The engine follows the Keras example's narrative order:
data.py → tokenizer.py → model.py → training.py (with fp8.py) → predict.py,
with store.py as the one contract between the training process and the dashboard.
"""

__version__ = "0.1.0"
