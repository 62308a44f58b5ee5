"""Tests for the engine session.

* Pure Python, run anywhere: I/O validation, profile reading, the slot pool under threads
  (including a TensorRT that refuses a second context on a busy profile), and
  ``EngineSession.run``/``warm_up``/``stats`` over test-double engines and slots.
* Compatibility errors with TensorRT-RTX's real runtime (where ``tensorrt_rtx`` is installed): a
  garbage, empty, truncated or (without a GPU) unrunnable engine gives an error naming the cause.
* ``gpu``: the real CUDA path (ExecutionSlot, BufferSet, streams, threads) with a stand-in for
  TensorRT's execution context whose ``execute_async_v3`` queues device-to-device copies on the
  given stream. TensorRT itself does not run in these tests: the GPU machine this project tests on
  has no TensorRT, and TensorRT-RTX engines do not run on data-center GPUs such as the H100.
"""

from __future__ import annotations

import enum
import importlib.util
import pickle
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from tests.helpers import GPU_SKIP, needs_gpu, run_threads
from trt_handler.engines import cuda_runtime as cr
from trt_handler.engines.library import engine_validity
from trt_handler.engines.session import (
    EngineCompatibilityError,
    EngineIOError,
    EngineSession,
    ExecutionSlot,
    ProfileBusyError,
    SlotPool,
    WarmUpError,
    read_profiles,
    select_profile,
    validate_io,
)
from trt_handler.planning import ProfileSpec, choose_profile, profiles_for_buckets
from trt_handler.qa.types import INPUT_NAMES, OUTPUT_NAMES, ModelBatch

HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="tensorrt_rtx is not installed")
no_gpu_only = pytest.mark.skipif(GPU_SKIP is None, reason="tests the no-GPU message; this machine has a GPU")


# --------------------------------------------------------------------------------------------
# Test doubles for ICudaEngine
# --------------------------------------------------------------------------------------------


class Mode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class DType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT32 = 3
    INT64 = 8


def _qa_tensors() -> dict[str, tuple[Mode, DType, tuple[int, ...]]]:
    tensors = {n: (Mode.INPUT, DType.INT32, (-1, -1)) for n in INPUT_NAMES}
    tensors.update({n: (Mode.OUTPUT, DType.FLOAT, (-1, -1)) for n in OUTPUT_NAMES})
    return tensors


class FakeEngine:
    """Answers the ICudaEngine questions the session asks, from plain data."""

    def __init__(
        self,
        profiles: Sequence[ProfileSpec] = tuple(profiles_for_buckets((128, 256, 384), 1, 16, 64)),
        tensors: dict[str, tuple[Mode, DType, tuple[int, ...]]] | None = None,
        context_factory: Any = None,
    ) -> None:
        self.tensors = tensors if tensors is not None else _qa_tensors()
        self.profiles = list(profiles)
        self.overrides: dict[tuple[str, int], list[tuple[int, ...]]] = {}
        self.context_factory = context_factory

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.profiles)

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> Mode:
        return self.tensors[name][0]

    def get_tensor_dtype(self, name: str) -> DType:
        return self.tensors[name][1]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        if (name, profile_index) in self.overrides:
            return self.overrides[(name, profile_index)]
        return [tuple(s) for s in self.profiles[profile_index].shapes()]

    def create_execution_context(self) -> Any:
        return self.context_factory() if self.context_factory else None


# --------------------------------------------------------------------------------------------
# I/O validation and profiles
# --------------------------------------------------------------------------------------------


def test_validate_io_accepts_the_qa_model() -> None:
    validate_io(FakeEngine())


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: t.update(input_ids=(Mode.INPUT, DType.INT64, (-1, -1))), "input 'input_ids' is INT64, expected INT32"),
        (lambda t: t.pop("end_logits"), "output 'end_logits' is missing"),
        (lambda t: t.update(start_logits=(Mode.OUTPUT, DType.HALF, (-1, -1))), "output 'start_logits' is HALF, expected FLOAT"),
        (lambda t: t.update(start_logits=(Mode.OUTPUT, DType.FLOAT, (-1, -1, 2))), "rank 3"),
        (lambda t: t.update(position_ids=(Mode.INPUT, DType.INT32, (-1, -1))), "unexpected input 'position_ids'"),
        (lambda t: t.update(token_type_ids=(Mode.OUTPUT, DType.INT32, (-1, -1))), "'token_type_ids' is an output, expected an input"),
    ],
)
def test_validate_io_names_each_mismatch(change: Any, expected: str) -> None:
    tensors = _qa_tensors()
    change(tensors)
    with pytest.raises(EngineIOError) as info:
        validate_io(FakeEngine(tensors=tensors))
    message = str(info.value)
    assert expected in message
    assert "make engine" in message and "The engine has:" in message
    assert isinstance(info.value, EngineCompatibilityError) and info.value.cause == "io"


def test_read_profiles_round_trips_bucket_profiles() -> None:
    profiles = profiles_for_buckets((128, 256, 384), 1, 16, 64)
    assert read_profiles(FakeEngine(profiles)) == profiles


def test_read_profiles_of_a_static_engine() -> None:
    tensors = {n: (m, d, (8, 128)) for n, (m, d, _) in _qa_tensors().items()}
    engine = FakeEngine(profiles=[ProfileSpec(1, 1, 1, 1, 1, 1)], tensors=tensors)  # ranges ignored: static
    assert read_profiles(engine) == [ProfileSpec(8, 8, 8, 128, 128, 128)]


def test_read_profiles_rejects_inputs_that_disagree() -> None:
    engine = FakeEngine()
    engine.overrides[("attention_mask", 1)] = [(1, 129), (16, 256), (32, 256)]
    with pytest.raises(EngineIOError, match="profile 1 gives input 'attention_mask'"):
        read_profiles(engine)


PROFILES = profiles_for_buckets((128, 256, 384), 1, 16, 64)


# --------------------------------------------------------------------------------------------
# Slot pool under threads
# --------------------------------------------------------------------------------------------


class PoolSlot(tuple):  # (profile, number), compared as a plain tuple
    log: PoolLog

    def close(self) -> None:
        self.log.close(self)


class PoolLog:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.made: list[tuple[int, int]] = []
        self.closed: list[tuple[int, int]] = []
        self.in_use: set[tuple[int, int]] = set()
        self.peak: dict[int, int] = {}

    def factory(self, profile: int) -> PoolSlot:
        time.sleep(0.002)  # widen the window for races
        with self.lock:
            slot = PoolSlot((profile, len(self.made)))
            self.made.append(slot)
        slot.log = self
        return slot

    def close(self, slot: tuple[int, int]) -> None:
        with self.lock:
            self.closed.append(slot)

    def enter(self, slot: tuple[int, int]) -> None:
        with self.lock:
            assert slot not in self.in_use, f"slot {slot} handed to two threads"
            self.in_use.add(slot)
            busy = sum(1 for s in self.in_use if s[0] == slot[0])
            self.peak[slot[0]] = max(self.peak.get(slot[0], 0), busy)

    def leave(self, slot: tuple[int, int]) -> None:
        with self.lock:
            self.in_use.remove(slot)


def test_pool_prefills_grows_to_the_cap_and_never_shares_a_slot() -> None:
    log = PoolLog()
    pool = SlotPool(log.factory, 3, prefill=1, cap=2)
    assert pool._created == [1, 1, 1]

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(30):
            with pool.checkout(rng.randrange(3)) as slot:
                log.enter(slot)
                time.sleep(0.0005)
                log.leave(slot)

    run_threads(work, 8, timeout=60)
    assert all(n <= 2 for n in pool._created)
    assert max(log.peak.values()) == 2  # contention made it grow, the cap held
    assert len(log.made) == sum(pool._created)
    pool.close()
    assert sorted(log.closed) == sorted(log.made)
    with pytest.raises(RuntimeError, match="closed"), pool.checkout(0):
        pass


def test_pool_blocks_at_the_cap_until_a_slot_returns() -> None:
    log = PoolLog()
    pool = SlotPool(log.factory, 1, prefill=1, cap=1)
    holding, got = threading.Event(), []

    def second() -> None:
        with pool.checkout(0) as slot:
            got.append(slot)

    with pool.checkout(0) as first:
        waiter = threading.Thread(target=second)
        waiter.start()
        holding.wait(0.2)
        assert waiter.is_alive() and not got  # blocked: the only slot is out
    waiter.join(timeout=10)
    assert got == [first] and len(log.made) == 1


def test_pool_discards_a_slot_whose_use_failed() -> None:
    log = PoolLog()
    pool = SlotPool(log.factory, 1, prefill=1, cap=1)
    with pytest.raises(RuntimeError, match="boom"), pool.checkout(0):
        raise RuntimeError("boom")
    assert log.closed == [(0, 0)] and pool._created == [0]
    with pool.checkout(0) as slot:
        assert slot == (0, 1)  # a fresh one


def test_pool_closes_slots_returned_after_close() -> None:
    log = PoolLog()
    pool = SlotPool(log.factory, 1, prefill=1, cap=1)
    with pool.checkout(0) as slot:
        pool.close()
        assert log.closed == []
    assert log.closed == [slot]


# --------------------------------------------------------------------------------------------
# EngineSession over test-double slots
# --------------------------------------------------------------------------------------------


class EchoSlot:
    """Returns input_ids + 1000 * profile as start and token_type_ids as end; records shapes."""

    def __init__(self, profile: int, spec: ProfileSpec, shapes: list[tuple[int, int, int]]) -> None:
        self.profile, self.spec, self.shapes, self.closed = profile, spec, shapes, False

    def run(self, arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        b, s = arrays[0].shape
        assert self.spec.accepts(b, s)
        self.shapes.append((self.profile, b, s))
        return (arrays[0] + 1000 * self.profile).astype(np.float32), arrays[2].astype(np.float32)

    def close(self) -> None:
        self.closed = True


def _batch(b: int, s: int, seed: int = 0) -> ModelBatch:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 30000, size=(b, s), dtype=np.int32)
    return ModelBatch(ids, np.ones((b, s), np.int32), rng.integers(0, 2, size=(b, s), dtype=np.int32))


def _echo_session(**kwargs: Any) -> tuple[EngineSession, list[tuple[int, int, int]], list[EchoSlot]]:
    shapes: list[tuple[int, int, int]] = []
    slots: list[EchoSlot] = []

    def factory(engine: Any, profile: int, spec: ProfileSpec) -> EchoSlot:
        slots.append(EchoSlot(profile, spec, shapes))
        return slots[-1]

    return EngineSession.from_engine(FakeEngine(), slot_factory=factory, **kwargs), shapes, slots


def test_session_reports_profiles_and_max_batch() -> None:
    session, _, slots = _echo_session(contexts_per_profile=2)
    assert session.profiles == PROFILES and session.max_batch == 64
    assert session.get_profiles() == PROFILES  # what a MultiProcessShared proxy can call
    assert session._pool._created == [2, 2, 2] and len(slots) == 6


def test_session_runs_the_given_shape_on_the_given_profile() -> None:
    session, shapes, _ = _echo_session()
    batch = _batch(64, 200)
    start, end = session.run(batch, 1)
    assert start.dtype == np.float32 and start.shape == (64, 200)
    np.testing.assert_array_equal(start, batch.input_ids + 1000.0)  # profile 1 (129-256)
    np.testing.assert_array_equal(end, batch.token_type_ids)
    assert shapes == [(1, 64, 200)]  # one run, unsplit


def test_session_does_not_split_or_rechoose_a_batch_its_profile_does_not_take() -> None:
    session, shapes, _ = _echo_session()
    with pytest.raises(ValueError, match=r"optimization profile 1 does not accept shape \[65, 200\]"):
        session.run(_batch(65, 200), 1)  # splitting is the batch planner's job, not the session's
    with pytest.raises(ValueError, match=r"optimization profile 0 does not accept shape \[2, 200\]"):
        session.run(_batch(2, 200), 0)  # nor is choosing the profile
    assert shapes == [] and session.stats()["runs"] == 0


def test_session_does_not_pad_small_batches() -> None:
    session, shapes, _ = _echo_session()
    session.run(_batch(3, 17), 0)
    assert shapes == [(0, 3, 17)]


def test_session_rejects_malformed_batches() -> None:
    session, _, _ = _echo_session()
    good = _batch(2, 8)
    with pytest.raises(ValueError, match="attention_mask must be"):
        session.run(ModelBatch(good.input_ids, good.attention_mask[:, :4], good.token_type_ids), 0)
    with pytest.raises(ValueError, match="must hold integers"):
        session.run(ModelBatch(good.input_ids.astype(np.float32), good.attention_mask, good.token_type_ids), 0)
    with pytest.raises(ValueError, match=r"optimization profile 2 does not accept shape \[2, 400\]"):
        session.run(_batch(2, 400), 2)


def test_session_run_from_many_threads() -> None:
    session, _, _ = _echo_session(contexts_per_profile=1, max_contexts_per_profile=2)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for i in range(20):
            b, s = rng.randint(1, 64), rng.choice([5, 128, 129, 256, 384])
            batch = _batch(b, s, seed * 100 + i)
            profile = 0 if s <= 128 else 1 if s <= 256 else 2
            start, end = session.run(batch, profile)
            np.testing.assert_array_equal(start, batch.input_ids + 1000.0 * profile)
            np.testing.assert_array_equal(end, batch.token_type_ids)

    run_threads(work, 8, timeout=120)
    assert all(1 <= n <= 2 for n in session._pool._created)


def test_session_close_is_final_and_idempotent() -> None:
    session, _, slots = _echo_session()
    with session:
        session.run(_batch(1, 4), 0)
    assert all(slot.closed for slot in slots)
    session.close()
    with pytest.raises(RuntimeError, match="closed"):
        session.run(_batch(1, 4), 0)


def test_session_argument_checks() -> None:
    with pytest.raises(ValueError, match="contexts_per_profile must be >= 1"):
        EngineSession.from_engine(FakeEngine(), contexts_per_profile=0)
    with pytest.raises(ValueError, match="max_contexts_per_profile"):
        EngineSession.from_engine(FakeEngine(), contexts_per_profile=2, max_contexts_per_profile=1)
    with pytest.raises(EngineIOError):
        EngineSession.from_engine(FakeEngine(tensors={}))


def test_default_slot_factory_reports_a_context_that_cannot_be_made() -> None:
    # create_execution_context() -> None, as TensorRT answers when GPU memory runs out
    with pytest.raises(RuntimeError, match="could not create an execution context for profile 0"):
        EngineSession.from_engine(FakeEngine())


# --------------------------------------------------------------------------------------------
# Warm-up at load, run statistics
# --------------------------------------------------------------------------------------------


def test_warm_up_runs_each_profile_once_at_its_opt_shape(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="trt_handler.engines.session"):
        session, shapes, _ = _echo_session(warm_up=True)
    assert shapes == [(0, 16, 128), (1, 16, 256), (2, 16, 384)]
    logged = [r.getMessage() for r in caplog.records if "warm-up" in r.getMessage()]
    assert len(logged) == 3 and "profile 2 [16, 384] ran in" in logged[2]
    times = session.warm_up()  # callable again (the handler's load_model), one timing per profile
    assert sorted(times) == [0, 1, 2] and all(t >= 0 for t in times.values())
    assert session.stats()["runs"] == 0  # warm-up runs are not batches


class FailingSlot(EchoSlot):
    def run(self, arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self.profile == 1:
            raise RuntimeError("execute_async_v3 failed")
        return super().run(arrays)


def test_warm_up_fails_at_load_naming_the_profile() -> None:
    shapes: list[tuple[int, int, int]] = []
    with pytest.raises(WarmUpError, match=r"profile 1 at its opt shape \[16, 256\] failed: execute_async_v3 failed"):
        EngineSession.from_engine(FakeEngine(), slot_factory=lambda e, p, spec: FailingSlot(p, spec, shapes), warm_up=True)
    assert shapes == [(0, 16, 128)]  # profile 0 ran, profile 1 failed, profile 2 was not tried


class SlowSlot(EchoSlot):
    def run(self, arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(0.05)
        return super().run(arrays)


def test_stats_count_runs_and_the_wait_for_a_context() -> None:
    shapes: list[tuple[int, int, int]] = []
    session = EngineSession.from_engine(FakeEngine(), slot_factory=lambda e, p, spec: SlowSlot(p, spec, shapes),
                                        contexts_per_profile=1, max_contexts_per_profile=1)
    assert session.stats() == {"runs": 0, "context_wait_us": 0, "max_context_wait_us": 0}
    session.run(_batch(2, 8), 0)
    alone = session.stats()
    assert alone["runs"] == 1 and alone["context_wait_us"] < 40_000  # an idle context: no real wait
    run_threads(lambda seed: session.run(_batch(2, 8, seed), 0), 4, timeout=60)  # one context, four threads
    after = session.stats()
    assert after["runs"] == 5
    # the three threads that queued behind a 50 ms run waited about 50, 100 and 150 ms
    assert after["context_wait_us"] - alone["context_wait_us"] >= 250_000
    assert after["max_context_wait_us"] >= 120_000


def test_gpu_memory_is_none_without_a_gpu_and_sane_with_one() -> None:
    session, _, _ = _echo_session()
    memory = session.gpu_memory()
    if GPU_SKIP is not None:
        assert memory is None
    else:
        assert memory is not None and 0 < memory["used_bytes"] <= memory["total_bytes"]
        assert memory["free_bytes"] + memory["used_bytes"] == memory["total_bytes"]


# --------------------------------------------------------------------------------------------
# One context per profile: TensorRT refuses a second one, the pool waits instead of failing
# --------------------------------------------------------------------------------------------


class OneContextPerProfile:
    """TensorRT as some versions behave: a profile bound to a live context refuses another."""

    def __init__(self, refuse_by: str = "false") -> None:
        self.lock = threading.Lock()
        self.bound: dict[int, int] = {}
        self.refusals = 0
        self.refuse_by = refuse_by

    def context(self) -> Any:
        owner = self

        class Context:
            def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
                with owner.lock:
                    if owner.bound.get(profile_index, 0) >= 1:
                        owner.refusals += 1
                        if owner.refuse_by == "raise":
                            raise RuntimeError("profile is in use by another execution context")
                        return False
                    owner.bound[profile_index] = owner.bound.get(profile_index, 0) + 1
                    return True

        return Context()


class BoundSlot(EchoSlot):
    """An EchoSlot whose context went through the session's own profile selection."""

    def __init__(self, trt: OneContextPerProfile, profile: int, spec: ProfileSpec, shapes: list[Any]) -> None:
        select_profile(trt.context(), profile, 0)  # raises ProfileBusyError when refused
        super().__init__(profile, spec, shapes)
        self.busy = threading.Lock()

    def run(self, arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        assert self.busy.acquire(blocking=False), "one slot used by two threads"
        try:
            time.sleep(0.003)
            return super().run(arrays)
        finally:
            self.busy.release()


@pytest.mark.parametrize("refuse_by", ["false", "raise"])
def test_pool_waits_for_the_busy_profile_instead_of_failing(refuse_by: str, caplog: pytest.LogCaptureFixture) -> None:
    trt = OneContextPerProfile(refuse_by)
    shapes: list[tuple[int, int, int]] = []
    session = EngineSession.from_engine(
        FakeEngine(), slot_factory=lambda e, p, spec: BoundSlot(trt, p, spec, shapes),
        contexts_per_profile=1, max_contexts_per_profile=4,
    )

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for i in range(15):
            s = rng.choice([64, 200, 300])
            batch = _batch(4, s, seed * 100 + i)
            profile = 0 if s <= 128 else 1 if s <= 256 else 2
            start, _ = session.run(batch, profile)  # never fails: waits for the profile's one context
            np.testing.assert_array_equal(start, batch.input_ids + 1000.0 * profile)

    with caplog.at_level("WARNING", logger="trt_handler.engines.session"):
        run_threads(work, 6, timeout=120)
    assert session._pool._created == [1, 1, 1]
    assert session.stats()["runs"] == 90 and trt.refusals >= 1
    warnings = [r.getMessage() for r in caplog.records if "refused another execution context" in r.getMessage()]
    assert 1 <= len(warnings) <= 3 and len(set(warnings)) == len(warnings)  # at most once per profile
    assert session._pool._limit != [4, 4, 4]


def test_prefill_stops_at_the_busy_profile_and_a_profile_with_no_context_still_fails() -> None:
    trt = OneContextPerProfile()
    session = EngineSession.from_engine(FakeEngine(), slot_factory=lambda e, p, spec: BoundSlot(trt, p, spec, []),
                                        contexts_per_profile=2, max_contexts_per_profile=2)
    assert session._pool._created == [1, 1, 1]
    trt.bound = {0: 1, 1: 1, 2: 1}  # every profile taken by someone else
    with pytest.raises(ProfileBusyError, match="refused optimization profile 0"):
        EngineSession.from_engine(FakeEngine(), slot_factory=lambda e, p, spec: BoundSlot(trt, p, spec, []))


# --------------------------------------------------------------------------------------------
# Compatibility errors
# --------------------------------------------------------------------------------------------


def test_missing_engine_file_names_the_fix(tmp_path: Any) -> None:
    with pytest.raises(FileNotFoundError, match="make engine"):
        EngineSession(str(tmp_path / "nope.engine"))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="full TensorRT is installed here")
def test_missing_tensorrt_is_named() -> None:
    with pytest.raises(EngineCompatibilityError) as info:
        EngineSession(b"\0" * 128, library="tensorrt")
    assert info.value.cause == "no_tensorrt"
    assert "TensorRT is not installed" in str(info.value) and "pip install tensorrt" in str(info.value)
    assert str(info.value).count("Fix:") == 1  # one fix sentence, not one per layer


def test_error_survives_pickling() -> None:
    err = EngineCompatibilityError("gpu_arch", "built for sm_86")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.cause, str(copy)) == (err.cause, str(err))
    io = pickle.loads(pickle.dumps(EngineIOError("wrong inputs")))
    assert io.cause == "io" and "make engine" in str(io)


@pytest.fixture(scope="module")
def rtx_engine() -> bytes:
    """A tiny real TensorRT-RTX engine with the QA tensors (outputs = casts of the inputs)."""
    trt = pytest.importorskip("tensorrt_rtx")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    inputs = [network.add_input(n, trt.int32, (-1, -1)) for n in INPUT_NAMES]
    for out_name, source in zip(OUTPUT_NAMES, (inputs[0], inputs[2])):
        cast = network.add_cast(source, trt.float32)
        cast.get_output(0).name = out_name
        network.mark_output(cast.get_output(0))
    config = builder.create_builder_config()
    for spec in profiles_for_buckets((64, 128), 1, 4, 8):
        profile = builder.create_optimization_profile()
        for n in INPUT_NAMES:
            profile.set_shape(n, *spec.shapes())
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    return bytes(plan)


def _rtx_error(data: bytes) -> EngineCompatibilityError:
    with pytest.raises(EngineCompatibilityError) as info:
        EngineSession(data, library="tensorrt_rtx")
    return info.value


@needs_rtx
def test_garbage_engine_is_named_corrupt() -> None:
    err = _rtx_error(b"not an engine" * 100)
    assert err.cause == "malformed"
    message = str(err)
    assert "corrupt, truncated or not a TensorRT engine" in message
    assert "1300 bytes" in message and "make engine" in message and "ONNX" in message


@needs_rtx
def test_empty_and_header_truncated_engines_are_named() -> None:
    assert "empty (0 bytes)" in str(_rtx_error(b""))
    err = _rtx_error(b"\x01" * 10)
    assert err.cause == "malformed" and "shorter than an engine header" in str(err)


@needs_rtx
def test_diagnosis_of_a_truncated_real_engine(rtx_engine: bytes) -> None:
    import tensorrt_rtx as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    state, findings = engine_validity(trt, runtime, rtx_engine[:40])
    assert state == "INVALID" and [f.cause for f in findings] == ["malformed"]
    err = _rtx_error(rtx_engine[: len(rtx_engine) // 2])
    assert str(err).startswith(f"cannot load the TensorRT engine ({len(rtx_engine) // 2} bytes) with tensorrt_rtx")
    assert "Fix:" in str(err)


@needs_rtx
@no_gpu_only
def test_valid_engine_without_a_gpu_names_the_missing_gpu(rtx_engine: bytes) -> None:
    err = _rtx_error(rtx_engine)
    assert err.cause == "no_gpu"
    message = str(err)
    assert "on no GPU (" in message and "NVIDIA GPU and driver" in message


# --------------------------------------------------------------------------------------------
# TensorRT's lean runtime (real tensorrt_lean_bindings, which import on a CPU box)
# --------------------------------------------------------------------------------------------

HAS_LEAN = importlib.util.find_spec("tensorrt_lean_bindings") is not None
needs_lean = pytest.mark.skipif(not HAS_LEAN, reason="pip install 'trt-bert-qa-beam[lean]'")


@needs_lean
def test_lean_runtime_loads_as_its_own_library() -> None:
    from trt_handler.engines.library import library_name, load_trt

    module = load_trt("tensorrt_lean")
    assert module.__name__ == "tensorrt_lean_bindings" and library_name(module) == "tensorrt_lean"
    assert module.__version__.startswith("11.")


@needs_lean
def test_lean_runtime_refuses_an_engine_not_built_version_compatible(tmp_path: Any) -> None:
    import tensorrt_lean_bindings as lean

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 4096)
    sidecar = {"library": "tensorrt", "library_version": lean.__version__, "version_compatible": False,
               "profiles": [p.to_dict() for p in PROFILES]}
    (tmp_path / "m.engine.json").write_text(__import__("json").dumps(sidecar))
    with pytest.raises(EngineCompatibilityError) as info:
        EngineSession(str(engine), library="tensorrt_lean")  # the sidecar is read next to the engine
    assert info.value.cause == "version"
    assert "not built version-compatible" in str(info.value) and "--version-compatible" in str(info.value)


@needs_lean
def test_lean_runtime_names_the_missing_gpu_for_a_version_compatible_engine() -> None:
    import tensorrt_lean_bindings as lean

    sidecar = {"library": "tensorrt", "library_version": lean.__version__, "version_compatible": True}
    with pytest.raises(EngineCompatibilityError) as info:
        EngineSession(b"\0" * 4096, library="tensorrt_lean", sidecar=sidecar)
    if GPU_SKIP is not None:
        assert info.value.cause == "no_gpu" and "tensorrt_lean_bindings 11." in str(info.value)
    newer = dict(sidecar, library_version="11.99.0.1")
    with pytest.raises(EngineCompatibilityError, match="no newer than itself") as info:
        EngineSession(b"\0" * 4096, library="tensorrt_lean", sidecar=newer)
    assert info.value.cause == "version"


# --------------------------------------------------------------------------------------------
# Real GPU: ExecutionSlot and EngineSession over CUDA, with a stand-in for TensorRT
# --------------------------------------------------------------------------------------------


class CopyContext:
    """Stand-in for IExecutionContext: ``execute_async_v3`` queues D2D copies on the given stream
    (input_ids -> start_logits, token_type_ids -> end_logits, bit for bit), so results are right
    only if uploads, "execution" and downloads stay ordered on the slot's one stream."""

    def __init__(self) -> None:
        self.profile: int | None = None
        self.addresses: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        self.profile = profile_index
        return True

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = memory
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes["input_ids"]

    def execute_async_v3(self, stream_handle: int) -> bool:
        rt = cr.cudart()
        nbytes = int(np.prod(self.shapes["input_ids"])) * 4
        kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        for dst, src in (("start_logits", "input_ids"), ("end_logits", "token_type_ids")):
            cr.check(rt.cudaMemcpyAsync(self.addresses[dst], self.addresses[src], nbytes, kind, stream_handle))
        return True


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.int32)


@pytest.mark.gpu
@needs_gpu
def test_execution_slot_runs_on_the_gpu_and_reuses_its_buffers() -> None:
    spec = ProfileSpec(1, 8, 16, 1, 128, 128)
    context = CopyContext()
    slot = ExecutionSlot(context, 2, spec)
    try:
        assert context.profile == 2 and set(context.addresses) == set(INPUT_NAMES + OUTPUT_NAMES)
        pointers = {n: slot.buffers.device_ptr(n) for n in INPUT_NAMES + OUTPUT_NAMES}
        assert pointers == context.addresses
        for b, s in [(16, 128), (3, 17), (1, 1), (9, 100)]:
            batch = _batch(b, s, b * s)
            start, end = slot.run([batch.input_ids, batch.attention_mask, batch.token_type_ids])
            assert start.shape == (b, s) and start.dtype == np.float32
            np.testing.assert_array_equal(_bits(start), batch.input_ids)
            np.testing.assert_array_equal(_bits(end), batch.token_type_ids)
            assert {n: slot.buffers.device_ptr(n) for n in pointers} == pointers  # no reallocation
        with pytest.raises(ValueError, match="outside profile 2"):
            slot.run([np.zeros((17, 4), np.int32)] * 3)
    finally:
        slot.close()
    assert slot.buffers.closed


@pytest.mark.gpu
@needs_gpu
def test_engine_session_on_the_gpu_from_many_threads() -> None:
    engine = FakeEngine(profiles_for_buckets((32, 64, 128), 1, 8, 16), context_factory=CopyContext)
    with EngineSession.from_engine(engine, contexts_per_profile=1, max_contexts_per_profile=3) as session:
        assert session._pool._created == [1, 1, 1]

        def work(seed: int) -> None:
            rng = random.Random(seed)
            for i in range(25):
                b, s = rng.randint(1, 16), rng.randint(1, 128)  # the profiles' max batch: 16
                batch = _batch(b, s, seed * 1000 + i)
                start, end = session.run(batch, choose_profile(session.profiles, s, b))
                if not (np.array_equal(_bits(start), batch.input_ids) and np.array_equal(_bits(end), batch.token_type_ids)):
                    raise AssertionError(f"thread {seed}: wrong logits for [{b}, {s}]")

        run_threads(work, 8, timeout=300)
        assert all(1 <= n <= 3 for n in session._pool._created)
