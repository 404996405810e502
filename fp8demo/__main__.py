import os
import sys

from fp8demo.cli import main

try:
    status = main()
    sys.stdout.flush()  # inside the try: a closed pipe shows here, not at interpreter exit
except BrokenPipeError:  # `... | head` closed the pipe: stop quietly, as other tools do
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    status = 141
raise SystemExit(status)
