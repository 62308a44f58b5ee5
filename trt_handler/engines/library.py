"""Which TensorRT: full TensorRT (``tensorrt``, NGC containers, builds on the GPU it runs on) or
TensorRT-RTX (``tensorrt_rtx``, builds ahead of time on a CPU box), imported only when needed.

The two Python APIs match in shape (Builder, OnnxParser, Runtime, ICudaEngine), so the builder and
the engine session take the module as a value and branch only where the libraries differ. This
module also answers "can this engine run here, and if not, why" before anyone deserializes it
(:func:`engine_validity`, :func:`check_engine_bytes`), because a failed deserialization only says
"returned None". It owns library loading, the TensorRT logger and the validity check; the engine
session (:mod:`trt_handler.engines.session`) turns their findings into its errors.

Nothing heavy is imported at module level: ``import trt_handler.engines.library`` needs only the standard
library; ``cuda.bindings`` is reached through :mod:`trt_handler.engines.cuda_runtime`, lazily.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

__all__ = [
    "INSTALL_FIX",
    "LIBRARIES",
    "NO_GPU_FIX",
    "RTX_DEFAULT_TARGETS",
    "Finding",
    "GpuDescriptor",
    "TensorRTMissingError",
    "check_engine_bytes",
    "engine_validity",
    "library_name",
    "library_version",
    "load_trt",
    "local_gpu",
    "make_logger",
    "sidecar_findings",
    "sidecar_mismatches",
]

LOGGER = logging.getLogger(__name__)

LIBRARIES: tuple[str, str] = ("tensorrt", "tensorrt_rtx")
# Where a TensorRT-RTX engine built without --targets runs (TensorRT-RTX docs, "CPU-only AOT"):
# Ampere and later consumer/data-center parts, but neither Turing (T4) nor Hopper (H100).
RTX_DEFAULT_TARGETS: tuple[str, ...] = ("sm80", "sm86", "sm89", "sm120", "sm121")
_CHOICES = ("auto", *LIBRARIES)
# The fixes, each one sentence without the leading "Fix: ", shared by every message that needs them.
INSTALL_FIX = (
    "run in an NGC TensorRT container such as this project's worker image (container/), or install "
    "TensorRT's Python package (`pip install tensorrt`), or TensorRT-RTX, which also builds engines on "
    "machines without a GPU (`pip install 'trt-bert-qa-beam[rtx]'`, i.e. tensorrt-rtx-cu13)."
)
NO_GPU_FIX = (
    "check and run the engine on a machine with an NVIDIA GPU and driver (on Dataflow, a worker with a "
    "GPU accelerator and install-nvidia-driver; T4, L4, A100 or RTX cards for TensorRT-RTX engines), or "
    "use the ONNX Runtime backend; building needs no GPU, running does."
)


class TensorRTMissingError(ModuleNotFoundError):
    """No module of ``missing`` (TensorRT library names) can be imported for ``library``."""

    def __init__(self, missing: tuple[str, ...], library: str) -> None:
        self.missing = missing
        self.library = library
        verb = "is" if len(missing) == 1 else "are"
        super().__init__(
            f"{' and '.join(missing)} {verb} not installed (library={library!r}). Fix: {INSTALL_FIX}", name=missing[0]
        )

    def __reduce__(self) -> tuple[Any, ...]:  # custom __init__ args: keep it picklable
        return (TensorRTMissingError, (self.missing, self.library))


def load_trt(library: str = "auto") -> ModuleType:
    """The TensorRT module for ``library``: "tensorrt", "tensorrt_rtx", or "auto" (tensorrt if
    importable, else tensorrt_rtx).

    Raises ValueError for an unknown name and :class:`TensorRTMissingError` (a ModuleNotFoundError)
    naming what to install; a library that is there but cannot import what it needs raises the
    original ModuleNotFoundError.
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
    raise TensorRTMissingError(tuple(missing), library)


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
    so a failed parse, build or deserialization can say what TensorRT said. Info and verbose
    messages go to the debug level, or to info with ``verbose``."""
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
            else:
                LOGGER.log(logging.INFO if verbose else logging.DEBUG, "[%s] %s", module.__name__, msg)

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
    from trt_handler.engines import cuda_runtime

    if cuda_runtime.unavailable_reason() is not None:
        return None
    return GpuDescriptor(cuda_runtime.device_name(index), cuda_runtime.compute_capability(index))


def _no_gpu_reason() -> str | None:
    try:
        from trt_handler.engines import cuda_runtime
    except ImportError as exc:  # pragma: no cover - cuda_runtime ships with this package
        return f"cuda_runtime is unavailable ({exc})"
    return cuda_runtime.unavailable_reason()


# --------------------------------------------------------------------------------------------
# can this engine run here?


class Finding(NamedTuple):
    """One reason an engine cannot run here.

    ``cause`` is a key of :class:`trt_handler.engines.session.EngineCompatibilityError` (``malformed``,
    ``version``, ``gpu_arch``, ``driver``, ``no_gpu``, ``memory``, ``unknown``); ``sentence`` says
    what is wrong, ``fix`` what to do about it (one sentence each, no final period on ``sentence``).
    """

    cause: str
    sentence: str
    fix: str

    @property
    def text(self) -> str:
        """The finding as one message: "<sentence>. Fix: <fix>"."""
        return f"{self.sentence}. Fix: {self.fix}"


_REBUILD_HERE = "rebuild it on this machine."
_COPY_OR_REBUILD = "copy or rebuild the engine file."
# TensorRT-RTX's EngineInvalidityDiagnostics bits -> what they mean.
_DIAGNOSTICS = {
    "MALFORMED_ENGINE": Finding(
        "malformed", "the engine data is corrupt, truncated or not a TensorRT engine", _COPY_OR_REBUILD
    ),
    "VERSION_MISMATCH": Finding(
        "version",
        "the engine was built with another TensorRT version",
        "rebuild it with the installed version (`python -m trt_handler.engines.build ...`) or install the version it "
        "was built with.",
    ),
    "UNSUPPORTED_CC": Finding(
        "gpu_arch",
        "the engine was built for another GPU architecture",
        "rebuild it with --targets naming this GPU (TensorRT-RTX: sm75 T4, sm80 A100, sm86, sm89 L4, sm120; "
        "not sm90 H100), or build with TensorRT on this GPU.",
    ),
    "OLD_CUDA_DRIVER": Finding("driver", "the NVIDIA driver is older than the engine needs", "update the driver."),
    "OLD_CUDA_RUNTIME": Finding(
        "driver", "the CUDA runtime is older than the engine needs", "update CUDA / the container."
    ),
    "INSUFFICIENT_GPU_MEMORY": Finding(
        "memory", "the GPU does not have enough free memory for the engine", "free GPU memory or use a larger GPU."
    ),
    "CUDA_ERROR": Finding(
        "no_gpu",
        "CUDA failed while checking the engine (no usable GPU or driver?)",
        "check the GPU and driver with nvidia-smi.",
    ),
}


def engine_validity(module: Any, runtime: Any, data: bytes) -> tuple[str, list[Finding]]:
    """(state, findings) for ``data`` before deserializing it with ``runtime`` (a ``module.Runtime``,
    or None to check only what needs no runtime).

    ``state`` is "VALID" or "SUBOPTIMAL" (the engine runs here), "INVALID" (``findings`` say why:
    empty data, shorter than the engine header, TensorRT-RTX's diagnostic bits, or a failing check)
    or "UNCHECKED" (the library has no validity query: TensorRT proper; deserialization will tell).
    Works without a GPU, which lets a message name a corrupt file even there.
    """
    if not data:
        return "INVALID", [Finding("malformed", "the engine data is empty (0 bytes)", "rebuild or copy the engine file again.")]
    header = int(getattr(runtime, "engine_header_size", 0) or 0)
    if header and len(data) < header:
        sentence = f"the engine data is {len(data)} bytes, shorter than an engine header ({header})"
        return "INVALID", [Finding("malformed", sentence, _COPY_OR_REBUILD)]
    validity = getattr(runtime, "get_engine_validity", None)
    if validity is None:
        return "UNCHECKED", []
    try:
        state, bits = validity(data)
    except Exception as exc:  # noqa: BLE001 - a failing check is itself a finding
        return "INVALID", [Finding("unknown", f"the engine validity check failed ({exc})", _REBUILD_HERE)]
    state_name = getattr(state, "name", str(state)).rsplit(".", 1)[-1].upper()
    if state_name in ("VALID", "SUBOPTIMAL"):
        return state_name, []
    members = getattr(getattr(module, "EngineInvalidityDiagnostics", None), "__members__", {})
    found = [_DIAGNOSTICS[n] for n, m in members.items() if n in _DIAGNOSTICS and int(bits) & int(m)]
    if not found:
        label = f"{library_name(module)} {library_version(module)}"
        found = [Finding("unknown", f"{label} says the engine is invalid here without naming a cause", _REBUILD_HERE)]
    return "INVALID", found


def sidecar_findings(
    sidecar: Mapping[str, Any], library: str, version: str, gpu: GpuDescriptor | None
) -> list[Finding]:
    """Each way a build sidecar (``<engine>.json``) says the engine cannot run here.

    Pure: works from the sidecar and the caller's view of this machine, so it is testable anywhere
    and lets full TensorRT (which has no validity query) fail with a reason before deserializing.
    """
    out: list[Finding] = []
    built_lib, built_ver = sidecar.get("library"), sidecar.get("library_version")
    if built_lib and built_lib != library:
        out.append(Finding(
            "version",
            f"the engine was built with {built_lib} but {library} is loading it",
            f"load it with library={built_lib!r} or rebuild it with --library {library}.",
        ))
    elif built_ver and built_ver != version:
        out.append(Finding(
            "version",
            f"the engine was built with {built_lib} {built_ver} but {version} is installed",
            f"rebuild it with {version} or install {built_ver}.",
        ))
    if gpu is None:
        return out
    targets = [str(t) for t in sidecar.get("targets") or [] if t != "current"]
    if library == "tensorrt_rtx" and not sidecar.get("targets"):
        targets = list(RTX_DEFAULT_TARGETS)
    built_gpu = sidecar.get("gpu") or {}
    if targets and gpu.sm not in targets:
        hopper = " (TensorRT-RTX cannot target Hopper; use TensorRT there)." if gpu.sm.startswith("sm9") else "."
        out.append(Finding(
            "gpu_arch",
            f"the engine targets {', '.join(targets)} but this GPU ({gpu.name}) is {gpu.sm}",
            f"rebuild with --targets {gpu.sm}{hopper}",
        ))
    elif library == "tensorrt" and built_gpu.get("sm") and built_gpu["sm"] != gpu.sm:
        out.append(Finding(
            "gpu_arch",
            f"the engine was built on {built_gpu.get('name')} ({built_gpu['sm']}) but this GPU is "
            f"{gpu.name} ({gpu.sm}); TensorRT engines run only on the architecture they were built on",
            "rebuild it on this GPU (engine_cache.ensure_engine does that).",
        ))
    return out


def sidecar_mismatches(
    sidecar: Mapping[str, Any], library: str, version: str, gpu: GpuDescriptor | None
) -> list[str]:
    """:func:`sidecar_findings` as sentences, each naming its fix."""
    return [f.text for f in sidecar_findings(sidecar, library, version, gpu)]


def check_engine_bytes(
    engine_bytes: bytes,
    library: str = "auto",
    *,
    sidecar: Mapping[str, Any] | None = None,
) -> tuple[bool, str]:
    """(ok, reason): whether ``engine_bytes`` can be deserialized here, and if not why and the fix.

    Uses :func:`engine_validity` (TensorRT-RTX's ``Runtime.get_engine_validity`` where the library
    has it: its verdict decides; the build sidecar, when given, only adds reasons to an INVALID
    one), else the sidecar against this machine; and the CUDA device state. ``ok`` with a non-empty
    reason means usable but worth a look (suboptimal, or the library cannot check).
    """
    if not engine_bytes:
        return False, engine_validity(None, None, engine_bytes)[1][0].text
    try:
        module = load_trt(library)
    except ModuleNotFoundError as exc:
        return False, f"{str(exc).rstrip('.')}."
    name, version = library_name(module), library_version(module)
    no_gpu = _no_gpu_reason()
    gpu = None if no_gpu is not None else local_gpu()
    reasons = sidecar_mismatches(sidecar, name, version, gpu) if sidecar else []
    has_validity = getattr(module.Runtime, "get_engine_validity", None) is not None
    # Without a validity query, only the header size can be checked, which needs no runtime.
    runtime = module.Runtime(make_logger(module)) if has_validity else None
    state, findings = engine_validity(module, runtime, engine_bytes)
    if state == "VALID":
        return True, ""
    if state == "SUBOPTIMAL":
        return True, f"{name} {version} says the engine runs here but suboptimally; rebuild it for this GPU for full speed."
    reasons += [f.text for f in findings if f.cause != "unknown"]  # "unknown": only when nothing else explains it
    if no_gpu is not None:
        reasons.append(f"no usable GPU here: {no_gpu}. Fix: {NO_GPU_FIX}")
    if reasons:
        return False, f"the engine ({len(engine_bytes)} bytes) cannot run here with {name} {version}: " + " ".join(
            dict.fromkeys(reasons)
        )
    if state == "UNCHECKED":
        return True, f"{name} {version} has no engine validity query; deserialization will tell."
    return False, findings[0].text
