"""20,000 questions through the Beam batch pipeline (DirectRunner, ONNX Runtime) with a tiny
random-weight BERT, to measure what the pipeline itself costs: peak memory and questions/second.

    python -m benchmarks.bench_pipeline_20k [--questions 20000] [--layers 2 --hidden 64] [-- beam flags]

The sample's 20 questions are replicated with unique ids (``<id>-<copy>``) to ``--questions``.
The model is a BertForQuestionAnswering with random weights (answers are meaningless; the shape
is what matters), exported once into ``--cache-dir``. The pipeline runs in a child process
(``python -m pipelines.qa_batch``) so its peak RSS is measured alone (``getrusage`` of the child,
plus psutil sampling of the child's process tree for runners that fork workers). Figures go to
stdout (two ``benchmarks.common.emit`` lines, ``pipeline_20k_q_per_s`` and
``pipeline_20k_peak_rss_mib``, which ``benchmarks.run --with-pipeline-20k`` collects) and to
``benchmarks/results/pipeline_20k.json``. The pipeline is the production one: one element per
question, ``RunInference`` with ``OnnxRuntimeQAHandler`` and the default plan.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "squad_sample.jsonl"


def replicate(sample: Path, n: int, out: Path) -> int:
    """Write ``n`` questions cycling through ``sample`` with unique ids; returns n."""
    records = [json.loads(line) for line in sample.read_text(encoding="utf-8").splitlines() if line.strip()]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for i in range(n):
            r = dict(records[i % len(records)])
            r["id"] = f"{r['id']}-{i // len(records)}"
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return n


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_pipeline(cmd: List[str]) -> Dict[str, Any]:
    """Run the pipeline command; wall time, its output, and peak RSS (child max and sampled tree)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_tree = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        while not done.is_set():
            peak_tree = max(peak_tree, _tree_rss(proc.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the pipeline failed (exit {proc.returncode}):\n{output[-4000:]}")
    child_max_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
    return {"wall_s": wall, "output": output, "peak_rss_mib": child_max_kib / 1024,
            "peak_tree_rss_mib": peak_tree / 2**20}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_pipeline_20k", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=20_000)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--tokenizer", default=str(REPO.parent / "shared" / "models" / "minilm-l6-squad2"),
                   help="folder with the tokenizer (vocabulary) for the random model")
    p.add_argument("--cache-dir", default="cache", help="where the random model bundle is kept")
    p.add_argument("--work-dir", default="out/bench_pipeline_20k", help="input and output files")
    p.add_argument("--results", default="benchmarks/results/pipeline_20k.json")
    args, beam_args = p.parse_known_args(argv)

    from trt_handler.engines.export import export_random_bert

    work = REPO / args.work_dir
    data = work / "questions.jsonl"
    replicate(SAMPLE, args.questions, data)
    bundle = export_random_bert(
        Path(args.cache_dir) / "bench" / f"random-bert-l{args.layers}-h{args.hidden}", args.tokenizer,
        num_layers=args.layers, hidden=args.hidden, heads=args.heads, intermediate=4 * args.hidden)
    cmd = [sys.executable, "-m", "pipelines.qa_batch", "--input", str(data), "--output", str(work / "answers"),
           "--model", str(bundle), "--cache-dir", args.cache_dir, *beam_args]
    print("running:", " ".join(cmd), flush=True)
    r = run_pipeline(cmd)
    summary = next((line for line in r["output"].splitlines() if line.startswith("summary:")), "")
    m = re.search(r"read (\d+), answered (\d+), rejected (\d+)", summary)
    if not m or int(m.group(1)) != args.questions:
        raise RuntimeError(f"unexpected pipeline summary {summary!r}:\n{r['output'][-2000:]}")
    figures = {
        "questions": args.questions,
        "answered": int(m.group(2)),
        "rejected": int(m.group(3)),
        "wall_s": round(r["wall_s"], 1),
        "questions_per_s": round(args.questions / r["wall_s"], 1),
        "peak_rss_mib": round(r["peak_rss_mib"], 1),
        "peak_tree_rss_mib": round(r["peak_tree_rss_mib"], 1),
        "model": f"random BERT, {args.layers} layers, hidden {args.hidden}, {args.heads} heads",
        "runner": "DirectRunner" + (f" {' '.join(beam_args)}" if beam_args else ""),
        "pipeline_summary": summary,
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }
    out = REPO / args.results
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    import os

    from benchmarks.common import emit

    figures["loadavg"] = [round(x, 2) for x in os.getloadavg()]

    emit("pipeline_20k_q_per_s", figures["questions_per_s"], "questions/s (process start to exit)",
         **{k: v for k, v in figures.items() if k not in ("questions_per_s", "machine")})
    emit("pipeline_20k_peak_rss_mib", figures["peak_rss_mib"], "MiB (peak RSS of the pipeline process)",
         **{k: v for k, v in figures.items() if k not in ("peak_rss_mib", "machine")})
    print(summary)
    print(f"{args.questions} questions in {figures['wall_s']} s (process start to exit) = "
          f"{figures['questions_per_s']} questions/s; peak RSS {figures['peak_rss_mib']} MiB "
          f"(process tree sampled: {figures['peak_tree_rss_mib']} MiB); written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
