"""Every size flag has a bound or a memory estimate, checked before any work (issue 25, item 1).

A single huge count or length must end at once with one line naming the flag that causes it, exit 2 and
nothing written: never minutes of work or a process growing towards a kill. Worker and thread counts are
bounded by what the machine can run; lags by the grid; lengths 2^k by int64 positions; the rest by an
estimate of the memory they make a run hold, against a free memory fixed here at 16 GiB.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

import ablation
import compute_head_scores
import est_cmr_crp
import eval_induction
import fit_human_recall
import pattern_icl
import plot_crp
import sweep
import train_induction
import train_toy_lm
from icl_cmr.cli.args import run_cli
from icl_cmr.cmr import grid
from icl_cmr.experiments import human_recall as human_experiment
from icl_cmr.experiments import induction_eval as eval_experiment
from icl_cmr.experiments import pattern_icl as pattern_experiment
from icl_cmr.devices import WORKERS_PER_CPU, check_worker_count, max_workers, usable_cpus
from icl_cmr.errors import InputError
from icl_cmr.experiments.cmr_grid import CmrGridSettings, check_cmr_grid, grid_memory
from icl_cmr.experiments.induction_train import InductionTrainSettings
from icl_cmr.files import unpickling
from icl_cmr.files.memory import memory_drivers
from icl_cmr.fits.distance import select_lags
from icl_cmr.toy_lm import training_run

REPO = Path(__file__).resolve().parents[2]
HUGE = str(10 ** 12)
FREE = 16 * 2 ** 30


@pytest.fixture(autouse=True)
def sixteen_gib_free(monkeypatch):
    """The same free memory on every machine, so that every estimate below is refused for the same reason."""
    monkeypatch.setattr(unpickling, "available_memory", lambda: FREE)


@pytest.fixture()
def no_weights(monkeypatch):
    """Fail the test if a script gets as far as loading a language model."""
    from transformer_lens.model_bridge import TransformerBridge

    monkeypatch.setattr(TransformerBridge, "boot_transformers",
                        lambda *a, **k: pytest.fail("the model was loaded before the bad input was reported"))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = random.Random(0)
    words = "memory context recall item drift attention head token order list the of and".split()
    path = tmp_path_factory.mktemp("texts") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(80))}) + "\n"
                            for _ in range(8)))
    return path


def _refused(main, argv, capsys):
    """The one error line of a run that must end with exit code 2 (argparse's own errors included)."""
    try:
        code = run_cli(main, argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _nothing_in(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


# ----------------------------------------------------------------------------- worker processes and threads

WORKER_FLAGS = [
    (est_cmr_crp, ["--save_dir", "{out}"], "--workers"),
    (train_induction, ["--save_dir", "{out}", "--fig_dir", "{out}"], "--threads"),
    (eval_induction, ["--save_dir", "{out}", "--fig_dir", "{out}"], "--threads"),
    (train_toy_lm, ["--save_dir", "{out}"], "--threads"),
    (pattern_icl, ["--model", "gpt2-small", "--out-dir", "{out}", "--fig-dir", "{out}"], "--threads"),
    (sweep, ["paper-all", "--dry-run"], "--jobs"),
]


@pytest.mark.parametrize("script, argv, flag", WORKER_FLAGS, ids=[flag for _, _, flag in WORKER_FLAGS])
def test_a_hundred_thousand_workers_are_refused_while_parsing(script, argv, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [arg.format(out=tmp_path / "out") for arg in argv]
    line = _refused(script.main, [*argv, flag, "100000"], capsys)
    assert line == (f"error: argument {flag}: must be an integer in [1, {max_workers()}] ({WORKERS_PER_CPU} per usable "
                    f"CPU; this machine has {usable_cpus()}), got 100000 (see --help)")
    assert list(tmp_path.iterdir()) == []


def test_the_engine_refuses_more_workers_than_the_machine_runs_naming_the_parameter():
    assert check_worker_count(max_workers(), "workers") == max_workers()
    expected = r"^`workers` \(100000\) is more than this machine can run: at most \d+ \(4 per usable CPU"
    with pytest.raises(InputError, match=expected):
        check_cmr_grid(CmrGridSettings(n_beta=2, n_gamma=2, workers=100000))
    with pytest.raises(InputError, match=r"^`threads` \(100000\) is more than this machine can run"):
        InductionTrainSettings(threads=100000, device="cpu").resolved()


# ----------------------------------------------------------------------------- est_cmr_crp.py: the grid's size too

@pytest.mark.parametrize("flags, named", [
    (["--n_beta", HUGE], "--n_beta"),                 # the axes alone would take minutes and 8 GB per 10^9
    (["--n_gamma", str(10 ** 9)], "--n_gamma"),
    (["--n_items", HUGE], "--n_items"),
    (["--n_trials", HUGE, "--n_start", "2"], "--n_trials"),
    (["--max_draws", str(10 ** 9)], "--max_draws"),
    (["--recall_rule", "standard", "--n_items", str(10 ** 9)], "--n_items"),   # its draw cap follows --n_items
])
def test_a_grid_too_large_for_memory_names_the_setting_that_makes_it_so(flags, named, tmp_path, capsys, monkeypatch):
    real_axes = grid.grid_axes

    def small_axes_only(n_beta=20, n_gamma=11):
        assert n_beta <= 100 and n_gamma <= 100, "the grid's axes were built before its memory was checked"
        return real_axes(n_beta, n_gamma)

    monkeypatch.setattr(grid, "grid_axes", small_axes_only)
    line = _refused(est_cmr_crp.main, ["--save_dir", str(tmp_path / "C"), "--workers", "1", *flags], capsys)
    assert line.startswith("error: this grid needs about ") and line.endswith(f"is available; lower {named}")
    assert "16.0 GiB is available" in line
    assert not (tmp_path / "C").exists()


@pytest.mark.parametrize("n_beta, n_gamma, workers, quantity, rule", [
    (20, 11, 1, "crp", "li24"), (1, 3, 2, "crp", "li24"), (2, 2, 3, "crp", "li24"), (3, 4, 2, "conditional", "li24"),
    (1, 3, 2, "crp", "standard"), (4, 3, 1, "conditional", "standard")])
def test_the_grid_estimate_from_the_settings_alone_is_the_one_of_the_built_grid(n_beta, n_gamma, workers, quantity,
                                                                                 rule):
    settings = CmrGridSettings(n_beta=n_beta, n_gamma=n_gamma, workers=min(workers, max_workers()), quantity=quantity,
                               recall_rule=rule)
    assert grid_memory(settings).total == settings.spec().memory_bytes(settings.workers)


def test_a_standard_rule_grid_whose_draw_cap_follows_a_huge_list_names_the_list_length(tmp_path, capsys):
    line = _refused(est_cmr_crp.main, ["--save_dir", str(tmp_path / "C"), "--recall_rule", "standard", "--n_items",
                                       HUGE], capsys)
    assert line == (f"error: --n_items is too large: {HUGE} (the standard rule draws up to --n_items - 1 items, at "
                    "most 2147483647)")
    assert not (tmp_path / "C").exists()


# ----------------------------------------------------------------------------- compute_head_scores.py

@pytest.mark.parametrize("flag, value, message", [
    ("--n-prompts", HUGE, "lower --n-prompts"),
    ("--prefix-n-prompts", HUGE, "lower --prefix-n-prompts"),
    ("--block-len", "1000", "exceed the model's context of 256; lower --block-len"),
    ("--prefix-copies", "1000", "exceed the model's context of 256; lower --prefix-copies"),
])
def test_head_score_prompts_that_cannot_fit_are_refused_before_the_model_loads(flag, value, message, tiny_model_dirs,
                                                                               tmp_path, capsys, no_weights):
    out = tmp_path / "scores.pkl"
    line = _refused(compute_head_scores.main, ["--model", str(tiny_model_dirs["gpt2"]), "--out", str(out),
                                               "--device", "cpu", flag, value], capsys)
    assert line.endswith(message), line
    if flag.endswith("n-prompts"):
        assert line.startswith(f"error: drawing the prompts and scoring a batch ({flag} {value}) needs about ")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- ablation.py

@pytest.mark.parametrize("flag", ["--n-eval", "--n-random-sets", "--n-bootstrap"])
def test_an_ablation_too_large_for_memory_is_refused_before_the_model_loads(flag, tiny_model_dirs, text_file,
                                                                            tmp_path, capsys, no_weights):
    argv = ["--model_name", str(tiny_model_dirs["gpt2"]), "--data", str(text_file), "--heads", "L0H0",
            "--seq-len", "48", "--late-index", "40", "--early-index", "5", "--out-dir", str(tmp_path / "saved"),
            "--figs-dir", str(tmp_path / "figs"), flag, HUGE]
    line = _refused(ablation.main, argv, capsys)
    assert line.startswith(f"error: holding the prompts, every condition's results and a batch's logits ({flag} "
                           f"{HUGE}) needs about ") and line.endswith(f"16.0 GiB free; lower {flag}"), line
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- pattern_icl.py

@pytest.mark.parametrize("flag", ["--n-items", "--n-reference", "--n-random-sets", "--shots"])
def test_pattern_prompts_too_many_for_memory_are_refused_before_they_are_made(flag, tiny_model_dirs, tmp_path,
                                                                              capsys, monkeypatch, no_weights):
    monkeypatch.setattr(pattern_experiment, "generate_prompts", lambda *a: pytest.fail("the prompts were generated"))
    argv = ["--model", str(tiny_model_dirs["gpt2"]), "--tasks", "repetition", "--out-dir", str(tmp_path / "out"),
            "--fig-dir", str(tmp_path / "figs"), "--heads", "L1H3", flag, HUGE]
    line = _refused(pattern_icl.main, argv, capsys)
    assert line.startswith(f"error: holding the prompts and their results ({flag} {HUGE}) needs about ")
    assert line.endswith(f"lower {flag}"), line
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the induction task

TINY_TRAINING = ["--train_length", "12", "--d_model", "16", "--n_heads", "2", "--d_mlp", "32", "--eval_every", "3",
                 "--n_val", "8", "--position_encoding", "rope", "--no_progress", "--no_figure"]


@pytest.mark.parametrize("flag, value", [("--d_model", "1000000"), ("--d_mlp", "100000000"),
                                         ("--n_layers", "100000000")])
def test_a_model_too_large_to_train_names_its_size_setting(flag, value, tmp_path, capsys):
    argv = ["--save_dir", str(tmp_path), "--fig_dir", str(tmp_path), *TINY_TRAINING, flag, value]
    line = _refused(train_induction.main, argv, capsys)
    assert f"with a model of {flag} {value} needs about" in line and line.endswith(f"16.0 GiB free; lower {flag}")
    assert "`" not in line  # every setting the line names is shown as the flag
    assert list(tmp_path.iterdir()) == []


def test_validation_sets_beyond_the_documented_cap_are_refused_while_parsing(tmp_path, capsys):
    line = _refused(train_induction.main, ["--save_dir", str(tmp_path), "--n_val", HUGE], capsys)
    assert line == f"error: argument --n_val: must be an integer in [1, 1048576], got {HUGE} (see --help)"
    line = _refused(eval_induction.main, ["--save_dir", str(tmp_path), "--n_sequences", HUGE], capsys)
    assert line == f"error: argument --n_sequences: must be an integer in [1, 1048576], got {HUGE} (see --help)"
    line = _refused(eval_induction.main, ["--save_dir", str(tmp_path), "--max_log2", "63"], capsys)
    assert line == "error: argument --max_log2: must be an integer in [2, 62], got 63 (see --help)"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("model, flags, named", [
    ("absolute", ["--max_log2", "7", "--tokens_per_batch", HUGE, "--skip_lag_crp"], "--tokens_per_batch"),
    ("absolute", ["--max_log2", "7", "--lag_prompts", HUGE], "--lag_prompts"),
    ("mamba", ["--skip_accuracy", "--inside_sequences", HUGE], "--inside_sequences"),
    ("absolute", ["--max_log2", "40", "--skip_lag_crp"], "--max_log2"),
])
def test_an_evaluation_too_large_for_memory_names_the_setting(model, flags, named, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(eval_experiment, "evaluate_model", lambda *a, **k: pytest.fail("an evaluation ran"))
    argv = ["--models", str(REPO / "saved_models" / "induction_task" / f"{model}.pt"), "--save_dir",
            str(tmp_path / "out"), "--fig_dir", str(tmp_path / "figs"), *flags]
    line = _refused(eval_induction.main, argv, capsys)
    assert line.endswith(f"16.0 GiB free; lower {named}"), line
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- train_toy_lm.py

@pytest.mark.parametrize("flag", ["--n_ctx", "--vocab_size", "--batch_size"])
def test_a_toy_model_too_large_to_train_is_refused_before_the_corpus_is_read(flag, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(training_run, "corpus_split", lambda *a: pytest.fail("the corpus was read first"))
    line = _refused(train_toy_lm.main, ["--save_dir", str(tmp_path / "model"), flag, HUGE], capsys)
    assert line.startswith(f"error: a training step ({flag} {HUGE}) needs about ")
    assert line.endswith(f"lower {flag}"), line
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- fit_human_recall.py, plot_crp.py

def test_a_bootstrap_too_large_for_memory_is_refused_before_any_fit(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(human_experiment, "lag_crps_by_unit", lambda *a, **k: pytest.fail("the people were fitted"))
    argv = ["--models", "toy_lm", "--scores-dir", str(REPO / "saved_scores"), "--head-grid",
            str(REPO / "saved_crps" / "cmr_crp_avg_20_11.npy"), "--crp-grid",
            str(REPO / "saved_crps" / "cmr_cond_crp_avg_20_11.npy"), "--out-dir", str(tmp_path / "out"),
            "--figs-dir", str(tmp_path / "figs"), "--n-bootstrap", HUGE]
    line = _refused(fit_human_recall.main, argv, capsys)
    assert line.startswith(f"error: the bootstrap of --n-bootstrap {HUGE} resamples of 8 heads needs about ")
    assert line.endswith("lower --n-bootstrap")
    assert list(tmp_path.iterdir()) == []


def test_plot_crp_bounds_its_lags_by_the_grid_and_says_the_range(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(plot_crp, "load_recall_data", lambda *a: pytest.fail("the people's data were read"))
    grid_file = REPO / "saved_crps" / "cmr_crp_avg_20_11.npy"
    for lag in ("105", HUGE):
        line = _refused(plot_crp.main, ["--crp-grid", str(grid_file), "--figs-dir", str(tmp_path / "figs"), "--max-lag",
                                        lag], capsys)
        assert line == (f"error: --max-lag ({lag}) is beyond the grid's lags -8..8 ({grid_file}); give at most 8")
    assert list(tmp_path.iterdir()) == []


def test_lags_out_of_range_are_said_as_ranges_not_one_by_one():
    lags = np.arange(-8, 9)
    with pytest.raises(InputError) as caught:
        select_lags(np.zeros(lags.size), lags, np.arange(-105, 106))
    assert str(caught.value) == "lags -105..-9 and 9..105 are not available; available lags: -8..8"
    with pytest.raises(InputError, match="^lag 9 is not available"):
        select_lags(np.zeros(lags.size), lags, [9])


# ----------------------------------------------------------------------------- which settings drive an estimate

def test_the_setting_whose_modest_value_alone_fits_is_named():
    def estimate(v):
        return v["n"] * v["length"] * 8

    assert memory_drivers(estimate, {"n": 10 ** 12, "length": 100}, {"n": 100, "length": 100}, 2 ** 30) == ("n",)
    # both too large: neither alone fits, both are named, the larger effect first
    both = memory_drivers(estimate, {"n": 10 ** 9, "length": 10 ** 7}, {"n": 100, "length": 100}, 2 ** 30)
    assert both == ("n", "length")
