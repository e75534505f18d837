"""Killing a process mid-write, for the tests that prove goldens survive it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path


def kill_while_writing(script: str, folder: Path, attempt: int) -> None:
    """Run ``script`` (it prints ``ready`` once every file exists, then keeps writing) with
    ``folder`` as its argument, and SIGKILL it a little later each ``attempt``."""
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    time.sleep(0.05 + 0.04 * attempt)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()
