"""GPU assignment: the round-robin over real processes, the override, the refusals.

Runs on a machine without a GPU: ``visible=`` stands for the GPUs a worker would see.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
from pathlib import Path
from typing import Any

import pytest

from trt_handler.backends import devices
from trt_handler.backends.devices import ENV_VAR, assign_device, visible_gpu_count


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    devices._assigned.clear()


def _child(counter_dir: str, key: str, gpu_count: int, barrier: Any, results: Any) -> None:
    barrier.wait()  # all processes ask at the same moment: the lock has to hold
    first = assign_device(gpu_count, visible=8, counter_dir=counter_dir, key=key)
    again = assign_device(gpu_count, visible=8, counter_dir=counter_dir, key=key)
    results.put((os.getpid(), first, again))


@pytest.mark.parametrize("procs,gpus", [(8, 4), (7, 3), (5, 8)])
def test_round_robin_over_real_processes(tmp_path: Path, procs: int, gpus: int) -> None:
    # fresh interpreters, like harness processes; a plain Barrier and Queue (no Manager: Beam's
    # MultiProcessShared, used by other tests in this process, patches the manager's proxies)
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    children = [ctx.Process(target=_child, args=(str(tmp_path), "job", gpus, barrier, queue)) for _ in range(procs)]
    for c in children:
        c.start()
    results = [queue.get(timeout=120) for _ in children]
    for c in children:
        c.join(timeout=60)
    assert all(c.exitcode == 0 for c in children)
    assert len({pid for pid, _, _ in results}) == procs
    assert all(first == again for _, first, again in results)  # a process keeps its GPU
    per_gpu = collections.Counter(first for _, first, _ in results)
    assert set(per_gpu) <= set(range(gpus))
    want = {g: procs // gpus + (1 if g < procs % gpus else 0) for g in range(gpus)}
    assert {g: per_gpu.get(g, 0) for g in range(gpus)} == want
    assert (tmp_path / "job.count").read_text() == str(procs)


def test_groups_count_separately(tmp_path: Path) -> None:
    a = [assign_device(2, visible=2, counter_dir=tmp_path, key=f"a{i}") for i in range(3)]
    assert a == [0, 0, 0]  # each key is a fresh group, first ticket 0
    assert (tmp_path / "a1.count").read_text() == "1"


def test_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_VAR, "3")
    assert assign_device(4, visible=4, counter_dir=tmp_path, key="k") == 3
    assert not (tmp_path / "k.count").exists()
    monkeypatch.setenv(ENV_VAR, "4")
    with pytest.raises(ValueError, match="only 4 GPU"):
        assign_device(4, visible=4, counter_dir=tmp_path)
    monkeypatch.setenv(ENV_VAR, "one")
    with pytest.raises(ValueError, match="GPU index"):
        assign_device(None, visible=2, counter_dir=tmp_path)


def test_refuses_more_gpus_than_visible(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="asked to spread over 4 GPUs but only 2 are visible"):
        assign_device(4, visible=2, counter_dir=tmp_path)
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        assign_device(None, visible=0, counter_dir=tmp_path)
    with pytest.raises(ValueError, match="positive int"):
        assign_device(0, visible=2, counter_dir=tmp_path)


def test_none_uses_all_visible(tmp_path: Path) -> None:
    got = []
    for _ in range(6):
        devices._assigned.clear()  # stands for six processes of one group
        got.append(assign_device(None, visible=3, counter_dir=tmp_path, key="all"))
    assert got == [0, 1, 2, 0, 1, 2]


def test_falls_back_to_pid_when_counter_unusable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert assign_device(5, visible=5, counter_dir=blocker / "sub", key="x") == os.getpid() % 5


def test_visible_gpu_count_agrees_with_torch() -> None:
    torch = pytest.importorskip("torch")
    assert visible_gpu_count() == torch.cuda.device_count()


@pytest.mark.gpu
def test_visible_gpu_count_on_gpu_machine() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU visible to PyTorch")
    n = visible_gpu_count()
    assert n >= 1
    index = assign_device(None, key=f"gputest-{os.getpid()}")
    assert 0 <= index < n
    with pytest.raises(ValueError, match="only"):
        assign_device(n + 1)
