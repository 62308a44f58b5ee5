"""What a run proves about its model before any data flows, and the local copy of a remote model's
tokenizer files (workers load tokenizers from local files).

* ONNX bundle (local): model.onnx and the tokenizer files are the ones exported (sha256 in export.json),
  the tokenizer loads and passes ``load_tokenizer``'s checks (vocabulary size, [CLS]/[SEP], casing), and
  the model gives the canary answers its export recorded (a handful of questions on ONNX Runtime).
* TensorRT engine (``--engine``): the file is the one its sidecar describes (size, sha256), the
  tokenizer of ``--model`` is the one the sidecar recorded (sha256 of its files, and the token ids of the
  canary questions); with a GPU usable here, the engine gives the recorded canary answers too.
* PyTorch checkpoint: the tokenizer loads and passes its checks; where an ``export.json`` in the
  folder records them (``python -m trt_handler.engines.export --model CKPT --record-checkpoint``),
  the tokenizer files' sha256 and the canary answers are proven too (on the CPU).
* A remote (gs://) model: its tokenizer files are fetched and proven against its export.json's record
  (sha256, canary token ids); its weights are checked by the workers as they load them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from typing import Any, Dict, Optional

from apache_beam.io.filesystems import FileSystems

from pipelines.outputs import escape_glob

__all__ = ["check_model", "local_model_dir"]

LOGGER = logging.getLogger(__name__)

_STAGED: Dict[str, str] = {}
_STAGE_LOCK = threading.Lock()
# Weights are not copied to a worker's tokenizer folder.
_WEIGHTS = (".onnx", ".onnx.data", ".engine", ".plan", ".safetensors", ".bin")


def _is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) in (None, "file")


def local_model_dir(model_dir: str) -> str:
    """A local folder with the bundle's tokenizer files (the tokenizer loads only locally): ``model_dir``
    when local, else a per-process copy of a remote folder's files but its weights."""
    if _is_local(model_dir):
        return model_dir
    with _STAGE_LOCK:
        if model_dir in _STAGED:
            return _STAGED[model_dir]
        target = tempfile.mkdtemp(prefix="trt-qa-model-")
        matched = FileSystems.match([escape_glob(model_dir.rstrip("/")) + "/*"])[0].metadata_list
        if not matched:
            raise FileNotFoundError(f"no files under {model_dir}; upload the model bundle folder there")
        for meta in matched:
            name = meta.path.rstrip("/").rsplit("/", 1)[-1]
            if not name.endswith(_WEIGHTS):
                with FileSystems.open(meta.path) as src, open(os.path.join(target, name), "wb") as dst:
                    dst.write(src.read())
        _STAGED[model_dir] = target
        return target


def _export_meta(folder: str) -> Dict[str, Any]:
    """A model folder's export.json (local or remote) as a dict; {} when it has none; ValueError when unreadable."""
    path = FileSystems.join(folder.rstrip("/"), "export.json") if not _is_local(folder) else os.path.join(folder, "export.json")
    if not FileSystems.exists(path):
        return {}
    with FileSystems.open(path) as f:
        try:
            meta = json.loads(f.read().decode("utf-8"))
        except ValueError as exc:
            raise ValueError(f"{path} is not readable JSON ({exc}); export the model again") from None
    return meta if isinstance(meta, dict) else {}


def check_model(model_dir: str, backend: str, engine: Optional[str] = None) -> None:
    """The launch checks above; ValueError (one paragraph: cause and fix) for a model that must not run."""
    if backend == "tensorrt" and engine:
        check_engine(engine, model_dir)
    if not _is_local(model_dir):
        _check_tokenizer(model_dir, _export_meta(model_dir), f"the export.json of {model_dir}", replay_with=None)
        return
    if not os.path.isdir(model_dir):
        return  # a hub id: the ONNX export resolved it; torch / tensorrt load it as given
    if backend == "onnx":
        from trt_handler.engines.export import check_model_bundle

        check_model_bundle(model_dir)
    elif backend == "torch":
        _check_tokenizer(model_dir, _export_meta(model_dir), f"the export.json of checkpoint {model_dir}",
                         replay_with=_torch_answers)
    else:
        from trt_handler.qa.windows import load_tokenizer

        load_tokenizer(model_dir)


def _check_tokenizer(model_dir: str, meta: Dict[str, Any], recorded_by: str, replay_with: Any) -> None:
    """The tokenizer of ``model_dir`` loads and is the one ``meta`` (an export.json or sidecar) recorded,
    by its files' sha256 and the canary token ids; ``replay_with(model_dir)``: an AnswerFn that the
    recorded canary answers are replayed on (None: the ids only)."""
    from trt_handler.engines.canaries import replay
    from trt_handler.qa.windows import check_tokenizer_record, load_tokenizer

    local = local_model_dir(model_dir)
    tokenizer = load_tokenizer(local)
    if meta.get("tokenizer") is not None:
        check_tokenizer_record(local, meta["tokenizer"], recorded_by)
    if meta.get("canaries") is not None:
        answers = replay(meta["canaries"], tokenizer, replay_with(model_dir) if replay_with else None, recorded_by)
        LOGGER.info("%s: tokenizer proven, %d canary answers replayed", model_dir, answers)


def _torch_answers(model_dir: str) -> Any:
    from trt_handler.answer_batch import PlannedRunner, answer_batch
    from trt_handler.backends.torch_runner import TorchRunner
    from trt_handler.planning import BatchPlan

    model = PlannedRunner(TorchRunner(model_dir, device="cpu", dtype="fp32"), BatchPlan.for_buckets())
    return lambda questions: answer_batch(questions, model)


def check_engine(engine: str, model_dir: str) -> None:
    """``--engine`` against its sidecar (size, sha256), and ``model_dir``'s tokenizer against the record
    the sidecar took from the engine's bundle; answers replayed where a GPU is usable here."""
    from trt_handler.engines.sidecar import read_sidecar, verify_engine_file

    if not FileSystems.exists(engine):
        return  # the handler says so on the worker, or builds one (--engine-cache-dir)
    sidecar = read_sidecar(engine)
    if sidecar is None:
        LOGGER.warning("engine %s has no sidecar (%s.json): it cannot be checked against a recorded sha256, nor "
                       "its tokenizer proven; build engines with trt_handler.engines.build to get one", engine, engine)
        return
    verify_engine_file(engine, sidecar)
    _check_tokenizer(model_dir, sidecar, f"the sidecar of engine {engine}", replay_with=_engine_answers(engine, sidecar))


def _engine_answers(engine: str, sidecar: Dict[str, Any]) -> Any:
    """An AnswerFn factory over the engine on this machine's GPU, or None when no GPU is usable here."""
    from trt_handler.engines.cuda_runtime import unavailable_reason

    if unavailable_reason() is not None or not sidecar.get("canaries"):
        return None

    def make(_model_dir: str) -> Any:
        from trt_handler.answer_batch import PlannedRunner, answer_batch
        from trt_handler.engines.session import EngineSession
        from trt_handler.engines.sidecar import profiles_from_sidecar
        from trt_handler.planning import BatchPlan

        with FileSystems.open(engine) as f:
            session = EngineSession(f.read(), sidecar=sidecar)
        profiles = tuple(profiles_from_sidecar(sidecar, f"{engine}.json"))
        model = PlannedRunner(session, BatchPlan(profiles, max_batch=max(p.max_batch for p in profiles)))
        return lambda questions: answer_batch(questions, model)

    return make
