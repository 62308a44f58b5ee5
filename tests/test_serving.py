"""The per-GPU inference server, on the CPU: real server processes, real sockets and shared memory,
client threads and client processes, real faults (SIGKILL of a client or of the server, a request
outlasting its timeout, a model call that raises, a model that cannot load).

The model is an echo runner (start logits = token ids, end = -ids, ``tests.serving_helpers``), so
every window's logits trace back to it exactly; the pipeline tests run the real MiniLM bundle on
ONNX Runtime in the server and compare with answers computed in process.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence

import numpy as np
import pytest

from tests.conftest import REPO
from tests.helpers import coded_question, coded_window, run_threads
from tests.serving_helpers import EchoLoader, PoisonHandler
from trt_handler.answer_batch import ModelCallError, answer_batch
from trt_handler.qa.types import Answer, Window, WindowLogits
from trt_handler.serving import ServerOptions
from trt_handler.serving.client import InferenceClient, InferenceServerError


@pytest.fixture
def folder() -> Iterator[Path]:
    """Where this test's servers live (short: a socket path has at most 107 bytes); every server
    still running at the end is stopped."""
    path = Path(tempfile.mkdtemp(prefix="qa-srv-", dir="/tmp"))
    yield path
    for pid_file in path.glob("*.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    shutil.rmtree(path, ignore_errors=True)


def connect(folder: Path, loader: Any = EchoLoader(), **options: Any) -> InferenceClient:
    settings = {"linger_s": 1.0, "max_wait_ms": 5.0, **options}
    return InferenceClient(loader, ServerOptions(directory=str(folder), **settings))


def windows_of(rng: np.random.Generator, n: int, tag: str, max_len: int = 64) -> List[Window]:
    return [coded_window(f"{tag}-{i}", int(rng.integers(4, max_len + 1)), i % 20) for i in range(n)]


def assert_echoed(windows: Sequence[Window], logits: Sequence[Any]) -> None:
    assert len(logits) == len(windows)
    for w, lg in zip(windows, logits):
        assert isinstance(lg, WindowLogits), lg
        np.testing.assert_array_equal(lg.start_logits, w.input_ids.astype(np.float32))
        np.testing.assert_array_equal(lg.end_logits, -w.input_ids.astype(np.float32))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return not Path(f"/proc/{pid}/status").read_text().count("State:\tZ")


# --------------------------------------------------------------------------------------------
# the exchange


def test_concurrent_clients_are_pooled_and_every_window_comes_back_exact(folder: Path) -> None:
    """Eight client threads (eight connections) send 5 requests each at once; the server waits for
    the pool to fill, so calls hold windows of several clients; every logit is the window's own."""
    client = connect(folder, pool_windows=120, max_pool_windows=400, max_wait_ms=300)

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for k in range(5):
            windows = windows_of(rng, int(rng.integers(1, 40)), f"t{seed}-{k}")
            assert_echoed(windows, client.window_logits(windows))

    run_threads(work, n_threads=8, timeout=120)
    stats = client.stats()
    assert stats["requests"] == 40 and stats["clients"] == 9  # the eight threads and the one that connected first
    assert stats["pools"] < stats["requests"] and stats["max_pool_clients"] >= 2, stats
    assert stats["windows"] == stats["pooled_windows"] and stats["padded_tokens"] >= stats["real_tokens"]
    assert client.window_logits([]) == []
    client.close()


def test_a_failed_call_fails_only_the_windows_in_it(folder: Path) -> None:
    """The echo model raises for a call holding token 1005 (window #0 of a question, 6+ tokens);
    calls of one row each: only that question is lost, with the call's reason."""
    client = connect(folder, EchoLoader(poison=1005, max_rows=1))
    good = [coded_question(f"ok{i}", 5) for i in range(3)] + [coded_question("two", 5, 30)]
    bad = coded_question("bad", 12)
    outcomes = answer_batch([good[0], bad, *good[1:]], client)
    assert isinstance(outcomes[1], ModelCallError) and "poisoned call of shape (1, 16)" in str(outcomes[1])
    assert all(isinstance(o, Answer) for i, o in enumerate(outcomes) if i != 1), outcomes
    assert client.stats()["failed_calls"] == 1
    client.close()


def test_a_request_the_server_cannot_serve_fails_alone(folder: Path) -> None:
    client = connect(folder)
    too_long = [coded_window("long", 70), coded_window("short", 8)]
    out = client.window_logits(too_long)
    assert all(isinstance(x, ModelCallError) and "a window has 70 tokens, more than the longest profile (64)"
               in str(x) for x in out)
    assert_echoed([coded_window("next", 30)], client.window_logits([coded_window("next", 30)]))
    client.close()


def test_a_request_that_outlasts_its_timeout_is_cancelled_and_the_next_is_right(folder: Path) -> None:
    slow = connect(folder, EchoLoader(sleep_s=1.5), request_timeout_s=0.5)
    rng = np.random.default_rng(3)
    with pytest.raises(TimeoutError, match="did not answer within 0.5 s"):
        slow.window_logits(windows_of(rng, 4, "late"))
    slow.close()
    patient = connect(folder, EchoLoader(sleep_s=1.5), request_timeout_s=30)  # the same server
    windows = windows_of(rng, 6, "next")
    assert_echoed(windows, patient.window_logits(windows))
    assert patient.stats()["requests"] == 2
    patient.close()


# --------------------------------------------------------------------------------------------
# processes that die


CLIENT_SCRIPT = """
import sys
from tests.helpers import coded_window
from tests.serving_helpers import EchoLoader
from trt_handler.serving import ServerOptions
from trt_handler.serving.client import InferenceClient
client = InferenceClient(EchoLoader(sleep_s=0.5, max_rows=1), ServerOptions(directory=sys.argv[1], linger_s=1.0,
                         max_wait_ms=5.0))
print("connected", flush=True)
client.window_logits([coded_window(f"w{i}", 20) for i in range(8)])  # 8 calls of 0.5 s
print("answered", flush=True)
"""


def test_a_client_killed_mid_call_does_not_block_the_others(folder: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, str(folder)], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "connected"
    time.sleep(0.8)  # its request is being served: 8 calls of 0.5 s
    child.kill()
    child.wait(timeout=10)
    other = connect(folder, EchoLoader(sleep_s=0.5, max_rows=1))  # the same server
    windows = [coded_window("mine", 10)]
    t0 = time.monotonic()
    assert_echoed(windows, other.window_logits(windows))
    assert time.monotonic() - t0 < 4.0, "the dead client's calls were all run before this one"
    stats = other.stats()
    assert stats["clients"] == 1 and stats["requests"] == 2, stats
    other.close()


def test_a_server_killed_mid_call_fails_that_request_with_its_log_and_the_next_starts_anew(folder: Path) -> None:
    client = connect(folder, EchoLoader(sleep_s=0.4, max_rows=1))
    first = client.server_pid()
    assert first is not None and alive(first)
    killer = threading.Timer(0.6, os.kill, args=(first, signal.SIGKILL))
    killer.start()
    with pytest.raises(InferenceServerError, match=r"went away during a request .*the next request starts a new one"):
        client.window_logits([coded_window(f"w{i}", 20) for i in range(6)])
    killer.join()
    windows = [coded_window("after", 12)]
    assert_echoed(windows, client.window_logits(windows))
    second = client.server_pid()
    assert second is not None and second != first and alive(second)
    client.close()


def test_a_model_that_cannot_load_is_one_clear_error(folder: Path) -> None:
    with pytest.raises(InferenceServerError, match=r"(?s)exited with code 1 while loading the model.*"
                                                   r"RuntimeError: engine /x.engine is missing"):
        connect(folder, EchoLoader(fail_to_load="engine /x.engine is missing"))


def test_the_server_goes_once_its_last_client_left(folder: Path) -> None:
    client = connect(folder, linger_s=0.5)
    pid = client.server_pid()
    assert pid is not None
    client.close()
    deadline = time.monotonic() + 15
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)
    assert not list(folder.glob("*.sock")) and not list(folder.glob("*.pid"))
    assert "no client for 0 s: stopping" in next(folder.glob("*.log")).read_text()


# --------------------------------------------------------------------------------------------
# the pipeline


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, b1_examples: List[Any]) -> List[Path]:
    folder = tmp_path_factory.mktemp("shards")
    paths = [folder / f"part-{k}.jsonl" for k in range(3)]
    for k, path in enumerate(paths):
        with path.open("w", encoding="utf-8") as f:
            for ex in b1_examples[k * 20:(k + 1) * 20]:
                f.write(json.dumps({"id": ex.id, "question": ex.question, "context": ex.context}) + "\n")
    return paths


def _answers(prefix: Path) -> Dict[str, str]:
    rows = [json.loads(line) for f in sorted(prefix.parent.glob(f"{prefix.name}-0*-of-*.jsonl"))
            for line in f.read_text(encoding="utf-8").splitlines() if line]
    return {r["id"]: r["answer"] for r in rows}


def test_pipeline_processes_share_one_server_and_answer_as_in_process(
        bundled_model: Path, shards: List[Path], b1_examples: List[Any], folder: Path, tmp_path: Path) -> None:
    """Three `pipelines.qa_batch --inference-server` processes (a worker's SDK processes) over three
    shards: one server answers them all, its pools hold windows of several processes, and every
    answer is the one the same model gives in process."""
    from trt_handler.answer_batch import PlannedRunner
    from trt_handler.backends.handlers import OnnxRuntimeQAHandler
    from trt_handler.qa.types import QuestionWindows
    from trt_handler.qa.windows import WindowMaker, load_tokenizer

    env = {**os.environ, "TMPDIR": str(folder),  # ServerOptions' default folder is under it
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-m", "pipelines.qa_batch", "--input", str(shard),
                               "--output", str(tmp_path / f"out-{k}" / "answers"), "--model", str(bundled_model),
                               "--inference-server", "--batch-windows", "8", "--server-pool-windows", "24",
                               "--server-max-wait-ms", "3000", "--server-linger-secs", "1", "--progress-every", "0"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k, shard in enumerate(shards)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    got: Dict[str, str] = {}
    for k in range(3):
        got.update(_answers(tmp_path / f"out-{k}" / "answers"))

    handler = OnnxRuntimeQAHandler(str(bundled_model))
    maker = WindowMaker(load_tokenizer(bundled_model))
    examples = b1_examples[:60]
    questions = [QuestionWindows(ex, tuple(ws)) for ex, ws in zip(examples, maker.windows_many(examples))]
    local = answer_batch(questions, PlannedRunner(handler.load_runner(), handler.plan))
    assert got == {q.example.id: a.text for q, a in zip(questions, local)}  # type: ignore[union-attr]

    logs = list(folder.glob("trt-qa-servers-*/*.log"))
    assert len(logs) == 1, logs  # one server for the three processes
    deadline = time.monotonic() + 20
    while "inference server stopped" not in logs[0].read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    final = logs[0].read_text().split("inference server stopped: ", 1)[1].splitlines()[0]
    stats = ast.literal_eval(final)  # the server's own dict, as it logged it
    assert stats["max_pool_clients"] >= 2 and stats["windows"] == sum(len(q.windows) for q in questions), stats


def test_a_call_that_fails_in_the_server_dead_letters_only_its_question(
        bundled_model: Path, folder: Path, tmp_path: Path) -> None:
    from pipelines import qa_batch
    from trt_handler.qa.windows import load_tokenizer

    lines = (REPO / "samples" / "squad_sample.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    poison = load_tokenizer(bundled_model).convert_tokens_to_ids("zebra")
    records[2]["question"] = "Which zebra wrote it?"
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    handler = PoisonHandler(str(bundled_model), poison, max_model_batch=1, max_batch_windows=4,
                            inference_server=ServerOptions(directory=str(folder), linger_s=1.0, max_wait_ms=5))
    out = tmp_path / "answers"
    qa_batch.run(["--input", str(data), "--output", str(out), "--model", str(bundled_model)], handler=handler)
    rejected = [json.loads(line) for f in tmp_path.glob("answers-rejected-*.jsonl")
                for line in f.read_text(encoding="utf-8").splitlines() if line]
    assert [(r["id"], r["reason_code"]) for r in rejected] == [(records[2]["id"], "inference_failed")]
    assert "poisoned call" in rejected[0]["reason"] and rejected[0]["raw"] == json.dumps(records[2])
    assert sorted(_answers(out)) == sorted(r["id"] for i, r in enumerate(records) if i != 2)


# --------------------------------------------------------------------------------------------
# on a GPU


def _cuda_gpus() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_gpus() < 1, reason="needs PyTorch with a CUDA GPU")
def test_the_torch_server_on_the_gpu_answers_as_in_process(model_dir: Path, b1_examples: List[Any],
                                                           folder: Path) -> None:
    """One client: the server plans each batch alone, so its calls are the in-process calls and the
    fp16 answers are the same, text for text; the model sits on the GPU in the server only."""
    from trt_handler.backends.handlers import TorchQAHandler
    from trt_handler.qa.answers import answers_from_logits
    from trt_handler.qa.types import QuestionWindows
    from trt_handler.qa.windows import WindowMaker, load_tokenizer

    maker = WindowMaker(load_tokenizer(model_dir))
    examples = b1_examples[:300]
    questions = [QuestionWindows(ex, tuple(ws)) for ex, ws in zip(examples, maker.windows_many(examples))]
    local = TorchQAHandler(str(model_dir), dtype="fp16")
    served = TorchQAHandler(str(model_dir), dtype="fp16",
                            inference_server=ServerOptions(directory=str(folder), linger_s=1.0))
    def texts(results: List[Any]) -> List[str]:
        return [a.text for a in answers_from_logits([(r.example.example, r.example.windows, r.inference)
                                                     for r in results])]

    want = texts(local.run_inference(questions, local.load_model()))
    client = served.load_model()
    assert isinstance(client, InferenceClient) and client.stats()["description"] == "TorchRunner cuda:0"
    assert texts(served.run_inference(questions, client)) == want
    client.close()


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_gpus() < 2, reason="needs two CUDA GPUs")
def test_one_server_per_gpu(model_dir: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process whose round-robin GPU is k reaches the server of GPU k, which holds its model there."""
    from trt_handler.backends import devices
    from trt_handler.backends.handlers import TorchQAHandler

    handler = TorchQAHandler(str(model_dir), dtype="fp16", inference_server=ServerOptions(directory=str(folder)))
    clients = []
    for gpu in range(2):
        monkeypatch.setenv(devices.ENV_VAR, str(gpu))
        clients.append(handler.load_model())
    assert [c.stats()["description"] for c in clients] == ["TorchRunner cuda:0", "TorchRunner cuda:1"]
    assert clients[0].server_pid() != clients[1].server_pid()
    for c in clients:
        c.close()
