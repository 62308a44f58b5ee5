"""GPU benchmark for the PyTorch backend (any NVIDIA GPU; `make bench-gpu`).

Two modes:

``model`` (default): windows/s of a BERT-large-shaped QA model (24 layers, hidden 1024, 16 heads,
intermediate 4096; random weights made in-process, speed only) in fp16 with SDPA attention, fed the
window lengths of a real SQuAD split (questions sampled with a fixed seed, windowed by
:class:`trt_handler.qa.windows.WindowMaker` with the bert-base-uncased vocab). Each padding scheme
turns the window stream into model calls ``(batch, seq)``:

- ``pad384``: batches of B in arrival order, every window padded to 384.
- ``buckets3`` (128, 256, 384) and ``buckets6`` (128, 160, 192, 224, 288, 384): each window goes
  to the smallest bucket that holds it; a bucket's batch is sent when it holds B windows, the
  partial ones at the end of the stream (the best case of a bucketing handler: full batches).
- ``pad8``: batches of B in arrival order, padded to the batch's longest window rounded up to 8
  (sorting rows inside a batch changes nothing for a dense model, so this is "sorted within batch").
- ``sorted_pad8``: the whole stream sorted by length, then as ``pad8`` (an offline upper bound:
  least padding any B-sized batching can reach).

Inputs for all calls are staged on the GPU first, so the figure is the model alone; the time of a
pass is taken with CUDA events around it after a warm-up pass over the same shapes, median of
``--repeats`` passes. One more pair of figures goes through :class:`TorchRunner` (numpy in, numpy
out, pinned copies): ``run()`` one call at a time, and ``submit()`` with two calls in flight.

``pipeline``: the Beam pipeline with ``--backend torch`` on one GPU, in the topology of a Dataflow
worker (N independent harness processes feeding one GPU: N ``python -m pipelines.qa_batch``
processes over N input shards) and with the DirectRunner's multi-process mode
(``--direct_num_workers N --direct_running_mode multi_processing``). Measures aggregate
questions/s over the wall time (process start and model load included), the GPU's busy share
(``nvidia-smi utilization.gpu`` sampled every 0.5 s) and CPU cores used (``/proc/stat``).

Every figure is one JSON line ``{"figure", "value", "unit", "device", ...}`` on stdout and in
``--out`` (JSONL); a table follows at the end (and goes to ``--md`` if given).

    python -m benchmarks.bench_gpu model --squad ../shared/data/squad/squad_A.json \\
        --vocab ../shared/vocab/bert-base-uncased-vocab.txt --out benchmarks/results/gpu_model_only.jsonl
    python -m benchmarks.bench_gpu pipeline --model DIR --squad F --questions 20000 --procs 4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import emit  # noqa: E402
from trt_handler.qa.types import QAExample  # noqa: E402

SCHEMES: Dict[str, Optional[Tuple[int, ...]]] = {
    "pad384": (384,),
    "buckets3": (128, 256, 384),
    "buckets6": (128, 160, 192, 224, 288, 384),
    "pad8": None,
    "sorted_pad8": None,
    # the product's own planner (answer_batch.plan_model_calls) over Beam batches of PLANNER_BATCH_WINDOWS windows
    # in arrival order: sorted within the batch, padded to the longest window rounded up to 8
    "planner3": (128, 256, 384),
    "planner6": (128, 160, 192, 224, 288, 384),
}
PLANNER_BATCH_WINDOWS = 1024  # answer_batch.DEFAULT_BATCH_WINDOWS (256 in the first H200 runs)
BERT_LARGE = {"layers": 24, "hidden": 1024, "heads": 16, "intermediate": 4096}


# --------------------------------------------------------------------------------------------
# data


def squad_examples(path: Path) -> List[QAExample]:
    """Questions of a SQuAD JSON file, in file order (plain json: no Beam needed)."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    return [QAExample(qa["id"], qa["question"], para["context"],
                      tuple(a["text"] for a in qa.get("answers", ())), qa.get("is_impossible"))
            for art in doc["data"] for para in art["paragraphs"] for qa in para["qas"]]


def _tokenizer_from_vocab(vocab: Path, out: Path) -> Path:
    from trt_handler.engines.build import tokenizer_from_vocab

    return Path(tokenizer_from_vocab(vocab, out))


def window_lengths(squad: Path, vocab: Path, *, questions: int, seed: int, tokenizer_dir: Optional[Path] = None,
                   max_seq_length: int = 384) -> List[int]:
    """Real token counts of the windows of ``questions`` questions sampled from ``squad`` (stream order)."""
    from trt_handler.qa.windows import FeatureConfig, FeatureError, WindowMaker, load_tokenizer

    examples = squad_examples(squad)
    rng = random.Random(seed)
    if questions and questions < len(examples):
        examples = rng.sample(examples, questions)
    else:
        rng.shuffle(examples)
    tok_dir = tokenizer_dir or Path(tempfile.gettempdir()) / "trt_qa_bench_tokenizer"
    maker = WindowMaker(load_tokenizer(_tokenizer_from_vocab(vocab, tok_dir)), FeatureConfig(max_seq_length=max_seq_length))
    lengths: List[int] = []
    for result in maker.windows_many(examples):
        if not isinstance(result, FeatureError):
            lengths.extend(w.length for w in result)
    return lengths


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def planner_calls(lengths: Sequence[int], buckets: Sequence[int], batch: int) -> Tuple[List[List[int]], List[int]]:
    """The model calls ``answer_batch.plan_model_calls`` makes of consecutive Beam batches of
    PLANNER_BATCH_WINDOWS windows: (each call's window lengths, its padded length)."""
    from trt_handler.planning import BatchPlan, plan_model_calls

    plan = BatchPlan.for_buckets(buckets, batch)
    calls: List[List[int]] = []
    seqs: List[int] = []
    for start in range(0, len(lengths), PLANNER_BATCH_WINDOWS):
        part = list(lengths[start:start + PLANNER_BATCH_WINDOWS])
        for c in plan_model_calls(part, plan):
            calls.append([part[i] for i in c.indices])
            seqs.append(c.seq_len)
    return calls, seqs


def plan_calls(lengths: Sequence[int], scheme: str, batch: int) -> List[List[int]]:
    """The model calls of a scheme: each call is the list of its windows' lengths; the padded length
    is :func:`call_seq` of it."""
    if scheme.startswith("planner"):
        return planner_calls(lengths, SCHEMES[scheme] or (), batch)[0]
    if scheme in ("pad8", "pad384"):
        return [list(lengths[i:i + batch]) for i in range(0, len(lengths), batch)]
    if scheme == "sorted_pad8":
        ordered = sorted(lengths)
        return [ordered[i:i + batch] for i in range(0, len(ordered), batch)]
    buckets = SCHEMES[scheme]
    assert buckets is not None
    open_: Dict[int, List[int]] = {b: [] for b in buckets}
    calls: List[List[int]] = []
    for n in lengths:
        b = next(x for x in buckets if n <= x)
        open_[b].append(n)
        if len(open_[b]) == batch:
            calls.append(open_.pop(b))
            open_[b] = []
    calls.extend(v for v in open_.values() if v)
    return calls


def call_seq(scheme: str, call: Sequence[int]) -> int:
    longest = max(call)
    if scheme in ("pad8", "sorted_pad8"):
        return _round_up(longest, 8)
    buckets = SCHEMES[scheme]
    assert buckets is not None
    return next(x for x in buckets if longest <= x)


# --------------------------------------------------------------------------------------------
# model-only


def _random_bert(torch: Any, vocab_size: int, shape: Dict[str, int], dtype: Any, device: Any) -> Any:
    from transformers import BertConfig, BertForQuestionAnswering

    config = BertConfig(vocab_size=vocab_size, hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                        num_attention_heads=shape["heads"], intermediate_size=shape["intermediate"],
                        max_position_embeddings=512)
    torch.manual_seed(0)
    with torch.device(device):  # weights made on the GPU: seconds instead of a CPU init of 335M params
        model = BertForQuestionAnswering._from_config(config, attn_implementation="sdpa", dtype=dtype)
    return model.eval()


def _stage(torch: Any, calls: List[List[int]], seqs: List[int], vocab: int, device: Any, seed: int) -> List[Tuple[Any, Any, Any]]:
    """Device tensors (ids, mask, types) per call, rows masked to their real lengths."""
    gen = torch.Generator().manual_seed(seed)
    staged = []
    for call, s in zip(calls, seqs):
        b = len(call)
        lens = torch.tensor(call)
        pos = torch.arange(s)
        mask = (pos[None, :] < lens[:, None]).long()
        ids = torch.randint(1000, vocab, (b, s), generator=gen) * mask
        ids[:, 0] = 101
        types = ((pos[None, :] >= (lens[:, None] // 3)) & mask.bool()).long()
        staged.append((ids.to(device), mask.to(device), types.to(device)))
    return staged


def _time_pass(torch: Any, model: Any, staged: Sequence[Tuple[Any, Any, Any]]) -> float:
    if staged and staged[0][0].device.type == "cpu":  # smoke runs without a GPU
        t0 = time.perf_counter()
        with torch.inference_mode():
            for ids, mask, types in staged:
                model(input_ids=ids, attention_mask=mask, token_type_ids=types)
        return time.perf_counter() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.inference_mode():
        start.record()
        for ids, mask, types in staged:
            model(input_ids=ids, attention_mask=mask, token_type_ids=types)
        end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _runner_figures(torch: Any, model: Any, calls: List[List[int]], seqs: List[int], repeats: int, vocab: int,
                    base: Dict[str, Any], rows: List[Dict[str, Any]]) -> None:
    """The same calls through TorchRunner: numpy in/out, pinned non-blocking copies, events."""
    import numpy as np

    from trt_handler.backends.torch_runner import TorchRunner
    from trt_handler.qa.types import ModelBatch

    runner = TorchRunner.from_model(model, device=str(base["torch_device"]), dtype="fp16")
    rng = np.random.default_rng(0)
    batches = []
    for call, s in zip(calls, seqs):
        lens = np.asarray(call)[:, None]
        pos = np.arange(s)[None, :]
        mask = (pos < lens).astype(np.int32)
        ids = (rng.integers(1000, vocab, (len(call), s)) * mask).astype(np.int32)
        ids[:, 0] = 101
        types = ((pos >= lens // 3) & (mask > 0)).astype(np.int32)
        batches.append(ModelBatch(ids, mask, types))
    windows = sum(len(c) for c in calls)

    def serial() -> None:
        for b in batches:
            runner.run(b)

    def overlapped(depth: int = 2) -> None:
        inflight: List[Any] = []
        for b in batches:
            inflight.append(runner.submit(b))
            if len(inflight) >= depth:
                inflight.pop(0).result()
        for p in inflight:
            p.result()

    for name, fn in (("runner_run", serial), ("runner_submit_depth2", overlapped)):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        rows.append(emit(f"torch_fp16_{name}", windows / med, "windows/s", **base, mode=name,
                         seconds_median=med, seconds_all=times))


def bench_engine(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Model only on a TensorRT engine (``--backend tensorrt --engine E``): the product's planner on
    the engine's own profiles over the same real window lengths, timed with ``run_model_calls``.
    Needs TensorRT and a GPU the engine was built for (a T4/L4/A100 with the NGC container); it
    cannot run on Hopper, where TensorRT-RTX engines refuse to load."""
    import numpy as np

    from trt_handler.answer_batch import run_model_calls
    from trt_handler.engines import cuda_runtime
    from trt_handler.engines.session import EngineSession
    from trt_handler.planning import BatchPlan, plan_model_calls
    from trt_handler.qa.types import Window

    lengths = window_lengths(Path(args.squad), Path(args.vocab), questions=args.sample_questions, seed=args.seed)
    session = EngineSession(args.engine)  # warms every profile up
    plan = BatchPlan(tuple(session.profiles), max_batch=session.max_batch)
    rng = np.random.default_rng(args.seed)
    windows = []
    for i, n in enumerate(lengths):
        ids = rng.integers(1000, 30000, n).astype(np.int32)
        ctx = np.arange(n) >= 3
        windows.append(Window(f"w{i}", 0, ids, ctx.astype(np.int32), np.zeros((n, 2), np.int32), ctx, ctx))
    rows: List[Dict[str, Any]] = []
    batches = [(windows[start:start + PLANNER_BATCH_WINDOWS],
                plan_model_calls(lengths[start:start + PLANNER_BATCH_WINDOWS], plan))
               for start in range(0, len(windows), PLANNER_BATCH_WINDOWS)]
    for part, planned in batches[:2]:  # warm-up of the planned shapes
        run_model_calls(part, planned, session)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for part, planned in batches:
            run_model_calls(part, planned, session)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    rows.append(emit("model_only_windows_per_s", len(lengths) / med, "windows/s", device=cuda_runtime.device_name(),
                     backend="tensorrt", engine=args.engine, library=session.library, scheme="planner (engine profiles)",
                     calls=sum(len(planned) for _, planned in batches), windows=len(lengths),
                     seconds_median=med, seconds_all=times))
    return rows


def bench_model(args: argparse.Namespace) -> List[Dict[str, Any]]:
    if getattr(args, "backend", "torch") == "tensorrt":
        if not args.engine:
            raise SystemExit("--backend tensorrt needs --engine FILE (built for this GPU)")
        return bench_engine(args)
    import torch

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench_gpu model needs a CUDA GPU visible to PyTorch (torch.cuda.is_available() is False); "
                         "--device cpu with a small --layers/--hidden is a smoke test only")
    if cuda:
        torch.cuda.set_device(device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    t0 = time.perf_counter()
    lengths = window_lengths(Path(args.squad), Path(args.vocab), questions=args.sample_questions, seed=args.seed)
    print(f"# {len(lengths)} windows from {args.sample_questions} sampled questions of {args.squad} "
          f"(mean {statistics.mean(lengths):.1f} tokens, max {max(lengths)}) in {time.perf_counter() - t0:.1f}s",
          file=sys.stderr, flush=True)
    vocab = 30522
    shape = {k: getattr(args, k) for k in BERT_LARGE}
    model = _random_bert(torch, vocab, shape, dtype, device)
    base = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu (smoke test)", "torch_device": str(device), "dtype": args.dtype,
        "attn": model.config._attn_implementation, "model_shape": shape, "torch": torch.__version__,
        "cuda": torch.version.cuda, "squad": Path(args.squad).name, "sampled_questions": args.sample_questions,
        "windows": len(lengths), "real_tokens": int(sum(lengths)), "repeats": args.repeats,
    }
    rows: List[Dict[str, Any]] = []
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    schemes = [s for s in args.schemes.split(",")]
    for scheme in schemes:
        if scheme not in SCHEMES:
            raise SystemExit(f"unknown scheme {scheme!r}; choose from {', '.join(SCHEMES)}")
        for b in batch_sizes:
            if scheme.startswith("planner"):
                calls, seqs = planner_calls(lengths, SCHEMES[scheme] or (), b)
            else:
                calls = plan_calls(lengths, scheme, b)
                seqs = [call_seq(scheme, c) for c in calls]
            staged = _stage(torch, calls, seqs, vocab, device, args.seed)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            _time_pass(torch, model, staged)  # warm-up over every shape of this plan
            times = [_time_pass(torch, model, staged) for _ in range(args.repeats)]
            med = statistics.median(times)
            padded = sum(len(c) * s for c, s in zip(calls, seqs))
            rows.append(emit("model_only_windows_per_s", len(lengths) / med, "windows/s", **base, scheme=scheme,
                             buckets=SCHEMES[scheme], batch=b, calls=len(calls), distinct_shapes=len(set(
                                 (len(c), s) for c, s in zip(calls, seqs))), padded_tokens=padded,
                             pad_share=1 - base["real_tokens"] / padded, seconds_median=med, seconds_all=times,
                             real_tokens_per_s=base["real_tokens"] / med,
                             peak_mem_gib=torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None))
            del staged
    if args.runner_check:
        calls = plan_calls(lengths, "buckets3", 64)
        _runner_figures(torch, model, calls, [call_seq("buckets3", c) for c in calls], args.repeats, vocab,
                        {**base, "scheme": "buckets3", "batch": 64}, rows)
    return rows


def _shape_name(shape: Dict[str, int]) -> str:
    text = f"{shape['layers']}L/{shape['hidden']}H/{shape['heads']}A/{shape['intermediate']}I"
    return f"BERT-large ({text})" if shape == BERT_LARGE else text


def model_table(rows: Sequence[Dict[str, Any]]) -> str:
    model_rows = [r for r in rows if r["figure"] == "model_only_windows_per_s"]
    if not model_rows:
        return ""
    if model_rows[0].get("backend") == "tensorrt":
        r = model_rows[0]
        return (f"Model only, TensorRT engine {r['engine']} ({r['library']}) on {r['device']}: "
                f"{r['value']:.0f} windows/s over {r['windows']} windows in {r['calls']} planned calls")
    r0 = model_rows[0]
    batches = sorted({r["batch"] for r in model_rows})
    schemes = list(dict.fromkeys(r["scheme"] for r in model_rows))
    lines = [f"Model only, windows/s — {r0['device']}, model {_shape_name(r0['model_shape'])} {r0['dtype']} {r0['attn']}, torch "
             f"{r0['torch']} CUDA {r0['cuda']}; {r0['windows']} windows of {r0['sampled_questions']} questions "
             f"sampled from {r0['squad']} (median of {r0['repeats']})", "",
             "| scheme | " + " | ".join(f"B={b}" for b in batches) + " | padding share (B=64) |",
             "|---|" + "---:|" * len(batches) + "---:|"]
    for s in schemes:
        cells = []
        pad = ""
        for b in batches:
            hit = [r for r in model_rows if r["scheme"] == s and r["batch"] == b]
            cells.append(f"{hit[0]['value']:.0f}" if hit else "")
            if hit and b == 64:
                pad = f"{hit[0]['pad_share']:.0%}"
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {pad} |")
    for r in rows:
        if r["figure"].startswith("torch_fp16_runner"):
            lines.append(f"\nTorchRunner ({r['mode']}, buckets3, B=64, numpy in/out): {r['value']:.0f} windows/s")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# pipeline (needs `--backend torch` in pipelines.qa_batch)


def write_shards(squad: Path, questions: int, shards: int, folder: Path) -> List[Path]:
    """Replicate the split's questions (ids made unique: ``<id>~r<k>``) up to ``questions``, cut
    into ``shards`` contiguous JSONL files (as a sharded input is: questions of one paragraph stay
    together, so each context is tokenized once per batch)."""
    examples = squad_examples(squad)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"shard-{i:03d}.jsonl" for i in range(shards)]
    files = [p.open("w", encoding="utf-8") for p in paths]
    per_shard = -(-questions // shards)
    try:
        for n in range(questions):
            ex = examples[n % len(examples)]
            rec = {"id": f"{ex.id}~r{n // len(examples)}", "question": ex.question, "context": ex.context,
                   "answers": list(ex.answers)}
            files[n // per_shard].write(json.dumps(rec) + "\n")
    finally:
        for f in files:
            f.close()
    return paths


class Sampler:
    """Per-GPU utilization (one ``nvidia-smi -lms`` stream) and host CPU busy time (/proc/stat, every
    ``period`` s), as time series over a run; means over any interval of it."""

    def __init__(self, period: float = 0.5):
        self.period = period
        self.gpu: List[Tuple[float, int, float]] = []  # (monotonic time, GPU index, utilization %)
        self.cpu: List[Tuple[float, int]] = []  # (monotonic time, busy jiffies)
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._smi: Optional[subprocess.Popen] = None

    @staticmethod
    def _cpu_jiffies() -> int:
        with open("/proc/stat", encoding="ascii") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        return sum(vals) - vals[3] - (vals[4] if len(vals) > 4 else 0)

    def _cpu_loop(self) -> None:
        while True:
            self.cpu.append((time.monotonic(), self._cpu_jiffies()))
            if self._stop.wait(self.period):
                return

    def _gpu_loop(self) -> None:
        try:
            self._smi = subprocess.Popen(["nvidia-smi", "--query-gpu=index,utilization.gpu", "--format=csv,noheader,nounits",
                                          f"--loop-ms={int(self.period * 1000)}"], stdout=subprocess.PIPE, text=True,
                                         stderr=subprocess.DEVNULL)
        except OSError:
            return  # no NVIDIA GPU here (CPU smoke runs)
        assert self._smi.stdout is not None
        for line in self._smi.stdout:
            try:
                index, util = (float(x) for x in line.split(","))
            except ValueError:
                continue
            self.gpu.append((time.monotonic(), int(index), util))

    def __enter__(self) -> Sampler:
        self.t0 = time.monotonic()
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._cpu_loop, self._gpu_loop)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.t1 = time.monotonic()
        self._stop.set()
        if self._smi is not None:
            self._smi.terminate()
        for t in self._threads:
            t.join(timeout=10)

    def gpu_busy(self, t0: Optional[float] = None, t1: Optional[float] = None) -> Dict[int, float]:
        """Mean utilization (0..1) of each GPU over [t0, t1] (the whole run by default)."""
        lo, hi = (self.t0 if t0 is None else t0), (self.t1 if t1 is None else t1)
        by_gpu: Dict[int, List[float]] = {}
        for t, index, util in self.gpu:
            if lo <= t <= hi:
                by_gpu.setdefault(index, []).append(util / 100)
        return {i: statistics.mean(v) for i, v in sorted(by_gpu.items())}

    def cpu_cores(self, t0: Optional[float] = None, t1: Optional[float] = None) -> Optional[float]:
        """Cores busy on average over [t0, t1] (the samples nearest inside it)."""
        lo, hi = (self.t0 if t0 is None else t0), (self.t1 if t1 is None else t1)
        inside = [(t, j) for t, j in self.cpu if lo <= t <= hi]
        if len(inside) < 2:
            return None
        (ta, ja), (tb, jb) = inside[0], inside[-1]
        return (jb - ja) / os.sysconf("SC_CLK_TCK") / (tb - ta)


_PROGRESS = re.compile(r"^progress: read \d+, answered (\d+), rejected (\d+)")


class Run:
    """N pipeline processes started together; each one's answered count over time from its
    progress lines (``--progress-every``), its log kept in ``logs``."""

    def __init__(self, cmds: Sequence[List[str]], env: Dict[str, str], logs: Path) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.events: List[Tuple[float, int, int]] = []  # (time, process, answered so far)
        self.t_start = time.monotonic()
        self.procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                      for cmd in cmds]
        self._lock = threading.Lock()
        self._readers = [threading.Thread(target=self._read, args=(k, p, logs / f"proc-{k:02d}.log"), daemon=True)
                         for k, p in enumerate(self.procs)]
        for t in self._readers:
            t.start()

    def _read(self, k: int, proc: subprocess.Popen, log: Path) -> None:
        assert proc.stderr is not None
        with log.open("w", encoding="utf-8") as f:
            for line in proc.stderr:
                f.write(line)
                m = _PROGRESS.match(line)
                if m:
                    with self._lock:
                        self.events.append((time.monotonic(), k, int(m.group(1))))

    def wait(self) -> List[int]:
        codes = [p.wait() for p in self.procs]
        for t in self._readers:
            t.join(timeout=30)
        self.t_end = time.monotonic()
        return codes

    def answered_series(self) -> List[Tuple[float, int]]:
        """(time, answered by all processes so far), one point per progress line."""
        last = [0] * len(self.procs)
        out = []
        for t, k, n in sorted(self.events):
            last[k] = n
            out.append((t, sum(last)))
        return out

    def steady(self, total: int, lo: float = 0.1, hi: float = 0.9) -> Tuple[float, float, float, float]:
        """(startup seconds: launch to the first answer, steady questions/s between the moments
        ``lo`` and ``hi`` of ``total`` were answered, and those two moments)."""
        series = self.answered_series()
        first = next((t for t, n in series if n > 0), self.t_end)
        t_lo, n_lo = next(((t, n) for t, n in series if n >= lo * total), series[0] if series else (first, 0))
        t_hi, n_hi = next(((t, n) for t, n in series if n >= hi * total), series[-1] if series else (first, 0))
        rate = (n_hi - n_lo) / (t_hi - t_lo) if t_hi > t_lo else float("nan")
        return first - self.t_start, rate, t_lo, t_hi


def _qa_cmd(model: str, inp: Path, out: Path, extra: Sequence[str], engine: Optional[str] = None,
            device: str = "cuda") -> List[str]:
    backend = ["--backend", "tensorrt", "--engine", engine] if engine else [
        "--backend", "torch", "--torch-device", device, "--torch-dtype", "fp16"]
    return [sys.executable, "-m", "pipelines.qa_batch", *backend, "--model", model,
            "--input", str(inp), "--output", str(out), "--progress-every", "1", *extra]


def server_stats(folder: Path, timeout: float = 60.0) -> Optional[Dict[str, Any]]:
    """The totals the inference server under ``folder`` logged when it stopped (it lingers a little
    after its last client); None if there is no server log."""
    import ast

    logs = sorted(folder.glob("trt-qa-servers-*/*.log"))
    if not logs:
        return None
    deadline = time.monotonic() + timeout
    marker = "inference server stopped: "
    while time.monotonic() < deadline:
        text = logs[0].read_text(encoding="utf-8", errors="replace")
        if marker in text:
            return dict(ast.literal_eval(text.rsplit(marker, 1)[1].splitlines()[0]))
        time.sleep(0.5)
    return None


def pooled_planner_calls(lengths: Sequence[int], pool_windows: int, seed: int) -> Tuple[List[List[int]], List[int]]:
    """The model calls the inference server makes of these windows at steady state: arrival order
    (shuffled: the processes' windows interleave), pools of ``pool_windows``, each planned by
    ``plan_model_calls`` with the default plan (six buckets, token budget)."""
    from trt_handler.planning import BatchPlan, plan_model_calls

    order = list(lengths)
    random.Random(seed).shuffle(order)
    plan = BatchPlan.for_buckets()
    calls: List[List[int]] = []
    seqs: List[int] = []
    for start in range(0, len(order), pool_windows):
        part = order[start:start + pool_windows]
        for c in plan_model_calls(part, plan):
            calls.append([part[i] for i in c.indices])
            seqs.append(c.seq_len)
    return calls, seqs


def model_only_same_windows(lengths: Sequence[int], args: argparse.Namespace) -> Dict[str, Any]:
    """The model alone (same shape, fp16, real padding masks, inputs staged on the device) over the
    pipeline's windows: sorted and padded to the longest x8 at batch 64, and the server's plan."""
    import torch

    device = torch.device(args.device if args.device != "cuda" else "cuda:0")
    shape = {k: getattr(args, k) for k in BERT_LARGE}
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = _random_bert(torch, 30522, shape, dtype, device)
    ordered = sorted(lengths)
    schemes = {"sorted_pad8_b64": ([ordered[i:i + 64] for i in range(0, len(ordered), 64)], None),
               "server_plan": pooled_planner_calls(lengths, args.server_pool_windows, args.seed)}
    out: Dict[str, Any] = {}
    for name, (calls, seqs) in schemes.items():
        seqs = seqs or [_round_up(max(c), 8) for c in calls]
        staged = _stage(torch, calls, seqs, 30522, device, args.seed)
        _time_pass(torch, model, staged)  # warm-up over every shape
        times = [_time_pass(torch, model, staged) for _ in range(args.repeats)]
        out[f"model_only_{name}_windows_per_s"] = len(lengths) / statistics.median(times)
        out[f"model_only_{name}_padded_per_real"] = sum(len(c) * s for c, s in zip(calls, seqs)) / sum(lengths)
        del staged
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def bench_pipeline(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """For each process count and mode: N ``pipelines.qa_batch`` processes over N shards of the
    replicated split (a worker's SDK processes), either each with its own model (``independent``)
    or all feeding one inference server (``server``); and the model alone on the same windows."""
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_gpu_pipeline_"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if args.random_bert_large:
        shape = {k: getattr(args, k) for k in BERT_LARGE}
        args.model = str(make_random_checkpoint(Path(args.model), Path(args.vocab), shape))
    extra = list(args.extra or ())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "PYTHONUNBUFFERED": "1"}
    device_name = _gpu_name() if args.device != "cpu" else "cpu (smoke test)"
    lengths, questions_in_split = split_window_lengths(Path(args.squad), Path(args.model))
    wpq = len(lengths) / questions_in_split
    print(f"# {len(lengths)} windows of {questions_in_split} questions ({wpq:.4f} per question, mean "
          f"{statistics.mean(lengths):.1f} tokens); model alone on them ...", file=sys.stderr, flush=True)
    model_only = model_only_same_windows(lengths, args) if args.model_only else {}
    print(f"# {json.dumps(model_only)}", file=sys.stderr, flush=True)
    rows: List[Dict[str, Any]] = []
    modes = [m for m in args.modes.split(",") if m]
    for procs in [int(p) for p in args.procs.split(",")]:
        shards = write_shards(Path(args.squad), args.questions, procs, work / f"in-{procs}")
        for mode in modes:
            if mode not in ("independent", "server"):
                raise SystemExit(f"unknown mode {mode!r}: independent or server")
            if mode == "independent" and args.independent_procs and str(procs) not in args.independent_procs.split(","):
                continue
            tag = f"{mode}-{procs}"
            run_env = dict(env)
            mode_args = list(extra)
            if mode == "server":
                run_env["TMPDIR"] = str(work / f"tmp-{tag}")  # the server's files (and its log) go under it
                Path(run_env["TMPDIR"]).mkdir(parents=True, exist_ok=True)
                mode_args += ["--inference-server", "--server-linger-secs", "2",
                              "--server-pool-windows", str(args.server_pool_windows)]
            cmds = [_qa_cmd(args.model, p, work / f"out-{tag}" / p.stem, mode_args,
                            args.engine if args.backend == "tensorrt" else None, device=args.device) for p in shards]
            print(f"# {tag}: {len(cmds)} processes ...", file=sys.stderr, flush=True)
            with Sampler() as sampler:
                run = Run(cmds, run_env, work / f"logs-{tag}")
                codes = run.wait()
            if any(codes):
                raise SystemExit(f"qa_batch exited {codes}; logs in {work / f'logs-{tag}'}")
            startup, rate, t_lo, t_hi = run.steady(args.questions)
            busy = sampler.gpu_busy(t_lo, t_hi)
            stats = server_stats(Path(run_env["TMPDIR"])) if mode == "server" else None
            row = emit("pipeline_steady_windows_per_s", rate * wpq, "windows/s", device=device_name, mode=mode,
                       procs=procs, questions=args.questions, windows_per_question=round(wpq, 4),
                       steady_windows_per_s=rate * wpq, steady_questions_per_s=rate, startup_s=startup,
                       wall_s=run.t_end - run.t_start, steady_interval_s=[t_lo - run.t_start, t_hi - run.t_start],
                       gpu_busy_share=busy.get(0), gpu_busy_by_gpu=busy, cpu_cores_used=sampler.cpu_cores(t_lo, t_hi),
                       server_padded_per_real=(stats["padded_tokens"] / stats["real_tokens"]) if stats else None,
                       server_stats=stats, model=args.model, extra=mode_args,
                       model_only_sorted_windows_per_s=model_only.get("model_only_sorted_pad8_b64_windows_per_s"),
                       model_only_server_plan_windows_per_s=model_only.get("model_only_server_plan_windows_per_s"),
                       model_only=model_only)
            rows.append(row)
            if args.out:  # each run as it ends: a run cut short by a time limit keeps the ones before
                with open(args.out, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
            print(pipeline_table(rows), file=sys.stderr, flush=True)
    return rows


def split_window_lengths(squad: Path, model_dir: Path) -> Tuple[List[int], int]:
    """Window lengths of every question of the split (file order) with the model's tokenizer, and
    the question count: the pipeline's windows/s is its questions/s times their ratio."""
    from trt_handler.qa.windows import WindowMaker, load_tokenizer

    examples = squad_examples(squad)
    maker = WindowMaker(load_tokenizer(model_dir))
    lengths = [w.length for ws in maker.windows_many(examples) if not isinstance(ws, Exception) for w in ws]
    return lengths, len(examples)


def _gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def make_random_checkpoint(out: Path, vocab: Path, shape: Dict[str, int] = BERT_LARGE) -> Path:
    """A Hugging Face QA checkpoint folder (fp16 weights + tokenizer) of ``shape`` with seeded random
    weights, for pipeline speed runs where answers do not matter; reused when present."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(_tokenizer_from_vocab(vocab, out.parent / (out.name + "_tokenizer"))))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = _random_bert(torch, len(tok), shape, torch.float16, device)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def pipeline_table(rows: Sequence[Dict[str, Any]]) -> str:
    rows = [r for r in rows if r["figure"] == "pipeline_steady_windows_per_s"]
    if not rows:
        return ""
    r0 = rows[0]
    lines = [f"Pipeline (--backend torch, fp16), steady state — {r0['device']}, {r0['questions']} questions "
             f"({r0['windows_per_question']} windows each); model alone on the same windows: "
             f"{r0['model_only_sorted_windows_per_s'] or float('nan'):.0f} windows/s sorted and padded to the "
             f"longest x8 at batch 64, {r0['model_only_server_plan_windows_per_s'] or float('nan'):.0f} with "
             "the server's plan", "",
             "| mode | procs | windows/s | vs model alone | questions/s | start-up s | GPU busy | CPU cores | "
             "server padded/real |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = r["steady_windows_per_s"] / r["model_only_sorted_windows_per_s"] if r[
            "model_only_sorted_windows_per_s"] else float("nan")
        pad = r["server_padded_per_real"]
        lines.append(f"| {r['mode']} | {r['procs']} | {r['steady_windows_per_s']:.0f} | {ratio:.2f} | "
                     f"{r['steady_questions_per_s']:.0f} | {r['startup_s']:.1f} | {_pct(r['gpu_busy_share'])} | "
                     f"{r['cpu_cores_used'] or float('nan'):.1f} | {'' if pad is None else f'{pad:.3f}'} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode")
    m = sub.add_parser("model", help="model-only windows/s over padding schemes and batch sizes (default)")
    m.add_argument("--squad", default=str(REPO.parent / "shared/data/squad/squad_A.json"))
    m.add_argument("--vocab", default=str(REPO.parent / "shared/vocab/bert-base-uncased-vocab.txt"))
    m.add_argument("--sample-questions", type=int, default=2000, help="questions sampled from the split (0 = all)")
    m.add_argument("--batch-sizes", default="16,32,64,128")
    m.add_argument("--schemes", default=",".join(SCHEMES))
    m.add_argument("--repeats", type=int, default=3)
    m.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    m.add_argument("--backend", choices=("torch", "tensorrt"), default="torch",
                   help="torch: a BERT-large-shaped PyTorch model; tensorrt: --engine through EngineSession")
    m.add_argument("--engine", default=None, help="--backend tensorrt: the engine file (sidecar beside it)")
    m.add_argument("--device", default="cuda:0")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--no-runner-check", dest="runner_check", action="store_false",
                   help="skip the TorchRunner run()/submit() figures")
    for k, v in BERT_LARGE.items():
        m.add_argument(f"--{k}", type=int, default=v)
    pl = sub.add_parser("pipeline", help="Beam pipeline --backend torch: N processes feeding one GPU")
    pl.add_argument("--model", required=True, help="Hugging Face QA checkpoint folder (tensorrt: its tokenizer)")
    pl.add_argument("--backend", choices=("torch", "tensorrt"), default="torch")
    pl.add_argument("--engine", default=None, help="--backend tensorrt: the engine file")
    pl.add_argument("--random-bert-large", action="store_true",
                    help="make --model first (if absent): BERT-large shape, random weights, fp16, --vocab tokenizer")
    pl.add_argument("--vocab", default=str(REPO.parent / "shared/vocab/bert-base-uncased-vocab.txt"))
    pl.add_argument("--squad", default=str(REPO.parent / "shared/data/squad/squad_A.json"))
    pl.add_argument("--questions", type=int, default=20000, help="questions in all (the split replicated, ids unique)")
    pl.add_argument("--procs", default="4,8,16", help="process counts to try, comma-separated")
    pl.add_argument("--modes", default="server,independent",
                    help="server (all processes feed one inference server) and/or independent (a model each)")
    pl.add_argument("--independent-procs", default="", help="run the independent mode only for these counts")
    pl.add_argument("--server-pool-windows", type=int, default=2048, help="the server's --server-pool-windows")
    pl.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test with a small --layers/--hidden")
    pl.add_argument("--repeats", type=int, default=3, help="model-only passes (median)")
    pl.add_argument("--seed", type=int, default=0)
    pl.add_argument("--no-model-only", dest="model_only", action="store_false",
                    help="skip the model-alone figures on the same windows")
    for k, v in BERT_LARGE.items():
        pl.add_argument(f"--{k}", type=int, default=v)
    pl.add_argument("--work-dir", default=None)
    pl.add_argument("extra", nargs="*", help="after --: more pipelines.qa_batch arguments (e.g. --max-batch 64)")
    for q in (m, pl):
        q.add_argument("--out", default=None, help="append the JSON lines here")
        q.add_argument("--md", default=None, help="write the table here (markdown)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["model", *argv]
    args = _parser().parse_args(argv)
    rows = bench_model(args) if args.mode == "model" else bench_pipeline(args)
    table = model_table(rows) if args.mode == "model" else pipeline_table(rows)
    if args.out and args.mode == "model":  # the pipeline mode appends each run as it ends
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    if args.md:
        Path(args.md).write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
