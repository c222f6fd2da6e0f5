#!/usr/bin/env bash
# Builds the image `docker run d2o-bench --method d2o` runs, from this checkout's files alone.
#
#   docker/build.sh            the CPU variant (any x86-64 machine; the tiny world and SmolLM2)
#   docker/build.sh cuda       the CUDA variant (GPUs; DeepSpeed's ops prebuilt)
#   docker/build.sh cpu --no-cache ...   further arguments go to `docker build` unchanged
#
# Tags the result `d2o-bench` (that is, d2o-bench:latest, what the README's `docker run` names)
# and `d2o-bench:<variant>`. Every build argument docker/README.md lists is filled in here:
# your UID/GID (files written to mounted volumes are yours), the commit and version as OCI labels.
#
# The CPU variant's base is Debian bookworm pinned by digest. Nobody fills a digest in by hand:
# unless BASE_IMAGE names one, the script pulls debian:bookworm-slim once and pins the digest the
# registry served (printed, and recorded in the image's org.opencontainers.image.base.name
# label), so the image says exactly which base it was built on. The CUDA variant's base digest is
# the one docker/Dockerfile pins (see docker/README.md, "Base image digest").
#
# Environment:
#   BASE_IMAGE         a base image (by digest) instead of the default for the variant
#   IMAGE              the image name (default d2o-bench)
#   DOCKER             the docker client (default docker)
#   D2O_BUILD_PRINT=1  print the commands instead of running them (nothing is pulled or built)
set -euo pipefail

die() { echo "docker/build.sh: $*" >&2; exit 2; }

variant="cpu"
if [[ $# -gt 0 && "$1" != -* ]]; then
  variant="$1"
  shift
fi
case "$variant" in
  cpu|cuda) ;;
  *) die "unknown variant '$variant': cpu or cuda" ;;
esac

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
[[ -f docker/Dockerfile && -f pyproject.toml ]] || die "run it from a d2o-bench checkout (no docker/Dockerfile here)"

docker_bin="${DOCKER:-docker}"
image="${IMAGE:-d2o-bench}"
[[ "$image" =~ ^[a-z0-9][a-z0-9._/-]*$ ]] || die "IMAGE '$image' is not an image name"
print_only="${D2O_BUILD_PRINT:-0}"
if [[ "$print_only" != 1 ]] && ! command -v "$docker_bin" > /dev/null; then
  die "'$docker_bin' not found: install Docker (docker/README.md), or set DOCKER"
fi

run() {
  if [[ "$print_only" == 1 ]]; then
    local quoted=() word
    for word in "$@"; do quoted+=("$(printf '%q' "$word")"); done
    echo "${quoted[*]}"
  else
    "$@"
  fi
}

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)"
commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ "$commit" != unknown ]] && [[ -n "$(git status --porcelain 2>/dev/null)" ]]; then
  commit="${commit}-dirty"  # the label must not claim a commit the image's files differ from
fi

args=(--build-arg "GIT_COMMIT=$commit" --build-arg "HARNESS_VERSION=${version:-unknown}")
# The image's user is you, so files it writes to mounted volumes are yours; built by root, it
# keeps the Dockerfile's unprivileged default (1000) rather than running as root.
if [[ "$(id -u)" != 0 ]]; then
  args+=(--build-arg "UID=$(id -u)" --build-arg "GID=$(id -g)")
fi

if [[ "$variant" == cpu ]]; then
  base="${BASE_IMAGE:-}"
  if [[ -z "$base" ]]; then
    if [[ "$print_only" == 1 ]]; then
      base="debian:bookworm-slim@sha256:<the digest docker pull reports>"
      run "$docker_bin" pull debian:bookworm-slim
    else
      "$docker_bin" pull --quiet debian:bookworm-slim > /dev/null
      base="$("$docker_bin" image inspect --format '{{index .RepoDigests 0}}' debian:bookworm-slim)"
      [[ "$base" == *@sha256:* ]] || die "debian:bookworm-slim has no registry digest ('$base'); set BASE_IMAGE"
      echo "docker/build.sh: base image $base" >&2
    fi
  fi
  args+=(--build-arg "BASE_IMAGE=$base"
         --build-arg LOCK_FILE=docker/requirements-cpu.lock
         --build-arg WHEEL_INDEX_EXTRA=https://download.pytorch.org/whl/cpu
         --build-arg DS_BUILD_OPS=0 --build-arg DS_BUILD_ACCELERATOR=cpu
         --build-arg OP_BUILD_APT_PACKAGES=)
elif [[ -n "${BASE_IMAGE:-}" ]]; then
  args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
fi

run "$docker_bin" build -f docker/Dockerfile -t "$image" -t "$image:$variant" "${args[@]}" "$@" .
if [[ "$print_only" != 1 ]]; then
  echo "docker/build.sh: built $image ($image:$variant); run it: docker run --rm $image --method d2o" >&2
fi
