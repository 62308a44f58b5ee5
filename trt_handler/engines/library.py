"""Which TensorRT, and can this engine run here.

Libraries: ``tensorrt``, ``tensorrt_rtx`` (builds on a CPU box) and the run-only lean runtime
``tensorrt_lean`` (engines full TensorRT built version-compatible); callers take the module as a value.
A failed deserialization only says "returned None", so this module says why beforehand, as one
:class:`EngineCompatibilityError` (cause + fix). Nothing heavy is imported here.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

__all__ = [
    "LIBRARIES",
    "REBUILD_FIX",
    "EngineCompatibilityError",
    "GpuDescriptor",
    "check_engine_bytes",
    "compatibility_error",
    "diagnose",
    "engine_validity",
    "findings_from_log",
    "library_label",
    "library_name",
    "library_version",
    "load_library",
    "load_trt",
    "local_gpu",
    "make_logger",
    "sidecar_findings",
    "sidecar_mismatches",
]

LOGGER = logging.getLogger(__name__)

LIBRARIES: tuple[str, str] = ("tensorrt", "tensorrt_rtx")
# Module names each library may import as, first found wins (the lean bindings wheel installs
# ``tensorrt_lean_bindings``; NVIDIA's ``tensorrt_lean`` wrapper re-exports it).
_MODULES: dict[str, tuple[str, ...]] = {
    "tensorrt": ("tensorrt",),
    "tensorrt_rtx": ("tensorrt_rtx",),
    "tensorrt_lean": ("tensorrt_lean", "tensorrt_lean_bindings"),
}
# Where a TensorRT-RTX engine built without --targets runs (TensorRT-RTX docs, "CPU-only AOT"):
# Ampere and later consumer/data-center parts, but neither Turing (T4) nor Hopper (H100).
RTX_DEFAULT_TARGETS: tuple[str, ...] = ("sm80", "sm86", "sm89", "sm120", "sm121")
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
REBUILD_FIX = (
    "rebuild the engine for this GPU and TensorRT version with `make engine` on a machine like "
    "this one, or pass the ONNX model to the handler so it builds a matching engine automatically."
)
IO_FIX = (
    "build the engine from this project's ONNX export (`make onnx` then `make engine`), whose "
    "inputs are int32 [batch, seq] input_ids/attention_mask/token_type_ids and outputs float32 "
    "[batch, seq] start_logits/end_logits."
)
_FIXES = {"no_gpu": NO_GPU_FIX, "no_tensorrt": INSTALL_FIX, "io": IO_FIX}
# Causes in the order a message reports them: the first is the one to fix first.
_CAUSE_ORDER = ("no_tensorrt", "malformed", "version", "gpu_arch", "driver", "no_gpu", "memory", "io", "unknown")


def load_trt(library: str = "auto") -> ModuleType:
    """The TensorRT module for "tensorrt", "tensorrt_rtx", "tensorrt_lean" or "auto" (tensorrt, else tensorrt_rtx).

    Raises ValueError for an unknown name, ModuleNotFoundError naming what to install (``name``: the
    libraries tried) or, for a library there that cannot import what it needs, the original error."""
    if library != "auto" and library not in _MODULES:
        raise ValueError(f"library must be one of auto, {', '.join(_MODULES)}, got {library!r}")
    names = LIBRARIES if library == "auto" else (library,)
    for name in names:
        for module in _MODULES[name]:
            try:
                return importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:  # the package is there but something it needs is not
                    raise
    verb = "is" if len(names) == 1 else "are"
    missing = " and ".join(names)
    raise ModuleNotFoundError(f"{missing} {verb} not installed (library={library!r}). Fix: {INSTALL_FIX}", name=missing)


def library_name(module: ModuleType) -> str:
    """"tensorrt", "tensorrt_rtx" or "tensorrt_lean" for a module returned by :func:`load_trt`."""
    name = module.__name__.split(".")[0]
    for library, modules in _MODULES.items():
        if name in modules:
            return library
    raise ValueError(f"{module.__name__} is not a TensorRT module; expected one of {tuple(_MODULES)}")


def library_version(module: ModuleType) -> str:
    """The library's version string, e.g. "10.13.3.9" or "1.7.1.116"."""
    return str(getattr(module, "__version__", "unknown"))


def library_label(module: ModuleType) -> str:
    """"tensorrt_rtx 1.7.1.116": the module's name and version, for messages."""
    return f"{module.__name__} {library_version(module)}"


_LOG_LEVELS = {"INTERNAL_ERROR": logging.ERROR, "ERROR": logging.ERROR, "WARNING": logging.WARNING}


def make_logger(module: ModuleType, *, verbose: bool = False) -> Any:
    """A TensorRT ILogger that forwards to Python logging (info and verbose at debug level, or info
    with ``verbose``) and keeps error lines in ``.errors``, so a failure can say what TensorRT said."""
    base: Any = module.ILogger

    class CapturingLogger(base):  # type: ignore[misc]
        def __init__(self) -> None:
            base.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity))
            level = _LOG_LEVELS.get(name, logging.INFO if verbose else logging.DEBUG)
            if level == logging.ERROR:
                self.errors.append(msg)
            LOGGER.log(level, "[%s] %s", module.__name__, msg)

    return CapturingLogger()


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
        return {"name": self.name, "compute_capability": "{}.{}".format(*self.compute_capability), "sm": self.sm}


def local_gpu(index: int = 0) -> GpuDescriptor | None:
    """GPU ``index`` of this machine, or None when cuda-python, the driver or a GPU is missing."""
    from trt_handler.engines import cuda_runtime

    if cuda_runtime.unavailable_reason() is not None:
        return None
    return GpuDescriptor(cuda_runtime.device_name(index), cuda_runtime.compute_capability(index))


class Finding(NamedTuple):
    """One reason an engine cannot run here: a cause key, what is wrong (no final period), the fix."""

    cause: str
    sentence: str
    fix: str

    @property
    def text(self) -> str:
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
    """(state, findings) for ``data`` before deserializing it with ``runtime`` (None: no runtime checks); no GPU needed.

    ``state``: "VALID" or "SUBOPTIMAL" (runs here), "INVALID" (``findings`` say why) or "UNCHECKED"
    (no validity query, as in TensorRT proper: deserialization will tell).
    """
    if not data:
        return "INVALID", [Finding("malformed", "the engine data is empty (0 bytes)", _COPY_OR_REBUILD)]
    header = int(getattr(runtime, "engine_header_size", 0) or 0)
    if header and len(data) < header:
        sentence = f"the engine data is {len(data)} bytes, shorter than an engine header ({header})"
        return "INVALID", [Finding("malformed", sentence, _COPY_OR_REBUILD)]
    validity = getattr(runtime, "get_engine_validity", None)
    if validity is None:
        return "UNCHECKED", []
    try:
        state, bits = validity(data)
    except Exception as exc:  # a failing check is itself a finding
        return "INVALID", [Finding("unknown", f"the engine validity check failed ({exc})", _REBUILD_HERE)]
    state_name = getattr(state, "name", str(state)).rsplit(".", 1)[-1].upper()
    if state_name in ("VALID", "SUBOPTIMAL"):
        return state_name, []
    members = getattr(getattr(module, "EngineInvalidityDiagnostics", None), "__members__", {})
    found = [_DIAGNOSTICS[n] for n, m in members.items() if n in _DIAGNOSTICS and int(bits) & int(m)]
    if not found:
        sentence = f"{library_label(module)} says the engine is invalid here without naming a cause"
        found = [Finding("unknown", sentence, _REBUILD_HERE)]
    return "INVALID", found


def sidecar_findings(
    sidecar: Mapping[str, Any], library: str, version: str, gpu: GpuDescriptor | None
) -> list[Finding]:
    """Each way a build sidecar (``<engine>.json``) says the engine cannot run here with ``library``
    ``version`` on ``gpu``. Pure, so full TensorRT (no validity query) can fail with a reason early."""
    built_lib, built_ver = sidecar.get("library"), sidecar.get("library_version")
    out: list[Finding] = []
    if library == "tensorrt_lean":
        out += _lean_findings(sidecar, version)
    elif built_lib and built_lib != library:
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
    if library != "tensorrt_lean" and targets and gpu.sm not in targets:
        hopper = " (TensorRT-RTX cannot target Hopper; use TensorRT there)." if gpu.sm.startswith("sm9") else "."
        out.append(Finding(
            "gpu_arch",
            f"the engine targets {', '.join(targets)} but this GPU ({gpu.name}) is {gpu.sm}",
            f"rebuild with --targets {gpu.sm}{hopper}",
        ))
    elif library in ("tensorrt", "tensorrt_lean") and built_gpu.get("sm") and built_gpu["sm"] != gpu.sm:
        out.append(Finding(  # full TensorRT engines, version-compatible ones too, run only where they were built
            "gpu_arch",
            f"the engine was built on {built_gpu.get('name')} ({built_gpu['sm']}) but this GPU is "
            f"{gpu.name} ({gpu.sm}); TensorRT engines run only on the architecture they were built on",
            "rebuild it on this GPU (engine_cache.ensure_engine does that).",
        ))
    return out


def _lean_findings(sidecar: Mapping[str, Any], version: str) -> list[Finding]:
    """Why the lean runtime ``version`` cannot load the engine: it loads only engines full TensorRT
    built VERSION_COMPATIBLE (``--version-compatible``), of its own major version and no newer."""
    built_lib, built_ver = sidecar.get("library"), str(sidecar.get("library_version") or "")
    if built_lib and built_lib != "tensorrt":
        return [Finding(
            "version",
            f"the engine was built with {built_lib}, and the TensorRT lean runtime loads only engines full "
            "TensorRT built version-compatible",
            f"load it with library={built_lib!r}, or rebuild it with full TensorRT and --version-compatible.",
        )]
    if not sidecar.get("version_compatible"):
        return [Finding(
            "version",
            "the engine was not built version-compatible, so the TensorRT lean runtime cannot load it",
            "rebuild it with full TensorRT and `--version-compatible`, or load it with library='tensorrt'.",
        )]
    built = tuple(int(n) for n in re.findall(r"\d+", built_ver))
    runtime = tuple(int(n) for n in re.findall(r"\d+", version))
    if built and runtime and (built[0] != runtime[0] or runtime < built):
        return [Finding(
            "version",
            f"the engine was built with TensorRT {built_ver}; the lean runtime {version} runs version-compatible "
            "engines of its own major version that are no newer than itself",
            f"install tensorrt-lean {built_ver.split('.')[0]}.x at least {built_ver}, or rebuild the engine.",
        )]
    return []


def sidecar_mismatches(sidecar: Mapping[str, Any], library: str, version: str, gpu: GpuDescriptor | None) -> list[str]:
    """:func:`sidecar_findings` as sentences, each naming its fix."""
    return [f.text for f in sidecar_findings(sidecar, library, version, gpu)]


def check_engine_bytes(
    engine_bytes: bytes, library: str = "auto", *, sidecar: Mapping[str, Any] | None = None
) -> tuple[bool, str]:
    """(ok, reason): whether ``engine_bytes`` can be deserialized here, and if not why and the fix.

    The library's validity query decides where it has one (the sidecar only adds reasons to INVALID);
    ``ok`` with a reason means usable but worth a look (suboptimal, or the library cannot check).
    """
    try:
        module = load_trt(library)
    except ModuleNotFoundError as exc:
        return False, f"{str(exc).rstrip('.')}."
    from trt_handler.engines import cuda_runtime

    name, version = library_name(module), library_version(module)
    no_gpu = cuda_runtime.unavailable_reason()
    gpu = None if no_gpu is not None else local_gpu()
    reasons = sidecar_mismatches(sidecar, name, version, gpu) if sidecar else []
    has_validity = getattr(module.Runtime, "get_engine_validity", None) is not None
    # Without a validity query, only the header size can be checked, which needs no runtime.
    runtime = module.Runtime(make_logger(module)) if has_validity else None
    state, findings = engine_validity(module, runtime, engine_bytes)
    if state == "VALID":
        return True, ""
    if state == "SUBOPTIMAL":
        return True, (f"{name} {version} says the engine runs here but suboptimally; "
                     "rebuild it for this GPU for full speed.")
    reasons += [f.text for f in findings if f.cause != "unknown"]  # "unknown": only when nothing else explains it
    if no_gpu is not None:
        reasons.append(f"no usable GPU here: {no_gpu}. Fix: {NO_GPU_FIX}")
    if reasons:
        said = " ".join(dict.fromkeys(reasons))
        return False, f"the engine ({len(engine_bytes)} bytes) cannot run here with {name} {version}: {said}"
    if state == "UNCHECKED":
        return True, f"{name} {version} has no engine validity query; deserialization will tell."
    return False, findings[0].text


class EngineCompatibilityError(RuntimeError):
    """The engine cannot run here; the message names the cause and the fix. ``cause``: ``no_tensorrt``,
    ``malformed``, ``version``, ``gpu_arch``, ``driver``, ``no_gpu``, ``memory``, ``io`` or ``unknown``."""

    def __init__(self, cause: str, detail: str, fix: str | None = None) -> None:
        self.cause = cause
        self.detail = detail
        self.fix = fix if fix is not None else _FIXES.get(cause, REBUILD_FIX)
        super().__init__(f"{detail} Fix: {self.fix}")

    def __reduce__(self) -> tuple[Any, ...]:  # custom __init__ args: keep it picklable for Beam
        return (EngineCompatibilityError, (self.cause, self.detail, self.fix))


def load_library(library: str) -> Any:
    """:func:`load_trt`, raising EngineCompatibilityError (cause ``no_tensorrt``) instead of ImportError."""
    try:
        return load_trt(library)
    except ImportError as exc:  # not installed, or installed without something it needs
        detail = f"TensorRT is not installed for library={library!r} ({exc.name or exc} cannot be imported)."
        raise EngineCompatibilityError("no_tensorrt", detail) from exc


def _gpu_label() -> str:
    """"NVIDIA H100 80GB HBM3 (sm90)" or the reason there is no GPU."""
    from trt_handler.engines import cuda_runtime

    try:
        gpu = local_gpu()
    except cuda_runtime.CudaError as exc:
        return f"a GPU that cannot be queried ({exc})"
    return f"{gpu.name} ({gpu.sm})" if gpu else f"no GPU ({cuda_runtime.unavailable_reason()})"


def diagnose(module: Any, runtime: Any, data: bytes, sidecar: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(cause, sentence) pairs for why ``data`` cannot be deserialized ([]: none found); the build
    sidecar stands in where the library has no validity query (TensorRT proper, the lean runtime)."""
    state, findings = engine_validity(module, runtime, data)
    if state == "SUBOPTIMAL":
        LOGGER.warning("TensorRT says the engine is valid but suboptimal for this GPU; consider rebuilding it here")
    if state != "UNCHECKED":
        return [(f.cause, f.sentence) for f in findings]
    if sidecar:
        mismatches = sidecar_findings(sidecar, library_name(module), library_version(module), local_gpu())
        if mismatches:
            return [(f.cause, f.text) for f in mismatches]
    LOGGER.warning("%s has no engine validity query; deserialization will tell.", library_label(module))
    return []


# Causes guessed from TensorRT's log lines.
_LOG_CAUSES = (
    ("malformed", ("magictag", "magic tag", "truncated", "corrupt", "not a trt engine", "serialization assertion")),
    ("version", ("library version", "version mismatch", "plan file is not compatible", "serialization version")),
    ("gpu_arch", ("incompatible device", "expecting compute", "compute capability", "unsupported_cc", "sm version",
                  "architecture")),
    ("driver", ("driver is too old", "runtime is too old")),
    ("no_gpu", ("cudaerror 35", "cudaerror 100", "driver version is insufficient", "no cuda-capable device")),
    ("memory", ("out of memory", "cudaerror 2:")),
)


def findings_from_log(logger: Any) -> list[tuple[str, str]]:
    """(cause, sentence) from a :func:`make_logger` logger's errors (then forgotten), causes guessed from the text."""
    errors: list[str] = list(getattr(logger, "errors", []))
    if not errors:
        return []
    logger.errors.clear()
    said = "TensorRT says: " + " | ".join(e.strip().rstrip(".") for e in errors[-3:])
    text = " ".join(errors).lower()
    causes = [cause for cause, needles in _LOG_CAUSES if any(n in text for n in needles)]
    return [(cause, said) for cause in causes or ["unknown"]]


def compatibility_error(findings: Sequence[tuple[str, str]], data: bytes, module: Any) -> EngineCompatibilityError:
    """One error naming every cause found, ordered so the first is the one to fix first."""
    causes = sorted({c for c, _ in findings}, key=_CAUSE_ORDER.index) or ["unknown"]
    sentences = "; ".join(dict.fromkeys(s for _, s in findings if s)) or "TensorRT cannot load it here"
    detail = (
        f"cannot load the TensorRT engine ({len(data)} bytes) with {library_label(module)} on "
        f"{_gpu_label()}: {sentences}."
    )
    fix = " Also: ".join(dict.fromkeys(_FIXES.get(c, REBUILD_FIX) for c in causes))
    return EngineCompatibilityError(causes[0], detail, fix)
