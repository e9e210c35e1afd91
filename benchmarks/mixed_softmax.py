"""What does a mixed (code / continuous) softmax step cost, and does one product over concatenated bits beat
the two products it replaced?

    python benchmarks/mixed_softmax.py [--batch 8192] [--shared 4096] [--bits 64] [--rounds 9] --out docs/results/mixed_softmax.json

During the guided phase each example scores the shared items in its drawn space: ``(h d) @ sign(Z)^T +
(h (1 - d)) @ Z^T``. Three ways side by side, forward and backward of the softmax's log-sum-exp, at the
default preset's sizes (B edges, S shared items, K bits), one torch thread per core, in turns:

- ``pure``: every example on codes (one product; what a step costs after pure STE);
- ``two products``: the formula as written (the trainer's way before this benchmark);
- ``one product``: the trainer's way now (``HashGNN._logits``): ``[h d, h (1 - d)] @ [sign(Z), Z]^T``.

The ratio two / one is the gain of a guided-phase head; one / pure what guidance still costs.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch
from common import add_out, interleaved, md_table, report, setup_logging

from hashrec.model.hashgnn import HashGNN, _Head, _mix
from hashrec.model.hashing import ste_sign


def _two_products(h: torch.Tensor, z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """The shared items' logits as the trainer computed them before (tau = 1)."""
    hu, df = _mix(h, d) / h.shape[-1], d.to(h.dtype)
    return (hu * df) @ ste_sign(z).T + (hu * (1 - df)) @ z.T


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Median milliseconds of one forward + backward per way."""
    torch.set_num_threads(os.cpu_count() or 1)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(args.batch, args.bits, generator=gen).tanh().requires_grad_()
    z = torch.randn(args.shared, args.bits, generator=gen).tanh().requires_grad_()
    half = torch.rand(args.batch, 1, generator=gen) < 0.5
    on_codes = torch.ones_like(half)
    empty = torch.zeros(0, args.bits)

    def ours(draw: torch.Tensor) -> torch.Tensor:
        return HashGNN._logits(None, _Head(h, h, empty, z), draw, 1.0, None).shared  # type: ignore[arg-type]

    def timed(logits: Any) -> Any:
        def step(_: int) -> None:
            h.grad, z.grad = None, None
            torch.logsumexp(logits(), 1).mean().backward()

        return step

    ways = {
        "pure": timed(lambda: ours(on_codes)),
        "two products": timed(lambda: _two_products(h, z, half)),
        "one product": timed(lambda: ours(half)),
    }
    ms = interleaved(ways, args.rounds)
    check = torch.allclose(ours(half), _two_products(h, z, half), atol=1e-5)
    return {
        "sizes": {"batch": args.batch, "shared": args.shared, "bits": args.bits},
        "threads": torch.get_num_threads(),
        "ms": ms,
        "two_over_one": ms["two products"] / ms["one product"],
        "one_over_pure": ms["one product"] / ms["pure"],
        "same_logits": bool(check),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--shared", type=int, default=4096)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=9)
    add_out(parser)
    args = parser.parse_args()
    setup_logging()
    res = run(args)
    rows = [[k, f"{v:.0f}", f"{v / res['ms']['pure']:.2f}"] for k, v in res["ms"].items()]
    table = md_table(["mixed softmax, forward + backward", "ms", "/ pure"], rows)
    table += (
        f"\ntwo products / one product: {res['two_over_one']:.2f}x; "
        f"same logits (within 1e-5): {res['same_logits']}\n"
    )
    cmd = f"python benchmarks/mixed_softmax.py --batch {args.batch} --shared {args.shared} --bits {args.bits}"
    report("Mixed softmax: one product vs two", table, res, args.out, cmd + f" --rounds {args.rounds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
