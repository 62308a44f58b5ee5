"""Helpers shared by the benchmarks: what machine a figure came from, and one JSON line per figure.

Every figure is printed with the machine it was measured on, because the same code gives very
different numbers on a laptop, a shared CI box and a Dataflow worker.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from typing import Any

__all__ = ["emit", "machine_info"]


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Cores (all, and usable by this process), CPU model, Python version and platform."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    return {
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def emit(figure: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
    """Print one JSON line ``{"figure", "value", "unit", "machine", **extra}`` and return it."""
    record: dict[str, Any] = {"figure": figure, "value": float(value), "unit": unit,
                              "machine": machine_info(), **extra}
    print(json.dumps(record), file=sys.stdout, flush=True)
    return record
