"""Training speed of candidate crop encoders (issue 15): cells per second of one training step of the crop MIL model.

    python benchmarks/bench_encoders.py [--encoders resnet10t resnet18 efficientnet_b0] [--input-size 64]
                                        [--rounds 3] [--steps 10] [--threads 1]

Every encoder trains the same model (`MILConfig` with the default head, 5 input channels) on the same random batch
of 8 bags x 8 cells (the MIL benchmark's batch), forward + backward + AdamW step. The encoders run interleaved,
round after round, in one process (this VM's speed drifts over minutes; interleaving keeps the ratios fair); the
best round of each counts. Parameters and cells/s per encoder, and the ratio to the first encoder, on stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoders", nargs="+", default=["resnet10t", "resnet18", "efficientnet_b0"])
    p.add_argument("--input-size", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from mil.config import MILConfig
    from mil.model import BagBatch, MILModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bags, cells, size = 8, 8, 64  # the cache's crops are 64 px; the model resizes them to --input-size
    batch = BagBatch(torch.rand(bags, cells, 4, size, size), (torch.rand(bags, cells, size, size) > 0.5).float(),
                     torch.ones(bags, cells, dtype=torch.bool), (torch.rand(bags, 28) > 0.9).float())
    models = {}
    for name in args.encoders:
        model = MILModel(MILConfig(encoder=name, input_size=args.input_size)).train()
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    best = {name: 0.0 for name in args.encoders}
    for _ in range(args.rounds):
        for name, (model, optimizer) in models.items():
            step(model, optimizer, batch)  # warm-up
            started = time.perf_counter()
            for _ in range(args.steps):
                step(model, optimizer, batch)
            best[name] = max(best[name], args.steps * bags * cells / (time.perf_counter() - started))
    first = args.encoders[0]
    print(f"\n| encoder | parameters (M) | training cells/s at {args.input_size} px | ratio to {first} |")
    print("|---|---|---|---|")
    for name, (model, _) in models.items():
        parameters = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {name} | {parameters:.1f} | {best[name]:.0f} | {best[name] / best[first]:.2f} |")
    return 0


def step(model, optimizer, batch) -> None:
    import torch.nn.functional as F

    output = model(batch)
    loss = F.binary_cross_entropy_with_logits(output.image_logits, batch.labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


if __name__ == "__main__":
    sys.exit(main())
