"""Length generalization over training (issue 23, item 3): a run's snapshots evaluated piece by piece."""
from __future__ import annotations

import json
import shutil

import matplotlib
import numpy as np
import pytest

from icl_cmr.errors import InputError
from icl_cmr.experiments.induction_eval import InductionEvalSettings, evaluate_model
from icl_cmr.experiments.induction_growth import (InductionGrowthSettings, check_induction_growth, curves_by_length,
                                                  run_induction_growth)
from icl_cmr.figures.synthetic import plot_accuracy_vs_step
from icl_cmr.files.induction_models import load_induction_model
from icl_cmr.files.induction_tables import GROWTH_COLUMNS, MEMORY_COLUMNS, RECALL_COLUMNS, read_growth_table

matplotlib.use("Agg")

TINY_MAMBA = ["--architecture", "mamba", "--train_length", "12", "--d_model", "16", "--d_state", "4",
              "--eval_every", "3", "--n_val", "8", "--no_progress", "--no_figure"]
#: Columns that change from run to run (times, memory); every other one must be reproduced exactly.
VOLATILE = {"cpu_seconds", "cpu_seconds_per_sequence", "wall_seconds", "peak_rss_gb"}


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """A tiny Mamba trained 6 steps with snapshots at steps 3 and 6 (a few seconds)."""
    import train_induction

    folder = tmp_path_factory.mktemp("run")
    assert train_induction.main(["--save_dir", str(folder), "--fig_dir", str(folder), *TINY_MAMBA,
                                 "--max_steps", "6", "--snapshot_every", "3"]) == 0
    return folder / "mamba_snapshots"


def _settings(source, out, **changes):
    values = dict(snapshots=(source,), log2_lengths=(4, 5, 6), n_sequences=8, long_sequences=4, long_from_log2=6,
                  device="cpu", save_dir=out, fig_dir=out)
    return InductionGrowthSettings(**{**values, **changes})


def _stable(rows):
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]


class Interrupt(Exception):
    pass


def test_growth_table_has_one_row_per_snapshot_and_length(snapshots, tmp_path):
    import induction_growth

    code = induction_growth.main(["--snapshots", str(snapshots), "--log2_lengths", "4,5,6", "--n_sequences", "8",
                                  "--long_sequences", "4", "--long_from_log2", "6", "--device", "cpu",
                                  "--save_dir", str(tmp_path), "--fig_dir", str(tmp_path)])
    assert code == 0
    rows = read_growth_table(tmp_path / "growth_mamba.csv")
    assert tuple(rows[0]) == GROWTH_COLUMNS
    assert [(r["step"], r["length"], r["n_sequences"]) for r in rows] == [
        (step, length, 4 if length == 64 else 8) for step in (3, 6) for length in (16, 32, 64)]
    for row in rows:
        assert row["run"] == "mamba" and row["snapshot"] == f"mamba_step{row['step']:06d}.pt"
        assert row["accuracy"] == row["correct"] / row["n_sequences"]
        assert row["wilson_low"] <= row["accuracy"] <= row["wilson_high"]
        assert row["cpu_seconds"] > 0 and row["peak_rss_gb"] > 0 and row["device"] == "cpu"
    meta = json.loads((tmp_path / "growth_mamba.json").read_text())
    assert meta["final_step"] == 6 and [s["step"] for s in meta["snapshots"]] == [3, 6]
    assert {k: len(v["correct"]) for k, v in meta["final_by_length"].items()} == {"16": 8, "32": 8, "64": 4}
    assert (tmp_path / "growth_mamba.pdf").is_file() and (tmp_path / "growth_distance_mamba.pdf").is_file()
    assert len(list((tmp_path / "growth_mamba_pieces").glob("piece_*.json"))) == 6
    memory = (tmp_path / "growth_memory_mamba.csv").read_text().splitlines()   # a Mamba run: its memory table
    assert memory[0] == ",".join(MEMORY_COLUMNS)
    assert all(line.split(",")[:2] in (["mamba", "3"], ["mamba", "6"]) for line in memory[1:])
    recall = (tmp_path / "growth_recall_mamba.csv").read_text().splitlines()   # one fit per snapshot
    assert recall[0] == ",".join(RECALL_COLUMNS) and [line.split(",")[1] for line in recall[1:]] == ["3", "6"]
    assert all(line.split(",")[3] == "20" for line in recall[1:])                # 8 + 8 + 4 sequences each


def test_growth_counts_equal_eval_induction_on_the_same_validation_sets(snapshots, tmp_path):
    result = run_induction_growth(check_induction_growth(_settings(snapshots, tmp_path, long_from_log2=7)))
    eval_settings = InductionEvalSettings(min_log2=4, max_log2=6, n_sequences=8, full_max_log2=6, device="cpu",
                                          skip_lag_crp=True).resolved()
    for step in (3, 6):
        model = load_induction_model(snapshots / f"mamba_step{step:06d}.pt")
        expected = [(int(r["length"]), r["correct"], r["n_sequences"]) for r in evaluate_model(model, "m", eval_settings)]
        assert [(r["length"], r["correct"], r["n_sequences"]) for r in result.rows if r["step"] == step] == expected


def test_an_interrupted_evaluation_resumes_to_the_same_table(snapshots, tmp_path):
    straight = run_induction_growth(check_induction_growth(_settings(snapshots, tmp_path / "straight")))

    def stop_after_two(piece, n_done):
        if n_done == 2:
            raise Interrupt

    settings = _settings(snapshots, tmp_path / "split")
    with pytest.raises(Interrupt):
        run_induction_growth(check_induction_growth(settings), on_piece_done=stop_after_two)
    resumed = run_induction_growth(check_induction_growth(settings))
    assert resumed.n_resumed == 2 and straight.n_resumed == 0
    assert _stable(resumed.rows) == _stable(straight.rows)
    for length, answers in straight.final.items():
        for key, values in answers.items():
            np.testing.assert_array_equal(resumed.final[length][key], values)


def test_a_damaged_piece_is_recomputed(snapshots, tmp_path, caplog):
    settings = _settings(snapshots, tmp_path)
    first = run_induction_growth(check_induction_growth(settings))
    piece = sorted((tmp_path / "growth_mamba_pieces").glob("piece_*.json"))[0]
    piece.write_text(piece.read_text()[:40])
    again = run_induction_growth(check_induction_growth(settings))
    assert again.n_resumed == 5 and "discarding damaged piece" in caplog.text
    assert _stable(again.rows) == _stable(first.rows)


def test_a_new_snapshot_or_length_computes_only_the_new_pieces(snapshots, tmp_path):
    early = _settings(snapshots / "mamba_step000003.pt", tmp_path, name="mamba", log2_lengths=(4, 5))
    run_induction_growth(check_induction_growth(early))
    later = run_induction_growth(check_induction_growth(_settings(snapshots, tmp_path)))
    assert later.n_resumed == 2 and len(later.rows) == 6


def test_other_settings_are_refused_before_work_and_restart_discards(snapshots, tmp_path, capsys):
    import induction_growth
    from icl_cmr.cli.args import run_cli

    run_induction_growth(check_induction_growth(_settings(snapshots, tmp_path, log2_lengths=(4,))))
    with pytest.raises(InputError, match="val_seed: 1000003 there, 7 now.*`restart`"):
        check_induction_growth(_settings(snapshots, tmp_path, log2_lengths=(4,), val_seed=7))
    flags = ["--snapshots", str(snapshots), "--log2_lengths", "4", "--n_sequences", "8", "--device", "cpu",
             "--save_dir", str(tmp_path), "--fig_dir", str(tmp_path)]
    assert run_cli(induction_growth.main, [*flags, "--tokens_per_batch", "64"]) == 2
    err = capsys.readouterr().err
    assert "tokens_per_batch: 32768 there, 64 now" in err and "--restart" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "growth_mamba.csv").exists()
    assert run_cli(induction_growth.main, [*flags, "--tokens_per_batch", "64", "--restart"]) == 0
    settings = json.loads((tmp_path / "growth_mamba_pieces" / "settings.json").read_text())
    assert settings["tokens_per_batch"] == 64


@pytest.mark.parametrize("change, message", [({"log2_lengths": (5, 4)}, "`log2_lengths`"),
                                             ({"long_sequences": 0}, "`long_sequences`"),
                                             ({"snapshots": ()}, "`snapshots`")])
def test_bad_settings_name_their_parameter(snapshots, tmp_path, change, message):
    with pytest.raises(InputError, match=message):
        check_induction_growth(_settings(snapshots, tmp_path, **change))


def test_the_same_file_twice_is_evaluated_once_and_two_files_at_one_step_are_refused(snapshots, tmp_path):
    import torch

    shutil.copy(snapshots / "mamba_step000003.pt", tmp_path / "copy.pt")
    plan = check_induction_growth(_settings(snapshots, tmp_path, snapshots=(snapshots, tmp_path / "copy.pt")))
    assert [s.step for s in plan.snapshots] == [3, 6]
    other = torch.load(snapshots / "mamba_step000006.pt", weights_only=True)
    other["metadata"]["step"] = 3
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(InputError, match="both at step 3"):
        check_induction_growth(_settings(snapshots, tmp_path, snapshots=(snapshots, tmp_path / "other.pt")))


def test_figure_draws_one_line_per_length_from_a_hand_made_table():
    rows = [{"step": step, "length": 2 ** k, "n_sequences": 256 if k < 15 else 64, "accuracy": acc,
             "wilson_low": max(acc - 0.05, 0.0), "wilson_high": min(acc + 0.05, 1.0)}
            for step, accs in ((4000, (1.0, 0.6, 0.2)), (8000, (1.0, 0.9, 0.5)), (128000, (1.0, 1.0, 0.9)))
            for k, acc in zip((8, 14, 16), accs)]
    curves = curves_by_length(rows)
    assert sorted(curves) == [256, 2 ** 14, 2 ** 16]
    np.testing.assert_array_equal(curves[2 ** 16]["step"], [4000, 8000, 128000])
    fig = plot_accuracy_vs_step(curves, "run")
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["2^8 (n = 256)", "2^14 (n = 256)", "2^16 (n = 64)"]
    assert ax.get_xscale() == "log" and len(ax.collections) == 3        # Wilson bands
    assert plot_accuracy_vs_step(curves, "run", log_steps=False).axes[0].get_xscale() == "linear"
