"""Where and in what arithmetic to compute: the device, the precision (measured on CPUs), autocast.

:func:`choose_precision`: an explicit precision always wins; on GPUs "auto" follows a rule, on a
CPU it times the actual model in both precisions and remembers the faster (`runtime.cpu`).
"""

from __future__ import annotations

import copy
import datetime
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from conserviz_utils.errors import TrainingError
from conserviz_utils.runtime.cpu import (
    BF16_MARGIN,
    PROBE_STEPS,
    PROBE_WARMUP_STEPS,
    check_purpose,
    cpu_bf16_support,
    decide_precision,
    decision_key,
    image_size,
    latest_decision,
    machine_fields,
    precision_cache_path,
    read_precision_cache,
    time_precisions,
    write_precision_cache,
)

#: The precisions ``fit``, ``predict`` and ``compute_embeddings`` accept.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    """Whether Apple's Metal backend can run here."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """The device to compute on: "auto" picks a CUDA GPU, then Apple MPS, then the CPU; refuses one it lacks."""
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise TrainingError(
            f"{device!r} is not a device", fix="use 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps'"
        ) from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(
                "device 'cuda' was asked for but this machine has no usable CUDA GPU",
                fix="use device='auto' or 'cpu'",
            )
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise TrainingError(
                f"device {str(chosen)!r} was asked for but there are "
                f"{torch.cuda.device_count()} CUDA GPU(s)",
                fix="use device='cuda' (the first GPU) or an index below the GPU count",
            )
    elif chosen.type == "mps" and not _mps_available():
        raise TrainingError(
            "device 'mps' was asked for but Apple's MPS backend is not available",
            fix="use device='auto' or 'cpu'",
        )
    return chosen


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision picked for one purpose, where the choice came from, and what was measured.

    ``source`` is "explicit" (asked for by name), "measured" (timed just now), "cached" (timed
    earlier on this machine) or "rule" (GPUs, MPS, no model given, ...); ``*_seconds`` are median
    seconds per channels-last step at ``batch_size``; ``probe_seconds`` what measuring took now.
    """

    precision: str
    source: str
    purpose: str = "train"
    device: str = "cpu"
    reason: str = ""
    fp32_seconds: float | None = None
    bf16_seconds: float | None = None
    batch_size: int | None = None
    arch: str | None = None
    probe_seconds: float = 0.0

    @property
    def fp32_images_per_second(self) -> float | None:
        """Images per second measured in fp32, or None."""
        return self.batch_size / self.fp32_seconds if self.batch_size and self.fp32_seconds else None

    @property
    def bf16_images_per_second(self) -> float | None:
        """Images per second measured in bf16, or None."""
        return self.batch_size / self.bf16_seconds if self.batch_size and self.bf16_seconds else None

    @property
    def bf16_speedup(self) -> float | None:
        """How many times faster bf16 ran than fp32 (below 1: slower), or None unmeasured."""
        if not self.fp32_seconds or not self.bf16_seconds:
            return None
        return self.fp32_seconds / self.bf16_seconds

    @property
    def label(self) -> str:
        """A short label for a progress bar title: "bf16, measured 2.1x fp32", "fp32, explicit"."""
        speedup = self.bf16_speedup
        if self.source in ("measured", "cached") and speedup is not None:
            return f"{self.precision}, {self.source}: bf16 {speedup:.2f}x fp32"
        return f"{self.precision}, {self.source}"

    def as_attrs(self) -> dict[str, Any]:
        """The choice as JSON-friendly ``history.attrs`` entries (``precision``, ``precision_*``)."""
        fp32, bf16 = self.fp32_images_per_second, self.bf16_images_per_second
        return {
            "precision": self.precision,
            "precision_source": self.source,
            "precision_reason": self.reason,
            "precision_fp32_images_per_second": None if fp32 is None else round(fp32, 2),
            "precision_bf16_images_per_second": None if bf16 is None else round(bf16, 2),
        }

    def __str__(self) -> str:
        return self.label


def _explicit_choice(precision: str, device: torch.device, purpose: str) -> PrecisionChoice:
    """The precision asked for by name, once checked that ``device`` can compute in it."""
    cuda_ampere = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8
    if precision == "fp16" and device.type != "cuda":
        raise TrainingError(
            f"fp16 training needs a CUDA GPU; this run is on {device.type}",
            fix="use precision='auto', 'bf16' or 'fp32'",
        )
    if precision == "bf16" and device.type == "cuda" and not cuda_ampere:
        raise TrainingError(
            f"{torch.cuda.get_device_name(device)} has no native bfloat16 "
            "(it needs an Ampere or newer GPU)",
            fix="use precision='auto' (fp16 with a gradient scaler) or 'fp32'",
        )
    return PrecisionChoice(precision, "explicit", purpose, device.type, f"{precision} was asked for")


def _gpu_rule(device: torch.device, purpose: str) -> PrecisionChoice:
    """GPUs: bf16 from Ampere on (compute capability 8.0), fp16 with a gradient scaler before."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            reason = f"CUDA GPU of compute capability {major}.{minor}: bf16"
            return PrecisionChoice("bf16", "rule", purpose, "cuda", reason)
        return PrecisionChoice(
            "fp16", "rule", purpose, "cuda",
            f"CUDA GPU of compute capability {major}.{minor} (before Ampere): fp16 with a gradient scaler",
        )
    return PrecisionChoice("fp32", "rule", purpose, device.type, f"{device.type}: fp32")


def choose_precision(
    precision: str = "auto",
    device: str | torch.device = "auto",
    model: nn.Module | None = None,
    batch_size: int | None = None,
    purpose: str = "train",
    input_size: int | Sequence[int] | None = None,
    *,
    arch: str | None = None,
    cache: bool = True,
    steps: int = PROBE_STEPS,
    warmup: int = PROBE_WARMUP_STEPS,
    margin: float = BF16_MARGIN,
    timer: Callable[[], float] = time.perf_counter,
) -> PrecisionChoice:
    """The arithmetic to train or predict in ("auto", "fp32", "bf16", "fp16"), with where the choice came from.

    * An explicit precision always wins, once checked the device has it.
    * "auto" on a CUDA GPU: bf16 from Ampere on, fp16 (with a gradient scaler) before; on MPS fp32.
    * "auto" on a CPU with native bf16, a ``model`` and ``batch_size``: the decision remembered
      for this CPU, torch version, ``arch``, purpose, batch and input size, else ``steps`` timed
      steps of a copy of ``model`` in each precision (`cpu.time_precisions`), bf16 kept only when
      more than ``margin`` faster. The caller's model, gradients and random state stay as they were.
    * "auto" on a CPU without a model: the latest decision remembered for this purpose (and
      ``arch`` when given), else fp32. Without native bf16: fp32, unmeasured.

    Raises:
        ValueError: ``precision`` or ``purpose`` is not one of those listed.
        TrainingError: the device cannot compute in the precision asked for.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    check_purpose(purpose)
    device = pick_device(device)
    if precision != "auto":
        return _explicit_choice(precision, device, purpose)
    if device.type != "cpu":
        return _gpu_rule(device, purpose)
    if cpu_bf16_support() == "none":
        return PrecisionChoice(
            "fp32", "rule", purpose, "cpu", "this CPU has no native bfloat16 (it would be emulated): fp32"
        )
    if arch is None and model is not None:
        arch = str(getattr(model, "arch", None) or type(model).__name__)
    height, width = image_size(input_size)
    cache_file = precision_cache_path() if cache else None
    decisions = read_precision_cache(cache_file) if cache_file is not None else {}

    if model is None or not batch_size:
        remembered = latest_decision(decisions, purpose, arch)
        if remembered is not None:
            return _from_record(remembered, "cached")
        return PrecisionChoice(
            "fp32", "rule", purpose, "cpu",
            f"no {purpose} measurement on this CPU yet (none is made without a model): fp32",
            arch=arch,
        )

    key = decision_key(arch, purpose, batch_size, (height, width), _trainable_parameters(model, purpose))
    if key in decisions:
        return _from_record(decisions[key], "cached")

    started = time.perf_counter()
    try:
        seconds = time_precisions(
            model, batch_size, purpose, ("fp32", "bf16"), (height, width), steps=steps, warmup=warmup, timer=timer
        )
        if min(seconds.values()) <= 0:
            raise ValueError("the clock did not advance during a step")
    except (RuntimeError, TypeError, ValueError, NotImplementedError, copy.Error) as error:
        # A model the probe cannot copy or run in bf16 trains in fp32: it runs, if not fastest.
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        return PrecisionChoice(
            "fp32", "rule", purpose, "cpu",
            f"the bf16/fp32 probe failed ({type(error).__name__}: {first_line}): fp32",
            batch_size=batch_size, arch=arch,
        )
    probe_seconds = time.perf_counter() - started
    chosen = decide_precision(seconds["fp32"], seconds["bf16"], margin)
    choice = PrecisionChoice(
        chosen, "measured", purpose, "cpu",
        _measured_reason(chosen, seconds["fp32"], seconds["bf16"], batch_size, margin),
        fp32_seconds=seconds["fp32"], bf16_seconds=seconds["bf16"], batch_size=batch_size, arch=arch,
        probe_seconds=probe_seconds,
    )
    if cache_file is not None:
        decisions[key] = _to_record(choice, (height, width))
        write_precision_cache(cache_file, decisions)
    return choice


def _measured_reason(chosen: str, fp32_seconds: float, bf16_seconds: float, batch_size: int, margin: float) -> str:
    """The reason of a measured choice: both rates, and the margin when fp32 was kept."""
    fp32_rate, bf16_rate = batch_size / fp32_seconds, batch_size / bf16_seconds
    figures = f"bf16 {bf16_rate:.1f} vs fp32 {fp32_rate:.1f} images/s at batch {batch_size}, channels-last"
    if chosen == "bf16":
        return f"measured on this CPU: {figures}"
    return f"measured on this CPU: {figures} (bf16 is kept only when more than {margin:.0%} faster)"


def _trainable_parameters(model: nn.Module, purpose: str) -> int | None:
    """Parameters that get gradients (a frozen backbone trains at another speed); None for inference."""
    if purpose != "train":
        return None
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def _to_record(choice: PrecisionChoice, input_size: tuple[int, int]) -> dict[str, Any]:
    """A measured choice as the decisions file keeps it: with the machine and when it was measured."""
    record = asdict(choice)
    for name in ("source", "probe_seconds", "device"):
        record.pop(name)
    record.update(
        machine_fields(),
        input_size=list(input_size),
        measured_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    return record


def _from_record(record: dict[str, Any], source: str) -> PrecisionChoice:
    """The choice a remembered decision stands for, its reason saying when it was measured."""
    fp32, bf16, batch = record["fp32_seconds"], record["bf16_seconds"], record.get("batch_size")
    reason = record.get("reason") or f"{record['precision']} was measured faster on this CPU"
    when = record.get("measured_at")
    return PrecisionChoice(
        record["precision"], source, record["purpose"], "cpu",
        f"{reason} (remembered from {when})" if when else reason,
        fp32_seconds=fp32, bf16_seconds=bf16, batch_size=batch, arch=record.get("arch"),
    )


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = _AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(device: torch.device, enabled: bool):
    """A gradient scaler for fp16 training (disabled otherwise)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


__all__ = ["PRECISIONS", "PrecisionChoice", "autocast", "choose_precision", "grad_scaler", "pick_device"]
