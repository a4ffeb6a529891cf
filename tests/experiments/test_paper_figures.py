"""paper_figures.py: the paper's figures in one command, the download path, and the Fig 7b/S2 correction."""
from __future__ import annotations

import io
import pickle
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

import paper_figures
from icl_cmr.cli.args import run_cli
from icl_cmr.errors import InputError
from icl_cmr.files.reading import load_pickle
from icl_cmr.fits.layers import authors_sorted_position_mask
from icl_cmr.files.official import download_official, extract_data_folders

REPO = Path(__file__).resolve().parents[2]


def small_official_layout(root: Path) -> Path:
    """The authors' layout, made of our shipped files: the bundled model's scores as 'gpt2-small'."""
    (root / "saved_scores" / "gpt2-small").mkdir(parents=True)
    shutil.copy(REPO / "saved_scores" / "toy_lm" / "all_scores_toy_lm.pkl",
                root / "saved_scores" / "gpt2-small" / "all_scores_gpt2_small.pkl")
    shutil.copytree(REPO / "saved_crps", root / "saved_crps")
    (root / "saved_ablation").mkdir()
    shutil.copy(REPO / "saved_ablation" / "ablation_experiment_toy_lm.pkl",
                root / "saved_ablation" / "ablation_experiment_gpt2-small.pkl")
    (root / "LICENSE").write_text("MIT\n")
    (root / "src").mkdir()
    (root / "src" / "script.py").write_text("print('code is not extracted')\n")
    return root


def tar_of(folder: Path, archive: Path, top: str = "icl-cmr-abc123") -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=top)
    return archive


@pytest.mark.slow
def test_download_extracts_only_the_data_folders_once_and_draws_from_them(tmp_path, capsys):
    archive = tar_of(small_official_layout(tmp_path / "repo"), tmp_path / "repo.tar.gz")
    argv = ["--download-url", archive.as_uri(), "--cache-dir", str(tmp_path / "cache"),
            "--out-dir", str(tmp_path / "paper"), "--no-progress"]
    assert run_cli(paper_figures.main, argv) == 0
    (data,) = (tmp_path / "cache" / "official").iterdir()
    assert sorted(p.name for p in data.iterdir()) == ["LICENSE", "icl_cmr_source.json", "saved_ablation",
                                                      "saved_crps", "saved_scores"]       # no src/
    written = {p.name for p in (tmp_path / "paper").iterdir()}
    assert {"fig4_cmr_crps.pdf", "fig5_gpt2-small_heads.pdf", "fig8_ablation.pdf", "SUMMARY.md"} <= written
    # The second run reads the cache: the archive is gone and nothing is fetched.
    archive.unlink()
    shutil.rmtree(tmp_path / "paper")
    assert run_cli(paper_figures.main, argv) == 0
    assert (tmp_path / "paper" / "fig4_cmr_crps.pdf").is_file()


def test_offline_without_official_stops_with_one_line_and_writes_nothing(tmp_path, capsys):
    argv = ["--download-url", "http://127.0.0.1:9/icl-cmr.tar.gz", "--cache-dir", str(tmp_path / "cache"),
            "--out-dir", str(tmp_path / "paper"), "--no-progress"]
    assert run_cli(paper_figures.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: cannot download the authors' data from http://127.0.0.1:9/icl-cmr.tar.gz")
    assert "--official DIR" in err[0]
    assert not (tmp_path / "paper").exists()
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("name", ["../evil.pkl", "/tmp/evil.pkl", "icl-cmr/saved_scores/../../evil.pkl"])
def test_tar_member_outside_the_folder_is_refused_and_nothing_is_extracted(tmp_path, name):
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for member, data in (("icl-cmr/saved_scores/a.pkl", b"x"), ("icl-cmr/saved_crps/b.npy", b"y"), (name, b"z")):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(InputError, match="would be written outside the folder"):
        extract_data_folders(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.pkl").exists()


def test_zip_member_with_dotdot_is_refused(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("icl-cmr/saved_scores/a.pkl", b"x")
        zf.writestr("icl-cmr/../../evil.pkl", b"z")
    with pytest.raises(InputError, match="would be written outside the folder"):
        extract_data_folders(archive, tmp_path / "out")


def test_symlink_inside_the_data_folders_is_refused(tmp_path):
    archive = tmp_path / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("icl-cmr/saved_scores/x.pkl")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(InputError, match="link or a device"):
        extract_data_folders(archive, tmp_path / "out")


def test_an_archive_without_the_data_folders_is_named_as_such(tmp_path):
    folder = tmp_path / "other"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "a.py").write_text("")
    archive = tar_of(folder, tmp_path / "other.tar.gz")
    with pytest.raises(InputError, match="has no saved_scores/ or saved_crps/ folder"):
        download_official(archive.as_uri(), cache_dir=tmp_path / "cache")


def test_official_and_ours_are_exclusive(capsys):
    with pytest.raises(SystemExit) as stop:
        paper_figures.main(["--official", "x", "--ours"])
    assert stop.value.code == 2
    assert "error: argument --ours: not allowed with argument --official" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--official", "x", "--scores-dir", "s"], "argument --scores-dir: only with --ours"),
    (["--crp-grid", "g.npy"], "argument --crp-grid: only with --ours"),
    (["--ours", "--download-url", "file:///a.tar.gz"], "argument --download-url: only without --official and --ours"),
    (["--official", "x", "--cache-dir", "c"], "argument --cache-dir: only without --official and --ours"),
])
def test_flags_the_source_would_ignore_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        paper_figures.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}")


def test_official_folder_without_the_layout_is_one_line(tmp_path, capsys):
    assert run_cli(paper_figures.main, ["--official", str(tmp_path), "--out-dir", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no saved_scores/ or saved_crps/ folder" in err[0]


@pytest.mark.slow
def test_ours_draws_the_bundled_model_and_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert run_cli(paper_figures.main, ["--ours", "--out-dir", str(tmp_path / "paper"), "--no-progress"]) == 0
    written = {p.name for p in (tmp_path / "paper").iterdir()}
    assert {"fig4_cmr_crps.pdf", "fig5_toy-lm_heads.pdf", "fig6a_toy-lm_distance_vs_matching.pdf",
            "fig6c_models.pdf", "fig8_ablation.pdf", "SUMMARY.md"} <= written
    summary = (tmp_path / "paper" / "SUMMARY.md").read_text()
    # README: 6 of the bundled model's 8 heads have D < 0.5.
    assert "6 of 8 heads have D < 0.5" in summary
    assert "| Fig 6b | no Pythia score files in saved_scores |" in summary


def test_authors_mask_follows_positions_not_heads():
    # One layer, three heads, two checkpoints. Final ranking by matching score: h0 > h1 > h2, and only
    # h0 is CMR-like (D < 0.5), so the final mask by position is "first in the ranking".
    distance = np.array([[[0.9, 0.9, 0.9]], [[0.1, 0.8, 0.9]]])
    matching = np.array([[[0.1, 0.2, 0.9]], [[0.9, 0.5, 0.1]]])
    mask = authors_sorted_position_mask(distance, matching, 0.5)
    # At checkpoint 0 the first-ranked head is h2: the published curve averages h2 there, not h0.
    np.testing.assert_array_equal(mask[0, 0], [False, False, True])
    np.testing.assert_array_equal(mask[1, 0], [True, False, False])


def test_authors_order_is_their_files_sort_ind(official_dir):
    for cp in (0, 50, 142):
        raw = load_pickle(official_dir / "saved_scores" / "pythia-70m-deduped-v0" / f"all_scores_pythia_70m_cp{cp}.pkl")
        scores = np.asarray(raw["head_scores"], dtype=float)
        order = np.argsort(-scores, axis=1, kind="stable")
        np.testing.assert_array_equal(order, np.asarray(raw["sort_ind"]))


@pytest.mark.slow
def test_official_run_writes_every_supported_figure_with_the_papers_numbers(official_dir, tmp_path):
    out = tmp_path / "paper"
    assert run_cli(paper_figures.main, ["--official", str(official_dir), "--out-dir", str(out), "--no-progress"]) == 0
    written = {p.name for p in out.iterdir()}
    for name in ("fig4_cmr_crps.pdf", "fig5_gpt2-small_heads.pdf", "fig6a_gpt2-small_distance_vs_matching.pdf",
                 "fig6b_pythia_sizes.pdf", "fig6c_models.pdf", "fig7b-S2_pythia-70m_params_over_training.pdf",
                 "fig7c-f_top_heads_over_training.pdf", "fig7g_top_heads_vs_human.pdf", "fig8_ablation.pdf",
                 "figS6b-d_top_heads_final_cmr.pdf"):
        assert name in written
        assert (out / name).read_bytes().startswith(b"%PDF")
    summary = (out / "SUMMARY.md").read_text()
    # DESIGN.md section 4 and README: GPT-2 small 68 of 144 heads, L5H1 D = 0.0061 at (0.6, 0.75, 0.3),
    # 1/tau 44.3; Qwen-7B 437 of 1024; the authors' ablation file: intact vs top t = -19.62.
    assert "68 of 144 heads have D < 0.5" in summary
    assert "L5H1 (matching score" in summary
    assert "D = 0.0061 at (beta_enc, beta_rec, gamma_ft) = (0.6, 0.75, 0.3)" in summary
    assert "| qwen-7b | 32 x 32 | 437 / 1024 |" in summary
    assert "| -19.62 |" in summary
    assert "| Fig 7a |" in summary and "| Fig 1-3 |" in summary


@pytest.mark.slow
def test_scores_pickled_here_are_read_through_the_safe_loader(tmp_path):
    # A layout whose score file would run code when unpickled blindly is refused in one line.
    layout = small_official_layout(tmp_path / "repo")
    with open(layout / "saved_scores" / "gpt2-small" / "all_scores_gpt2_small.pkl", "wb") as handle:
        pickle.dump(Path("x"), handle)
    with pytest.raises(InputError):
        paper_figures.main(["--official", str(layout), "--out-dir", str(tmp_path / "paper"), "--no-progress"])
    assert not (tmp_path / "paper").exists()
