"""Which TensorRT: full TensorRT (``tensorrt``, NGC containers, builds on the GPU it runs on) or
TensorRT-RTX (``tensorrt_rtx``, builds ahead of time on a CPU box), imported only when needed; and
for running only, TensorRT's lean runtime (``tensorrt_lean``: PyPI tensorrt-lean-cu12-bindings,
module ``tensorrt_lean_bindings``), which loads engines built version-compatible by full TensorRT.

The two Python APIs match in shape (Builder, OnnxParser, Runtime, ICudaEngine), so the builder and
the engine session take the module as a value and branch only where the libraries differ. This
module also answers "can this engine run here, and if not, why" before anyone deserializes it
(:func:`engine_validity`, :func:`check_engine_bytes`), because a failed deserialization only says
"returned None". It owns library loading, the TensorRT logger and the validity check; the engine
session (:mod:`trt_handler.engines.session`) turns their findings into its errors.

Nothing heavy is imported at module level: ``import trt_handler.engines.library`` needs only the standard
library; ``cuda.bindings`` is reached through :mod:`trt_handler.engines.cuda_runtime`, lazily.

Diagnosis lives here too: :class:`EngineCompatibilityError` (cause + fix), :func:`load_library`
(load_trt that raises it), :func:`diagnose` (every finding before deserializing, from the
validity query or the sidecar) and :func:`compatibility_error` (findings -> one error).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

__all__ = [
    "INSTALL_FIX",
    "LIBRARIES",
    "NO_GPU_FIX",
    "REBUILD_FIX",
    "RUNTIME_LIBRARIES",
    "EngineCompatibilityError",
    "compatibility_error",
    "diagnose",
    "findings_from_log",
    "library_label",
    "load_library",
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
# Libraries that can run (deserialize) engines; the lean runtime cannot build.
RUNTIME_LIBRARIES: tuple[str, ...] = (*LIBRARIES, "tensorrt_lean")
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
_CHOICES = ("auto", *RUNTIME_LIBRARIES)
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
    """The TensorRT module for ``library``: "tensorrt", "tensorrt_rtx", "tensorrt_lean" (the lean
    runtime: runs version-compatible engines, builds nothing), or "auto" (tensorrt if importable,
    else tensorrt_rtx).

    Raises ValueError for an unknown name and :class:`TensorRTMissingError` (a ModuleNotFoundError)
    naming what to install; a library that is there but cannot import what it needs raises the
    original ModuleNotFoundError.
    """
    if library not in _CHOICES:
        raise ValueError(f"library must be one of {', '.join(_CHOICES)}, got {library!r}")
    names = LIBRARIES if library == "auto" else (library,)
    missing: list[str] = []
    for name in names:
        for module in _MODULES[name]:
            try:
                return importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:  # the package is there but something it needs is not
                    raise
        missing.append(name)
    raise TensorRTMissingError(tuple(missing), library)


def library_name(module: ModuleType) -> str:
    """"tensorrt", "tensorrt_rtx" or "tensorrt_lean" for a module returned by :func:`load_trt`."""
    name = module.__name__.split(".")[0]
    for library, modules in _MODULES.items():
        if name in modules:
            return library
    raise ValueError(f"{module.__name__} is not a TensorRT module; expected one of {RUNTIME_LIBRARIES}")


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
    if gpu is None or library == "tensorrt_lean":  # version-compatible engines are still per-GPU, see below
        if library == "tensorrt_lean" and gpu is not None:
            out += _built_gpu_findings(sidecar, gpu)
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
    elif library == "tensorrt" and built_gpu.get("sm"):
        out += _built_gpu_findings(sidecar, gpu)
    return out


def _built_gpu_findings(sidecar: Mapping[str, Any], gpu: GpuDescriptor) -> list[Finding]:
    built_gpu = sidecar.get("gpu") or {}
    if not built_gpu.get("sm") or built_gpu["sm"] == gpu.sm:
        return []
    return [Finding(
        "gpu_arch",
        f"the engine was built on {built_gpu.get('name')} ({built_gpu['sm']}) but this GPU is "
        f"{gpu.name} ({gpu.sm}); TensorRT engines run only on the architecture they were built on",
        "rebuild it on this GPU (engine_cache.ensure_engine does that).",
    )]


def _version_tuple(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in str(text).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _lean_findings(sidecar: Mapping[str, Any], version: str) -> list[Finding]:
    """Why the lean runtime ``version`` cannot load the engine the sidecar describes.

    The lean runtime loads only engines full TensorRT built with VERSION_COMPATIBLE (this
    project's ``--version-compatible``, which also sets EXCLUDE_LEAN_RUNTIME), with the same
    TensorRT major version and a version no newer than the runtime's.
    """
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
    built, runtime = _version_tuple(built_ver), _version_tuple(version)
    if built and runtime and (built[0] != runtime[0] or runtime < built):
        return [Finding(
            "version",
            f"the engine was built with TensorRT {built_ver}; the lean runtime {version} runs version-compatible "
            "engines of its own major version that are no newer than itself",
            f"install tensorrt-lean {built_ver.split('.')[0]}.x at least {built_ver}, or rebuild the engine.",
        )]
    return []


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


# --------------------------------------------------------------------------------------------
# diagnosis: findings -> one error with cause and fix

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


class EngineCompatibilityError(RuntimeError):
    """The engine cannot run here; the message names the cause and the fix.

    ``cause`` is a short key: ``no_tensorrt``, ``malformed`` (corrupt, truncated or not an engine),
    ``version`` (other TensorRT version), ``gpu_arch`` (built for another GPU), ``driver``,
    ``no_gpu``, ``memory``, ``io`` (wrong inputs/outputs) or ``unknown``.
    """

    def __init__(self, cause: str, detail: str, fix: str | None = None) -> None:
        self.cause = cause
        self.detail = detail
        self.fix = fix if fix is not None else _FIXES.get(cause, REBUILD_FIX)
        super().__init__(f"{detail} Fix: {self.fix}")

    def __reduce__(self) -> tuple[Any, ...]:  # custom __init__ args: keep it picklable for Beam
        return (EngineCompatibilityError, (self.cause, self.detail, self.fix))


def load_library(library: str) -> Any:
    """:func:`load_trt` for running engines: raises EngineCompatibilityError (cause ``no_tensorrt``)
    naming what could not be imported."""
    try:
        return load_trt(library)
    except TensorRTMissingError as exc:
        missing = " and ".join(exc.missing)
        raise EngineCompatibilityError(
            "no_tensorrt", f"TensorRT is not installed for library={library!r} ({missing} cannot be imported)."
        ) from exc
    except ImportError as exc:  # the library is there but something it needs is not
        raise EngineCompatibilityError("no_tensorrt", f"TensorRT is not installed for library={library!r} ({exc}).") from exc


def library_label(module: Any) -> str:
    """"tensorrt_rtx 1.7.1.116": the module's name and version, for messages."""
    return f"{getattr(module, '__name__', 'tensorrt')} {getattr(module, '__version__', '?')}"


def _gpu_label() -> str:
    """"NVIDIA H100 80GB HBM3 (sm_90)" or the reason there is no GPU."""
    from trt_handler.engines import cuda_runtime

    reason = cuda_runtime.unavailable_reason()
    if reason is not None:
        return f"no GPU ({reason})"
    try:
        major, minor = cuda_runtime.compute_capability()
        return f"{cuda_runtime.device_name()} (sm_{major}{minor})"
    except cuda_runtime.CudaError as exc:
        return f"a GPU that cannot be queried ({exc})"


def diagnose(module: Any, runtime: Any, data: bytes, sidecar: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(cause, sentence) pairs for why ``data`` cannot be deserialized; [] when no check finds a problem.

    :func:`engine_validity` decides where the library can check (TensorRT-RTX); where it cannot
    (TensorRT proper, the lean runtime), the build sidecar's view (library, version, target GPUs,
    version compatibility) stands in.
    """
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
    ("gpu_arch", ("incompatible device", "expecting compute", "compute capability", "unsupported_cc", "sm version", "architecture")),
    ("driver", ("driver is too old", "runtime is too old")),
    ("no_gpu", ("cudaerror 35", "cudaerror 100", "driver version is insufficient", "no cuda-capable device")),
    ("memory", ("out of memory", "cudaerror 2:")),
)


def findings_from_log(logger: Any) -> list[tuple[str, str]]:
    """Findings from the TensorRT errors a :func:`make_logger` logger holds (then forgotten): causes
    guessed from the text."""
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
