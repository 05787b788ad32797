"""Devices, and the precision chosen by measurement (fake clock, the decisions file)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conserviz_utils.runtime import cpu as cpu_module
from conserviz_utils.runtime import device as device_module
from conserviz_utils.runtime.cpu import (
    cpu_bf16_support,
    decide_precision,
    precision_cache_path,
    read_precision_cache,
    time_precisions,
)
from conserviz_utils.runtime.device import PrecisionChoice, choose_precision, pick_device
from conserviz_utils.errors import TrainingError


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Each test has its own decisions file, one thread, and a CPU that has native bf16."""
    monkeypatch.setenv("CONSERVIZ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(device_module, "cpu_bf16_support", lambda: "avx512_bf16")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeClock:
    """A clock that only moves when a model says a step took time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def __deepcopy__(self, memo) -> FakeClock:
        return self  # the probe's copy of a model must still move this very clock


class CostedNet(nn.Module):
    """A tiny conv net whose forward pass 'takes' a set time per precision on a fake clock."""

    def __init__(self, clock: FakeClock, fp32_seconds: float, bf16_seconds: float, arch: str = "costed") -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(4, 8)
        self.dropout = nn.Dropout(0.5)
        self.clock = clock
        self.cost = {torch.float32: fp32_seconds, torch.bfloat16: bf16_seconds}
        self.arch = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)  # bf16 under CPU autocast, fp32 otherwise
        self.clock.now += self.cost[out.dtype]
        return self.linear(self.dropout(self.pool(out).flatten(1)))


def costed(fp32: float, bf16: float, **options) -> tuple[CostedNet, FakeClock]:
    clock = FakeClock()
    torch.manual_seed(0)
    return CostedNet(clock, fp32, bf16, **options), clock


def choose(model, clock, batch_size=4, purpose="train", **options) -> PrecisionChoice:
    return choose_precision(
        "auto", "cpu", model, batch_size, purpose, input_size=8, timer=clock, steps=3, warmup=1, **options
    )


# ------------------------------------------------------------------------------------------------
# Devices and the rules that need no measurement (moved from test_train.py)
# ------------------------------------------------------------------------------------------------


def test_pick_device_auto_and_explicit():
    expected = "cpu"
    if torch.cuda.is_available():
        expected = "cuda"
    elif torch.backends.mps.is_available():
        expected = "mps"
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(TrainingError, match="not a device"):
        pick_device("gpu please")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_pick_device_refuses_missing_cuda():
    with pytest.raises(TrainingError, match="no usable CUDA GPU") as caught:
        pick_device("cuda")
    assert "device='auto'" in caught.value.fix


def test_explicit_precisions_win_and_bad_ones_are_refused():
    model, clock = costed(fp32=1.0, bf16=0.1)
    for precision in ("fp32", "bf16"):
        choice = choose_precision(precision, "cpu", model, 4, timer=clock)
        assert (choice.precision, choice.source) == (precision, "explicit")
    assert clock.now == 0.0  # nothing was measured
    assert choose_precision("bf16", "cpu").precision == "bf16"  # asked for explicitly: allowed, if slow
    with pytest.raises(TrainingError, match="needs a CUDA GPU"):
        choose_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("half", "cpu")
    with pytest.raises(ValueError, match="purpose must be one of"):
        choose_precision("auto", "cpu", purpose="eval")


def test_without_a_model_auto_on_a_cpu_is_fp32_by_rule():
    choice = choose_precision("auto", "cpu")
    assert (choice.precision, choice.source) == ("fp32", "rule")
    assert "no train measurement" in choice.reason
    assert choose_precision("auto", "cpu", purpose="inference").precision == "fp32"
    assert not precision_cache_path().exists()  # nothing measured, nothing written


def test_a_cpu_without_native_bf16_is_not_measured(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_bf16_support", lambda: "none")
    model, clock = costed(fp32=1.0, bf16=0.1)
    choice = choose(model, clock)
    assert (choice.precision, choice.source) == ("fp32", "rule")
    assert clock.now == 0.0


def test_cpu_bf16_detection_reads_the_cpu_flags(monkeypatch):
    detect = cpu_bf16_support.__wrapped__  # bypass the cache
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    cases = {
        frozenset({"sse4_2", "avx2", "avx512f"}): "none",
        frozenset({"avx512f", "avx512_bf16"}): "avx512_bf16",
        frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}): "amx",
    }
    for flags, expected in cases.items():
        monkeypatch.setattr(cpu_module, "_cpu_flags", lambda flags=flags: flags)
        assert detect() == expected
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert detect() == "none"  # oneDNN cannot use the instructions: emulated


# ------------------------------------------------------------------------------------------------
# The decision, on a fake clock
# ------------------------------------------------------------------------------------------------


def test_decide_precision_keeps_fp32_unless_bf16_wins_by_the_margin():
    assert decide_precision(1.0, 0.5) == "bf16"
    assert decide_precision(1.0, 0.96) == "fp32"  # 4 % faster: within the noise
    assert decide_precision(1.0, 0.94) == "bf16"  # 6 % faster
    assert decide_precision(1.0, 1.4) == "fp32"
    assert decide_precision(1.0, 0.94, margin=0.1) == "fp32"


@pytest.mark.parametrize("purpose", ["train", "inference"])
def test_the_faster_precision_is_measured_and_reported(purpose):
    model, clock = costed(fp32=0.8, bf16=0.4)
    choice = choose(model, clock, batch_size=4, purpose=purpose)
    assert (choice.precision, choice.source, choice.purpose) == ("bf16", "measured", purpose)
    assert choice.fp32_seconds == pytest.approx(0.8) and choice.bf16_seconds == pytest.approx(0.4)
    assert choice.fp32_images_per_second == pytest.approx(5.0)
    assert choice.bf16_images_per_second == pytest.approx(10.0)
    assert choice.bf16_speedup == pytest.approx(2.0)
    assert "bf16 10.0 vs fp32 5.0 images/s at batch 4" in choice.reason
    assert choice.label == "bf16, measured: bf16 2.00x fp32"
    attrs = choice.as_attrs()
    assert attrs["precision"] == "bf16" and attrs["precision_source"] == "measured"
    assert attrs["precision_bf16_images_per_second"] == 10.0
    json.dumps(attrs)  # history attrs must stay JSON-friendly
    # Warm-up and timed steps ran in both precisions: 2 × (1 + 3) forward passes on the fake clock.
    assert clock.now == pytest.approx(4 * 0.8 + 4 * 0.4)

    slow_bf16, clock = costed(fp32=0.5, bf16=0.9, arch="other")
    assert choose(slow_bf16, clock, purpose=purpose).precision == "fp32"


def test_warm_up_steps_are_left_out_of_the_timing():
    class SlowFirstStep(CostedNet):
        def forward(self, x):
            out = super().forward(x)
            if not getattr(self, "warm", False):
                self.clock.now += 100.0  # kernel selection, memory: the first step is slow
                self.warm = True
            return out

    clock = FakeClock()
    model = SlowFirstStep(clock, 0.5, 0.4)
    choice = choose(model, clock)
    assert choice.fp32_seconds == pytest.approx(0.5) and choice.bf16_seconds == pytest.approx(0.4)


def test_the_probe_leaves_the_callers_model_gradients_and_rng_alone():
    model, clock = costed(fp32=0.8, bf16=0.4)
    model.eval()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    choose(model, clock, purpose="train")  # the copy trains with dropout: draws random numbers
    assert torch.equal(torch.rand(3), expected_next)
    assert not model.training
    assert all(parameter.grad is None for parameter in model.parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert model.conv.weight.is_contiguous()  # the caller's layout is untouched (the copy is channels-last)


def test_training_and_inference_are_decided_separately():
    class TrainsSlowInBf16(CostedNet):
        def forward(self, x):
            out = super().forward(x)
            if self.training and out.dtype == torch.bfloat16:
                self.clock.now += 1.0  # bf16's backward costs more than it saves
            return out

    clock = FakeClock()
    model = TrainsSlowInBf16(clock, 0.8, 0.4)
    assert choose(model, clock, purpose="train").precision == "fp32"
    assert choose(model, clock, purpose="inference").precision == "bf16"
    # Without a model, each purpose falls back to its own remembered decision.
    assert choose_precision("auto", "cpu", purpose="train").precision == "fp32"
    inference = choose_precision("auto", "cpu", purpose="inference")
    assert (inference.precision, inference.source) == ("bf16", "cached")
    assert inference.bf16_images_per_second == pytest.approx(10.0)


def test_a_probe_that_fails_falls_back_to_fp32():
    class NoBf16(CostedNet):
        def forward(self, x):
            if torch.is_autocast_enabled("cpu"):
                raise RuntimeError("\"slow_conv2d_cpu\" not implemented for 'BFloat16'")
            return super().forward(x)

    clock = FakeClock()
    choice = choose(NoBf16(clock, 0.8, 0.4), clock)
    assert (choice.precision, choice.source) == ("fp32", "rule")
    assert "probe failed (RuntimeError" in choice.reason
    assert read_precision_cache() == {}  # a failure is not remembered: the next run tries again


# ------------------------------------------------------------------------------------------------
# The decisions file
# ------------------------------------------------------------------------------------------------


def test_a_decision_is_remembered_and_not_measured_again(tmp_path):
    model, clock = costed(fp32=0.8, bf16=0.4)
    first = choose(model, clock)
    measured_for = clock.now
    again = choose(model, clock)
    assert clock.now == measured_for  # no step ran
    assert (again.precision, again.source) == ("bf16", "cached")
    assert again.bf16_seconds == first.bf16_seconds and again.fp32_seconds == first.fp32_seconds
    assert again.label == "bf16, cached: bf16 2.00x fp32"
    assert "remembered from" in again.reason

    assert precision_cache_path() == tmp_path / "cache" / "precision.json"
    content = json.loads(precision_cache_path().read_text())
    (record,) = content["decisions"].values()
    assert record["arch"] == "costed" and record["purpose"] == "train" and record["batch_size"] == 4
    assert record["torch"] == torch.__version__ and record["precision"] == "bf16"
    assert not list(precision_cache_path().parent.glob("*.tmp"))  # written atomically

    # The same model without the cache is measured again.
    assert choose(model, clock, cache=False).source == "measured"
    assert clock.now > measured_for


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("CONSERVIZ_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert precision_cache_path() == tmp_path / "xdg" / "conserviz" / "precision.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert precision_cache_path() == tmp_path / "home" / ".cache" / "conserviz" / "precision.json"


@pytest.mark.parametrize("change", ["torch version", "CPU model", "batch size", "architecture", "frozen layers"])
def test_a_changed_machine_or_workload_is_measured_again(monkeypatch, change):
    model, clock = costed(fp32=0.8, bf16=0.4)
    choose(model, clock)
    measured_for = clock.now
    batch_size = 4
    if change == "torch version":
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    elif change == "CPU model":
        monkeypatch.setattr(cpu_module, "cpu_identity", lambda: "Some Other CPU, bf16 amx")
    elif change == "batch size":
        batch_size = 8
    elif change == "architecture":
        model.arch = "another"
    else:
        model.conv.requires_grad_(False)
    again = choose(model, clock, batch_size=batch_size)
    assert again.source == "measured" and clock.now > measured_for
    assert len(read_precision_cache()) == 2  # both decisions are kept


@pytest.mark.parametrize(
    "damage", ["not json {", '{"format": 1, "decisions": []}', '[1, 2]', '{"format": 99, "decisions": {}}', ""]
)
def test_a_damaged_cache_file_is_ignored_and_rewritten(damage):
    path = precision_cache_path()
    path.parent.mkdir(parents=True)
    path.write_text(damage)
    assert read_precision_cache() == {}
    assert choose_precision("auto", "cpu").source == "rule"
    model, clock = costed(fp32=0.8, bf16=0.4)
    assert choose(model, clock).source == "measured"
    assert choose(model, clock).source == "cached"
    assert json.loads(path.read_text())["format"] == 1


def test_a_damaged_record_is_skipped_and_the_others_kept():
    model, clock = costed(fp32=0.8, bf16=0.4)
    choose(model, clock)
    path = precision_cache_path()
    content = json.loads(path.read_text())
    content["decisions"]["bogus"] = {"precision": "bf16", "purpose": "train", "fp32_seconds": "fast"}
    path.write_text(json.dumps(content))
    assert list(read_precision_cache()) == [key for key in content["decisions"] if key != "bogus"]
    assert choose(model, clock).source == "cached"


def test_an_unwritable_cache_does_not_stop_the_choice(monkeypatch, tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CONSERVIZ_CACHE_DIR", str(blocker / "cache"))
    model, clock = costed(fp32=0.8, bf16=0.4)
    choice = choose(model, clock)
    assert (choice.precision, choice.source) == ("bf16", "measured")


# ------------------------------------------------------------------------------------------------
# One real measurement
# ------------------------------------------------------------------------------------------------


def test_a_real_measurement_on_a_tiny_conv_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    seconds = time_precisions(model, 4, "train", input_size=32, steps=2, warmup=1)
    assert set(seconds) == {"fp32", "bf16"} and all(0 < value < 30 for value in seconds.values())
    nchw = time_precisions(model, 4, "inference", ("fp32",), input_size=32, channels_last=False, steps=1)
    assert 0 < nchw["fp32"] < 30
    for name, value in model.state_dict().items():  # BatchNorm statistics moved only in the copy
        assert torch.equal(value, before[name]), name

    choice = choose_precision("auto", "cpu", model, 4, "inference", input_size=32, steps=2)
    assert choice.source == "measured" and choice.precision in ("fp32", "bf16")
    assert choice.arch == "Sequential"
    assert choice.precision == decide_precision(choice.fp32_seconds, choice.bf16_seconds)
    assert choice.probe_seconds > 0
    assert choose_precision("auto", "cpu", model, 4, "inference", input_size=32).source == "cached"
