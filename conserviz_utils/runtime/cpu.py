"""The CPU: what it is, and whether it runs a model faster in bf16 or fp32 (measured, remembered).

No rule read from the CPU's flags is right everywhere: bf16 trained ResNet50 1.4x *slower* than
fp32 on an AVX512-BF16 Xeon and 2x *faster* on an AVX512-BF16 AMD EPYC (Zen 4). So
`device.choose_precision` times a few steps of the actual model in both precisions here
(:func:`time_precisions`) and remembers the decision in a small JSON file in the user's cache
folder (:func:`precision_cache_path`), keyed on everything it depends on (:func:`decision_key`).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from conserviz_utils.errors import ConservizError
from conserviz_utils.files.fileio import atomic_write_json, user_cache_dir

#: What a precision is chosen for: training (forward + backward) or inference (forward only).
PURPOSES = ("train", "inference")
#: bf16 must be this much faster than fp32 to be chosen: a closer race is within the noise of a
#: few timed steps, and fp32 is the exact arithmetic.
BF16_MARGIN = 0.05
#: Untimed steps per precision first (kernel selection, memory warm-up), then timed ones, whose
#: median counts (a shared machine makes single steps noisy).
PROBE_WARMUP_STEPS = 1
PROBE_STEPS = 3
#: The decisions file in the cache folder, its layout version (another is ignored) and how many
#: of the newest decisions it keeps.
PRECISION_CACHE_NAME = "precision.json"
PRECISION_CACHE_FORMAT = 1
PRECISION_CACHE_LIMIT = 256


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ("model name", "flags", ...; empty elsewhere)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    if fields:
                        break  # the end of the first processor's block
                    continue
                name, _, value = line.partition(":")
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    return fields


def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports in /proc/cpuinfo (empty elsewhere)."""
    return frozenset(_cpuinfo().get("flags", "").split())


@functools.lru_cache(maxsize=1)
def cpu_model_name() -> str:
    """The CPU's model name as ``lscpu`` shows it ("AMD EPYC 9454", "Apple M2", ...)."""
    name = _cpuinfo().get("model name")
    if not name and platform.system() == "Darwin":
        import subprocess

        try:
            name = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            name = ""
    return name or platform.processor() or platform.machine() or "unknown CPU"


def cpu_identity() -> str:
    """The CPU as decisions are remembered for: name, family/model/stepping (VMs show a bare "AMD EPYC"), bf16."""
    info = _cpuinfo()
    numbers = [f"{key} {info[key]}" for key in ("cpu family", "model", "stepping") if key in info]
    parts = [cpu_model_name(), *numbers, f"bf16 {cpu_bf16_support()}"]
    return ", ".join(parts)


@functools.lru_cache(maxsize=1)
def cpu_bf16_support() -> str:
    """How this CPU computes bfloat16 through oneDNN: "amx" (tile units), "avx512_bf16" or "none" (emulated).

    Whether bf16 is then *faster* only a measurement answers (`device.choose_precision`).
    """
    try:
        onednn_bf16 = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn_bf16 = False
    flags = _cpu_flags() if onednn_bf16 else frozenset()
    return "amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else "none"


def available_cpus() -> int:
    """CPU cores this process may use (respects affinity masks, e.g. in containers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def check_purpose(purpose: str) -> None:
    """Refuse a purpose that is not one of :data:`PURPOSES`."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}; got {purpose!r}")


def decide_precision(fp32_seconds: float, bf16_seconds: float, margin: float = BF16_MARGIN) -> str:
    """"bf16" when it ran more than ``margin`` faster than fp32 per step, else "fp32"."""
    return "bf16" if bf16_seconds * (1 + margin) < fp32_seconds else "fp32"


def image_size(input_size: int | Sequence[int] | None) -> tuple[int, int]:
    """An image side or (height, width) as a (height, width) pair; None is 224 × 224."""
    if input_size is None:
        return 224, 224
    if isinstance(input_size, int):
        return input_size, input_size
    height, width = (int(side) for side in input_size)
    return height, width


def _first_tensor(output: Any) -> torch.Tensor:
    """The first tensor in a model's output (a tensor, or a tuple / list / dict holding some)."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output
    if isinstance(values, (list, tuple)) or isinstance(output, dict):
        for value in values:
            if isinstance(value, torch.Tensor):
                return value
    raise TypeError(f"the model returned {type(output).__name__}, not a tensor")


def _input_channels(model: nn.Module) -> int:
    """The channels of the model's first convolution (3 when it has none)."""
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return module.in_channels
    return 3


def time_precisions(
    model: nn.Module,
    batch_size: int,
    purpose: str = "train",
    precisions: Sequence[str] = ("fp32", "bf16"),
    input_size: int | Sequence[int] | None = None,
    *,
    channels_last: bool = True,
    steps: int = PROBE_STEPS,
    warmup: int = PROBE_WARMUP_STEPS,
    timer: Callable[[], float] = time.perf_counter,
    seed: int = 0,
) -> dict[str, float]:
    """``{precision: median seconds per step}`` of a copy of ``model`` on random CPU images.

    A "train" step is forward + backward of the mean output (no optimizer step); an "inference"
    step a forward pass in eval mode under ``torch.inference_mode``. The precisions take turns
    step by step, so a change in the machine's load hits them alike. The caller's model and
    random number generator are left untouched.
    """
    check_purpose(purpose)
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}")
    for precision in precisions:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precisions to time on a CPU are 'fp32' and 'bf16'; got {precision!r}")
    height, width = image_size(input_size)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    with torch.random.fork_rng(devices=[]):  # dropout in the copy must not move the caller's RNG
        probe = copy.deepcopy(model).to(device="cpu", memory_format=layout)
        probe.train(purpose == "train")
        generator = torch.Generator().manual_seed(seed)
        images = torch.randn(batch_size, _input_channels(probe), height, width, generator=generator)
        images = images.contiguous(memory_format=layout)

        def step(precision: str) -> None:
            bf16 = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
            if purpose == "inference":
                with torch.inference_mode(), bf16:
                    probe(images)
                return
            with bf16:
                output = _first_tensor(probe(images))
            loss = output.float().mean()
            if loss.requires_grad:
                loss.backward()
            for parameter in probe.parameters():
                parameter.grad = None

        for precision in precisions:
            for _ in range(warmup):
                step(precision)
        timings: dict[str, list[float]] = {precision: [] for precision in precisions}
        for _ in range(steps):
            for precision in precisions:
                started = timer()
                step(precision)
                timings[precision].append(timer() - started)
    return {precision: statistics.median(values) for precision, values in timings.items()}


def precision_cache_path() -> Path:
    """The decisions file, in the cache folder (`fileio.user_cache_dir`)."""
    return user_cache_dir() / PRECISION_CACHE_NAME


def machine_fields() -> dict[str, Any]:
    """The machine a decision is remembered for: the CPU, the torch version and its threads."""
    return {"cpu": cpu_identity(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def decision_key(
    arch: str | None, purpose: str, batch_size: int, input_size: tuple[int, int], trainable: int | None
) -> str:
    """Everything a decision depends on, as one string (a change in any of them measures anew)."""
    parts = {
        **machine_fields(),
        "arch": arch,
        "purpose": purpose,
        "batch_size": batch_size,
        "input_size": f"{input_size[0]}x{input_size[1]}",
        "trainable_parameters": trainable,
    }
    return json.dumps(parts, sort_keys=True)


def _valid_record(record: Any) -> bool:
    """Whether a remembered decision has every field, of the right kind (a damaged one is skipped)."""
    if not isinstance(record, dict) or record.get("precision") not in ("fp32", "bf16"):
        return False
    if record.get("purpose") not in PURPOSES:
        return False
    numbers = [record.get(name) for name in ("fp32_seconds", "bf16_seconds")]
    if not all(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 for value in numbers):
        return False
    batch = record.get("batch_size")
    return (batch is None or (isinstance(batch, int) and batch > 0)) and isinstance(record.get("reason", ""), str)


def latest_decision(decisions: dict[str, dict], purpose: str, arch: str | None) -> dict | None:
    """The newest decision for ``purpose`` on this CPU, torch version and thread count."""
    machine = machine_fields()
    matching = [
        record
        for record in decisions.values()
        if record["purpose"] == purpose
        and all(record.get(name) == value for name, value in machine.items())
        and (arch is None or record.get("arch") == arch)
    ]
    if not matching:
        return None
    return max(matching, key=lambda record: str(record.get("measured_at", "")))


def read_precision_cache(path: str | os.PathLike | None = None) -> dict[str, dict]:
    """The decisions remembered in ``path`` (default :func:`precision_cache_path`) by key; a bad file reads as none."""
    path = Path(path) if path is not None else precision_cache_path()
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(content, dict) or content.get("format") != PRECISION_CACHE_FORMAT:
        return {}
    decisions = content.get("decisions")
    if not isinstance(decisions, dict):
        return {}
    return {key: record for key, record in decisions.items() if isinstance(key, str) and _valid_record(record)}


def write_precision_cache(path: str | os.PathLike, decisions: dict[str, dict]) -> bool:
    """Write the newest :data:`PRECISION_CACHE_LIMIT` ``decisions`` to ``path`` atomically; False if it cannot.

    The cache only saves time, so a read-only home folder must not stop a run.
    """
    newest = sorted(decisions.items(), key=lambda item: str(item[1].get("measured_at", "")))
    kept = dict(newest[-PRECISION_CACHE_LIMIT:])
    content = {
        "format": PRECISION_CACHE_FORMAT,
        "about": "conserviz's measured fp32/bf16 decisions per CPU, torch version, model, purpose "
        "and batch size; safe to delete (they are measured again)",
        "decisions": kept,
    }
    try:
        atomic_write_json(path, content, what="precision cache")
    except (ConservizError, OSError):
        return False
    return True

