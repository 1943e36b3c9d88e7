"""A tiny OpenAI-compatible chat server for a local HF causal LM (default: the bundled SmolLM2-135M-Instruct),
so the synthesis chain can be demonstrated against a real model with no network and no compiled server.

    python bench/serve_hf.py --port 8012            # then: --base-url http://127.0.0.1:8012/v1 --model smollm2

Why this exists: `llama-cpp-python` (whose `llama_cpp.server` is the usual answer) compiles llama.cpp from
source on install, which took more than 10 minutes on this 2-core machine. This serves `POST /v1/chat/completions`
(non-streaming) with transformers' `generate`: the chat template, temperature / top_p / max_tokens / seed, and
token usage. Requests are answered one at a time (a lock around generate): concurrency beyond 1 only queues.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def load(path: str | None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path is None:
        from qzhou.default_model import smollm2_folder

        path = str(smollm2_folder())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # ties the LM head to the embeddings
    model.eval()
    return tok, model


def balanced(text: str) -> str:
    """`text` cut after the "}" that closes its first "{" (strings and escapes respected)."""
    depth, in_str, esc = 0, False, False
    for i, ch in enumerate(text):
        if in_str:
            esc, in_str = (not esc and ch == "\\"), in_str and (esc or ch != '"')
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[:i + 1]
    return text


def make_handler(tok, model, name: str):
    import torch

    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: Nagle + delayed ACK would add 40 ms

        def log_message(self, *args) -> None:
            pass

        def _send(self, status: int, obj: dict) -> None:
            body = json.dumps(obj, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                messages = req["messages"]
            except (ValueError, KeyError):
                self._send(400, {"error": {"message": "body must be JSON with messages"}})
                return
            # JSON mode, the cheap way: start the answer with "{" and stop where the braces balance (llama.cpp and
            # vLLM use a grammar instead); a tiny model left alone mostly chats instead of answering in JSON
            json_mode = (req.get("response_format") or {}).get("type") == "json_object"
            prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = tok(prompt + ("{" if json_mode else ""), return_tensors="pt", add_special_tokens=False)
            temperature = float(req.get("temperature", 0.7))
            kw = {"max_new_tokens": min(int(req.get("max_tokens") or 256), 1024),
                  "pad_token_id": tok.pad_token_id or tok.eos_token_id}
            if temperature > 0:
                kw.update(do_sample=True, temperature=temperature, top_p=float(req.get("top_p", 1.0)))
            else:
                kw.update(do_sample=False)
            with lock, torch.inference_mode():
                if req.get("seed") is not None:
                    torch.manual_seed(int(req["seed"]))
                out = model.generate(**ids, **kw)
            new = out[0, ids["input_ids"].shape[1]:]
            text = tok.decode(new, skip_special_tokens=True)
            if json_mode:
                text = balanced("{" + text)
            n_in, n_out = int(ids["input_ids"].shape[1]), int(new.shape[0])
            self._send(200, {"id": f"hf-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
                             "model": req.get("model", name),
                             "choices": [{"index": 0, "finish_reason": "length" if n_out >= kw["max_new_tokens"]
                                          else "stop", "message": {"role": "assistant", "content": text}}],
                             "usage": {"prompt_tokens": n_in, "completion_tokens": n_out,
                                       "total_tokens": n_in + n_out}})

    return Handler


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="an HF causal-LM folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--name", default="smollm2", help="the model name reported back")
    p.add_argument("--port", type=int, default=8012, help="0 picks a free port")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: a 135M model decodes fastest on one "
                                                         "core; more threads spin-wait on a shared machine)")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    tok, model = load(a.model)
    ThreadingHTTPServer.request_queue_size = 256  # the default backlog of 5 drops connections under concurrency
    httpd = ThreadingHTTPServer(("127.0.0.1", a.port), make_handler(tok, model, a.name))
    httpd.daemon_threads = True
    print(f"listening on http://127.0.0.1:{httpd.server_address[1]}/v1", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
