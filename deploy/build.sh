#!/usr/bin/env bash
# Build and push both images: REGISTRY=registry.example.com deploy/build.sh [TAG]
# (run from anywhere; the build context is the repository root).
set -euo pipefail
cd "$(dirname "$0")/.."
REGISTRY=${REGISTRY:?set REGISTRY, e.g. registry.example.com}
TAG=${1:-$(python3 -c "import tomllib; print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])")}
RAY_TAG=2.60.0-py311
export DOCKER_BUILDKIT=1
docker build -f deploy/Dockerfile -t "$REGISTRY/harmony:$TAG-gpu" \
  --build-arg BASE_IMAGE="rayproject/ray:$RAY_TAG-gpu" .
docker build -f deploy/Dockerfile -t "$REGISTRY/harmony:$TAG-cpu" \
  --build-arg BASE_IMAGE="rayproject/ray:$RAY_TAG-cpu" \
  --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
docker push "$REGISTRY/harmony:$TAG-gpu"
docker push "$REGISTRY/harmony:$TAG-cpu"
