"""The fp8demo dashboard: `streamlit run app.py`.

Train → Live → Results → FP8 health → Predict, and Sweep (many comparisons, searched by Optuna).
Every page reads the run store (FP8DEMO_HOME); training runs in a separate process started by
fp8demo.worker, never in this script. The navigation and the sidebar shell live in
pages/common.py (start_app), shared with a page's own fallback.
"""

from pages import common

common.start_app().run()
