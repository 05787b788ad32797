"""benchmarks/run.py --quick (and --full-size on a tiny stand-in) still run end to end (speeds are not checked)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

from conftest import PROJECT_ROOT

RUN = PROJECT_ROOT / "benchmarks" / "run.py"


def _module():
    spec = importlib.util.spec_from_file_location("benchmark_run", RUN)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class body runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _sections() -> tuple[str, ...]:
    return _module().SECTIONS


def _run(*arguments: str, cache_dir) -> subprocess.CompletedProcess:
    # Its own precision cache: the benchmark must not read or write the user's.
    env = {**os.environ, "CONSERVIZ_CACHE_DIR": str(cache_dir)}
    return subprocess.run([sys.executable, str(RUN), *arguments], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=900, check=False, env=env)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_benchmark_writes_every_section(tmp_path):
    out = tmp_path / "results.json"
    done = _run("--quick", "--out", str(out), "--workdir", str(tmp_path / "work"), cache_dir=tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())
    assert set(_sections()) <= set(results)

    machine = results["machine"]
    assert machine["cores"] >= 1 and machine["torch"] and machine["precision_chosen"] in ("bf16", "fp16", "fp32")
    for pipeline in ("seed", "conserviz"):
        assert _positive(results["train"][pipeline]["images_per_second"])
        assert _positive(results["inference"][pipeline]["images_per_second"])
        assert _positive(results["memory"][pipeline]["main_mb"])
    pipeline = results["input_pipeline"]
    assert all(_positive(pipeline[k]) for k in ("seed_per_core", "conserviz_per_core", "conserviz_cached_per_core"))
    assert set(pipeline["sizes"]) <= {"640x360", "960x540"}
    e2e = results["end_to_end"]
    for recipe in ("seed", "course"):
        assert _positive(e2e[recipe]["wall_seconds"]) and _positive(e2e[recipe]["eval_log_loss"])
    assert e2e["course"]["rerun_with_cached_embeddings"]["reused"] is True
    assert results["head_training"]["rows"] == 16_000 and _positive(results["head_training"]["seconds"])
    # (a) and (b) time fit and predict at precision "auto": it must have measured the workload (the
    # timing wrapper passes the loader's batch size on), not fallen back to the fp32 rule.
    from conserviz_utils.runtime.cpu import cpu_bf16_support

    if cpu_bf16_support() != "none":
        assert results["train"]["conserviz"]["precision"].split(", ")[1] in ("measured", "cached")
        assert results["inference"]["conserviz"]["precision"].split(", ")[1] in ("measured", "cached")
    for pipeline in ("seed", "conserviz"):  # (i) the same images embedded both ways
        assert results["embeddings"][pipeline]["images"] == 48 and _positive(results["embeddings"][pipeline]["seconds"])
    assert all(isinstance(target["met"], bool) for target in results["targets"].values())

    # (g) the precision table: every row measured, auto's pick one of the two it measured.
    rows = {(row["arch"], row["purpose"]) for row in results["precision"]}
    assert rows == {("resnet50", "train"), ("resnet50", "inference"), ("efficientnet_lite0", "inference")}
    for row in results["precision"]:
        rates = row["images_per_second"]
        assert all(_positive(rates[k]) for k in ("nchw_fp32", "channels_last_fp32", "channels_last_bf16"))
        auto = row["auto"]
        assert auto["precision"] in ("fp32", "bf16") and auto["source"] in ("measured", "rule")
        assert auto["images_per_second"] == rates[f"channels_last_{auto['precision']}"]
    assert isinstance(results["targets"]["train_vs_faster_precision"]["met"], bool)
    # The table measures every row afresh (source "measured", never "cached"), even though the
    # course sections of the same run remember their own decisions in the run's cache folder.

    # The printed table names every measurement, and the CPU.
    for label in ("(a)", "(b)", "(c)", "(d)", "(e)", "(f)", "(g)", "(i)", "log loss", "CL bf16", "auto picks"):
        assert label in done.stdout
    assert machine["cpu"] and f"{machine['cpu']} (" in done.stdout


def test_full_size_times_the_notebooks_on_a_cached_stand_in(tmp_path):
    """--full-size on a tiny stand-in sample: the sample is reused when present, each notebook timed."""
    work, out = tmp_path / "work", tmp_path / "full.json"
    module = _module()
    folder = module.sample_folder(work, 24, 8)
    module.cached_sample(folder, 24, 8, progress=False)  # as a first --full-size run would leave it
    _, seconds, reused = module.cached_sample(folder, 24, 8, progress=False)
    assert reused and seconds == 0.0

    done = _run("--full-size", "--course-only", "--quick", "--n-train", "24", "--n-test", "8",
                "--notebooks", "01_explore", "--workdir", str(work), "--out", str(out), cache_dir=tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())
    assert "train" not in results and "precision" not in results  # --course-only
    (run,) = results["course"]["runs"]
    assert (run["n_train"], run["n_test"], run["sample_reused"], run["error"]) == (24, 8, True, None)
    assert list(run["notebooks"]) == ["01_explore"] and _positive(run["notebooks"]["01_explore"])
    assert run["seconds"] >= run["notebooks"]["01_explore"]
    assert (work / "course-24" / "executed" / "01_explore.ipynb").is_file()
    assert "01_explore" in done.stdout and "(h) the course" in done.stdout


def test_compile_times_eager_with_a_note_when_the_compiled_call_fails(monkeypatch):
    """No C++ compiler (or an unsupported operator): the --compile row says why and times eager."""
    import torch

    def broken_compile(model):
        def compiled(images):
            raise RuntimeError("InductorError: no working C++ compiler found\nlong details")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    result = _module().child_compile({"image_size": 32, "batch_size": 2, "steps": 2, "precision": "fp32"})
    assert result["compiled"] is False
    assert result["note"] == "torch.compile failed (RuntimeError: InductorError: no working C++ compiler found); ran eagerly"
    assert _positive(result["images_per_second"]) and _positive(result["first_batch_seconds"])


PASSES = PROJECT_ROOT / "benchmarks" / "passes.py"


def test_the_pass_benchmark_prints_each_pass_against_the_raw_model(sample_dir, tmp_path):
    out = tmp_path / "passes.json"
    env = {**os.environ, "CONSERVIZ_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(PASSES), "--data", str(sample_dir), "--train-images", "32",
                           "--inference-images", "64", "--precision", "fp32", "--out", str(out)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900, check=False, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    rows = {(row["pass"], row["source"]): row for row in results["passes"]}
    assert set(rows) == {(name, source) for name in ("embeddings", "fine-tuning", "evaluation", "prediction")
                         for source in ("decode", "cache")}
    for row in rows.values():
        assert _positive(row["images_per_s"]) and _positive(row["raw_images_per_s"])
        assert math.isclose(row["ratio"], row["images_per_s"] / row["raw_images_per_s"])
        assert math.isclose(row["marginal_ratio"], row["marginal_images_per_s"] / row["raw_images_per_s"], rel_tol=1e-9) or math.isnan(row["marginal_ratio"])
        line = next(line for line in done.stdout.splitlines() if line.split()[:2] == [row["pass"], row["source"]])
        assert f"{row['ratio']:.2f}" in line
    assert results["cache_build"]["built"] == 32 + 64  # each image decoded once, before the passes
    assert "CPU:" in done.stdout and results["machine"]["cpu"] in done.stdout


def test_the_pass_benchmark_refuses_a_folder_without_the_competition_csvs(tmp_path):
    done = subprocess.run([sys.executable, str(PASSES), "--data", str(tmp_path), "--quick"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2 and "make sample" in done.stderr and "Traceback" not in done.stderr
