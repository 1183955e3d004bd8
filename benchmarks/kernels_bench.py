"""Three kernels of a training step, adirec's choice beside torch's default, timed in the same run:

* dropout (forward + backward) on a Transformer activation of ``adi-plus``'s size:
  ``torch.nn.functional.dropout`` against ``adirec.models.layers.dropout`` (masks from 15-bit
  uniform integers);
* one Adam step over ``adi-plus``'s parameters (built on ``synthetic:default``): torch's default
  Adam (a loop over the parameters on the CPU), ``foreach=True`` and ``fused=True`` (adirec's);
* the full softmax loss (forward + backward) of a batch of sequence positions against the whole
  corpus, MovieLens-1M's size: ``F.cross_entropy`` over the (B, C) logits against
  ``adirec.train.loss.full_softmax_loss`` (blocks of rows, each scored again in backward).

    python benchmarks/kernels_bench.py [--threads 2] [--rounds 5] [--out benchmarks/results]

Variants run in interleaved rounds (A B A B ...), each round the mean of ``--repeats`` calls, and
the median round is reported, so that a busy machine slows all of them alike. Writes
``kernels_bench.json`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adirec.bench.provenance import environment  # noqa: E402
from adirec.data.sources import load_source  # noqa: E402
from adirec.models.layers import dropout  # noqa: E402
from adirec.models.registry import build_config, build_model  # noqa: E402
from adirec.train.loss import full_softmax_loss  # noqa: E402


def timed_rounds(variants: dict, rounds: int, repeats: int) -> dict[str, float]:
    """Median over ``rounds`` of the mean seconds of one call, variants interleaved."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm up
        fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            seconds[name].append((time.perf_counter() - start) / repeats)
    return {name: statistics.median(s) for name, s in seconds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--p", type=float, default=0.2, help="dropout probability (adi-plus's Transformer)")
    ap.add_argument("--shape", default="163,50,64",
                    help="activation shape: users x history positions x width (a genre3 batch of 8,192 rows)")
    ap.add_argument("--softmax", default="8192,3706,64",
                    help="full softmax: positions x corpus items x vector width (a sequences batch on MovieLens-1M)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()

    shape = tuple(int(v) for v in args.shape.split(","))
    x = torch.randn(*shape, requires_grad=True)

    def torch_dropout():
        F.dropout(x, args.p, training=True).sum().backward()

    def adirec_dropout():
        dropout(x, args.p, training=True).sum().backward()

    drop = timed_rounds({"torch.nn.functional.dropout": torch_dropout, "adirec dropout": adirec_dropout},
                        args.rounds, args.repeats)

    data = load_source("synthetic:default")
    model = build_model("adi-plus", data.schema, data.num_domains, build_config("adi-plus", data.num_domains))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizers = {"Adam (default)": torch.optim.Adam(params, lr=1e-4),
                  "Adam foreach=True": torch.optim.Adam(params, lr=1e-4, foreach=True),
                  "Adam fused=True": torch.optim.Adam(params, lr=1e-4, fused=True)}
    adam = timed_rounds({name: opt.step for name, opt in optimizers.items()}, args.rounds, args.repeats)

    rows, corpus, width = (int(v) for v in args.softmax.split(","))
    user = torch.randn(rows, width, requires_grad=True)
    items = torch.randn(corpus, width, requires_grad=True)
    target = torch.randint(0, corpus, (rows,))
    weight = torch.rand(rows)

    def torch_softmax():
        loss = (F.cross_entropy(user @ items.T, target, reduction="none") * weight).sum() / weight.sum()
        torch.autograd.grad(loss, (user, items))

    def adirec_softmax():
        torch.autograd.grad(full_softmax_loss(user, items, target, weight=weight), (user, items))

    softmax = timed_rounds({"F.cross_entropy over (B, C)": torch_softmax, "adirec full_softmax_loss": adirec_softmax},
                           args.rounds, max(1, args.repeats // 10))

    result = {
        "threads": args.threads, "rounds": args.rounds, "repeats": args.repeats,
        "dropout": {"shape": list(shape), "p": args.p, "seconds_fwd_bwd": drop,
                    "speedup": drop["torch.nn.functional.dropout"] / drop["adirec dropout"]},
        "adam": {"model": "adi-plus on synthetic:default", "tensors": len(params),
                 "parameters": sum(p.numel() for p in params), "seconds_per_step": adam,
                 "speedup_fused": adam["Adam (default)"] / adam["Adam fused=True"]},
        "full_softmax": {"positions": rows, "corpus": corpus, "width": width, "seconds_fwd_bwd": softmax,
                         "speedup": softmax["F.cross_entropy over (B, C)"] / softmax["adirec full_softmax_loss"]},
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "mkl": torch.backends.mkl.is_available(),
        "environment": environment(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    for part in ("dropout", "adam", "full_softmax"):
        timings = result[part]["seconds_per_step" if part == "adam" else "seconds_fwd_bwd"]
        for name, s in timings.items():
            print(f"{name:32s} {s * 1000:8.2f} ms")
    print(f"dropout speedup {result['dropout']['speedup']:.2f}x, fused Adam {result['adam']['speedup_fused']:.2f}x, "
          f"full softmax {result['full_softmax']['speedup']:.2f}x")


if __name__ == "__main__":
    main()
