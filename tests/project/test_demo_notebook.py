"""demo.ipynb runs end to end, offline, on the bundled model, and says what the engine measured.

The notebook is executed once per test session with nbclient (about 35-45 s on a 2-core CPU),
from the repository root, with ``HF_HUB_OFFLINE=1`` and ``ICL_CMR_DEMO_MODEL`` pointing at
``saved_models/toy_lm``. The kernel is this interpreter, registered in a temporary folder, so
the notebook imports exactly the packages the tests see.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = "demo.ipynb"
BUNDLED_MODEL = Path("saved_models") / "toy_lm"
CELL_TIMEOUT_S = 240  # per cell; the whole notebook takes well under a minute here
KERNEL_NAME = "icl-cmr-demo-test"


def _code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _stdout(notebook) -> str:
    return "".join(output.get("text", "") for cell in _code_cells(notebook) for output in cell.outputs
                   if output.output_type == "stream" and output.name == "stdout")


@pytest.fixture(scope="module")
def source_notebook(repo_root):
    path = repo_root / NOTEBOOK
    assert path.is_file(), f"{NOTEBOOK} is missing from the repository root"
    return nbformat.read(path, as_version=4)


@pytest.fixture(scope="module")
def executed_notebook(repo_root, source_notebook, tmp_path_factory):
    """The notebook after a full offline run on the bundled model (outputs kept in memory only)."""
    if not (repo_root / BUNDLED_MODEL / "config.json").is_file():
        pytest.skip(f"bundled model {BUNDLED_MODEL} is absent (train it with src/train_toy_lm.py)")
    from ipykernel.kernelspec import install

    # A kernel spec for this very interpreter, so the kernel sees the same site-packages as pytest.
    prefix = tmp_path_factory.mktemp("kernel")
    install(kernel_name=KERNEL_NAME, prefix=str(prefix))
    notebook = nbformat.from_dict(source_notebook)  # a copy: the committed file is never touched
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("ICL_CMR_DEMO_MODEL", str(repo_root / BUNDLED_MODEL))
        client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME,
                                          resources={"metadata": {"path": str(repo_root)}})
        try:
            client.execute()
        except nbclient.exceptions.CellExecutionError as err:
            pytest.fail(f"a notebook cell raised an error:\n{err}")
    return notebook


@pytest.mark.slow
def test_no_cell_errors(executed_notebook):
    errors = [output for cell in _code_cells(executed_notebook) for output in cell.outputs
              if output.output_type == "error"]
    assert errors == []


@pytest.mark.slow
def test_notebook_chose_the_bundled_model(executed_notebook):
    assert "model: toy_lm (bundled model); chosen because set by ICL_CMR_DEMO_MODEL" in _stdout(executed_notebook)


@pytest.mark.slow
def test_top_head_is_an_induction_head_of_the_second_layer(executed_notebook):
    match = re.search(r"top induction head L(\d+)H(\d+): matching score ([0-9.]+)", _stdout(executed_notebook))
    assert match is not None, "the notebook did not print the top induction head"
    # Issue 6's criterion for the bundled model (a head with matching score >= 0.5); an induction
    # head needs a previous-token head before it, so in a 2-layer model it can only be in layer 1.
    assert float(match.group(3)) > 0.5
    assert int(match.group(1)) == 1


@pytest.mark.slow
def test_top_head_fit_is_reported_with_finite_distance_and_parameters(executed_notebook):
    match = re.search(r"CMR distance D = ([0-9.]+).*\nfitted beta_enc = ([0-9.]+), beta_rec = ([0-9.]+), "
                      r"gamma_ft = ([0-9.]+), 1/tau = ([0-9.]+)", _stdout(executed_notebook))
    assert match is not None, "the notebook did not print the CMR fit of the top head"
    distance, beta_enc, beta_rec, gamma_ft, inverse_temperature = map(float, match.groups())
    assert distance >= 0
    assert 0 < beta_enc <= 1 and 0 <= beta_rec <= 1 and 0 <= gamma_ft <= 1  # the grid's ranges
    assert inverse_temperature > 0


@pytest.mark.slow
def test_forward_chaining_cmr_puts_every_transition_at_lag_plus_one(executed_notebook):
    # beta_enc = 1: each item is associated only with its successor; beta_rec = 1, gamma_ft = 0:
    # the context is the last recalled item. Every draw is the next item, so CRP(+1) = 1 exactly.
    match = re.search(r"CMR \(1, 1, 0\) simulated CRP at lag \+1: ([0-9.]+)", _stdout(executed_notebook))
    assert match is not None
    assert float(match.group(1)) == pytest.approx(1.0, abs=5e-4)


@pytest.mark.slow
def test_human_lag_crp_favours_forward_transitions(executed_notebook):
    # DESIGN.md section 8: PEERS shows asymmetric contiguity, lag +1 above lag -1.
    match = re.search(r"human \(peers_notask, (\d+) subjects\) conditional lag-CRP: lag -1 ([0-9.]+), "
                      r"lag \+1 ([0-9.]+)", _stdout(executed_notebook))
    assert match is not None
    assert float(match.group(3)) > float(match.group(2))


@pytest.mark.slow
def test_every_figure_is_drawn_inline(executed_notebook, source_notebook):
    for source_cell, cell in zip(_code_cells(source_notebook), _code_cells(executed_notebook)):
        expected = len(re.findall(r"^\s*show\(fig\)\s*$", source_cell.source, flags=re.MULTILINE))
        drawn = sum("image/png" in output.get("data", {}) for output in cell.outputs)
        assert drawn == expected, f"cell starting {source_cell.source[:60]!r}: {drawn} figures, expected {expected}"


def test_committed_notebook_has_no_outputs(source_notebook):
    for cell in _code_cells(source_notebook):
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_install_cell_clones_only_in_colab_from_a_user_set_url(source_notebook):
    first = _code_cells(source_notebook)[0].source
    assert re.search(r'^REPO_URL = ""', first, flags=re.MULTILINE), "REPO_URL must be left for the user to set"
    assert '"google.colab" in sys.modules' in first
    assert "requirements.txt" in first


def test_notebook_uses_a_gpu_when_present(source_notebook):
    sources = "\n".join(cell.source for cell in _code_cells(source_notebook))
    assert 'device = "cuda" if torch.cuda.is_available() else "cpu"' in sources

