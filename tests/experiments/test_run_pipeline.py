"""The main job: argument checks before any step, end to end on the bundled model, reruns that change nothing."""
from __future__ import annotations

import hashlib
import json

import pytest

import run_pipeline
from icl_cmr.cli.args import run_cli
from icl_cmr.errors import InputError
from icl_cmr.experiments import pipeline
from icl_cmr.files.reading import load_pickle


def test_icl_positions_keep_the_papers_500_of_512_when_the_context_allows():
    assert pipeline.icl_positions(1024) == (512, 500)
    assert pipeline.icl_positions(512) == (512, 500)


def test_icl_positions_for_a_short_context_stay_inside_it():
    seq_len, late = pipeline.icl_positions(256)
    assert seq_len == 256 and 50 < late <= 256 - 2


def test_a_context_too_short_for_an_icl_score_is_refused():
    with pytest.raises(InputError, match="too short"):
        pipeline.icl_positions(55)


def _snapshot(root):
    """{relative path: (sha256, mtime_ns)} of every file under ``root``."""
    return {p.relative_to(root): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def dirs(tmp_path):
    """Output folders holding an earlier run's files (sentinels that must survive a refused run)."""
    paths = {name: tmp_path / name for name in ("scores", "figs", "ablation")}
    for name, folder in paths.items():
        (folder / "toy_lm").mkdir(parents=True)
        (folder / "toy_lm" / f"earlier_{name}.txt").write_text("an earlier run's output\n")
    flags = ["--scores-dir", str(paths["scores"]), "--figs-dir", str(paths["figs"]),
             "--ablation-dir", str(paths["ablation"]), "--no-progress"]
    return tmp_path, flags


@pytest.fixture()
def no_step(monkeypatch):
    """Fail the test if any step starts."""
    def refuse(*args, **kwargs):
        raise AssertionError("a step ran before the bad argument was reported")

    for step in ("run_head_scores", "run_head_fit", "run_ablation"):
        monkeypatch.setattr(pipeline, step, refuse)


@pytest.mark.parametrize("extra, message", [
    (["--fraction", "0"], "--fraction: must be a number in (0, 1], got 0"),
    (["--fraction", "2"], "--fraction: must be a number in (0, 1], got 2"),
    (["--data", "no_such_texts.jsonl"], "--data no_such_texts.jsonl does not exist"),
    (["--crp-grid", "no_such_grid.npy"], "CMR grid no_such_grid.npy does not exist"),
    (["--restart", "--resume"], "not both"),
])
def test_bad_arguments_of_any_step_are_reported_before_the_first_step(dirs, capsys, no_step, extra, message):
    root, flags = dirs
    before = _snapshot(root)
    try:  # argparse's own errors exit from inside main (one line, status 2)
        code = run_cli(run_pipeline.main, [*flags, *extra])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert _snapshot(root) == before


def test_an_unwritable_output_folder_is_reported_before_the_first_step(dirs, capsys, no_step):
    root, flags = dirs
    blocker = root / "blocker"
    blocker.write_text("x")
    before = _snapshot(root)
    code = run_cli(run_pipeline.main, [*flags, "--figs-dir", str(blocker / "figs")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and f"{blocker} is a file" in errors[0]
    assert _snapshot(root) == before


def test_an_unreachable_c4_is_reported_before_the_first_step(dirs, capsys, no_step, tiny_model_dirs):
    """Another model than the bundled one and no --data: step 3 would stream C4 (the tests run offline)."""
    root, flags = dirs
    before = _snapshot(root)
    code = run_cli(run_pipeline.main, [*flags, "--model", str(tiny_model_dirs["gpt2"]), "--device", "cpu"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and errors == ["error: cannot stream allenai/c4 (en, validation): the Hugging Face hub is "
                                    "unreachable; pass --data PATH with local .txt/.jsonl files instead"]
    assert "Traceback" not in err and _snapshot(root) == before


def test_a_partial_ablation_with_another_fraction_is_reported_before_the_first_step(dirs, capsys, no_step):
    root, flags = dirs
    partial = root / "ablation" / ".ablation_experiment_toy_lm.partial"
    partial.mkdir()
    (partial / "state.json").write_text(json.dumps({   # what an interrupted run with --fraction 0.25 leaves
        "model_name": "toy_lm", "dtype": "float32", "method": "value", "ablated_heads": "L1H0,L1H3",
        "fraction": 0.25, "random_heads": ["L0H1,L1H2"], "n_eval": 721, "seq_len": 256, "batch_size": 8}))
    before = _snapshot(root)
    code = run_cli(run_pipeline.main, [*flags, "--fraction", "0.5"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and errors == [f"error: partial results in {partial} came from other settings (fraction: "
                                    "0.25 there, 0.5 now); rerun with those settings to resume, or pass --restart to "
                                    "discard it"]
    assert _snapshot(root) == before


@pytest.mark.slow
def test_pipeline_runs_end_to_end_reruns_without_changes_and_undoes_a_failed_run(tmp_path, capsys, monkeypatch):
    if not pipeline.BUNDLED_MODEL.is_dir():
        pytest.skip(f"bundled model not found at {pipeline.BUNDLED_MODEL}")
    flags = ["--n-eval", "16", "--no-progress", "--scores-dir", str(tmp_path / "scores"),
             "--figs-dir", str(tmp_path / "figs"), "--ablation-dir", str(tmp_path / "ablation")]
    assert run_pipeline.main(flags) == 0
    captured = capsys.readouterr()
    assert "CMR-like heads (D < 0.5):" in captured.out
    # the statistics once, in the summary; not also ablation.py's own table (its columns include cohens_dz)
    assert captured.out.count("ICL score") == 1 and "cohens_dz" not in captured.out
    assert "original vs ablated_rand" in captured.out
    assert not any(line.startswith("INFO: wrote") for line in captured.err.splitlines())
    assert "outputs: 0 unchanged, 0 updated, 13 new" in captured.err
    result = load_pickle(tmp_path / "ablation" / "ablation_experiment_toy_lm.pkl")
    assert result["original_icl_score"].shape == (16,)
    assert result["metadata"]["parameters"]["model"] == "saved_models/toy_lm"   # no machine path
    assert result["metadata"]["parameters"]["data"].startswith("held-out standard-library files")
    assert (tmp_path / "scores" / "toy_lm" / "cmr_fit_toy_lm.pkl").is_file()
    assert (tmp_path / "figs" / "fit_attn_score" / "toy_lm" / "head_fit_L1.pdf").stat().st_size > 1000
    assert (tmp_path / "figs" / "ablation" / "ablation_experiment_toy_lm_icl_bars.pdf").is_file()
    first = {path: content for path, (content, _) in _snapshot(tmp_path).items()}
    assert len(first) == 13   # 3 in scores, 3 in ablation, 5 fit figures, 2 ablation figures

    # The same command again: the same numbers, so every file keeps its bytes (a clean checkout).
    assert run_pipeline.main(flags) == 0
    err = capsys.readouterr().err
    assert "outputs: 13 unchanged, 0 updated, 0 new" in err
    # no step claims to have written a file the run then kept as it was
    assert not any(line.startswith(("INFO: wrote", "INFO: updated", "INFO: new")) for line in err.splitlines())
    assert {path: content for path, (content, _) in _snapshot(tmp_path).items()} == first

    # A run whose last step fails leaves the outputs as they were, though steps 1 and 2 rewrote theirs.
    def fail(*args, **kwargs):
        raise InputError("step 3 failed")

    monkeypatch.setattr(pipeline, "run_ablation", fail)
    assert run_cli(run_pipeline.main, [*flags, "--restart"]) == 2
    assert {path: content for path, (content, _) in _snapshot(tmp_path).items()} == first
