"""Acceptance check: answers with length bucketing are identical to answers without it.

    python -m benchmarks.check_bucketing_identical --data ../shared/data/squad/squad_B1.json \
        [--model ../shared/models/minilm-l6-squad2] [--cache-dir cache] [--limit N] [--fine suggest]

Every question of ``--data`` is cut into windows and run on ONNX Runtime through the production
planner (``answer_batch.plan_model_calls`` / ``run_model_calls``, batches of ``--batch-windows``
consecutive windows as Beam forms them) twice or more:

- off: one bucket, 384: every window padded to 384 tokens;
- on: buckets 128/256/384, each call padded to its longest window (rounded up to 8);
- on_fine (``--fine``): the finer buckets (default: 6 derived from the data by
  ``batching.suggest_buckets``), padded the same way.

Answers come from ``qa.answers.extract_answers``. The check compares each question's answer
text (and reports best-span text, n-best texts and scores) with bucketing off as the reference,
and the largest |logit difference| of any window token: padding changes the matmul shapes, so the
last bits may differ, while masked pads get exactly zero attention weight. Prints one JSON line
per compared mode (``{"check": ..., "compared": N, "text_mismatches": K, ...}``) and exits 1 when
any answer text differs. Takes minutes on the full file (ONNX Runtime on CPU); ``--limit`` and
``--multi`` pick a subset (what tests/test_bucketing.py runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

Key = Tuple[str, int]


def pick_examples(examples: Sequence[Any], windows: Sequence[Any], limit: int, multi: int) -> List[int]:
    """Indices of the first ``multi`` questions with several windows plus the first others, ``limit``
    in all (file order); all questions when ``limit`` is 0."""
    if not limit:
        return list(range(len(examples)))
    several = [i for i, ws in enumerate(windows) if len(ws) > 1][:multi]
    chosen = set(several)
    rest = [i for i in range(len(examples)) if i not in chosen][: max(0, limit - len(several))]
    return sorted(several + rest)


def run_logits(windows: Sequence[Any], bundle: str, buckets: Sequence[int], batch: int, pad_to: str,
               threads: Optional[int], batch_windows: int = 256) -> Tuple[Dict[Key, Any], Dict[str, Any]]:
    """Logits of every window on ONNX Runtime, planned by ``answer_batch`` with these buckets."""
    from trt_handler.answer_batch import run_model_calls
    from trt_handler.backends.onnx_runner import OnnxRunner
    from trt_handler.engines.export import bundle_onnx_path
    from trt_handler.planning import BatchPlan, plan_model_calls

    runner = OnnxRunner(bundle_onnx_path(bundle), intra_op_threads=threads)
    plan = BatchPlan.for_buckets(buckets, batch, pad_to=pad_to)
    out: Dict[Key, Any] = {}
    engine_tokens = calls = 0
    t0 = time.perf_counter()
    for start in range(0, len(windows), batch_windows):
        part = windows[start:start + batch_windows]
        planned = plan_model_calls([w.length for w in part], plan)
        engine_tokens += sum(c.rows * c.seq_len for c in planned)
        calls += len(planned)
        for w, lg in zip(part, run_model_calls(part, planned, runner)):
            out[(w.example_id, w.window_index)] = lg
    stats = {"seconds": round(time.perf_counter() - t0, 1), "engine_tokens": engine_tokens,
             "real_tokens": sum(w.length for w in windows), "model_calls": calls}
    return out, stats


def answers_from(examples: Sequence[Any], windows: Sequence[Sequence[Any]], logits: Dict[Key, Any]) -> List[Any]:
    from trt_handler.qa.answers import extract_answers

    items = [(ex, ws, [logits[(w.example_id, w.window_index)] for w in ws]) for ex, ws in zip(examples, windows)]
    return [a for i in range(0, len(items), 64) for a in extract_answers(items[i:i + 64])]


def compare(ref_answers: Sequence[Any], answers: Sequence[Any], ref_logits: Dict[Key, Any],
            logits: Dict[Key, Any]) -> Dict[str, Any]:
    """Answer-text mismatches (the acceptance), and how close everything else is."""
    text = [a.id for a, b in zip(ref_answers, answers) if a.text != b.text]
    span = sum(a.best_span_text != b.best_span_text for a, b in zip(ref_answers, answers))
    nbest = sum([c["text"] for c in a.n_best] != [c["text"] for c in b.n_best] for a, b in zip(ref_answers, answers))
    score = max((abs(a.score - b.score) for a, b in zip(ref_answers, answers)), default=0.0)
    null = max((abs(a.null_score - b.null_score) for a, b in zip(ref_answers, answers)), default=0.0)
    diff = 0.0
    for key, ref in ref_logits.items():
        got = logits[key]
        diff = max(diff, float(np.abs(ref.start_logits - got.start_logits).max()),
                   float(np.abs(ref.end_logits - got.end_logits).max()))
    return {"compared": len(ref_answers), "text_mismatches": len(text), "mismatched_ids": text[:20],
            "best_span_mismatches": int(span), "n_best_text_list_mismatches": int(nbest),
            "max_abs_score_diff": score, "max_abs_null_score_diff": null, "max_abs_logit_diff": diff}


def check(data: str, model: str, cache_dir: str, *, limit: int = 0, multi: int = 20, batch: int = 64,
          threads: Optional[int] = None, fine: str = "suggest") -> List[Dict[str, Any]]:
    """Run the modes and compare each with bucketing off; one result dict per compared mode."""
    from trt_handler.engines.export import resolve_model_bundle
    from trt_handler.qa.answers import extract_answers  # noqa: F401  (fail early when missing)
    from trt_handler.qa.batching import suggest_buckets, validate_buckets
    from trt_handler.qa.reading import load_examples
    from trt_handler.qa.windows import FeatureError, WindowMaker, load_tokenizer

    bundle = str(resolve_model_bundle(model, cache_dir))
    examples = load_examples(data)
    maker = WindowMaker(load_tokenizer(bundle))
    all_windows = maker.windows_many(examples)
    usable = [i for i, ws in enumerate(all_windows) if not isinstance(ws, FeatureError)]
    examples = [examples[i] for i in usable]
    all_windows = [all_windows[i] for i in usable]
    picked = pick_examples(examples, all_windows, limit, multi)
    examples = [examples[i] for i in picked]
    windows = [all_windows[i] for i in picked]
    flat = [w for ws in windows for w in ws]
    modes: Dict[str, Tuple[Sequence[int], str]] = {"off": ((384,), "bucket"), "on": ((128, 256, 384), "longest")}
    if fine == "suggest":
        modes["on_fine"] = (suggest_buckets([w.length for ws in all_windows for w in ws], 6, 384, 32), "longest")
    elif fine and fine != "none":
        modes["on_fine"] = (validate_buckets([int(x) for x in fine.split(",")]), "longest")
    runs = {name: run_logits(flat, bundle, buckets, batch, pad_to, threads) for name, (buckets, pad_to) in modes.items()}
    ref_logits, ref_stats = runs["off"]
    ref = answers_from(examples, windows, ref_logits)
    errors = [a for a in ref if isinstance(a, Exception)]
    if errors:
        raise RuntimeError(f"{len(errors)} questions could not be answered, e.g. {errors[0]}")
    out = []
    for name, (logits, stats) in runs.items():
        if name == "off":
            continue
        result = compare(ref, answers_from(examples, windows, logits), ref_logits, logits)
        out.append({"check": "bucketing_identical", "mode": name, "buckets": list(modes[name][0]),
                    "reference": "off (every window padded to 384)", "data": os.path.basename(data),
                    "questions": len(examples), "windows": len(flat),
                    "multi_window_questions": sum(len(ws) > 1 for ws in windows),
                    "seconds_off": ref_stats["seconds"], "seconds_on": stats["seconds"],
                    "engine_tokens_off": ref_stats["engine_tokens"], "engine_tokens_on": stats["engine_tokens"],
                    "real_tokens": stats["real_tokens"], **result})
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.check_bucketing_identical", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="SQuAD JSON/JSONL (use held-out data: squad_B1.json)")
    parser.add_argument("--model", default="../shared/models/minilm-l6-squad2")
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--limit", type=int, default=0, help="questions to check (0: all)")
    parser.add_argument("--multi", type=int, default=20, help="with --limit: how many of them have several windows")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    parser.add_argument("--fine", default="suggest", help="'suggest', comma-separated buckets, or 'none'")
    args = parser.parse_args(argv)
    results = check(args.data, args.model, args.cache_dir, limit=args.limit, multi=args.multi, batch=args.batch,
                    threads=args.threads, fine=args.fine)
    for r in results:
        r["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(r), flush=True)
    return 1 if any(r["text_mismatches"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
