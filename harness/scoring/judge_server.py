"""`d2o-bench serve-judge`: a local causal LM behind the OpenAI chat-completions API.

Lets the pairwise judge (`harness.scoring.judge`) run fully offline against any local
checkpoint: point `--judge-base-url http://127.0.0.1:PORT/v1` at it. Decoding is always greedy,
which is what temperature 0 means for the judge, so verdicts are reproducible. The server binds
to the loopback interface only: it has no authentication (it accepts any API key).
"""

from __future__ import annotations

import argparse
import http.server
import json
import logging
import threading
import time
import uuid
from pathlib import Path

from harness.errors import BadInput, RunFailure

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
DEFAULT_MAX_TOKENS = 512
# Upper bound on one request's max_tokens: a typo must not pin the CPU for an hour.
MAX_TOKENS_LIMIT = 4096
MAX_BODY_BYTES = 8 * 1024 * 1024


def render_messages(tokenizer, messages: list[dict]) -> str:
    """The model's input text: its own chat template when it has one, else "role: content"."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


def _validate_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    clean = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError("each message needs a string 'role'")
        content = m.get("content", "")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise ValueError("message 'content' must be a string or a list of text parts")
        clean.append({"role": m["role"], "content": content})
    return clean


def _max_new_tokens(body: dict) -> int:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return DEFAULT_MAX_TOKENS
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError("'max_tokens' must be a positive integer")
    return min(value, MAX_TOKENS_LIMIT)


def complete(model, tokenizer, messages: list[dict], max_new_tokens: int) -> tuple[str, str, int, int]:
    """Greedy completion: (text, finish_reason, prompt_tokens, completion_tokens)."""
    import torch

    text = render_messages(tokenizer, messages)
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    device = next(model.parameters()).device
    input_ids = encoded["input_ids"].to(device)
    attention_mask = encoded.get("attention_mask")
    attention_mask = attention_mask.to(device) if attention_mask is not None else torch.ones_like(input_ids)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    with torch.no_grad():
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                                max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
    new_tokens = output[0, input_ids.shape[1]:].tolist()
    finish = "length"
    if eos is not None and eos in new_tokens:
        new_tokens = new_tokens[: new_tokens.index(eos)]
        finish = "stop"
    reply = tokenizer.decode(new_tokens, skip_special_tokens=True)
    return reply, finish, int(input_ids.shape[1]), len(new_tokens)


def make_server(model, tokenizer, host: str, port: int) -> http.server.ThreadingHTTPServer:
    """An HTTP server (not yet serving) answering POST /v1/chat/completions with `model`.

    Requests are handled on threads but generate one at a time: a model is not safe to run
    concurrently, and on a single device queuing is as fast anyway.
    """
    if host not in LOOPBACK_HOSTS:
        raise BadInput(f"serve-judge binds to 127.0.0.1 or localhost only (it has no authentication), not {host!r}")
    generate_lock = threading.Lock()
    model.eval()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in separate writes

        def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
            log.debug("serve-judge: " + format, *args)

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
            self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})

        def do_GET(self):  # noqa: N802 - the stdlib's naming
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [
                    {"id": getattr(model, "name_or_path", "local"), "object": "model", "created": 0,
                     "owned_by": "d2o-bench"}]})
            else:
                self._error(404, f"no route GET {self.path}", "not_found_error")

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._error(413, "request body too large")
                return
            raw = self.rfile.read(length) if length else b""
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._error(404, f"no route POST {self.path}", "not_found_error")
                return
            try:
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("the request body must be a JSON object")
                messages = _validate_messages(body)
                max_new_tokens = _max_new_tokens(body)
                if body.get("stream"):
                    raise ValueError("streaming is not supported")
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                self._error(400, " ".join(str(exc).split()))
                return
            try:
                with generate_lock:
                    reply, finish, n_prompt, n_completion = complete(model, tokenizer, messages, max_new_tokens)
            except Exception as exc:  # noqa: BLE001 - report to the client, keep serving
                log.warning("serve-judge: generation failed: %s", exc)
                self._error(500, f"generation failed: {type(exc).__name__}", "server_error")
                return
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model") or getattr(model, "name_or_path", "local"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                             "finish_reason": finish, "logprobs": None}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                          "total_tokens": n_prompt + n_completion},
            })

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise BadInput(f"{self.prog}: {message} (see --help)")


def serve_judge_main(argv: list[str]) -> int:
    parser = _Parser(prog="d2o-bench serve-judge",
                     description="Serve a local causal LM as an OpenAI-compatible judge endpoint (loopback only).")
    parser.add_argument("--model", required=True, help="local model directory (transformers format)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default) or localhost")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    args = parser.parse_args(argv)
    if args.host not in LOOPBACK_HOSTS:
        raise BadInput(f"serve-judge binds to 127.0.0.1 or localhost only (it has no authentication), not {args.host!r}")
    if not 0 <= args.port <= 65535:
        raise BadInput(f"--port must be in 0..65535, not {args.port}")
    path = Path(args.model)
    if not path.is_dir():
        raise BadInput(f"--model {args.model!r} is not a local model directory")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot load a causal LM from {args.model!r}: {' '.join(str(exc).split())[:200]}") from exc
    if torch.cuda.is_available():
        model = model.to("cuda")
    try:
        server = make_server(model, tokenizer, args.host, args.port)
    except OSError as exc:
        raise RunFailure(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    bound_host, bound_port = server.server_address[:2]
    print(f"serve-judge: {path} at http://{bound_host}:{bound_port}/v1 (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
