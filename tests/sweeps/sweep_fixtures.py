"""Shared pieces of the sweep tests (tests/sweeps/test_sweep.py, tests/sweeps/test_sweep_slurm.py): plans over tiny local models.

A plain module, imported by name: test modules load it with ``pytest_plugins = ("sweep_fixtures",)``, so its
session-scoped fixtures are built once per test session however many modules use them (the local reference
sweep takes a few minutes on a busy 2-core machine), and import its helpers directly.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCORES = {"n_prompts": 2, "block_len": 6, "prefix_block_len": 4, "prefix_n_prompts": 1, "device": "cpu"}
GRID_SHAPE = (2, 3, 2)
AXES = {"beta_enc": [0.5, 1.0], "beta_rec": [0.0, 0.5, 1.0], "gamma_ft": [0.0, 1.0]}
SCORE_KEYS = ("head_scores", "copying_score", "CRP_scores", "CRP_scores_sem", "prefix_matching_score")
ALL_STAGES = ["scores", "fit", "ablation", "aggregate"]


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def write_plan(path: Path, name: str, root: Path, models: list, stages: list, extra: dict = None) -> Path:
    """A plan file; ``models`` are dicts of [[models]] keys, ``extra`` maps table (``slurm.groups.cpu``) -> settings."""
    tables = {"scores": dict(SCORES), "paths": {k: str(root / v) for k, v in (
        ("scores_dir", "saved_scores"), ("figs_dir", "figs"), ("top_heads_dir", "saved_top_heads"),
        ("ablation_dir", "saved_ablation"))}}
    for table, settings in (extra or {}).items():
        tables.setdefault(table, {}).update(settings)
    lines = [f"name = {toml_value(name)}", f"stages = {toml_value(stages)}"]
    for table, settings in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in settings.items()]
    for model in models:
        lines.append("[[models]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in model.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def sweep_inputs(tiny_model_dirs, tmp_path_factory):
    """Models (NeoX: a second, differently seeded folder stands in for step 1000), grid, ICL text."""
    from tiny_models import make_tiny_model_dir

    root = tmp_path_factory.mktemp("sweep_inputs")
    neox_early = make_tiny_model_dir("neox", root / "neox_step1000", seed=1)
    rng = np.random.default_rng(0)
    mean = rng.random(GRID_SHAPE + (17,)) + 0.05
    mean[..., 9] += np.arange(12).reshape(GRID_SHAPE)      # distinct lag +1 peaks
    mean /= mean.sum(axis=-1, keepdims=True)
    np.save(root / "grid_avg.npy", mean)
    (root / "grid_avg.json").write_text(json.dumps(AXES))
    words = "the quick brown fox jumps over the lazy dog memory recall context item list".split()
    with open(root / "docs.jsonl", "w") as handle:
        for _ in range(6):
            handle.write(json.dumps({"text": " ".join(rng.choice(words, 120))}) + "\n")
    models = {
        "gpt2": {"name": "tiny-gpt2", "source": str(tiny_model_dirs["gpt2"])},
        "neox": {"name": "tiny-neox", "checkpoint_dirs": {"1000": str(neox_early),
                                                          "143000": str(tiny_model_dirs["neox"])}},
        "llama": {"name": "tiny-llama", "source": str(tiny_model_dirs["llama_gqa"])},
    }
    return {"root": root, "grid": root / "grid_avg.npy", "docs": root / "docs.jsonl", "models": models}


def full_extra(inputs, stages=ALL_STAGES) -> dict:
    """The plan's script settings for ``stages``: the grid, a 2-document ablation of tiny-gpt2, top 2 and 4 heads."""
    extra = {"fit": {"crp_grid": str(inputs["grid"])},
             "ablation": {"models": ["tiny-gpt2"], "data": str(inputs["docs"]), "n_eval": 2, "seq_len": 64,
                          "late_index": 60, "early_index": 10, "device": "cpu"},
             "aggregate": {"n_top": [2, 4]}}
    return {table: settings for table, settings in extra.items() if table != "ablation" or "ablation" in stages}


@pytest.fixture(scope="session")
def reference_run(sweep_inputs, tmp_path_factory):
    """The whole plan (13 jobs) once with the local backend, two jobs at a time."""
    import sweep
    from icl_cmr.cli.args import run_cli
    from icl_cmr.sweeps.manifest import read_manifest

    out = tmp_path_factory.mktemp("sweep_reference")
    plan = write_plan(out / "tiny.toml", "tiny", out, list(sweep_inputs["models"].values()), ALL_STAGES,
                      full_extra(sweep_inputs))
    started = time.monotonic()
    code = run_cli(sweep.main, [str(plan), "--jobs", "2", "--no-progress"])
    wall = time.monotonic() - started
    manifest = read_manifest(out / "saved_scores" / "sweeps" / "tiny" / "manifest.json")
    return {"out": out, "plan": plan, "code": code, "manifest": manifest, "wall_s": wall}


def states(manifest) -> dict:
    return {r["id"]: r["state"] for r in manifest["jobs"]}


def score_arrays(path) -> dict:
    from icl_cmr.files.reading import load_pickle

    data = load_pickle(path)
    return {key: np.asarray(data[key], dtype=float) for key in SCORE_KEYS}


def assert_same_scores(a, b) -> None:
    left, right = score_arrays(a), score_arrays(b)
    for key in SCORE_KEYS:
        np.testing.assert_array_equal(left[key], right[key], err_msg=key)


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.1):
    """``predicate()``'s first true value, looking every ``interval_s``; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
