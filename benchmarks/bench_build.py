"""TensorRT-RTX engine build time on this (CPU-only) machine: the shared model, and BERT-large.

    python -m benchmarks.bench_build --model ../shared/models/minilm-l6-squad2 --cache-dir cache \
        [--compare-buckets 128,256,384] [--with-bert-large-build] [--vocab VOCAB]

Builds with the project's builder CLI (``python -m trt_handler.engines.build --onnx ... --output ...``)
into a temporary folder, so the engine cache is left alone, and reports the ``build_seconds`` the
builder writes into the engine's sidecar (the library's build call), with the CLI's wall time,
the sidecar's ``total_seconds`` and the engine size alongside.

- ``trt_build_seconds_minilm``: the shared model with the builder's default plan (``BuildOptions``:
  buckets 128,160,192,224,288,384, one profile each, max batch per profile from the 64 x 384
  token budget: 6 profiles);
- ``trt_build_seconds_minilm_128_256_384``: the same with ``--compare-buckets`` (default
  128,256,384, the old default: 3 profiles), since every profile costs build time and engine size;
- ``trt_build_seconds_bert_large``: a BERT-large-shaped model (24 layers, hidden 1024). Takes
  minutes, so only with ``--with-bert-large-build``; without it, the newest existing sidecar of
  such an engine in ``--cache-dir/engines`` is read (``"measured": "existing sidecar"``, with
  its build date), or nothing is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from benchmarks.common import emit

REPO = Path(__file__).resolve().parents[1]


def build(onnx: Path, out_dir: Path, name: str, extra: Sequence[str] = ()) -> Dict[str, Any]:
    """Run the builder CLI; the sidecar dict plus the CLI's wall seconds."""
    engine = out_dir / f"{name}.engine"
    cmd = [sys.executable, "-m", "trt_handler.engines.build", "--onnx", str(onnx), "--output", str(engine), *extra]
    print("running: " + " ".join(cmd), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"build failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    sidecar = json.loads(Path(str(engine) + ".json").read_text(encoding="utf-8"))
    sidecar["_wall_s"] = wall
    engine.unlink(missing_ok=True)  # engines are large; the sidecar holds what is reported
    return sidecar


def report(figure: str, sidecar: Dict[str, Any], measured: str, **extra: Any) -> None:
    emit(figure, float(sidecar["build_seconds"]), "s (library build call)",
         total_seconds=sidecar.get("total_seconds"), cli_wall_s=round(sidecar["_wall_s"], 1) if "_wall_s" in sidecar else None,
         engine_mib=round(sidecar.get("engine_bytes", 0) / 2**20, 1), library=sidecar.get("library"),
         library_version=sidecar.get("library_version"), precision=sidecar.get("precision"),
         profiles=len(sidecar.get("profiles", [])), buckets=(sidecar.get("options") or {}).get("buckets"),
         max_batches=[p.get("max_batch") for p in sidecar.get("profiles", []) if isinstance(p, dict)] or None,
         targets=sidecar.get("targets"), built_at=sidecar.get("built_at"), gpu=sidecar.get("gpu"),
         measured=measured, loadavg=[round(x, 2) for x in os.getloadavg()], **extra)


def newest_sidecar(engines: Path, prefix: str) -> Optional[Dict[str, Any]]:
    found: List[Dict[str, Any]] = []
    for p in engines.glob(f"{prefix}*.engine.json"):
        try:
            meta = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if "build_seconds" in meta and not meta.get("targets"):  # the default (Ampere+) target set
            meta["_file"] = p.name
            found.append(meta)
    return max(found, key=lambda m: str(m.get("built_at"))) if found else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--compare-buckets", default="128,256,384",
                        help="also build with these buckets (comma-separated; '' to skip; default 128,256,384)")
    parser.add_argument("--with-bert-large-build", action="store_true", help="build BERT-large (minutes)")
    parser.add_argument("--vocab", default=str(REPO.parent / "shared" / "vocab" / "bert-base-uncased-vocab.txt"),
                        help="vocab for exporting the BERT-large-shaped model when it is not cached yet")
    args = parser.parse_args(argv)

    from trt_handler.engines.export import bundle_onnx_path, resolve_model_bundle

    onnx = bundle_onnx_path(resolve_model_bundle(args.model, args.cache_dir))
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        out = Path(tmp)
        report("trt_build_seconds_minilm", build(onnx, out, "minilm"), "built now",
               model=os.path.basename(os.path.normpath(args.model)), plan="builder default (BuildOptions)")
        if args.compare_buckets:
            name = "_".join(b.strip() for b in args.compare_buckets.split(",") if b.strip())
            report(f"trt_build_seconds_minilm_{name}",
                   build(onnx, out, f"minilm-{name}", ["--buckets", args.compare_buckets]), "built now",
                   model=os.path.basename(os.path.normpath(args.model)), plan=f"--buckets {args.compare_buckets}")
        if args.with_bert_large_build:
            large = Path(args.cache_dir) / "onnx" / "bert-large-random-seed0" / "model.onnx"
            if not large.is_file():  # export it once into the cache (the builder's own recipe)
                cmd = [sys.executable, "-m", "trt_handler.engines.build", "--bert-large-random", "--cache-dir", args.cache_dir,
                       "--vocab", args.vocab]
                print("exporting BERT-large: " + " ".join(cmd), file=sys.stderr, flush=True)
                subprocess.run(cmd, cwd=REPO, check=True)
                found = list((Path(args.cache_dir) / "onnx").glob("bert-large-random*/model.onnx"))
                large = found[0]
            report("trt_build_seconds_bert_large", build(large, out, "bert-large"), "built now",
                   plan="builder default (BuildOptions)",
                   model="BERT-large-shaped, random weights (24 layers, hidden 1024)")
            return 0
    meta = newest_sidecar(Path(args.cache_dir) / "engines", "bert-large-random")
    if meta is None:
        print("no BERT-large build measured: pass --with-bert-large-build (takes minutes)", file=sys.stderr)
        return 0
    report("trt_build_seconds_bert_large", meta, "existing sidecar (not re-measured; load at build time unknown)",
           sidecar_file=meta["_file"], model="BERT-large-shaped, random weights (24 layers, hidden 1024)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
