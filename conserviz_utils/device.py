"""Where and in what arithmetic to compute: ``pick_device``, ``pick_precision`` and autocast."""

from __future__ import annotations

import functools

import torch

from conserviz_utils.errors import TrainingError

#: The precisions ``fit``, ``predict`` and ``compute_embeddings`` accept.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports in /proc/cpuinfo (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_bf16_support() -> str:
    """How this CPU computes bfloat16 through oneDNN: "amx", "avx512_bf16" or "none".

    "amx" means AMX tile units (Intel Sapphire Rapids and later), "avx512_bf16" bfloat16
    dot-product instructions only, "none" that bfloat16 would be emulated.
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


def pick_precision(precision: str = "auto", device: str | torch.device = "auto") -> str:
    """The arithmetic to train and predict in: "bf16", "fp16" or "fp32".

    "auto" gives "bf16" on CUDA GPUs from Ampere on (compute capability 8.0) and on CPUs with
    AMX, "fp16" (with a gradient scaler in ``fit``) on older CUDA GPUs, and "fp32" otherwise:
    Apple MPS, and CPUs without AMX, including those with only AVX512-BF16 instructions. There,
    measured on a 2-core AVX512-BF16 Xeon, bf16 autocast trained 1.4-1.5x slower than float32
    channels-last (resnet18, resnet50, efficientnet_lite0 at 224 px): the casts cost more
    than the faster dot products gain. Ask for "bf16" explicitly to use it anyway.

    Raises:
        ValueError: ``precision`` is not one of :data:`PRECISIONS`.
        TrainingError: the device cannot compute in the precision asked for.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    device = pick_device(device)
    cuda_ampere = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if cuda_ampere else "fp16"
        if device.type == "cpu" and cpu_bf16_support() == "amx":
            return "bf16"
        return "fp32"
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
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = _AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(device: torch.device, enabled: bool):
    """A gradient scaler for fp16 training (disabled otherwise)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


__all__ = [
    "PRECISIONS",
    "autocast",
    "cpu_bf16_support",
    "cpu_supports_bf16",
    "grad_scaler",
    "pick_device",
    "pick_precision",
]
