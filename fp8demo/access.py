"""Who may launch, stop and delete runs on a shared dashboard: the password's guess policy.

The dashboard asks for a password (FP8DEMO_PASSWORD) before its controls work. Each wrong
answer in a row from one viewer (one browser tab) is answered later than the one before,
so guessing it quickly is not possible, and each one is logged for whoever runs the server.
The page applies the delay; this module decides it and writes the log line.
"""

import logging

FIRST_DELAY_S = 0.5  # the answer to a first wrong password
MAX_DELAY_S = 8.0  # doubling stops here: a typo never costs the owner more than this

log = logging.getLogger("fp8demo.access")


def wrong_password_delay(failures: int) -> float:
    """Seconds to hold the answer to a viewer's `failures`-th wrong password in a row."""
    if failures < 1:
        return 0.0
    doublings = min(failures - 1, 64)  # beyond the cap anyway; keeps the float finite
    return min(MAX_DELAY_S, FIRST_DELAY_S * 2.0**doublings)


def record_wrong_password(failures: int, viewer: str = "") -> float:
    """Log one wrong password (never the text typed) and return the delay to apply."""
    delay = wrong_password_delay(failures)
    log.warning(
        "Wrong dashboard password from %s: %d in a row from this viewer; the answer waits %.1f s.",
        viewer or "an unknown address",
        failures,
        delay,
    )
    return delay
