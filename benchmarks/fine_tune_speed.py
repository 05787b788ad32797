"""How fast EfficientNet-Lite0 fine-tunes on this machine: all layers, the last blocks only, smaller images.

Fine-tuning is the longest step of the course at the competition's size (one epoch over the
12,366 fit images of notebook 04). This measures the levers that could shorten it, side by side in
one process on random tensors: training steps (forward, backward, AdamW step) at batch 32,
channels-last, in the given precision, the configurations taking turns step by step so a change
in the machine's load hits all alike; the first step of each is left out and the median counts.

    python benchmarks/fine_tune_speed.py [--precision bf16|fp32] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conserviz_utils.models import build_model  # noqa: E402

BATCH = 32


def trainable_from(model: nn.Module, first_block: int | None) -> nn.Module:
    """Make the model trainable from block ``first_block`` of 16 on (None: every layer); the rest frozen, in eval mode."""
    backbone = model.backbone
    for parameter in model.parameters():
        parameter.requires_grad_(first_block is None)
    if first_block is not None:
        for block in backbone._blocks[first_block:]:
            block.requires_grad_(True)
        backbone._conv_head.requires_grad_(True)
        backbone._bn1.requires_grad_(True)
        model.head.requires_grad_(True)
    model.train()
    if first_block is not None:
        # A frozen prefix keeps its BatchNorm statistics, as the course's frozen backbone does.
        for module in [backbone._conv_stem, backbone._bn0, *backbone._blocks[:first_block]]:
            module.eval()
    return model


def configurations() -> dict[str, tuple[int | None, int]]:
    """Name → (first trainable block or None for all, image side)."""
    return {
        "all layers, 224 px": (None, 224),
        "blocks 8-15 + head, 224 px": (8, 224),
        "blocks 12-15 + head, 224 px": (12, 224),
        "all layers, 192 px": (None, 192),
        "all layers, 160 px": (None, 160),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results-fine-tune-speed.json"))
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    runs = {}
    for name, (first_block, side) in configurations().items():
        model = trainable_from(build_model("efficientnet_lite0", pretrained=False), first_block)
        model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        images = torch.randn(BATCH, 3, side, side).to(memory_format=torch.channels_last)
        labels = torch.randint(0, 8, (BATCH,))
        runs[name] = {"model": model, "optimizer": optimizer, "images": images, "labels": labels, "seconds": []}
    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()

    def step(run: dict) -> float:
        started = time.perf_counter()
        with autocast():
            logits = run["model"](run["images"])
        loss = nn.functional.cross_entropy(logits.float(), run["labels"])
        run["optimizer"].zero_grad(set_to_none=True)
        loss.backward()
        run["optimizer"].step()
        return time.perf_counter() - started

    for run in runs.values():
        step(run)  # warm-up: first-call allocations and kernel selection
    for _ in range(args.steps):
        for run in runs.values():
            run["seconds"].append(step(run))

    rows = []
    baseline = None
    for name, run in runs.items():
        rate = BATCH / statistics.median(run["seconds"])
        baseline = baseline or rate
        trainable = sum(p.numel() for p in run["model"].parameters() if p.requires_grad)
        rows.append({"configuration": name, "images_per_second": round(rate, 2), "ratio": round(rate / baseline, 2),
                     "trainable_parameters": trainable})
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"EfficientNet-Lite0 fine-tuning, batch {BATCH}, {args.precision}, channels-last; {cpu}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    for row in rows:
        print(f"  {row['configuration']:<30} {row['images_per_second']:>6.1f} images/s  {row['ratio']:.2f}x  "
              f"({row['trainable_parameters']:,} trainable)")
    args.out.write_text(json.dumps({"cpu": cpu, "precision": args.precision, "threads": torch.get_num_threads(),
                                    "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
