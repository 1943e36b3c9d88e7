"""A real, local OpenAI-compatible server (`POST /v1/chat/completions`) with deterministic answers and scripted
faults: the stand-in that the tests, `bench/synth.py` and a dry run use instead of an LLM.

    python -m qzhou.synthesis.stub_server --port 8011 [--latency 0.05]
    qzhou synth paraphrase --base-url http://127.0.0.1:8011/v1 --model stub --input r.jsonl --output p.jsonl

Answers (`mock_reply`) follow qzhou's own prompts by their tags: a paraphrase reverses the word order (same
length, different text), negatives rotate the positive's words, queries are built from the passage's words.
They are mechanical, not language, which is what a pipeline test needs: every constraint check can pass.

Faults are scripted per distinct request (system + first user message): with `faults=["429", "timeout"]`,
the first time a request is seen it gets a 429, the second time it hangs past the client's timeout, the third
time it is answered. That is deterministic under any concurrency. Kinds: 429, 500, 503 (HTTP errors; 429
carries `Retry-After: 0`), timeout (sleeps `hang` seconds), drop (closes the connection), malformed (a 200
whose message is not JSON), bad-body (a 200 whose HTTP body is not JSON).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TAG = re.compile(r"<(\w+)>(.*?)</\1>", re.S)


def _tags(text: str) -> dict[str, str]:
    return {k: v.strip() for k, v in TAG.findall(text)}


def _words(text: str) -> list[str]:
    if re.search(r"[\u4e00-\u9fff]", text):
        return [c for c in text if not c.isspace()]
    return text.split()


def _join(words: list[str], like: str) -> str:
    return ("" if re.search(r"[\u4e00-\u9fff]", like) else " ").join(words)


def _rotate(words: list[str], k: int) -> list[str]:
    k %= max(1, len(words))
    return words[k:] + words[:k]


def mock_reply(messages: list[dict]) -> str:
    """A deterministic JSON answer to qzhou's prompts (anything else gets an echo object)."""
    user = next((m["content"] for m in messages if m.get("role") == "user"), "")
    t = _tags(user)
    variant = int((re.findall(r"(?:rewrite|negative|example) number (\d+)", user) or ["1"])[0])
    if "text" in t:  # paraphrase
        words = _rotate(list(reversed(_words(t["text"]))), variant - 1)
        return json.dumps({"paraphrase": _join(words, t["text"])}, ensure_ascii=False)
    if "seed_query" in t:  # extend
        q, p = _words(t["seed_query"]), _words(t["seed_positive"])
        pos = _rotate(list(reversed(p)), variant - 1)
        return json.dumps({"query": _join(_rotate(list(reversed(q)), variant - 1), t["seed_query"]), "positive": _join(pos, t["seed_positive"]),
                           "negative": _join(_rotate(pos, 1), t["seed_positive"])}, ensure_ascii=False)
    if "positive" in t:  # hard negative
        return json.dumps({"negative": _join(_rotate(_words(t["positive"]), variant), t["positive"])},
                          ensure_ascii=False)
    if "characters" in t:  # queries, stage 1
        chars = [c.strip() for c in t["characters"].splitlines() if c.strip()]
        h = int(hashlib.sha256(t["passage"].encode()).hexdigest(), 16)
        return json.dumps({"Character": chars[h % len(chars)],
                           "Question_Type": ("keywords", "acquire_knowledge", "summary", "yes_or_no", "background")[h % 5],
                           "Difficulty": ("high_school", "university", "phd")[h % 3]})
    if "passage" in t:  # queries, stage 2
        n = int((re.findall(r"about (\d+) words", user) or ["8"])[0])
        words = list(reversed(_words(t["passage"])[:n]))
        return json.dumps({"query": _join(words, t["passage"]).rstrip(".") + "?"}, ensure_ascii=False)
    return json.dumps({"echo": hashlib.sha256(user.encode()).hexdigest()[:16]})


class StubServer:
    """`with StubServer(faults=[...]) as s: s.url` -> "http://127.0.0.1:PORT/v1"; `s.log` lists
    (request key, what was done) per HTTP request, `s.served` counts successful answers per key and
    `s.max_in_flight` is the most requests it was answering at once."""

    def __init__(self, responder: Callable[[list[dict]], str] = mock_reply, faults: list[str] | None = None,
                 latency: float = 0.0, hang: float = 2.0, host: str = "127.0.0.1", port: int = 0):
        self.responder, self.faults, self.latency, self.hang = responder, list(faults or []), latency, hang
        self.in_flight = self.max_in_flight = 0
        self.seen: Counter = Counter()
        self.served: Counter = Counter()
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.httpd = _Server((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}/v1"
        self._thread = None

    def __enter__(self) -> StubServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)  # quick stop
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def decide(self, messages: list[dict]) -> tuple[str, str]:
        key = hashlib.sha256(json.dumps(messages[:2], sort_keys=True).encode()).hexdigest()[:16]
        with self.lock:
            n = self.seen[key]
            self.seen[key] += 1
            fault = self.faults[n] if n < len(self.faults) else "ok"
            self.log.append((key, fault))
        return key, fault


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # socketserver's default backlog of 5 drops SYNs when 64 clients connect at once
    def handle_error(self, request, client_address) -> None:
        """A client that was killed or timed out resets its connection: expected here, not worth a traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def _handler(server: StubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
        disable_nagle_algorithm = True  # headers and body are two writes: Nagle + delayed ACK would add 40 ms

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 (the http.server API)
            length = int(self.headers.get("Content-Length") or 0)
            try:
                payload = json.loads(self.rfile.read(length))
                messages = payload["messages"]
            except (ValueError, KeyError, TypeError):
                self._send(400, b'{"error": {"message": "body must be JSON with messages"}}')
                return
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, b'{"error": {"message": "not found"}}')
                return
            key, fault = server.decide(messages)
            with server.lock:
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                if server.latency:
                    time.sleep(server.latency)
                if fault in ("429", "500", "503"):
                    self._send(int(fault), b'{"error": {"message": "scripted fault"}}', {"Retry-After": "0"})
                    return
                if fault == "timeout":
                    time.sleep(server.hang)
                    self.close_connection = True
                    return
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault == "bad-body":
                    self._send(200, b"<html>gateway hiccup</html>")
                    return
                content = "Sure! Here is the answer you asked for." if fault == "malformed" else \
                    server.responder(messages)
                prompt_chars = sum(len(m.get("content", "")) for m in messages)
                body = {"id": "stub-" + key, "object": "chat.completion", "model": payload.get("model", "stub"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}],
                        "usage": {"prompt_tokens": prompt_chars // 4 + 1, "completion_tokens": len(content) // 4 + 1,
                                  "total_tokens": (prompt_chars + len(content)) // 4 + 2}}
                self._send(200, json.dumps(body, ensure_ascii=False).encode("utf-8"))
                if fault == "ok":
                    with server.lock:
                        server.served[key] += 1
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a scripted timeout): nothing to answer
            finally:
                with server.lock:
                    server.in_flight -= 1

    return Handler


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="a deterministic OpenAI-compatible stand-in for tests and dry runs")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8011, help="0 picks a free port")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer (an LLM's latency)")
    p.add_argument("--faults", default="", help="comma-separated faults each distinct request gets first")
    a = p.parse_args(argv)
    server = StubServer(faults=[f for f in a.faults.split(",") if f], latency=a.latency, host=a.host, port=a.port)
    print(f"listening on {server.url}", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
