"""`qzhou merge`: parses arguments and calls `merge_checkpoints` or `search_merge`.

    qzhou merge A B [C ...] --method slerp|multislerp|linear|task-arithmetic|ties|dare-linear|dare-ties --out M
    qzhou merge A B [C ...] --search --dev-tasks TASK ... [--strategy greedy|grid] --out M
"""

from __future__ import annotations

import argparse

from qzhou.merging.methods import METHODS

EPILOG = """examples:
  qzhou merge ckpt-a ckpt-b --method slerp --t 0.5 --out out/merged
  qzhou merge run/stage2/checkpoint-* --method multislerp --out out/merged
  qzhou merge domain general --method linear --weights 0.7 0.3 --out out/cocktail
  qzhou merge ft-a ft-b --method ties --base base-embedder --density 0.3 --out out/ties
  qzhou merge run/stage2/checkpoint-* --search --dev-tasks STSBenchmark SICK-R --out out/soup
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "merge", help="merge checkpoints (slerp, multislerp, linear, TIES, DARE), optionally guided by dev scores",
        description="Merge model folders tensor by tensor (streamed safetensors, fp32 math, the inputs' dtype out). "
                    "The output keeps the first input's embedder files and writes merge.json (lineage).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="model folders, training checkpoints (holding model/) or LoRA adapters")
    p.add_argument("--out", required=True, help="output folder (new, empty, or an earlier merge)")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="default: slerp (with --search: linear for greedy, slerp for grid)")
    p.add_argument("--t", type=float, default=None, help="slerp between two inputs: 0 = first, 1 = second")
    p.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per input")
    p.add_argument("--base", default=None, help="base model for task-arithmetic, ties, dare-linear, dare-ties")
    p.add_argument("--density", type=float, default=0.5, help="ties / dare: share of each task vector kept")
    p.add_argument("--lambda", dest="lam", type=float, default=1.0, help="scale of the merged task vector")
    p.add_argument("--seed", type=int, default=0, help="dare: seed of the drop masks")
    p.add_argument("--min-angle", type=float, default=1e-4,
                   help="slerp / multislerp: radians within which of 0 or pi tensors are interpolated linearly "
                        "(counted in merge.json)")
    p.add_argument("--lora-base", default=None, help="base folder of LoRA inputs (default: their adapter_config.json)")
    p.add_argument("--no-hash", action="store_true", help="skip the sha256 of the input files in merge.json")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads while merging (default 1: the work is memory-bound, and more threads stall "
                        "on shared cores); 0 = torch's setting")
    g = p.add_argument_group("evaluation-guided merging")
    g.add_argument("--search", action="store_true", help="score every input on --dev-tasks and search a merge")
    g.add_argument("--dev-tasks", nargs="+", metavar="TASK", help="built-in task names, YAML files or folders")
    g.add_argument("--strategy", choices=["greedy", "grid"], default="greedy",
                   help="greedy soup, or a grid over t between the two best inputs")
    g.add_argument("--grid", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="t values of the grid")
    g.add_argument("--rules", choices=["qzhou", "qwen3", "none"], default="qzhou", help="instruction rules")
    g.add_argument("--data-root", default=None, help="folder the built-in tasks read from")
    g.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype the candidates are evaluated in (default: float32)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... for the evaluation (default: cuda if any)")
    p.set_defaults(func=cmd_merge)


def cmd_merge(a: argparse.Namespace) -> None:
    options = dict(t=a.t, weights=a.weights, base=a.base, density=a.density, lam=a.lam, seed=a.seed,
                   min_angle=a.min_angle, lora_base=a.lora_base)
    if not a.search:
        if a.dev_tasks:
            raise ValueError("--dev-tasks applies to --search; add --search or drop --dev-tasks")
        from qzhou.merging.driver import merge_checkpoints

        report = merge_checkpoints(a.inputs, a.method or "slerp", out=a.out, hash_files=not a.no_hash,
                                   threads=a.threads or None, **options)
        print(report.summary())
        return
    if not a.dev_tasks:
        raise ValueError("--search needs --dev-tasks: e.g. --dev-tasks STSBenchmark SICK-R (or task YAML files)")
    if a.t is not None or a.weights is not None:
        raise ValueError("--search chooses the weights itself; drop --t / --weights")
    from qzhou.merging.search import search_merge

    del options["t"], options["weights"]
    search_merge(a.inputs, a.dev_tasks, out=a.out, strategy=a.strategy, method=a.method, grid=a.grid, rules=a.rules,
                 data_root=a.data_root, dtype=a.dtype, device=a.device, show_progress=True, **options)
