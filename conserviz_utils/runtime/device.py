"""Where and in what arithmetic to compute: devices, precision chosen by measurement, autocast.

* :func:`pick_device` — "auto" picks a CUDA GPU, then Apple MPS, then the CPU.
* :func:`choose_precision` / :func:`pick_precision` — the arithmetic to train or predict in.
  An explicit precision always wins. On GPUs "auto" follows a rule (bf16 from Ampere on, fp16
  with a gradient scaler before). On a CPU no rule read from the CPU's flags is right everywhere:
  bf16 trained ResNet50 1.4x *slower* than fp32 on an AVX512-BF16 Xeon and 2x *faster* on an
  AVX512-BF16 AMD EPYC (Zen 4). So "auto" on a CPU times a few steps of the actual model at the
  actual batch size in both precisions and keeps the faster, remembering the decision in a small
  JSON file in the user's cache folder (:func:`precision_cache_path`): the probe runs once per
  machine, model, purpose and batch size.
* :func:`maybe_compile` — ``torch.compile`` for long runs only, falling back to eager cleanly.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from conserviz_utils.errors import ConservizError, TrainingError
from conserviz_utils.files.fileio import atomic_write_json

#: The precisions ``fit``, ``predict`` and ``compute_embeddings`` accept.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

#: What a precision is chosen for: training (forward + backward) or inference (forward only).
PURPOSES = ("train", "inference")

#: Where a choice came from: asked for by name, measured now, read from the cache, or a rule.
CHOICE_SOURCES = ("explicit", "measured", "cached", "rule")

#: bf16 must be this much faster than fp32 (5 %) to be chosen: a closer race is within the noise
#: of a few timed steps, and fp32 is the exact arithmetic.
BF16_MARGIN = 0.05

#: Steps run and thrown away per precision before timing (kernel selection, memory warm-up).
PROBE_WARMUP_STEPS = 1

#: Steps timed per precision; the median counts (a shared machine makes single steps noisy).
PROBE_STEPS = 3

#: Environment variable naming the folder of conserviz's per-user cache files.
CACHE_DIR_ENV = "CONSERVIZ_CACHE_DIR"

#: Name of the precision decisions file inside the cache folder.
PRECISION_CACHE_NAME = "precision.json"

#: Layout version of the precision cache file; a file of another version is ignored.
PRECISION_CACHE_FORMAT = 1

#: At most this many decisions are kept in the cache file (the newest).
PRECISION_CACHE_LIMIT = 256

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------------------
# Devices
# ------------------------------------------------------------------------------------------------


def _mps_available() -> bool:
    """Whether Apple's Metal backend can run here."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """The device to compute on: "auto" picks a CUDA GPU, then Apple MPS, then the CPU.

    Raises:
        TrainingError: a device was named that this machine does not have.
    """
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


# ------------------------------------------------------------------------------------------------
# The CPU
# ------------------------------------------------------------------------------------------------


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
    """The CPU as precision decisions are remembered for: model name, family/model/stepping, bf16.

    Virtual machines often show a bare "AMD EPYC" for several generations, so the family, model
    and stepping numbers and the bf16 instruction sets are part of it.
    """
    info = _cpuinfo()
    numbers = [f"{key} {info[key]}" for key in ("cpu family", "model", "stepping") if key in info]
    parts = [cpu_model_name(), *numbers, f"bf16 {cpu_bf16_support()}"]
    return ", ".join(parts)


@functools.lru_cache(maxsize=1)
def cpu_bf16_support() -> str:
    """How this CPU computes bfloat16 through oneDNN: "amx", "avx512_bf16" or "none".

    "amx" means AMX tile units (Intel Sapphire Rapids and later), "avx512_bf16" bfloat16
    dot-product instructions only, "none" that bfloat16 would be emulated. Whether bf16 is then
    *faster* is a different question, which only a measurement answers (:func:`choose_precision`).
    """
    flags = _cpu_flags()
    if not torch.backends.mkldnn.is_available():
        return "none"
    try:
        onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn_bf16 = False
    if not onednn_bf16:
        return "none"
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return "none"


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX512-BF16): see :func:`cpu_bf16_support`."""
    return cpu_bf16_support() != "none"


# ------------------------------------------------------------------------------------------------
# The precision choice
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision picked for one purpose, where the choice came from, and what was measured.

    Attributes:
        precision: "fp32", "bf16" or "fp16".
        source: "explicit" (asked for by name), "measured" (timed just now), "cached" (timed
            earlier on this machine) or "rule" (no measurement: GPUs, MPS, no model given, ...).
        purpose: "train" or "inference".
        device: The device type ("cpu", "cuda", "mps").
        reason: One sentence saying why.
        fp32_seconds: Median seconds per step in fp32 (channels-last), when measured.
        bf16_seconds: Median seconds per step in bf16 (channels-last), when measured.
        batch_size: The batch the steps were timed at.
        arch: The architecture the decision is for.
        probe_seconds: Wall time the measurement took (0 when nothing was measured now).
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
        return _rate(self.batch_size, self.fp32_seconds)

    @property
    def bf16_images_per_second(self) -> float | None:
        """Images per second measured in bf16, or None."""
        return _rate(self.batch_size, self.bf16_seconds)

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
        return {
            "precision": self.precision,
            "precision_source": self.source,
            "precision_reason": self.reason,
            "precision_fp32_images_per_second": _rounded(self.fp32_images_per_second),
            "precision_bf16_images_per_second": _rounded(self.bf16_images_per_second),
        }

    def __str__(self) -> str:
        return self.label


def _rate(batch_size: int | None, seconds: float | None) -> float | None:
    """``batch_size`` images over ``seconds``, or None when either is missing."""
    if not batch_size or not seconds:
        return None
    return batch_size / seconds


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")


def _check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}; got {purpose!r}")


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
            return PrecisionChoice("bf16", "rule", purpose, "cuda", f"CUDA GPU of compute capability {major}.{minor}: bf16")
        return PrecisionChoice(
            "fp16", "rule", purpose, "cuda",
            f"CUDA GPU of compute capability {major}.{minor} (before Ampere): fp16 with a gradient scaler",
        )
    return PrecisionChoice("fp32", "rule", purpose, device.type, f"{device.type}: fp32")


def decide_precision(fp32_seconds: float, bf16_seconds: float, margin: float = BF16_MARGIN) -> str:
    """"bf16" when it ran more than ``margin`` faster than fp32 per step, else "fp32"."""
    return "bf16" if bf16_seconds * (1 + margin) < fp32_seconds else "fp32"


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
    """The arithmetic to train or predict in, with where the choice came from.

    * An explicit "fp32", "bf16" or "fp16" always wins (once checked the device has it).
    * "auto" on a CUDA GPU: bf16 from Ampere on, fp16 (with a gradient scaler in ``fit``)
      before. On Apple MPS: fp32.
    * "auto" on a CPU with a ``model`` and ``batch_size``: the decision remembered for this CPU,
      torch version, architecture, purpose, batch size and input size, else a measurement —
      ``steps`` timed steps (after ``warmup``) of a copy of ``model`` in fp32 and in bf16,
      both channels-last, forward + backward for "train" (no optimizer step), forward only for
      "inference" — keeping bf16 only if it was more than ``margin`` faster. The caller's
      model, gradients and random number generator are left as they were.
    * "auto" on a CPU without a model: the latest decision remembered for this purpose on
      this CPU and torch version (for ``arch`` when given), else fp32.
    * A CPU without native bf16 (:func:`cpu_bf16_support` is "none") is not measured: fp32.

    Args:
        precision: "auto", "fp32", "bf16" or "fp16".
        device: The device the work runs on (see :func:`pick_device`).
        model: The model to time (on a copy); without it nothing is measured.
        batch_size: The batch the work runs at.
        purpose: "train" or "inference": decided, measured and remembered separately.
        input_size: Image side (or (height, width)) to time at; default 224.
        arch: The name the decision is remembered under; default ``model.arch`` or the
            model's class name.
        cache: Read and write the decisions file (:func:`precision_cache_path`).
        steps: Timed steps per precision.
        warmup: Untimed steps per precision before the timed ones.
        margin: How much faster bf16 must be (0.05: 5 %).
        timer: Clock in seconds (injectable for tests).

    Returns:
        The :class:`PrecisionChoice`.

    Raises:
        ValueError: ``precision`` or ``purpose`` is not one of those listed.
        TrainingError: the device cannot compute in the precision asked for.
    """
    _check_precision(precision)
    _check_purpose(purpose)
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
    height, width = _image_size(input_size)
    cache_file = precision_cache_path() if cache else None
    decisions = read_precision_cache(cache_file) if cache_file is not None else {}

    if model is None or not batch_size:
        remembered = _latest_decision(decisions, purpose, arch)
        if remembered is not None:
            return _from_record(remembered, "cached")
        return PrecisionChoice(
            "fp32", "rule", purpose, "cpu",
            f"no {purpose} measurement on this CPU yet (none is made without a model): fp32",
            arch=arch,
        )

    key = _decision_key(arch, purpose, batch_size, (height, width), _trainable_parameters(model, purpose))
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


def pick_precision(
    precision: str = "auto",
    device: str | torch.device = "auto",
    model: nn.Module | None = None,
    batch_size: int | None = None,
    purpose: str = "train",
    input_size: int | Sequence[int] | None = None,
    **options: Any,
) -> str:
    """The arithmetic to train or predict in: "bf16", "fp16" or "fp32" (see :func:`choose_precision`).

    Args:
        precision, device, model, batch_size, purpose, input_size: as in :func:`choose_precision`.
        options: ``arch``, ``cache``, ``steps``, ``warmup``, ``margin``, ``timer`` of
            :func:`choose_precision`.
    """
    return choose_precision(precision, device, model, batch_size, purpose, input_size, **options).precision


def _measured_reason(chosen: str, fp32_seconds: float, bf16_seconds: float, batch_size: int, margin: float) -> str:
    fp32_rate, bf16_rate = batch_size / fp32_seconds, batch_size / bf16_seconds
    figures = f"bf16 {bf16_rate:.1f} vs fp32 {fp32_rate:.1f} images/s at batch {batch_size}, channels-last"
    if chosen == "bf16":
        return f"measured on this CPU: {figures}"
    return f"measured on this CPU: {figures} (bf16 is kept only when more than {margin:.0%} faster)"


def _image_size(input_size: int | Sequence[int] | None) -> tuple[int, int]:
    if input_size is None:
        return 224, 224
    if isinstance(input_size, int):
        return input_size, input_size
    height, width = (int(side) for side in input_size)
    return height, width


def _trainable_parameters(model: nn.Module, purpose: str) -> int | None:
    """Parameters that get gradients (a frozen backbone trains at another speed); None for inference."""
    if purpose != "train":
        return None
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


# ------------------------------------------------------------------------------------------------
# The measurement
# ------------------------------------------------------------------------------------------------


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
    """Median seconds per step of a copy of ``model`` on random CPU images, for each precision.

    A "train" step is forward + backward of the mean output (gradients are dropped, there is
    no optimizer step); an "inference" step is a forward pass in eval mode under
    ``torch.inference_mode``. The precisions take turns step by step, so a change in the
    machine's load hits them alike. The caller's model and random number generator are left
    untouched.

    Args:
        model: The model to time; it is copied, never changed.
        batch_size: Images per step.
        purpose: "train" or "inference".
        precisions: Any of "fp32", "bf16" (CPU autocast).
        input_size: Image side or (height, width); default 224.
        channels_last: Time the channels-last layout (conserviz's); False: NCHW.
        steps: Timed steps per precision (at least 1).
        warmup: Untimed steps per precision first.
        timer: Clock in seconds.
        seed: Seed of the random images.

    Returns:
        ``{precision: median seconds per step}``.
    """
    _check_purpose(purpose)
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}")
    for precision in precisions:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precisions to time on a CPU are 'fp32' and 'bf16'; got {precision!r}")
    height, width = _image_size(input_size)
    cpu = torch.device("cpu")
    layout = torch.channels_last if channels_last else torch.contiguous_format
    with torch.random.fork_rng(devices=[]):  # dropout in the copy must not move the caller's RNG
        probe = copy.deepcopy(model).to(device=cpu, memory_format=layout)
        probe.train(purpose == "train")
        generator = torch.Generator().manual_seed(seed)
        images = torch.randn(batch_size, _input_channels(probe), height, width, generator=generator)
        images = images.contiguous(memory_format=layout)

        def step(precision: str) -> None:
            if purpose == "inference":
                with torch.inference_mode(), autocast(cpu, precision):
                    probe(images)
                return
            with autocast(cpu, precision):
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


# ------------------------------------------------------------------------------------------------
# The decisions file
# ------------------------------------------------------------------------------------------------


def precision_cache_path() -> Path:
    """The decisions file: ``$CONSERVIZ_CACHE_DIR``, ``$XDG_CACHE_HOME/conserviz`` or ``~/.cache/conserviz``."""
    folder = os.environ.get(CACHE_DIR_ENV, "").strip()
    if folder:
        return Path(folder).expanduser() / PRECISION_CACHE_NAME
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "conserviz" / PRECISION_CACHE_NAME


def _decision_key(
    arch: str | None, purpose: str, batch_size: int, input_size: tuple[int, int], trainable: int | None
) -> str:
    """Everything a decision depends on, as one string (a change in any of them measures anew)."""
    parts = {
        "cpu": cpu_identity(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "arch": arch,
        "purpose": purpose,
        "batch_size": batch_size,
        "input_size": f"{input_size[0]}x{input_size[1]}",
        "trainable_parameters": trainable,
    }
    return json.dumps(parts, sort_keys=True)


def _to_record(choice: PrecisionChoice, input_size: tuple[int, int]) -> dict[str, Any]:
    record = asdict(choice)
    for name in ("source", "probe_seconds", "device"):
        record.pop(name)
    record.update(
        cpu=cpu_identity(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        input_size=list(input_size),
        measured_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    return record


def _valid_record(record: Any) -> bool:
    if not isinstance(record, dict) or record.get("precision") not in ("fp32", "bf16"):
        return False
    if record.get("purpose") not in PURPOSES:
        return False
    numbers = [record.get(name) for name in ("fp32_seconds", "bf16_seconds")]
    if not all(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 for value in numbers):
        return False
    batch = record.get("batch_size")
    return (batch is None or (isinstance(batch, int) and batch > 0)) and isinstance(record.get("reason", ""), str)


def _from_record(record: dict[str, Any], source: str) -> PrecisionChoice:
    fp32, bf16, batch = record["fp32_seconds"], record["bf16_seconds"], record.get("batch_size")
    reason = record.get("reason") or f"{record['precision']} was measured faster on this CPU"
    when = record.get("measured_at")
    return PrecisionChoice(
        record["precision"], source, record["purpose"], "cpu",
        f"{reason} (remembered from {when})" if when else reason,
        fp32_seconds=fp32, bf16_seconds=bf16, batch_size=batch, arch=record.get("arch"),
    )


def _latest_decision(decisions: dict[str, dict], purpose: str, arch: str | None) -> dict | None:
    """The newest decision for ``purpose`` on this CPU, torch version and thread count."""
    matching = [
        record
        for record in decisions.values()
        if record["purpose"] == purpose
        and record.get("cpu") == cpu_identity()
        and record.get("torch") == torch.__version__
        and record.get("threads") == torch.get_num_threads()
        and (arch is None or record.get("arch") == arch)
    ]
    if not matching:
        return None
    return max(matching, key=lambda record: str(record.get("measured_at", "")))


def read_precision_cache(path: str | os.PathLike | None = None) -> dict[str, dict]:
    """The decisions remembered in ``path`` (default :func:`precision_cache_path`), by key.

    A missing, unreadable or damaged file, or one of another layout version, reads as empty:
    the decisions are measured again and the file rewritten.
    """
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
    """Write ``decisions`` (the newest :data:`PRECISION_CACHE_LIMIT`) to ``path`` atomically.

    Returns:
        True when written; False when the folder cannot be written (the cache only saves time,
        so a read-only home folder must not stop a run).
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


# ------------------------------------------------------------------------------------------------
# Autocast, gradient scaling, torch.compile
# ------------------------------------------------------------------------------------------------


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = _AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(device: torch.device, enabled: bool):
    """A gradient scaler for fp16 training (disabled otherwise)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


@contextlib.contextmanager
def _quiet_cpp_extension_log():
    """Hide torch's "No CUDA runtime is found" warning, logged to stderr when compiling on a CPU."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class CompiledForward:
    """Calls a ``torch.compile``-d model, or the model itself; falls back to eager on failure.

    Call it like the model. Batches of another shape than the first (an epoch's short last
    batch) run eagerly instead of compiling the model a second time. If compiling or the first
    compiled call fails, the model runs eagerly from then on and :attr:`note` says why.

    Attributes:
        model: The eager model (its weights are the compiled one's: they are shared).
        compiled: Whether calls go through the compiled model (False after a fallback).
        note: Why the model is not compiled, or None; read it with :meth:`pop_note` to show
            it once.
    """

    def __init__(self, model: nn.Module, compiled_model: Callable | None, note: str | None) -> None:
        self.model = model
        self._compiled_model = compiled_model
        self.note = note
        self._note_shown = False
        self._shape: tuple[int, ...] | None = None

    @property
    def compiled(self) -> bool:
        return self._compiled_model is not None

    def pop_note(self) -> str | None:
        """The note the first time it is asked for after it was set, else None (warn once)."""
        if self.note is None or self._note_shown:
            return None
        self._note_shown = True
        return self.note

    def __call__(self, inputs: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self._compiled_model is None:
            return self.model(inputs, *args, **kwargs)
        shape = tuple(inputs.shape)
        if self._shape is None:
            try:
                with _quiet_cpp_extension_log():
                    output = self._compiled_model(inputs, *args, **kwargs)
            except Exception as error:  # noqa: BLE001 - inductor raises many kinds; eager is the fix
                self._fall_back(error)
                return self.model(inputs, *args, **kwargs)
            self._shape = shape
            return output
        if shape != self._shape:
            return self.model(inputs, *args, **kwargs)  # a recompile would cost more than it saves
        return self._compiled_model(inputs, *args, **kwargs)

    def _fall_back(self, error: Exception) -> None:
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        self._compiled_model = None
        self.note = f"torch.compile failed ({type(error).__name__}: {first_line}); running eagerly"
        self._note_shown = False


def maybe_compile(model: nn.Module, purpose: str = "inference", long_run: bool = False, quick: bool = False) -> CompiledForward:
    """The model to call: ``torch.compile``-d for a long run, else the model itself (eager).

    Compiling costs about half a minute before the first batch on a 2-core CPU (measured:
    EfficientNet-Lite0 inference at batch 64, see docs/performance.md); it pays only over
    thousands of images, so it is for long runs only and never in quick mode. Failures
    (no C++ compiler, an unsupported platform or operator) fall back to eager.

    Args:
        model: The model, already on its device, layout and mode.
        purpose: "train" or "inference" (recorded in the note).
        long_run: Whether the run is long enough for compiling to pay (the caller knows).
        quick: Quick mode (CI, a first look): never compile.

    Returns:
        A :class:`CompiledForward`; call it like the model. Its ``note`` says why it is not
        compiled, when it is not.
    """
    _check_purpose(purpose)
    if quick:
        return CompiledForward(model, None, "not compiled: quick mode")
    if not long_run:
        return CompiledForward(model, None, "not compiled: the run is too short for compiling to pay")
    compile_function = getattr(torch, "compile", None)
    if compile_function is None:
        return CompiledForward(model, None, f"not compiled: torch {torch.__version__} has no torch.compile")
    try:
        compiled_model = compile_function(model)
    except Exception as error:  # noqa: BLE001 - any failure to set up compiling means eager
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        return CompiledForward(model, None, f"torch.compile failed ({type(error).__name__}: {first_line}); running eagerly")
    return CompiledForward(model, compiled_model, None)


__all__ = [
    "BF16_MARGIN",
    "CACHE_DIR_ENV",
    "CHOICE_SOURCES",
    "PRECISIONS",
    "PURPOSES",
    "CompiledForward",
    "PrecisionChoice",
    "autocast",
    "choose_precision",
    "cpu_bf16_support",
    "cpu_identity",
    "cpu_model_name",
    "cpu_supports_bf16",
    "decide_precision",
    "grad_scaler",
    "maybe_compile",
    "pick_device",
    "pick_precision",
    "precision_cache_path",
    "read_precision_cache",
    "time_precisions",
    "write_precision_cache",
]
