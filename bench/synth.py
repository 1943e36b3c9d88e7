"""Synthesis: client throughput against the local stub server, and the whole chain against a real small LLM.

    python bench/synth.py                # requests/s at concurrency 1, 8, 64 (stub server in its own process)
    python bench/synth.py --demo         # queries -> filter -> mine against SmolLM2-135M-Instruct (serve_hf.py)

Throughput: the stub answers after a fixed latency (default 50 ms, standing in for an LLM), so the ideal rate
is concurrency / latency; the client keeps up when it gets close to that and its own CPU time per request is
small against the latency. A second pass at zero latency shows the ceiling of client + stub on this machine,
a third uses an LLM-like 500 ms at concurrency 64, and a last one runs the whole job (`synthesize`: prompts,
checks, SQLite journal, output) at concurrency 64.
Results go to bench/results/synth.json (and bench/results/synth-demo.json for --demo).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from qzhou.synthesis.client import ChatClient

HERE = Path(__file__).resolve().parent
BOOT = ("import sys, qzhou.cli as c; "
        "c.FEATURE_CLIS += tuple(m for m in ('qzhou.synthesis.cli', 'qzhou.mining_cli') if m not in c.FEATURE_CLIS); "
        "sys.exit(c.main(sys.argv[1:]))")


def start(cmd: list[str]) -> tuple[subprocess.Popen, str]:
    """Start a server that prints 'listening on URL'; -> (process, url)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"{cmd}: did not start ({line!r})")
    return proc, line.split()[-1]


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        import os

        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def measure(url: str, concurrency: int, n: int, server_pid: int) -> dict:
    async def go():
        client = ChatClient(url, "stub", concurrency=concurrency, timeout=30)
        async with client:
            await client.complete([{"role": "user", "content": "warm-up"}])
            cpu, wall, server = time.process_time(), time.perf_counter(), cpu_seconds(server_pid)
            await asyncio.gather(*[client.complete([{"role": "user", "content": f"request {i}"}]) for i in range(n)])
            return (time.perf_counter() - wall, time.process_time() - cpu, cpu_seconds(server_pid) - server,
                    client.usage)

    wall, cpu, server_cpu, usage = asyncio.run(go())
    assert usage.ok == n + 1 and usage.failed == 0
    return {"concurrency": concurrency, "requests": n, "seconds": round(wall, 3), "req_per_s": round(n / wall, 1),
            "client_cpu_ms_per_req": round(1000 * cpu / n, 3), "server_cpu_ms_per_req": round(1000 * server_cpu / n, 3),
            "client_cores": round(cpu / wall, 2), "server_cores": round(server_cpu / wall, 2)}


def throughput(latency: float) -> dict:
    rows = []
    for lat, levels in ((latency, (1, 8, 64)), (0.0, (1, 8, 64)), (0.5, (64,))):
        proc, url = start([sys.executable, "-m", "qzhou.synthesis.stub_server", "--port", "0", "--latency", str(lat)])
        try:
            for c in levels:
                n = max(40, int(2.0 * c / lat)) if lat else 2000
                r = measure(url, c, n, proc.pid)
                r["latency_s"] = lat
                if lat:
                    r["ideal_req_per_s"] = round(c / lat, 1)
                    r["efficiency"] = round(r["req_per_s"] / r["ideal_req_per_s"], 3)
                rows.append(r)
                print(json.dumps(r), flush=True)
        finally:
            proc.kill()
    job = job_throughput(latency)
    print(json.dumps(job), flush=True)
    return {"rows": rows, "job": job}


def job_throughput(latency: float, n: int = 2000, concurrency: int = 64) -> dict:
    from qzhou.synthesis.runner import synthesize

    proc, url = start([sys.executable, "-m", "qzhou.synthesis.stub_server", "--port", "0", "--latency", str(latency)])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            inp = Path(tmp) / "r.jsonl"
            inp.write_text("".join(json.dumps({"query": f"question number {i} about topic {i % 97} and more",
                                               "pos": [f"passage {i}"]}) + "\n" for i in range(n)))
            t = time.perf_counter()
            s = synthesize("paraphrase", inp, Path(tmp) / "p.jsonl", base_url=url, model="stub", progress=False,
                           concurrency=concurrency)
            wall = time.perf_counter() - t
    finally:
        proc.kill()
    assert s["written"] == n, s
    return {"job": "synthesize paraphrase (checks + journal + output)", "concurrency": concurrency,
            "latency_s": latency, "records": n, "seconds": round(wall, 2), "req_per_s": round(n / wall, 1),
            "ideal_req_per_s": round(concurrency / latency, 1), "efficiency": round(n / wall * latency / concurrency, 3)}


def cli(*argv) -> dict:
    r = subprocess.run([sys.executable, "-c", BOOT, *map(str, argv)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"qzhou {' '.join(map(str, argv[:2]))} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout)


#: the demo's synthesis runs: Qwen3's two LLM stages as plain prompts, the same in JSON mode (serve_hf.py starts
#: the answer with "{"), and JSON mode with the configuration drawn instead of asked (one LLM stage)
RUNS = (("llm", "llm", ()), ("llm-json", "llm", ("--json-mode",)), ("random-json", "random", ("--json-mode",)))


def demo(docs: int, out: Path) -> dict:
    """queries (SmolLM2-135M-Instruct via serve_hf.py, the RUNS below) -> filter -> mine with the default
    embedder (SmolLM2 made bidirectional with mean pooling, as `qzhou quickstart` does)."""
    from qzhou import Embedder
    from qzhou.default_model import smollm2_folder

    out.mkdir(parents=True, exist_ok=True)
    corpus = Path(str(resources.files("qzhou") / "resources" / "sample_corpus.jsonl"))
    (out / "docs.jsonl").write_text("".join(corpus.read_text().splitlines(keepends=True)[:docs]))
    emb_dir = out / "embedder"
    if not (emb_dir / "qzhou_config.json").exists():
        Embedder.load(smollm2_folder(), attention="bidirectional", pooling="mean", dtype="float32").save(emb_dir)
    result: dict = {}
    proc, url = start([sys.executable, str(HERE / "serve_hf.py"), "--port", "0"])
    try:
        for run, config, extra in RUNS:
            t = time.perf_counter()
            result[f"synth_{run}"] = cli(
                "synth", "queries", "--input", out / "docs.jsonl", "--output", out / f"queries-{run}.jsonl",
                "--base-url", url, "--model", "smollm2", "--config", config, "--concurrency", "1",
                "--max-attempts", "3", "--max-retries", "2", "--timeout", "300", "--max-tokens", "96",
                "--temperature", "0.7", "--quiet", *extra)
            result[f"synth_{run}"]["wall_seconds"] = round(time.perf_counter() - t, 1)
            failed = out / f"queries-{run}.jsonl.failed.jsonl"
            result[f"failures_{run}"] = [json.loads(x)["error"][:160] for x in
                                         failed.read_text().splitlines()] if failed.exists() else []
    finally:
        proc.kill()
    rows = [x for run, _, _ in RUNS for x in (out / f"queries-{run}.jsonl").read_text().splitlines()]
    (out / "queries.jsonl").write_text("".join(x + "\n" for x in rows))
    result["queries"] = [{k: json.loads(x)[k] for k in ("query", "source")} for x in rows]
    result["filter"] = cli("filter", "--model", emb_dir, "--input", out / "queries.jsonl",
                           "--output", out / "filtered.jsonl", "--threshold", "0.7", "--quiet")
    if result["filter"]["kept"]:
        result["mine"] = cli("mine", "--model", emb_dir, "--queries", out / "filtered.jsonl", "--corpus", corpus,
                             "--output", out / "mined.jsonl", "--ranks", "10-30", "--quiet")
        samples = [json.loads(x) for x in (out / "mined.jsonl").read_text().splitlines()[:3]]
        result["mined_samples"] = [{"query": s["query"], "pos": s["pos"], "neg": s["neg"][:2]} for s in samples]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latency", type=float, default=0.05, help="stub answer latency in seconds")
    p.add_argument("--demo", action="store_true", help="run the chain against SmolLM2-135M-Instruct instead")
    p.add_argument("--docs", type=int, default=8, help="--demo: documents from the sample corpus")
    p.add_argument("--out", default="out/synth-demo", help="--demo: working folder")
    a = p.parse_args()
    if a.demo:
        result = demo(a.docs, Path(a.out))
        (HERE / "results" / "synth-demo.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    result = throughput(a.latency)
    (HERE / "results" / "synth.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n| stub latency | concurrency | requests | req/s | ideal | efficiency | client CPU ms/req (cores) "
          "| stub CPU ms/req (cores) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        ideal = f"{r['ideal_req_per_s']:,.0f} | {r['efficiency']:.2f}" if "ideal_req_per_s" in r else "- | -"
        print(f"| {r['latency_s'] * 1000:.0f} ms | {r['concurrency']} | {r['requests']} | {r['req_per_s']:,.0f} | "
              f"{ideal} | {r['client_cpu_ms_per_req']:.2f} ({r['client_cores']:.2f}) | "
              f"{r['server_cpu_ms_per_req']:.2f} ({r['server_cores']:.2f}) |")
    j = result["job"]
    print(f"\nwhole job at concurrency {j['concurrency']}, {j['latency_s'] * 1000:.0f} ms latency: "
          f"{j['req_per_s']:,.0f} req/s ({j['efficiency']:.0%} of ideal {j['ideal_req_per_s']:,.0f})")


if __name__ == "__main__":
    main()
