"""Benchmark: convert and validate generated rows; rows/s and peak memory, 100k vs 1M rows.

Each size runs in a fresh subprocess so peak RSS (ru_maxrss) belongs to that size alone. Streaming keeps
memory nearly flat as the file grows; the one per-row cost is validation's duplicate index (12 bytes a row).

Run:  python bench/data.py [--sizes 100000,1000000] [--kind sts-score|qa]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the a cat dog runs over lazy quick brown fox river city music data model vector search answer query "
         "passage question paris france capital science learn embed").split()


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18)))


def generate(path: Path, n: int, kind: str) -> None:
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as f:
        if kind == "sts-score":
            f.write("text1\ttext2\tscore\n")
            for _ in range(n):
                f.write(f"{sentence(rng)}\t{sentence(rng)}\t{rng.uniform(0, 5):.2f}\n")
        else:
            f.write("question\tanswer\n")
            for _ in range(n):
                f.write(f"{sentence(rng)}?\t{sentence(rng)}.\n")


def child(n: int, kind: str) -> dict:
    from qzhou.data.convert import convert
    from qzhou.data.validate import validate_file

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.tsv", Path(tmp) / "out.jsonl"
        generate(src, n, kind)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        summary = convert(kind, src, out, progress=False)
        t_convert = time.perf_counter() - t
        after_convert = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        report = validate_file(out, progress=False)
        t_validate = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rows": n, "records": summary["written"], "convert_rows_per_s": n / t_convert,
            "validate_records_per_s": report["rows"] / t_validate, "rss_before_mib": base / 1024,
            "peak_rss_convert_mib": after_convert / 1024,
            "peak_rss_mib": peak / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--kind", default="sts-score", choices=["sts-score", "qa"])
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.kind)))
        return
    results = []
    for n in [int(x) for x in a.sizes.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--kind", a.kind], check=True,
                             capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(f"| rows ({a.kind}) | records out | convert rows/s | validate records/s | RSS MiB: start / after convert / after validate |")
    print("|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['rows']:,} | {r['records']:,} | {r['convert_rows_per_s']:,.0f} | {r['validate_records_per_s']:,.0f} "
              f"| {r['rss_before_mib']:.0f} / {r['peak_rss_convert_mib']:.0f} / {r['peak_rss_mib']:.0f} |")
    if len(results) >= 2:
        a0, a1 = results[0], results[-1]
        growth = (a1["peak_rss_mib"] - a0["peak_rss_mib"]) / max(1, (a1["rows"] - a0["rows"]) / 1e6)
        print(f"\npeak memory grows {growth:.0f} MiB per extra million rows "
              f"({a1['peak_rss_mib'] / a0['peak_rss_mib']:.2f}x for {a1['rows'] / a0['rows']:.0f}x the rows)")


if __name__ == "__main__":
    main()
