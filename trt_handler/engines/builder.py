"""ONNX -> serialized TensorRT / TensorRT-RTX engine, with a JSON sidecar that says what was built.

``tensorrt_rtx`` builds ahead of time anywhere, for ``targets``; ``tensorrt`` (>= 10) on the GPU it runs on.
Precision comes from the network's types (TensorRT-RTX is always strongly typed, TensorRT 11 has no
FP16/INT8 flags): ``fp16`` builds a float16 copy of the ONNX (int32 inputs, float32 outputs kept), ``fp32``
the ONNX as is; ``int8`` is TensorRT 10's weakly typed entropy calibration (:mod:`.calibration`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from trt_handler.engines.calibration import QDQ_FIX, CalibrationError, setup_int8
from trt_handler.engines.export import hash_file
from trt_handler.engines.library import (
    LIBRARIES,
    check_engine_bytes,
    library_name,
    library_version,
    load_trt,
    local_gpu,
    make_logger,
)
from trt_handler.engines.sidecar import atomic_write, bundle_record
from trt_handler.planning import DEFAULT_TOKEN_BUDGET, ProfileSpec, profiles_for_buckets, token_budget_profiles
from trt_handler.qa.batching import DEFAULT_BUCKETS, validate_buckets
from trt_handler.qa.types import INPUT_NAMES, OUTPUT_NAMES

__all__ = [
    "PRECISIONS",
    "BuildError",
    "BuildOptions",
    "build_serialized",
    "onnx_sha256",
    "resolve_library",
    "write_engine_files",
]

LOGGER = logging.getLogger(__name__)

SIDECAR_FORMAT = 1
PRECISIONS: tuple[str, ...] = ("fp16", "fp32", "int8")
_ONNX_FIX = "Fix: export the model with `python -m trt_handler.engines.export --model M --cache-dir C`."


class BuildError(RuntimeError):
    """The ONNX could not be turned into an engine; the message says why and what to do."""


def _normalize_target(text: str) -> str:
    """"sm75" from "sm75", "SM_75", "7.5" or "75"; "current" stays (build for this machine's GPU)."""
    t = text.strip().lower().replace("_", "")
    if t == "current":
        return t
    m = re.fullmatch(r"(?:sm)?(\d{1,2})\.?(\d)", t)
    if not m:
        raise ValueError(f"target {text!r} is not a compute capability; write e.g. sm75 (T4) or sm89 (L4)")
    return f"sm{m.group(1)}{m.group(2)}"


@dataclass(frozen=True)
class BuildOptions:
    """What to build, one optimization profile per bucket; :meth:`key_fields` change the engine's bytes.

    ``max_batches``: one max batch per bucket; None (default) = the handlers' token-budget plan
    (``token_budget`` tokens' rows per bucket, a multiple of 8, at most ``max_batch``). ``targets``:
    TensorRT-RTX compute capabilities, () = the library default. Timing and calibration caches are read
    if present and written after the build; ``tokenizer`` (calibration) defaults to the ONNX's folder.
    ``version_compatible`` (full TensorRT): for later TensorRT of its major and the lean runtime.
    """

    library: str = "auto"
    precision: str = "fp16"
    buckets: tuple[int, ...] = tuple(DEFAULT_BUCKETS)
    min_batch: int = 1
    opt_batch: int = 16
    max_batch: int = 192
    targets: tuple[str, ...] = ()
    workspace_mib: int | None = None
    timing_cache: str | None = None
    calibration_data: str | None = None
    calibration_cache: str | None = None
    calibration_batches: int = 32
    tokenizer: str | None = None
    verbose: bool = False
    max_batches: tuple[int, ...] | None = None
    token_budget: int | None = None
    version_compatible: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "buckets", tuple(validate_buckets(self.buckets)))
        object.__setattr__(self, "targets", tuple(dict.fromkeys(_normalize_target(t) for t in self.targets)))
        if self.max_batches is None:  # the default plan: a constant token budget per profile
            object.__setattr__(self, "token_budget", self.token_budget or DEFAULT_TOKEN_BUDGET)
        else:
            object.__setattr__(self, "max_batches", tuple(int(b) for b in self.max_batches))
        if self.max_batches is not None and len(self.max_batches) != len(self.buckets):
            raise ValueError(
                f"max_batches needs one max batch per bucket ({len(self.buckets)}), got {len(self.max_batches)}"
            )
        if self.library not in ("auto", *LIBRARIES):
            raise ValueError(f"library must be auto, tensorrt or tensorrt_rtx, got {self.library!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        self.profiles()  # ProfileSpec checks 1 <= min <= opt <= max
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise ValueError(f"workspace_mib must be a positive number of MiB, got {self.workspace_mib}")
        if self.calibration_batches < 1:
            raise ValueError(f"calibration_batches must be at least 1, got {self.calibration_batches}")
        if "current" in self.targets and len(self.targets) > 1:
            raise ValueError("target 'current' (this machine's GPU) cannot be combined with other targets")
        self.check_library(self.library)

    def check_library(self, library: str) -> None:
        """Raise ValueError when these options cannot be built with ``library`` (a resolved name or auto)."""
        if self.precision == "fp32" and "sm75" in self.targets:
            raise ValueError(
                "sm75 (T4, Turing) cannot run FP32 matrix multiplies in TensorRT-RTX; build sm75 engines "
                "with --precision fp16 (the default) or drop sm75 from --targets"
            )
        if self.version_compatible and library == "tensorrt_rtx":
            raise ValueError(
                "--version-compatible is a full TensorRT flag (VERSION_COMPATIBLE + EXCLUDE_LEAN_RUNTIME, for the "
                "lean runtime); TensorRT-RTX engines are not version-compatible: use --library tensorrt on the GPU "
                "(NGC container), or drop --version-compatible"
            )
        if self.version_compatible and self.precision == "int8":
            raise ValueError("--version-compatible cannot be combined with --precision int8 (weakly typed INT8)")
        if library == "tensorrt" and self.targets:
            raise ValueError(
                "--targets is for TensorRT-RTX ahead-of-time builds; TensorRT builds for the GPU it runs on: "
                "drop --targets or use --library tensorrt_rtx"
            )
        if self.precision == "int8":
            if library == "tensorrt_rtx":
                raise ValueError(
                    "int8 PTQ needs TensorRT: TensorRT-RTX has no INT8 calibration; use --library tensorrt "
                    f"on the GPU (NGC container), or {QDQ_FIX}"
                )
            if not (self.calibration_data or self.calibration_cache):
                raise ValueError(
                    "--precision int8 needs --calibration-data FILE (SQuAD JSON or JSONL) or an existing "
                    "--calibration-cache FILE"
                )
        elif self.calibration_data or self.calibration_cache:
            raise ValueError("--calibration-data/--calibration-cache apply to --precision int8 only")

    def profiles(self) -> list[ProfileSpec]:
        rows = self.max_batches
        if rows is None:
            assert self.token_budget is not None  # set in __post_init__
            planned = token_budget_profiles(buckets=self.buckets, token_budget=self.token_budget,
                                            max_seq=max(self.buckets), min_batch=self.min_batch, opt_batch=self.opt_batch)
            rows = tuple(min(p.max_batch, self.max_batch) for p in planned)
        return profiles_for_buckets(self.buckets, self.min_batch, self.opt_batch, rows)

    def key_fields(self) -> dict[str, Any]:
        """The options that change the engine's bytes (engine_cache hashes these)."""
        out: dict[str, Any] = {
            "precision": self.precision,
            "profiles": [p.to_dict() for p in self.profiles()],
            "targets": list(self.targets),
        }
        if self.version_compatible:
            out["version_compatible"] = True
        if self.precision == "int8":
            out["calibration"] = [self.calibration_data, self.calibration_batches]
        return out


def resolve_library(options: BuildOptions, module: ModuleType | None = None) -> tuple[ModuleType, str, str]:
    """(library module, its name, its version) for ``options``; ValueError when it cannot build them."""
    trt = module if module is not None else load_trt(options.library)
    name, version = library_name(trt), library_version(trt)
    options.check_library(name)
    return trt, name, version


def onnx_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of the ONNX file then of each external-data file it names (sorted), memoized per (path, size,
    mtime): for a self-contained model.onnx, the plain file hash export.json records."""
    p = Path(path).resolve()
    st = p.stat()
    return _onnx_sha256(str(p), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _onnx_sha256(path: str, size: int, mtime_ns: int) -> str:
    import onnx

    p = Path(path)
    model = onnx.load(str(p), load_external_data=False)
    locations = {e.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                 for e in t.external_data if e.key == "location"}
    h = hashlib.sha256()
    for file in (p, *(p.parent / loc for loc in sorted(locations))):
        hash_file(h, file)
    return str(h.hexdigest())


def _fp16_onnx(src: Path, out_dir: Path) -> Path:
    """The ONNX with float16 weights and math, int32 inputs and float32 outputs kept."""
    import onnx
    from onnxconverter_common import float16  # type: ignore[import-untyped]

    model = onnx.load(str(src))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model16 = float16.convert_float_to_float16(model, keep_io_types=True)
    if caught:
        LOGGER.info("fp16 conversion clamped %d constants to the float16 range", len(caught))
    out = out_dir / "model.fp16.onnx"
    onnx.save_model(
        model16, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
        location=out.name + ".data", size_threshold=1024,
    )
    return out


def _dtype_name(trt: ModuleType, dtype: Any) -> str:
    try:
        return str(np.dtype(trt.nptype(dtype)).name)
    except (TypeError, ValueError, AttributeError):
        return str(getattr(dtype, "name", dtype)).lower()


def _parse(trt: ModuleType, builder: Any, path: Path, source: Path, strongly_typed: bool, logger: Any) -> tuple[Any, Any]:
    """(network, parser); the parser owns the weights and must outlive the build."""
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors[-3:]
        raise BuildError(f"the ONNX parser rejected {source}: {'; '.join(errors[:5])}. {_ONNX_FIX}")
    return network, parser


def _io(trt: ModuleType, tensors: Sequence[tuple[str, Any, Any]]) -> list[dict[str, Any]]:
    """(name, dtype, shape) of each tensor as the sidecar records them."""
    return [{"name": name, "dtype": _dtype_name(trt, dtype), "shape": list(shape)} for name, dtype, shape in tensors]


def _check_io(trt: ModuleType, network: Any, source: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The network's inputs and outputs, checked against what the QA features and handlers use."""
    inputs = _io(trt, [(t.name, t.dtype, t.shape) for t in map(network.get_input, range(network.num_inputs))])
    outputs = _io(trt, [(t.name, t.dtype, t.shape) for t in map(network.get_output, range(network.num_outputs))])
    for names, got, dtype in ((INPUT_NAMES, inputs, "int32"), (OUTPUT_NAMES, outputs, "float32")):
        bad = [t for t in got if t["dtype"] != dtype or len(t["shape"]) != 2]
        if {t["name"] for t in got} != set(names) or bad:
            raise BuildError(
                f"{source} has tensors {[(t['name'], t['dtype'], t['shape']) for t in got]}; the QA engine needs "
                f"exactly {', '.join(names)} as {dtype} [batch, seq]. {_ONNX_FIX}"
            )
    return inputs, outputs


def _set_targets(trt: ModuleType, config: Any, targets: Sequence[str]) -> None:
    """TensorRT-RTX's target GPU architectures: ``num_compute_capabilities`` then one per index."""
    if not targets:
        return
    known = {name.lower(): member for name, member in trt.ComputeCapability.__members__.items()}
    if missing := [t for t in targets if t not in known]:
        raise BuildError(
            f"{library_name(trt)} {library_version(trt)} cannot target {', '.join(missing)}; it supports "
            f"{', '.join(sorted(n for n in known if n.startswith('sm')))} (and 'current'). Hopper (sm90, H100) "
            "and sm100 need TensorRT: use --library tensorrt on that GPU."
        )
    config.num_compute_capabilities = len(targets)
    for i, t in enumerate(targets):
        if not config.set_compute_capability(known[t], i):
            raise BuildError(f"TensorRT-RTX refused target {t} at index {i}")


def _configure(trt: ModuleType, lib: str, builder: Any, options: BuildOptions, specs: Sequence[ProfileSpec],
               src: Path) -> tuple[Any, dict[str, Any] | None, Any, dict[str, Any] | None]:
    """(builder config, timing-cache info, INT8 calibrator, calibration info) for these options."""
    config = builder.create_builder_config()
    profiles = []
    for spec in specs:
        profile = builder.create_optimization_profile()
        for name in INPUT_NAMES:
            profile.set_shape(name, *spec.shapes())
        if config.add_optimization_profile(profile) < 0:
            raise BuildError(f"TensorRT rejected the optimization profile {spec}; check --buckets and --batch")
        profiles.append(profile)
    if options.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if lib == "tensorrt_rtx":
        _set_targets(trt, config, options.targets)
    if options.version_compatible:  # later TensorRT of its major, and the lean runtime the worker installs
        missing = [f for f in ("VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME") if f not in trt.BuilderFlag.__members__]
        if missing:
            raise BuildError(
                f"{library_name(trt)} {library_version(trt)} has no BuilderFlag {' or '.join(missing)}; "
                "--version-compatible needs full TensorRT >= 8.6"
            )
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    timing: dict[str, Any] | None = None
    if lib == "tensorrt" and options.timing_cache:
        path = Path(options.timing_cache)
        data = path.read_bytes() if path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(data), False)
        timing = {"path": str(path), "loaded_bytes": len(data)}
    elif lib == "tensorrt_rtx" and options.timing_cache:
        timing = {"path": options.timing_cache, "skipped": "timing caches are no-ops in TensorRT-RTX"}
    if options.precision != "int8":
        return config, timing, None, None
    try:
        calibrator, calibration = setup_int8(
            trt, config, profiles, specs, data=options.calibration_data,
            tokenizer=options.tokenizer or str(src.parent), cache=options.calibration_cache,
            max_batches=options.calibration_batches,
        )
    except CalibrationError as exc:
        raise BuildError(str(exc)) from exc
    return config, timing, calibrator, calibration


def _save_timing_cache(config: Any, info: dict[str, Any] | None) -> None:
    if info is None or "skipped" in info:
        return
    cache = config.get_timing_cache()
    data = bytes(cache.serialize()) if cache is not None else b""
    if data:
        atomic_write(Path(info["path"]), data)
    info["saved_bytes"] = len(data)


def _io_from_engine(trt: ModuleType, data: bytes, logger: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """Inputs and outputs as the built engine reports them, when it can be deserialized here (GPU)."""
    if not check_engine_bytes(data, library_name(trt))[0]:
        return None
    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    if engine is None:
        return None
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = {n for n in names if getattr(engine.get_tensor_mode(n), "name", "") == "INPUT"}
    tensors = [(n, engine.get_tensor_dtype(n), engine.get_tensor_shape(n)) for n in names]
    return _io(trt, [t for t in tensors if t[0] in inputs]), _io(trt, [t for t in tensors if t[0] not in inputs])


def build_serialized(
    onnx_path: str | os.PathLike[str],
    options: BuildOptions = BuildOptions(),
    *,
    module: ModuleType | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """(engine bytes, sidecar dict) for ``onnx_path``; nothing is written except caches. BuildError
    (parse/build failures, wrong I/O), ValueError (options this library cannot build), FileNotFoundError."""
    t0 = time.perf_counter()
    trt, lib, version = resolve_library(options, module)
    src = Path(onnx_path)
    if not src.is_file():
        raise FileNotFoundError(f"ONNX file {src} does not exist. {_ONNX_FIX}")
    gpu = local_gpu()
    logger = make_logger(trt, verbose=options.verbose)
    builder = trt.Builder(logger)
    specs = options.profiles()
    fp16 = options.precision == "fp16"
    with tempfile.TemporaryDirectory(prefix="trt-qa-build-") as tmp:
        net_onnx = _fp16_onnx(src, Path(tmp)) if fp16 else src
        network, parser = _parse(trt, builder, net_onnx, src, options.precision != "int8", logger)
        inputs, outputs = _check_io(trt, network, src)
        config, timing, calibrator, calibration = _configure(trt, lib, builder, options, specs, src)
        t_build = time.perf_counter()
        try:
            serialized = builder.build_serialized_network(network, config)
        finally:
            if calibrator is not None:
                calibrator.close()
        build_seconds = time.perf_counter() - t_build
        if serialized is None:
            said = " | ".join(logger.errors[-5:]) or "no error was logged; rerun with --verbose"
            raise BuildError(f"{lib} {version} could not build an engine from {src}: {said}")
        data = bytes(serialized)
        _save_timing_cache(config, timing)
        del parser  # owns the weights the build read
    engine_io = _io_from_engine(trt, data, logger) if gpu is not None else None
    ins, outs = engine_io or (inputs, outputs)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "library": lib,
        "library_version": version,
        "precision": options.precision,
        "strongly_typed": options.precision != "int8",
        "version_compatible": options.version_compatible,
        "token_budget": options.token_budget,
        "fp16_network": fp16,
        "targets": list(options.targets) if lib == "tensorrt_rtx" else [],
        "gpu": gpu.to_dict() if gpu is not None else None,
        "profiles": [p.to_dict() for p in specs],
        "onnx": str(src),
        "onnx_sha256": onnx_sha256(src),
        "inputs": ins,
        "outputs": outs,
        "io_source": "engine" if engine_io else "network",
        "engine_bytes": len(data),
        "engine_sha256": hashlib.sha256(data).hexdigest(),
        "workspace_mib": options.workspace_mib,
        "timing_cache": timing,
        "calibration": calibration,
        "build_seconds": round(build_seconds, 3),
        "total_seconds": round(time.perf_counter() - t0, 3),
        "host": socket.gethostname(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()},
        **bundle_record(src),  # the bundle's tokenizer sha256 and canary answers, checked at launch
    }
    return data, sidecar


def write_engine_files(engine_path: str | os.PathLike[str], data: bytes, sidecar: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``<engine_path>.json`` then ``<engine_path>`` (never an engine without its sidecar), local
    (renamed into place) or a URL (FileSystems: atomic per object); returns the sidecar as written."""
    path = os.fspath(engine_path)
    out = dict(sidecar, engine=path.rsplit("/", 1)[-1])
    files = ((f"{path}.json", (json.dumps(out, indent=2, sort_keys=True) + "\n").encode()), (path, data))
    for target, payload in files:
        if "://" in target:
            from apache_beam.io.filesystems import FileSystems

            with FileSystems.create(target) as f:
                f.write(payload)
        else:
            atomic_write(Path(target), payload)
    return out
