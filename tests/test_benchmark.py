"""benchmarks/run.py --quick still runs end to end and writes every section (speeds are not checked)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

from conftest import PROJECT_ROOT

RUN = PROJECT_ROOT / "benchmarks" / "run.py"


def _sections() -> tuple[str, ...]:
    spec = importlib.util.spec_from_file_location("benchmark_run", RUN)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class body runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.SECTIONS


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_benchmark_writes_every_section(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(out), "--workdir", str(tmp_path / "work")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
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
    assert all(isinstance(target["met"], bool) for target in results["targets"].values())

    # The printed table names every measurement.
    for label in ("(a)", "(b)", "(c)", "(d)", "(e)", "(f)", "log loss"):
        assert label in done.stdout
