#!/usr/bin/env bash
# The release images, built from the pinned base image and tagged <version>-cpu / <version>-gpu:
#   llmemb-serve    docker/service.Dockerfile (cpu) and docker/service-gpu.Dockerfile (gpu)
#   llmemb-backfill docker/service.Dockerfile with the Ray lock (the RayJob's image)
#   llmemb-trainer  docker/trainer.Dockerfile, CPU or CUDA torch
# Usage: scripts/images.sh plan|build|push|pin   (make images / make push; REGISTRY, VERSION override)
#   plan   print the build commands (needs nothing: what the tests check)
#   build  run them (needs a Docker engine and a pinned base image)
#   push   push every tag
#   pin    write the base image's current digest into docker/base-image.lock
set -euo pipefail
cd "$(dirname "$0")/.."
REGISTRY=${REGISTRY:-ghcr.io/llmemb}
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)}
BASE=python:3.11-slim-bookworm
LOCK=docker/base-image.lock

pinned() {
  local pin
  pin=$(grep -v '^#' "$LOCK" | grep -m1 "^$BASE@sha256:[0-9a-f]\{64\}$" || true)
  if [ -z "$pin" ]; then
    echo "images: $LOCK holds no digest for $BASE: run scripts/images.sh pin (needs docker and a registry)" >&2
    return 1
  fi
  echo "$pin"
}

# name|dockerfile|tag suffix|build args
IMAGES=(
  "llmemb-serve|docker/service.Dockerfile|cpu|"
  "llmemb-serve|docker/service-gpu.Dockerfile|gpu|"
  "llmemb-backfill|docker/service.Dockerfile|cpu|--build-arg LOCK=ray"
  "llmemb-trainer|docker/trainer.Dockerfile|cpu|--build-arg TORCH=cpu"
  "llmemb-trainer|docker/trainer.Dockerfile|gpu|--build-arg TORCH=cu128"
)

commands() {
  local base=$1 name file suffix args
  for image in "${IMAGES[@]}"; do
    IFS='|' read -r name file suffix args <<<"$image"
    echo "docker build --pull=false --build-arg PYTHON_IMAGE=$base $args --label org.opencontainers.image.version=$VERSION --label org.opencontainers.image.base.name=$base -f $file -t $REGISTRY/$name:$VERSION-$suffix ." | tr -s ' '
  done
}

case "${1:-}" in
  plan) commands "$(pinned 2>/dev/null || echo "$BASE@sha256:<unpinned>")" ;;
  build) base=$(pinned); commands "$base" | while read -r cmd; do echo "+ $cmd"; $cmd; done ;;
  push)
    for image in "${IMAGES[@]}"; do
      IFS='|' read -r name _ suffix _ <<<"$image"
      docker push "$REGISTRY/$name:$VERSION-$suffix"
    done ;;
  pin)
    digest=$(docker buildx imagetools inspect "$BASE" --format '{{json .Manifest}}' \
             | python3 -c 'import json, sys; print(json.load(sys.stdin)["digest"])')
    { grep '^#' "$LOCK"; echo "$BASE@$digest"; } > "$LOCK.new" && mv "$LOCK.new" "$LOCK"
    echo "pinned $BASE@$digest" ;;
  *) sed -n '2,11p' "$0"; exit 2 ;;
esac
