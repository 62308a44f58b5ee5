#!/usr/bin/env bash
# Build (and with --push, push) the Dataflow worker image: bash container/build.sh IMAGE [--push]
# Every KEY=VALUE of container/versions.env becomes a --build-arg, so versions live in one place.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"

image="${1:-}"
push="${2:-}"
if [[ -z "$image" ]]; then
  echo "usage: bash container/build.sh IMAGE [--push]   (e.g. us-docker.pkg.dev/PROJECT/REPO/trt-bert-qa:0.1.0)" >&2
  exit 2
fi
if [[ -n "$push" && "$push" != "--push" ]]; then
  echo "unknown argument $push; the only option is --push" >&2
  exit 2
fi
if ! command -v docker >/dev/null 2>&1; then
  echo "docker is not installed here; build the image on a machine with Docker (or Cloud Build)" >&2
  exit 1
fi

build_args=()
while IFS= read -r line; do
  line="${line%%#*}"
  line="${line#"${line%%[![:space:]]*}"}"   # trim leading
  line="${line%"${line##*[![:space:]]}"}"   # and trailing blanks
  [[ -z "$line" ]] && continue
  build_args+=(--build-arg "$line")
done < "$here/versions.env"

# A minimal build context with only what the image installs: never .venv, cache/ (exported
# models, engines) or outputs, whichever builder (legacy or BuildKit) reads the context.
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$root/setup.py" "$root/README.md" "$ctx/"
cp -r "$root/trt_handler" "$root/pipelines" "$ctx/"
find "$ctx" -name __pycache__ -prune -exec rm -rf {} +

# linux/amd64: Dataflow GPU workers (n1 + T4, g2 + L4) are x86-64.
docker build --platform linux/amd64 -f "$here/Dockerfile" "${build_args[@]}" -t "$image" "$ctx"
if [[ "$push" == "--push" ]]; then
  docker push "$image"
fi
