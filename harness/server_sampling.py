"""Self-samples from an OpenAI-compatible server (`sampling.backend: openai`).

vLLM's `serve` (or any server speaking the OpenAI completions API) draws the K samples instead of
`model.generate` in this process: the harness sends each prompt, already rendered in the run's
prompt format, with `n = K` and the run's temperature, top-p, top-k, max tokens and a per-prompt
seed, so a sample depends on its prompt and the run's seed, not on the order requests arrive in.
A completion that stopped on its own (finish_reason "stop") ended; one cut at max tokens did not,
as in `harness.generation`. The API key comes from the environment (`sampling.api_key_env`; a
server on 127.0.0.1 gets a placeholder) and is scrubbed from every error this module raises.
Requests go through the judge's client (`openai`), retry policy and error descriptions.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from harness.errors import BadInput, RunFailure
from harness.generation import Completion
from harness.scoring.judge import api_key_for, describe_api_error, is_retryable_api_error, redact, redact_url


@dataclass(frozen=True)
class ServerSettings:
    base_url: str
    # The name the server knows the model by (vLLM: --served-model-name, else the path it serves);
    # None: the server's only model.
    model: Optional[str] = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout_s: float = 600.0
    max_retries: int = 4

    @classmethod
    def of(cls, sampling_cfg, **overrides) -> "ServerSettings":
        """From a run's `sampling` section."""
        return cls(base_url=sampling_cfg.base_url, model=sampling_cfg.server_model,
                   api_key_env=sampling_cfg.api_key_env, concurrency=sampling_cfg.concurrency, **overrides)


def prompt_seed(seed: int, prompt_text: str) -> int:
    """The seed a prompt's request carries: the run's seed and the prompt, nothing else."""
    return int(hashlib.sha256(f"{seed}\n{prompt_text}".encode()).hexdigest()[:8], 16)


def _client(settings: ServerSettings):
    import openai

    secret, api_key = api_key_for(settings.api_key_env, settings.base_url)
    if not api_key:
        raise BadInput(f"sampling.base_url {settings.base_url} is not local and the environment variable "
                       f"{settings.api_key_env} (sampling.api_key_env) is not set")
    return openai.OpenAI(api_key=api_key, base_url=settings.base_url, max_retries=0,
                         timeout=settings.timeout_s), secret


def _server_version(base_url: str) -> Optional[str]:
    """vLLM answers GET /version at the server root; other servers may not (then None)."""
    parsed = urlparse(base_url)
    try:
        with urllib.request.urlopen(f"{parsed.scheme}://{parsed.netloc}/version", timeout=10) as reply:
            version = json.loads(reply.read().decode()).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    return str(version) if version else None


def served_models(settings: ServerSettings) -> list[str]:
    """The names of the models the server lists (GET /v1/models); RunFailure with one line."""
    client, secret = _client(settings)
    try:
        return [m.id for m in client.models.list().data]
    except Exception as exc:  # noqa: BLE001 - one line for whatever the client raised
        raise RunFailure(f"sampling server {settings.base_url}: {describe_api_error(exc, settings.timeout_s, secret)}") from None
    finally:
        client.close()


def server_identity(settings: ServerSettings) -> dict:
    """The model the server serves under the configured name, and the server's version."""
    models = served_models(settings)
    if settings.model is None:
        if len(models) != 1:
            raise BadInput(f"sampling server {settings.base_url} serves {len(models)} models ({', '.join(models)}); "
                           "name one with sampling.server_model")
        model = models[0]
    elif settings.model in models:
        model = settings.model
    else:
        raise BadInput(f"sampling server {settings.base_url} does not serve {settings.model!r} "
                       f"(it serves: {', '.join(models) or 'nothing'})")
    return {"base_url": redact_url(settings.base_url), "model": model, "server_version": _server_version(settings.base_url)}


def sample_from_server(
    prompt_texts: list[str],
    *,
    settings: ServerSettings,
    model: str,
    k: int,
    temperature: float,
    top_p: float,
    top_k: int,
    max_new_tokens: int,
    seed: int,
    progress=None,
) -> list[list[Completion]]:
    """`k` completions per prompt from the server, in prompt order. Raises RunFailure with one
    line when a request still fails after its retries, or the server's reply is malformed."""
    client, secret = _client(settings)
    extra = {"top_k": top_k} if top_k else None

    def one(text: str) -> list[Completion]:
        attempt = 0
        while True:
            try:
                reply = client.completions.create(
                    model=model, prompt=text, n=k, temperature=temperature, top_p=top_p,
                    max_tokens=max_new_tokens, seed=prompt_seed(seed, text), extra_body=extra,
                )
                break
            except Exception as exc:  # noqa: BLE001 - retried or turned into one line
                if is_retryable_api_error(exc) and attempt < settings.max_retries:
                    time.sleep(min(30.0, 0.5 * 2 ** attempt))
                    attempt += 1
                    continue
                raise RunFailure(f"sampling server {settings.base_url}: "
                                 f"{describe_api_error(exc, settings.timeout_s, secret)}") from None
        choices = sorted(getattr(reply, "choices", None) or [], key=lambda c: c.index)
        if len(choices) != k or not all(isinstance(c.text, str) for c in choices):
            raise RunFailure(f"sampling server {settings.base_url}: asked for {k} completions of a prompt, "
                             f"got {len(choices)} usable ones")
        # The samples are cached and trained on: a server that echoes the request's key in a
        # completion must not plant it there.
        return [Completion(redact(c.text, secret).strip(), c.finish_reason == "stop") for c in choices]

    results: list[list[Completion]] = [[] for _ in prompt_texts]
    with client, concurrent.futures.ThreadPoolExecutor(max_workers=settings.concurrency) as pool:
        futures = {pool.submit(one, text): i for i, text in enumerate(prompt_texts)}
        try:
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                results[futures[future]] = future.result()
                if progress is not None and done % 50 == 0:
                    progress(f"server samples: {done}/{len(prompt_texts)} prompts")
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results



def vllm_python(repo_root: Path) -> Optional[Path]:
    """The interpreter of the separate vLLM environment: D2O_BENCH_VLLM_PYTHON, else
    `.venv-vllm/bin/python` under the checkout (docs/SAMPLING_SERVER.md); None when absent."""
    named = os.environ.get("D2O_BENCH_VLLM_PYTHON")
    candidate = Path(named) if named else Path(repo_root) / ".venv-vllm" / "bin" / "python"
    return candidate if candidate.is_file() else None


def launch_vllm(python: Path, model: Path, *, served_name: str, port: int, log_path: Path,
                kv_cache_gib: int = 2, preload: tuple[str, ...] = (), dtype: str = "float32",
                extra_args: tuple[str, ...] = (), extra_env: Optional[dict] = None) -> subprocess.Popen:
    """Start vLLM's OpenAI server on 127.0.0.1 as docs/SAMPLING_SERVER.md does, in its own
    process group (stop it with os.killpg), output to `log_path`. Returns without waiting for it
    to answer. `extra_args` go after the recipe's arguments (a repeated flag overrides), and
    `extra_env` over its environment: what a benchmark of server settings varies."""
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(kv_cache_gib), HF_HUB_OFFLINE="1",
               VLLM_CPU_OMP_THREADS_BIND=os.environ.get("VLLM_CPU_OMP_THREADS_BIND", f"0-{os.cpu_count() - 1}"))
    env.update(extra_env or {})
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    # The module, not the `vllm` console script: vllm-cpu 0.32.0's script fails on start.
    argv = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", "1024",
            # vllm-cpu 0.32.0 crashes ("CPU Generator does not use offset") when a seeded
            # request's prefill is split across steps: a step budget larger than any burst of
            # prompts keeps prefills whole.
            "--max-num-batched-tokens", "32768",
            # Prefix caching shares whole blocks only; at the CPU default of 128 tokens a prompt
            # shorter than that shares nothing with its own K completions. 32 is the CPU attention
            # kernel's smallest block: 1.24-1.27x tokens/s at 16 prompts x n=4, no loss at 64 x 1
            # (benchmarks/RESULTS.md).
            "--block-size", "32",
            # vLLM would downcast an fp32 checkpoint to bf16: samples from a rounded policy, not
            # the one the harness trains on a CPU. Faster or slower by host (an Intel Xeon
            # without AMX: 258 against 338 tokens/s; an AMD EPYC Zen 4: 526 against 316).
            "--dtype", dtype, *extra_args]
    with open(log_path, "w") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
