"""Where a test runs: versions, devices, CPU and threads, as goldens and reports record them.

The plugin imports this module when it starts, so nothing here imports torch (an imported
torch is found in ``sys.modules``) and NumPy is imported only when metadata is built.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from importlib import metadata
from typing import Any

__all__ = ["device_description", "environment_metadata", "installed_version", "torch_version"]


def installed_version(distribution: str) -> str | None:
    """The version of an installed distribution, from its metadata (nothing is imported);
    ``None`` when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def torch_version() -> str | None:
    """torch's version, or ``None`` when it is not installed: the imported module's when
    torch is imported, else the installed distribution's (read from its metadata, so torch
    is never imported for it)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return str(torch.__version__)
    return installed_version("torch")


def device_description(torch: Any) -> str:
    """The device the tests ran on, as the CI report lists it: ``cuda:0 (<GPU model>)``
    when CUDA is initialised, else ``cpu (<n> threads)``."""
    if torch.cuda.is_initialized():
        index = torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads != 1 else ''})"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _threads() -> str:
    torch = sys.modules.get("torch")
    if torch is not None:
        return str(torch.get_num_threads())
    affinity = getattr(os, "sched_getaffinity", None)
    return str(len(affinity(0)) if affinity else os.cpu_count() or 1)


def _device_names(devices: list[str]) -> str:
    torch = sys.modules.get("torch")
    names = []
    for device in devices:
        if device.startswith("cuda") and torch is not None and torch.cuda.is_initialized():
            with contextlib.suppress(Exception):
                names.append(f"{device}: {torch.cuda.get_device_name(device)}")
    return "; ".join(names)


def environment_metadata(
    *, test_id: str, seed: int | None, devices: list[str] | None = None
) -> dict[str, str]:
    """The metadata a golden records about where it was made (all values strings).

    Keys: ``format``, ``plugin_version``, ``python``, ``numpy``, ``torch``, ``device``
    (the devices of the checked values), ``device_name`` (GPU models, when known),
    ``platform``, ``cpu``, ``threads`` (torch's intra-op threads, or the usable cores
    without torch), ``seed`` and ``test``.
    """
    # Imported here, not above: the plugin imports this module when it starts, before any
    # test needs NumPy.
    import numpy as np

    from pytest_determinism import __version__
    from pytest_determinism.golden.storage import FORMAT

    used = sorted(set(devices or ["cpu"]))
    return {
        "format": FORMAT,
        "plugin_version": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch_version() or "not installed",
        "device": ",".join(used),
        "device_name": _device_names(used),
        "platform": f"{platform.system()}-{platform.machine()}",
        "cpu": _cpu_model(),
        "threads": _threads(),
        "seed": "" if seed is None else str(seed),
        "test": test_id,
    }
