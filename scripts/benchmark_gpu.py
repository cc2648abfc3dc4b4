"""Speed and memory of every method on a random-weight ADM network with the FFHQ-256 configuration.

The network is :class:`priors.ADMUNet` with the exact configuration of the DPS authors'
``ffhq_10m.pt`` (``priors.adm.CONFIGS["ffhq256"]``, 93.6 M parameters) and random
weights; like guided-diffusion's own initialisation (``zero_module``) its output
convolution starts at zero, so the untrained network predicts ``eps = 0`` and no method
diverges, while every layer still runs.  Weights do not change the cost.  For every
method, batch size, network precision and compilation setting, one solve is measured by
:func:`invsolve.benchmarks.speed.measure_cell`: seconds per solve (and per image), NFE,
the network time of the same calls and the overhead ratio, operator time, and peak
memory (CUDA ``max_memory_allocated``: absolute, and the increment over the weights and
inputs) against one network forward (+ backward) at the same batch.  Writes
``gpu.md`` and ``gpu.json`` into ``--out``.

    python scripts/benchmark_gpu.py --device cuda --steps 50 --out runs/benchmark_gpu
    python scripts/benchmark_gpu.py --smoke          # tiny ADM on the CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from invsolve.benchmarks.machine import describe, environment
from invsolve.benchmarks.matrix import default_methods
from invsolve.benchmarks.output import write_outputs
from invsolve.benchmarks.speed import measure_cell
from invsolve.commands._arguments import parse_key_values, resolve_device
from priors.adm import CONFIGS, ADMPrior
from priors.adm_unet import ADMConfig, ADMUNet
from priors.compiled import CompiledPrior

#: A two-level ADM with attention, for --smoke runs on a CPU.
SMOKE_CONFIG = ADMConfig(image_size=32, model_channels=32, num_res_blocks=1, attention_resolutions=(16,),
                         channel_mult=(1, 2), num_head_channels=32)
#: Smaller than the paper's 1,024 particles, so that one EnKG cell stays within minutes.
DEFAULT_OPTIONS = {"enkg": {"ensemble_size": 64}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every method for pixel priors)")
    parser.add_argument("--task", default="super_resolution", help="benchmark task (default super_resolution)")
    parser.add_argument("--batches", default="1,8,16", help="batch sizes, comma-separated (default 1,8,16)")
    parser.add_argument("--dtypes", default="float32,float16,bfloat16", help="network precisions, comma-separated")
    parser.add_argument("--compile", default="off,on", help="off, on or off,on (default both)")
    parser.add_argument("--steps", type=int, default=50, help="steps per solve for every method (default 50)")
    parser.add_argument("--repeats", type=int, default=3, help="network calls per timing block (default 3)")
    parser.add_argument("--option", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="method hyperparameter (default: enkg:ensemble_size=64)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark_gpu"), help="output folder")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny ADM (32 px), batches 1,2, float32 and bfloat16, no compile, 2 steps, dps and ddrm")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batches, args.dtypes, args.compile, args.steps, args.repeats = "1,2", "float32,bfloat16", "off", 2, 1
        args.methods = args.methods or "dps,ddrm"
    return args


def random_adm(config: ADMConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> ADMPrior:
    """An ADM prior with random weights (seed ``seed``) and a zero output convolution."""
    torch.manual_seed(seed)  # weight initialisation only; the solves use their own generators
    unet = ADMUNet(config)
    torch.nn.init.zeros_(unet.out[-1].weight)
    torch.nn.init.zeros_(unet.out[-1].bias)
    return ADMPrior(unet.to(device=device, dtype=dtype).eval().requires_grad_(False))


def method_options(items: list[str]) -> dict[str, dict]:
    options = {name: dict(values) for name, values in DEFAULT_OPTIONS.items()}
    for item in items:
        method, sep, assignment = item.partition(":")
        if not sep:
            raise ValueError(f"--option expects METHOD:KEY=VALUE, got {item!r}")
        options.setdefault(method, {}).update(parse_key_values([assignment], "--option"))
    return options


def run(args: argparse.Namespace) -> list[dict]:
    device = resolve_device(args.device)
    config = SMOKE_CONFIG if args.smoke else CONFIGS["ffhq256"]
    options = method_options(args.option)
    rows = []
    for dtype_name in args.dtypes.split(","):
        base = random_adm(config, device, getattr(torch, dtype_name))
        parameters = sum(p.numel() for p in base.unet.parameters())
        methods = args.methods.split(",") if args.methods else default_methods(base)
        for compiled in [mode == "on" for mode in args.compile.split(",")]:
            prior = CompiledPrior(base) if compiled else base
            for method in methods:
                for batch in (int(b) for b in args.batches.split(",")):
                    record = measure_cell(prior, method, args.task, size=config.image_size, batch=batch,
                                          steps=args.steps, repeats=args.repeats, options=options.get(method))
                    record.update(dtype=dtype_name, compiled=compiled, parameters=parameters,
                                  compile_status=getattr(prior, "status", "eager"))
                    rows.append(record)
                    print(_line(record), file=sys.stderr, flush=True)
    return rows


def _line(record: dict) -> str:
    head = f"{record['method']} {record['dtype']} compiled={record['compiled']} batch {record['batch']}:"
    if record["status"] != "ok":
        return f"{head} {record['status']} ({record.get('reason', '')})"
    return (f"{head} {record['seconds']:.2f} s/solve, NFE {record['nfe']:.0f}, overhead {record['overhead']:.2f}, "
            f"peak {record['peak_mib']:.0f} MiB")


def markdown(rows: list[dict], args: argparse.Namespace, env: dict) -> str:
    parameters = rows[0]["parameters"] if rows else 0
    name = "a tiny ADM (smoke run)" if args.smoke else "ADM, FFHQ-256 configuration"
    lines = [
        f"{name}, random weights, {parameters / 1e6:.1f} M parameters; task {args.task}; {args.steps} steps per "
        f"solve; ran {describe(env)}. Peak memory: {rows[0].get('memory_kind', '') if rows else ''}; "
        "'one call' is one network forward (+ backward for methods that backpropagate) at the same batch.",
        "",
        "| method | dtype | compiled | batch | NFE | s / solve | s / image | overhead | peak MiB | "
        "peak increment MiB | one call MiB | increment ÷ call |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        head = f"| {r['method']} | {r['dtype']} | {'yes' if r['compiled'] else 'no'} | {r['batch']} |"
        if r["status"] != "ok":
            lines.append(f"{head} {r['status']}: {r.get('reason', '')} | | | | | | | |")
            continue
        ratio = "–" if r["memory_ratio"] is None else f"{r['memory_ratio']:.2f}"
        lines.append(
            f"{head} {r['nfe']:.0f} | {r['seconds']:.2f} | {r['seconds'] / r['batch']:.3f} | {r['overhead']:.2f} | "
            f"{r['peak_mib']:.0f} | {r['peak_increment_mib']:.0f} | {r['reference_increment_mib']:.0f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = run(args)
    env = environment(resolve_device(args.device))
    text = markdown(rows, args, env)
    md_path, json_path = write_outputs(text, {"arguments": {k: str(v) for k, v in vars(args).items()},
                                              "environment": env, "rows": rows}, args.out, "gpu")
    print(text, end="")
    print(f"wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
