"""The engine builder's command line: ``python -m trt_handler.engines.build`` (console script ``trt-qa-engine``).

    python -m trt_handler.engines.build --onnx model.onnx --output model.engine --targets sm75,sm89
    python -m trt_handler.engines.build --model MODEL --cache-dir cache        # prints the engine's path
    python -m trt_handler.engines.build --bert-large-random --cache-dir cache --vocab vocab.txt
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path

from trt_handler.engines.builder import PRECISIONS, BuildOptions, build_serialized, write_engine_files
from trt_handler.engines.calibration import squad_windows
from trt_handler.engines.library import LIBRARIES
from trt_handler.planning import DEFAULT_TOKEN_BUDGET, token_budget_profiles
from trt_handler.qa.batching import DEFAULT_BUCKETS

__all__ = ["BERT_LARGE", "main", "tokenizer_from_vocab", "window_lengths"]

BERT_LARGE: dict[str, int] = {"num_layers": 24, "hidden": 1024, "heads": 16, "intermediate": 4096}


def tokenizer_from_vocab(vocab_file: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """A folder with a BERT WordPiece fast tokenizer (uncased) made from a vocab.txt; reused if present."""
    import transformers

    vocab, out = Path(vocab_file), Path(out_dir)
    if not vocab.is_file():
        raise FileNotFoundError(f"vocab file {vocab} does not exist; pass a BERT vocab.txt with --vocab")
    if not (out / "tokenizer.json").is_file():
        # transformers 5 made BertTokenizer the fast one and kept BertTokenizerFast as an alias
        cls = getattr(transformers, "BertTokenizerFast", None) or transformers.BertTokenizer
        cls(str(vocab), do_lower_case=True).save_pretrained(str(out))
    return out


def window_lengths(data: str | os.PathLike[str], tokenizer: str | os.PathLike[str], max_seq: int) -> list[int]:
    """Token count of every window the pipeline makes from ``data`` (SQuAD JSON/JSONL), in ``max_seq`` windows."""
    lengths = [len(w.input_ids) for w in squad_windows(data, tokenizer, max_seq)]
    if not lengths:
        raise ValueError(f"{data} gave no windows; --data needs SQuAD JSON or JSONL with questions")
    return lengths


def _ints(text: str, n: int | None = None) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if n is not None and len(values) != n:
        raise argparse.ArgumentTypeError(f"expected {n} comma-separated integers (min,opt,max), got {text!r}")
    return values


def _arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trt_handler.engines.build",
        description="Build a TensorRT or TensorRT-RTX engine (+ <engine>.json sidecar) for BERT SQuAD QA; "
        "prints the engine's path. See docs/engines.md.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--onnx", help="ONNX file to build (with --output)")
    src.add_argument("--model", help="checkpoint folder, hub id, model bundle or model.onnx; built into --cache-dir")
    src.add_argument("--bert-large-random", action="store_true",
                     help="build a BERT-large-shaped model (24 layers, hidden 1024, random weights); prints build time")
    p.add_argument("--output", help="engine file to write (with --onnx)")
    p.add_argument("--cache-dir", default="cache", help="cache folder for --model/--bert-large-random (default: cache)")
    p.add_argument("--library", default="auto", choices=("auto", *LIBRARIES),
                   help="auto prefers tensorrt when importable (default: auto)")
    p.add_argument("--precision", default="fp16", choices=PRECISIONS, help="default: fp16")
    p.add_argument("--buckets", type=_ints, default=DEFAULT_BUCKETS,
                   help=f"sequence-length buckets, one profile each; the largest is the max sequence length "
                   f"(default: {','.join(map(str, DEFAULT_BUCKETS))})")
    p.add_argument("--data", help="SQuAD JSON/JSONL whose window lengths (model tokenizer) choose the buckets; "
                   "each profile then gets max batch = token budget / bucket")
    p.add_argument("--bucket-count", type=int, default=len(DEFAULT_BUCKETS),
                   help="buckets to derive with --data (default: %(default)s)")
    p.add_argument("--token-budget", type=int, help="tokens per profile (max_batch x max_seq) for per-bucket max "
                   f"batches (default with --data: {DEFAULT_TOKEN_BUDGET} = 64 x 384)")
    p.add_argument("--version-compatible", action="store_true", help="full TensorRT only: VERSION_COMPATIBLE + "
                   "EXCLUDE_LEAN_RUNTIME, for later TensorRT versions and the lean runtime (library tensorrt_lean)")
    p.add_argument("--batch", type=lambda s: _ints(s, 3), default=(1, 16, 192),
                   help="min,opt,max batch (default 1,16,192); without --data/--token-budget each profile's max "
                   "batch is the default token budget's rows for its bucket, at most max")
    p.add_argument("--targets", type=lambda s: tuple(t for t in s.split(",") if t.strip()), default=(),
                   help="TensorRT-RTX GPU targets, e.g. sm75,sm89 (T4, L4); default: the library's (Ampere+)")
    p.add_argument("--workspace-mib", type=int, help="builder workspace limit in MiB")
    p.add_argument("--timing-cache", help="TensorRT timing cache file (loaded if present, saved after)")
    p.add_argument("--calibration-data", help="SQuAD JSON/JSONL for INT8 calibration (--precision int8)")
    p.add_argument("--calibration-cache", help="INT8 calibration cache file (read if present, written after)")
    p.add_argument("--calibration-batches", type=int, default=32, help="INT8 calibration batches (default: 32)")
    p.add_argument("--tokenizer", help="folder with tokenizer files (calibration; --bert-large-random vocab)")
    p.add_argument("--vocab", help="BERT vocab.txt for --bert-large-random when no --tokenizer is given")
    p.add_argument("--seed", type=int, default=0, help="random-weight seed for --bert-large-random")
    p.add_argument("--force", action="store_true", help="rebuild even when the cache has the engine")
    p.add_argument("--verbose", action="store_true", help="log TensorRT's info messages; show tracebacks")
    return p


def _planned(args: argparse.Namespace, options: BuildOptions, tokenizer: str) -> BuildOptions:
    """``options`` with token-budget profiles (max batches not capped by --batch's max) when --data or
    --token-budget asks for them; --data is tokenized with ``tokenizer``."""
    if not (args.data or args.token_budget):
        return options
    budget = args.token_budget or DEFAULT_TOKEN_BUDGET
    max_seq = max(args.buckets)
    lengths = window_lengths(args.data, tokenizer, max_seq) if args.data else None
    profiles = token_budget_profiles(
        lengths, token_budget=budget, count=args.bucket_count, max_seq=max_seq,
        min_batch=options.min_batch, opt_batch=options.opt_batch, buckets=args.buckets,
    )
    return replace(options, buckets=tuple(p.max_seq for p in profiles),
                   max_batches=tuple(p.max_batch for p in profiles), token_budget=budget)


def _options(args: argparse.Namespace) -> BuildOptions:
    """BuildOptions from the flags of the same name, and --batch."""
    given = {f.name: getattr(args, f.name) for f in fields(BuildOptions) if f.name in vars(args)}
    return BuildOptions(**given, **dict(zip(("min_batch", "opt_batch", "max_batch"), args.batch)))


def _random_bert_bundle(args: argparse.Namespace, cache: Path) -> Path:
    from trt_handler.engines.export import export_random_bert

    if args.tokenizer:
        tokenizer = Path(args.tokenizer)
    elif args.vocab:
        digest = hashlib.sha256(Path(args.vocab).read_bytes()).hexdigest()[:12]
        tokenizer = tokenizer_from_vocab(args.vocab, cache / "tokenizers" / f"bert-uncased-{digest}")
    else:
        raise ValueError("--bert-large-random needs a vocabulary: pass --vocab path/to/bert-vocab.txt "
                         "(an uncased BERT WordPiece vocab) or --tokenizer DIR")
    out = cache / "onnx" / f"bert-large-random-seed{args.seed}"
    return export_random_bert(out, tokenizer, **BERT_LARGE, seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _arg_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.onnx and not args.output:
        parser.error("--onnx needs --output ENGINE_FILE")
    if args.output and not args.onnx:
        parser.error("--output goes with --onnx; --model/--bert-large-random write into --cache-dir")
    try:
        options = _options(args)
        if args.onnx:
            options = _planned(args, options, args.tokenizer or str(Path(args.onnx).parent))
            sidecar = write_engine_files(args.output, *build_serialized(args.onnx, options))
            path = args.output
        else:
            from trt_handler.engines.cache import build_into_cache
            from trt_handler.engines.export import bundle_onnx_path, resolve_model_bundle

            cache = Path(args.cache_dir)
            t0 = time.perf_counter()
            if args.model:
                bundle = resolve_model_bundle(args.model, cache)
            else:
                bundle = _random_bert_bundle(args, cache)
                print(f"BERT-large-shaped ONNX ready in {time.perf_counter() - t0:.1f} s: {bundle}", file=sys.stderr)
            tokenizer = args.tokenizer or str(bundle)
            options = _planned(args, replace(options, tokenizer=tokenizer), tokenizer)
            path, sidecar = build_into_cache(bundle_onnx_path(bundle), cache, options, force=args.force)
    except (RuntimeError, ValueError, FileNotFoundError, ModuleNotFoundError) as exc:  # BuildError included
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if sidecar.get("cache_hit"):
        print(f"engine already in the cache (built {sidecar.get('built_at')}; --force rebuilds)", file=sys.stderr)
    targets = ",".join(sidecar["targets"]) or ("library default" if sidecar["library"] == "tensorrt_rtx" else "this GPU")
    print(
        f"engine: {sidecar['library']} {sidecar['library_version']}, {sidecar['precision']}, targets {targets}, "
        f"{len(sidecar['profiles'])} profiles, {sidecar['engine_bytes'] / 2**20:.1f} MiB; "
        f"build took {sidecar['build_seconds']:.1f} s ({sidecar['total_seconds']:.1f} s with parsing/conversion)",
        file=sys.stderr,
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
