"""Compute inflation: tokens the model computes / real tokens, under the production planner.

    python -m benchmarks.bench_inflation --data ../shared/data/squad/squad_A.json \
        --model ../shared/models/minilm-l6-squad2 [--holdout ../shared/data/squad/squad_B1.json]

Every question of ``--data`` is cut into windows (``WindowMaker``, 384/128/64), in file order.
Questions are grouped into Beam batches as ``QAHandler.batch_elements_kwargs`` asks
(``BatchElements`` with ``element_size_fn`` = windows of a question): consecutive questions until
their windows reach ``--batch-windows`` (default 1,024, the handlers' ``max_batch_windows``); a
question's windows never leave its batch. Each Beam batch is planned by the one planner the
handlers use, :func:`trt_handler.answer_batch.plan_model_calls` (sort the batch's windows by
length, cut them greedily into calls as large as the profile of the call's longest window allows,
pad each call to its longest window rounded up to 8, or to its bucket with ``pad_to="bucket"``).
Engine tokens are the sum of rows x seq_len of the planned calls; real tokens the sum of window
lengths.

Figures (one JSON line each; ``holdout_inflation`` is the same plan on ``--holdout``):

- ``compute_inflation_bucketed``: the DEFAULT plan, ``BatchPlan.for_buckets()`` with its defaults
  (buckets ``DEFAULT_BUCKETS`` = 128,160,192,224,288,384, token budget 64 x 384 per profile,
  ``pad_to="longest"``). Acceptance: <= 1.15.
- ``compute_inflation_padded``: one bucket 384, ``pad_to="bucket"`` (bucketing off).
- ``compute_inflation_bucketed_128_256_384``: the old default (buckets 128/256/384 padded to the
  bucket); ``inflation_pad_longest`` gives the same buckets padded to the longest window.
- ``compute_inflation_bucketed_64`` / ``_bucketed_32``: uniform buckets every 64 / 32 tokens,
  and ``compute_inflation_bucketed_suggested``: ``batching.suggest_buckets`` derived from
  ``--data`` (the default buckets came from it on squad_A), all with the default pad mode and
  token budget.

Each line also has ``inflation_pad_bucket`` (every call padded to its bucket instead), the number
of calls and their mean rows, and ``calls_reaching_longer_bucket`` (calls padded to the longest
window whose longest window is in a longer bucket than the call's shortest: what sorting plus
pad-to-longest lets through). ``inflation_each_window_to_its_bucket`` is what padding each window alone to
its bucket would cost (no batching effect), as a check.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from benchmarks.common import emit
from trt_handler.answer_batch import DEFAULT_BATCH_WINDOWS


def question_windows(path: str, model: str) -> List[List[Any]]:
    """The windows of every question of ``path`` (in file order), one list per question."""
    from trt_handler.qa.reading import load_examples
    from trt_handler.qa.windows import FeatureError, WindowMaker, load_tokenizer

    examples = load_examples(path)
    maker = WindowMaker(load_tokenizer(model))
    out: List[List[Any]] = []
    for i in range(0, len(examples), 64):  # the pipeline's feature batches, in file order
        for result in maker.windows_many(examples[i:i + 64]):
            if not isinstance(result, FeatureError):
                out.append(list(result))
    return out


def windows_of(path: str, model: str) -> List[Any]:
    """Every window of ``path``, flat, in file order."""
    return [w for ws in question_windows(path, model) for w in ws]


def beam_batches(questions: Sequence[Sequence[Any]], batch_windows: int) -> List[List[Any]]:
    """Windows of consecutive questions, a batch closed before a question would take it past
    ``batch_windows`` (BatchElements with a window-count element size); a question with more
    windows than that is a batch alone."""
    out: List[List[Any]] = []
    current: List[Any] = []
    for ws in questions:
        if current and len(current) + len(ws) > batch_windows:
            out.append(current)
            current = []
        current.extend(ws)
    if current:
        out.append(current)
    return out


def account(batches: Sequence[Sequence[Any]], plan: Any) -> Dict[str, Any]:
    """Engine tokens, real tokens and model calls of these Beam batches under ``plan``."""
    from trt_handler.planning import plan_model_calls
    from trt_handler.qa.batching import bucket_for

    engine = real = calls = rows = reaching = 0
    buckets = plan.buckets
    for b in batches:
        lengths = [w.length for w in b]
        for call in plan_model_calls(lengths, plan):
            engine += call.rows * call.seq_len
            rows += call.rows
            calls += 1
            members = [lengths[i] for i in call.indices]
            if bucket_for(max(members), buckets) != bucket_for(min(members), buckets):
                reaching += 1
        real += sum(lengths)
    return {"engine_tokens": engine, "real_tokens": real, "model_calls": calls,
            "mean_rows_per_call": round(rows / max(calls, 1), 2), "inflation": engine / max(real, 1),
            "calls_reaching_longer_bucket": reaching}


def account_within_buckets(batches: Sequence[Sequence[Any]], plan: Any) -> float:
    """Inflation if no call mixed buckets: each Beam batch's windows grouped by bucket first, then
    every group planned by the same planner (a what-if for the planner, not what runs)."""
    from trt_handler.planning import plan_model_calls
    from trt_handler.qa.batching import bucket_for

    engine = real = 0
    for b in batches:
        groups: Dict[int, List[int]] = {}
        for w in b:
            groups.setdefault(bucket_for(w.length, plan.buckets), []).append(w.length)
            real += w.length
        for g in groups.values():
            engine += sum(c.rows * c.seq_len for c in plan_model_calls(g, plan))
    return engine / max(real, 1)


def plans(suggested: Sequence[int]) -> Dict[str, Any]:
    """name -> (main plan, the same buckets with the other pad mode)."""
    from trt_handler.planning import BatchPlan
    from trt_handler.qa.batching import uniform_buckets

    def pair(buckets: Sequence[int], pad_to: str = "longest") -> tuple:
        other = "bucket" if pad_to == "longest" else "longest"
        return BatchPlan.for_buckets(buckets, pad_to=pad_to), BatchPlan.for_buckets(buckets, pad_to=other)

    return {
        "bucketed": (BatchPlan.for_buckets(), BatchPlan.for_buckets(pad_to="bucket")),  # the default plan
        "padded": pair((384,), "bucket"),
        "bucketed_128_256_384": pair((128, 256, 384), "bucket"),
        "bucketed_64": pair(uniform_buckets(64, 384)),
        "bucketed_32": pair(uniform_buckets(32, 384)),
        "bucketed_suggested": pair(suggested),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_inflation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="SQuAD JSON/JSONL (questions in file order)")
    parser.add_argument("--model", required=True, help="model folder or bundle (tokenizer)")
    parser.add_argument("--holdout", default=None, help="second data set to check every plan on (squad_B1)")
    parser.add_argument("--batch-windows", type=int, default=DEFAULT_BATCH_WINDOWS,
                        help=f"windows per Beam batch at most (default {DEFAULT_BATCH_WINDOWS}, the handlers' max_batch_windows)")
    parser.add_argument("--suggest", type=int, default=6, help="number of data-derived buckets (default 6)")
    parser.add_argument("--multiple", type=int, default=32, help="suggested buckets are multiples of this (default 32)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N questions (0: all)")
    args = parser.parse_args(argv)

    from trt_handler.qa.batching import DEFAULT_BUCKETS, padded_tokens, suggest_buckets

    questions = question_windows(args.data, args.model)
    held = question_windows(args.holdout, args.model) if args.holdout else None
    if args.limit:
        questions = questions[: args.limit]
        held = held[: args.limit] if held is not None else None
    lengths = [w.length for ws in questions for w in ws]
    suggested = suggest_buckets(lengths, args.suggest, 384, args.multiple)
    batches = beam_batches(questions, args.batch_windows)
    held_batches = beam_batches(held, args.batch_windows) if held is not None else None
    common = {"data": os.path.basename(args.data), "questions": len(questions), "windows": len(lengths),
              "beam_batches": len(batches), "batch_windows": args.batch_windows,
              "planner": "trt_handler.answer_batch.plan_model_calls",
              "loadavg": [round(x, 2) for x in os.getloadavg()]}
    for name, (plan, other) in plans(suggested).items():
        main_acc = account(batches, plan)
        other_acc = account(batches, other)
        extra: Dict[str, Any] = {f"inflation_pad_{other.pad_to}": round(other_acc["inflation"], 4)}
        if plan.pad_to == "longest":
            extra["inflation_calls_within_bucket"] = round(account_within_buckets(batches, plan), 4)
        if held_batches is not None:
            h = account(held_batches, plan)
            extra.update(holdout=os.path.basename(args.holdout), holdout_inflation=round(h["inflation"], 4),
                         holdout_windows=sum(len(b) for b in held_batches))
        if name == "bucketed":
            extra["default_plan"] = ("BatchPlan.for_buckets(): DEFAULT_BUCKETS, max_tokens=64*384, pad_to='longest'")
            extra["default_buckets"] = list(DEFAULT_BUCKETS)
            extra["inflation_by_batch_windows"] = {
                n: round(account(beam_batches(questions, n), plan)["inflation"], 4) for n in (64, 256, 1024)}
        if name == "bucketed_suggested":
            extra["suggested_from"] = os.path.basename(args.data)
        emit(f"compute_inflation_{name}", main_acc["inflation"], "engine tokens / real tokens",
             buckets=list(plan.buckets), profiles=len(plan.profiles), pad_to=plan.pad_to,
             rows_per_profile=[p.max_batch for p in plan.profiles],
             engine_tokens=main_acc["engine_tokens"], real_tokens=main_acc["real_tokens"],
             model_calls=main_acc["model_calls"], mean_rows_per_call=main_acc["mean_rows_per_call"],
             calls_reaching_longer_bucket=main_acc["calls_reaching_longer_bucket"],
             inflation_each_window_to_its_bucket=round(padded_tokens(lengths, plan.buckets) / max(sum(lengths), 1), 4),
             acceptance_le_1_15=bool(main_acc["inflation"] <= 1.15), **extra, **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
