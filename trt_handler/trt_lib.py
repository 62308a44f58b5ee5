"""Which TensorRT: full TensorRT (``tensorrt``, NGC containers, builds on the GPU it runs on) or
TensorRT-RTX (``tensorrt_rtx``, builds ahead of time on a CPU box), imported only when needed.

The two Python APIs match in shape (Builder, OnnxParser, Runtime, ICudaEngine), so the builder and
the engine session take the module as a value and branch only where the libraries differ. This
module also answers "can this engine run here, and if not, why" before anyone deserializes it
(:func:`check_engine_bytes`), because a failed deserialization only says "returned None".

Nothing heavy is imported at module level: ``import trt_handler.trt_lib`` needs only the standard
library; ``cuda.bindings`` is reached through :mod:`trt_handler.cuda_runtime`, lazily.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

__all__ = [
    "LIBRARIES",
    "RTX_DEFAULT_TARGETS",
    "GpuDescriptor",
    "check_engine_bytes",
    "library_name",
    "library_version",
    "load_trt",
    "local_gpu",
    "make_logger",
    "sidecar_mismatches",
]

LOGGER = logging.getLogger(__name__)

LIBRARIES: tuple[str, str] = ("tensorrt", "tensorrt_rtx")
# Where a TensorRT-RTX engine built without --targets runs (TensorRT-RTX docs, "CPU-only AOT"):
# Ampere and later consumer/data-center parts, but neither Turing (T4) nor Hopper (H100).
RTX_DEFAULT_TARGETS: tuple[str, ...] = ("sm80", "sm86", "sm89", "sm120", "sm121")
_CHOICES = ("auto", *LIBRARIES)
_INSTALL_FIX = (
    "install TensorRT-RTX to build engines on any machine (pip install 'trt-bert-qa-beam[rtx]', i.e. "
    "tensorrt-rtx-cu13), or run in an NGC TensorRT container where `import tensorrt` works"
)
NO_GPU_FIX = (
    "Fix: check and run the engine on a machine with an NVIDIA GPU and driver (a Dataflow worker with "
    "a GPU accelerator; T4, L4, A100 or RTX cards for TensorRT-RTX engines); building needs no GPU, "
    "running does."
)


def load_trt(library: str = "auto") -> ModuleType:
    """The TensorRT module for ``library``: "tensorrt", "tensorrt_rtx", or "auto" (tensorrt if
    importable, else tensorrt_rtx).

    Raises ValueError for an unknown name and ModuleNotFoundError naming what to install.
    """
    if library not in _CHOICES:
        raise ValueError(f"library must be one of {', '.join(_CHOICES)}, got {library!r}")
    names = LIBRARIES if library == "auto" else (library,)
    missing: list[str] = []
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the package is there but something it needs is not
                raise
            missing.append(name)
    raise ModuleNotFoundError(
        f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed "
        f"(library={library!r}); {_INSTALL_FIX}",
        name=missing[0],
    )


def library_name(module: ModuleType) -> str:
    """"tensorrt" or "tensorrt_rtx" for a module returned by :func:`load_trt`."""
    name = module.__name__.split(".")[0]
    if name not in LIBRARIES:
        raise ValueError(f"{module.__name__} is not a TensorRT module; expected one of {LIBRARIES}")
    return name


def library_version(module: ModuleType) -> str:
    """The library's version string, e.g. "10.13.3.9" or "1.7.1.116"."""
    return str(getattr(module, "__version__", "unknown"))


def make_logger(module: ModuleType, *, verbose: bool = False) -> Any:
    """A TensorRT ILogger that forwards to Python logging and keeps error lines in ``.errors``,
    so a failed parse or build can say what TensorRT said."""
    base: Any = module.ILogger

    class CapturingLogger(base):  # type: ignore[misc]
        def __init__(self) -> None:
            base.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = getattr(severity, "name", str(severity))
            if level in ("INTERNAL_ERROR", "ERROR"):
                self.errors.append(msg)
                LOGGER.error("[%s] %s", module.__name__, msg)
            elif level == "WARNING":
                LOGGER.warning("[%s] %s", module.__name__, msg)
            elif verbose:
                LOGGER.info("[%s] %s", module.__name__, msg)

    return CapturingLogger()


# --------------------------------------------------------------------------------------------
# the GPU here


@dataclass(frozen=True)
class GpuDescriptor:
    """A GPU as far as engines care: its name and compute capability (major, minor)."""

    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        """"sm89" for compute capability 8.9: the form ``--targets`` takes."""
        major, minor = self.compute_capability
        return f"sm{major}{minor}"

    def to_dict(self) -> dict[str, str]:
        major, minor = self.compute_capability
        return {"name": self.name, "compute_capability": f"{major}.{minor}", "sm": self.sm}


def local_gpu(index: int = 0) -> GpuDescriptor | None:
    """GPU ``index`` of this machine, or None when cuda-python, the driver or a GPU is missing."""
    from trt_handler import cuda_runtime

    if cuda_runtime.unavailable_reason() is not None:
        return None
    return GpuDescriptor(cuda_runtime.device_name(index), cuda_runtime.compute_capability(index))


def _no_gpu_reason() -> str | None:
    try:
        from trt_handler import cuda_runtime
    except ImportError as exc:  # pragma: no cover - cuda_runtime ships with this package
        return f"cuda_runtime is unavailable ({exc})"
    return cuda_runtime.unavailable_reason()


# --------------------------------------------------------------------------------------------
# can this engine run here?

_DIAGNOSTICS = {
    "MALFORMED_ENGINE": "the data is corrupt, truncated or not an engine. Fix: copy or rebuild the engine file.",
    "VERSION_MISMATCH": (
        "the engine was built with another version of the library. Fix: rebuild it with the installed "
        "version (`python -m trt_handler.build ...`) or install the version it was built with."
    ),
    "UNSUPPORTED_CC": (
        "the engine was not built for this GPU's architecture. Fix: rebuild it with --targets naming "
        "this GPU (TensorRT-RTX: sm75 T4, sm80 A100, sm86, sm89 L4, sm120; not sm90 H100), or build "
        "with TensorRT on this GPU."
    ),
    "OLD_CUDA_DRIVER": "the NVIDIA driver is too old for this engine. Fix: update the driver.",
    "OLD_CUDA_RUNTIME": "the CUDA runtime is too old for this engine. Fix: update CUDA / the container.",
    "INSUFFICIENT_GPU_MEMORY": "the GPU lacks free memory for the engine. Fix: free GPU memory or use a larger GPU.",
    "CUDA_ERROR": "a CUDA call failed while checking it. Fix: check the GPU and driver with nvidia-smi.",
}


def sidecar_mismatches(
    sidecar: Mapping[str, Any], library: str, version: str, gpu: GpuDescriptor | None
) -> list[str]:
    """Sentences for each way a build sidecar (``<engine>.json``) says the engine cannot run here.

    Pure: works from the sidecar and the caller's view of this machine, so it is testable anywhere
    and lets full TensorRT (which has no validity query) fail with a reason before deserializing.
    """
    out: list[str] = []
    built_lib, built_ver = sidecar.get("library"), sidecar.get("library_version")
    if built_lib and built_lib != library:
        out.append(
            f"the engine was built with {built_lib} but {library} is loading it. Fix: load it with "
            f"library={built_lib!r} or rebuild it with --library {library}."
        )
    elif built_ver and built_ver != version:
        out.append(
            f"the engine was built with {built_lib} {built_ver} but {version} is installed. Fix: rebuild "
            f"it with {version} or install {built_ver}."
        )
    if gpu is None:
        return out
    targets = [str(t) for t in sidecar.get("targets") or [] if t != "current"]
    if library == "tensorrt_rtx" and not sidecar.get("targets"):
        targets = list(RTX_DEFAULT_TARGETS)
    built_gpu = sidecar.get("gpu") or {}
    if targets and gpu.sm not in targets:
        out.append(
            f"the engine targets {', '.join(targets)} but this GPU ({gpu.name}) is {gpu.sm}. Fix: rebuild "
            f"with --targets {gpu.sm}"
            + (" (TensorRT-RTX cannot target Hopper; use TensorRT there)." if gpu.sm.startswith("sm9") else ".")
        )
    elif library == "tensorrt" and built_gpu.get("sm") and built_gpu["sm"] != gpu.sm:
        out.append(
            f"the engine was built on {built_gpu.get('name')} ({built_gpu['sm']}) but this GPU is "
            f"{gpu.name} ({gpu.sm}); TensorRT engines run only on the architecture they were built on. "
            "Fix: rebuild it on this GPU (engine_cache.ensure_engine does that)."
        )
    return out


def check_engine_bytes(
    engine_bytes: bytes,
    library: str = "auto",
    *,
    sidecar: Mapping[str, Any] | None = None,
) -> tuple[bool, str]:
    """(ok, reason): whether ``engine_bytes`` can be deserialized here, and if not why and the fix.

    Uses TensorRT-RTX's ``Runtime.get_engine_validity`` where the library has it (its verdict
    decides; the build sidecar, when given, only adds reasons to an INVALID one), else the sidecar
    against this machine; and the CUDA device state. ``ok`` with a non-empty reason means usable
    but worth a look (suboptimal, or the library cannot check).
    """
    if not engine_bytes:
        return False, "the engine data is empty (0 bytes). Fix: rebuild or copy the engine file again."
    try:
        module = load_trt(library)
    except ModuleNotFoundError as exc:
        return False, f"{exc}."
    name, version = library_name(module), library_version(module)
    no_gpu = _no_gpu_reason()
    gpu = None if no_gpu is not None else local_gpu()
    reasons = sidecar_mismatches(sidecar, name, version, gpu) if sidecar else []
    validity = getattr(module.Runtime, "get_engine_validity", None)
    if validity is not None:  # the library's own verdict wins over the sidecar's heuristics
        state, bits = module.Runtime(make_logger(module)).get_engine_validity(engine_bytes)
        state_name = getattr(state, "name", str(state))
        if state_name == "VALID":
            return True, ""
        if state_name == "SUBOPTIMAL":
            return True, f"{name} {version} says the engine runs here but suboptimally; rebuild it for this GPU for full speed."
        members = getattr(getattr(module, "EngineInvalidityDiagnostics", None), "__members__", {})
        reasons += [_DIAGNOSTICS[n] for n, m in members.items() if n in _DIAGNOSTICS and int(bits) & int(m)]
    if no_gpu is not None:
        reasons.append(f"no usable GPU here: {no_gpu}. {NO_GPU_FIX}")
    if reasons:
        return False, f"the engine ({len(engine_bytes)} bytes) cannot run here with {name} {version}: " + " ".join(
            dict.fromkeys(reasons)
        )
    if validity is None:
        return True, f"{name} {version} has no engine validity query; deserialization will tell."
    return False, f"{name} {version} says the engine is invalid here without naming a cause. Fix: rebuild it on this machine."
