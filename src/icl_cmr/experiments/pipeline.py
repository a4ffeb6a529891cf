"""The main job as one run: head scores, CMR fits and the ablation of one model ([LI24]; ``run_pipeline.py``).

The three experiments a user would run by hand, in order, through their engine functions:

1. :mod:`icl_cmr.experiments.head_scores`: matching / copying / prefix-matching scores and the attention CRP;
2. :mod:`icl_cmr.experiments.head_fits`: every head fitted to CMR with the shipped grid, per-model figures;
3. :mod:`icl_cmr.experiments.ablation`: ICL scores intact, top-10% CMR-like heads ablated, random heads ablated.

:func:`plan_pipeline` checks every step's settings, inputs and output folders before the first step
runs (the grid, the data or C4's reachability, a saved partial ablation's settings).
:func:`run_pipeline` runs the steps under an :class:`~icl_cmr.files.outputs.OutputGuard`: the run as a
whole is all or nothing (a failed step gives every output file back its content from before the run),
and a rerun whose results equal the saved files' (numbers bit for bit; only timestamps, wall times,
the git commit and package versions may differ) leaves those files untouched. PyTorch's CPU kernels
are pinned to AVX2, so the numbers do not depend on whether the CPU has AVX-512.

On the bundled model (``saved_models/toy_lm``, a 256-token context) the ICL score reads the loss at
index 246 instead of the paper's 500 (:func:`icl_positions`), and the ICL text is the held-out
standard-library files the model never saw in training (:func:`held_out_jsonl`).
"""
from __future__ import annotations

import glob
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import pandas as pd

from icl_cmr.config import CMR_LIKE_THRESHOLD
from icl_cmr.devices import pin_cpu_kernels
from icl_cmr.errors import InputError
from icl_cmr.experiments.ablation import (AblationPlan, AblationSettings, check_ablation, discard_partial,
                                          run_ablation, run_outputs)
from icl_cmr.experiments.head_fits import HeadFitSettings, head_fit_paths, queue_head_fit_outputs, run_head_fit
from icl_cmr.experiments.head_scores import HeadScorePlan, HeadScoreSettings, check_head_scores, run_head_scores
from icl_cmr.files.folders import check_writable_dir, check_writable_file
from icl_cmr.files.grids import read_cmr_grid
from icl_cmr.config import DEFAULT_GRID_PATH
from icl_cmr.files.outputs import REPO_ROOT, OutputGuard, PendingWrites, portable_path
from icl_cmr.files.reading import load_json
from icl_cmr.files.results import read_ablation_result
from icl_cmr.files.writing import save_pickle, save_text
from icl_cmr.fits.distance import CmrGrid
from icl_cmr.heads.registry import ModelSpec, resolve_model
from icl_cmr.interventions.icl_ablation import AblationConfig
from icl_cmr.interventions.icl_score import ICLScoreConfig
from icl_cmr.interventions.texts import TextDataConfig, split_at_blank_lines
from icl_cmr.toy_lm import held_out_texts

logger = logging.getLogger(__name__)

#: The model the project trains and ships (README "The bundled model").
BUNDLED_MODEL = REPO_ROOT / "saved_models" / "toy_lm"
#: Tokens between the ICL score's late index and the end of the prompt: the paper reads
#: index 500 of 512-token prompts; a shorter context keeps the same margin shape
#: (DESIGN.md section 9 measured the bundled model at "positions near 246 vs 50").
LATE_INDEX_MARGIN = 10
#: Characters per held-out piece, per prompt token: the bundled tokenizer averages 2.1
#: characters per token on the held-out files (measured), so pieces of 4 x seq_len
#: characters nearly always reach seq_len tokens.
CHARS_PER_TOKEN_MARGIN = 4
#: Heads listed in the printed summary.
N_SUMMARY_HEADS = 8


@dataclass(frozen=True)
class PipelineSettings:
    """The main job, as ``run_pipeline.py``'s flags set it (same names, same defaults).

    Attributes
    ----------
    model : str
        Registry name, Hugging Face id or local folder (default: the bundled toy LM).
    device : str, optional
    data : Path, optional
        ICL text (a ``.txt``/``.jsonl`` file or a folder); default: the held-out stdlib files for the
        bundled model, C4 English validation otherwise.
    n_eval, fraction, batch_size : as :class:`~icl_cmr.experiments.ablation.AblationSettings`
    crp_grid : Path
        The CMR grid the heads are fitted to.
    scores_dir, figs_dir, ablation_dir : Path
        Output roots of the three steps.
    bos : bool, optional
        BOS token on head-score and ICL prompts; None: the tokenizer's own when it has one.
    restart : bool
        Redo the ablation instead of resuming it.
    """

    model: str = str(BUNDLED_MODEL)
    device: Optional[str] = None
    data: Optional[Path] = None
    n_eval: int = AblationConfig().n_eval
    fraction: float = AblationConfig().fraction
    batch_size: int = 8
    crp_grid: Path = DEFAULT_GRID_PATH
    scores_dir: Path = Path("saved_scores")
    figs_dir: Path = Path("figs")
    ablation_dir: Path = Path("saved_ablation")
    bos: Optional[bool] = None
    restart: bool = False


def icl_positions(n_ctx: int) -> Tuple[int, int]:
    """(seq_len, late_index): the paper's 512 / 500 when the context allows, else n_ctx / n_ctx - margin."""
    paper_len = TextDataConfig().seq_len
    paper = ICLScoreConfig()
    if n_ctx >= paper_len:
        return paper_len, paper.late_index
    if n_ctx - LATE_INDEX_MARGIN <= paper.early_index:
        raise InputError(f"the model's context of {n_ctx} tokens is too short for an ICL score "
                         f"(needs more than {paper.early_index + LATE_INDEX_MARGIN})")
    return n_ctx, n_ctx - LATE_INDEX_MARGIN


def model_context(model: str) -> int:
    """The context length from a local folder's config.json, else the paper's 512 (checked at load time)."""
    config = Path(model) / "config.json"
    if config.is_file():
        fields = load_json(config)
        for key in ("n_positions", "max_position_embeddings", "n_ctx"):
            if isinstance(fields, dict) and isinstance(fields.get(key), int):
                return int(fields[key])
    return TextDataConfig().seq_len


def held_out_jsonl(folder: Path, seq_len: int) -> Path:
    """The bundled model's held-out stdlib files, cut at blank lines, as a JSONL file of ICL documents."""
    path = folder / "stdlib_held_out.jsonl"
    documents = held_out_texts()
    lines = [json.dumps({"text": piece, "source": name}) for name, text in documents
             for piece in split_at_blank_lines(text, CHARS_PER_TOKEN_MARGIN * seq_len)]
    save_text(path, "\n".join(lines) + "\n")
    logger.info("held-out ICL text: %d pieces of %d standard-library files", len(lines), len(documents))
    return path


@dataclass
class PipelinePlan:
    """The three steps, each checked before the first runs."""

    settings: PipelineSettings
    spec: ModelSpec
    scores: HeadScoreSettings
    scores_plan: HeadScorePlan
    scores_file: Path
    fit: HeadFitSettings
    grid: CmrGrid
    ablation: AblationPlan

    @property
    def outputs(self) -> List[Path]:
        """Every output of the run (glob patterns), for the :class:`OutputGuard`."""
        settings, name = self.settings, glob.escape(self.spec.name)
        paths = head_fit_paths(self.spec.name, settings.scores_dir, settings.figs_dir)
        return [settings.scores_dir / self.spec.name / f"all_scores_{name}.pkl", paths.fit, paths.table,
                paths.figures / "*.pdf", settings.ablation_dir / f"ablation_experiment_{name}*",
                settings.figs_dir / "ablation" / f"ablation_experiment_{name}_*.pdf"]


def plan_pipeline(settings: PipelineSettings, scratch: Path) -> PipelinePlan:
    """Check every step's settings, inputs and output folders before any step runs.

    Parameters
    ----------
    settings : PipelineSettings
    scratch : Path
        A temporary folder for the bundled model's held-out text.

    Raises
    ------
    InputError
        Naming the parameter at fault.
    """
    spec = resolve_model(settings.model)
    scores = HeadScoreSettings(model=settings.model, device=settings.device, bos=settings.bos)
    scores_file = settings.scores_dir / spec.name / f"all_scores_{spec.name}.pkl"
    scores_plan = check_head_scores(scores, spec)
    check_writable_file(scores_file, "`scores_dir`")
    check_writable_dir(scores_file.parent, "`scores_dir`")
    fit = HeadFitSettings(scores_file=scores_file, save_dir=spec.name)
    grid = read_cmr_grid(settings.crp_grid)
    check_writable_dir(head_fit_paths(spec.name, settings.scores_dir, settings.figs_dir).figures, "`figs_dir`")
    seq_len, late_index = icl_positions(model_context(settings.model))
    data, description = settings.data, None
    if data is None and Path(settings.model).resolve() == BUNDLED_MODEL.resolve():
        data = held_out_jsonl(scratch, seq_len)
        description = (f"held-out standard-library files of {portable_path(BUNDLED_MODEL)} "
                       "(icl_cmr.toy_lm.held_out_texts), cut at blank lines")
    fit_file = head_fit_paths(spec.name, settings.scores_dir, settings.figs_dir).fit
    ablation = AblationSettings(model=settings.model, fit_file=fit_file, fraction=settings.fraction,
                                n_eval=settings.n_eval, batch_size=settings.batch_size, seq_len=seq_len,
                                late_index=late_index, data=data, data_description=description, bos=settings.bos,
                                device=settings.device)
    check_writable_dir(settings.ablation_dir, "`ablation_dir`")
    check_writable_dir(settings.figs_dir / "ablation", "`figs_dir`")
    # also whether C4 can be streamed when step 3 needs it, and a saved partial run's settings
    ablation_plan = check_ablation(ablation, settings.ablation_dir, restart=settings.restart, fit_file_pending=True)
    return PipelinePlan(settings, spec, scores, scores_plan, scores_file, fit, grid, ablation_plan)


@dataclass
class PipelineResult:
    """What the main job produced.

    Attributes
    ----------
    fit_table : pandas.DataFrame
        One row per head: CMR distance, parameters, 1/tau, matching and copying scores.
    stats : list of dict
        The ablation's paired comparisons.
    unchanged, changed, created : list of Path
        Outputs kept as they were (same numbers), rewritten, and new.
    wall_seconds : float
    """

    fit_table: pd.DataFrame
    stats: List[dict]
    unchanged: List[Path]
    changed: List[Path]
    created: List[Path]
    wall_seconds: float


def run_steps(plan: PipelinePlan, progress: bool = True) -> PipelineResult:
    """Run the three steps of a checked plan under one :class:`OutputGuard` (all or nothing)."""
    settings, name = plan.settings, plan.spec.name
    started = time.monotonic()
    pin_cpu_kernels()
    fit_paths = head_fit_paths(name, settings.scores_dir, settings.figs_dir)
    with OutputGuard(plan.outputs) as guard:
        logger.info("[1/3] head scores of %s", name)
        scores = run_head_scores(plan.scores, plan.scores_plan, progress=progress)
        save_pickle(plan.scores_file, scores.scores)
        logger.info("[2/3] CMR fits with %s", settings.crp_grid)
        pending = PendingWrites()
        queue_head_fit_outputs(pending, run_head_fit(plan.fit, plan.grid), fit_paths, figures=True,
                               progress=progress)
        pending.commit()
        logger.info("[3/3] ablation of the top CMR-like heads")
        ablation = run_ablation(plan.ablation, settings.ablation_dir, restart=settings.restart, progress=progress)
        pending = PendingWrites()
        run_outputs(ablation, settings.ablation_dir, settings.figs_dir, plan.ablation.settings.n_bootstrap, pending)
        pending.commit()
        discard_partial(settings.ablation_dir, name)
    fit_table = pd.read_csv(fit_paths.table)
    stats = read_ablation_result(settings.ablation_dir / f"ablation_experiment_{name}.pkl")["stats"]
    return PipelineResult(fit_table, stats, list(guard.unchanged), list(guard.changed), list(guard.created),
                          time.monotonic() - started)


def run_pipeline(settings: PipelineSettings, progress: bool = True) -> PipelineResult:
    """Check, then run, the main job (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="icl_cmr_data_") as scratch:
        return run_steps(plan_pipeline(settings, Path(scratch)), progress=progress)


def summary_text(fit_table: pd.DataFrame, stats_rows: List[dict], threshold: float = CMR_LIKE_THRESHOLD) -> str:
    """The printed summary: top CMR-like heads, then ICL scores with p-values."""
    top = fit_table.sort_values("cmr_distance", kind="stable").head(N_SUMMARY_HEADS)
    n_like = int((fit_table["cmr_distance"] < threshold).sum())
    lines = [f"CMR-like heads (D < {threshold}): {n_like} of {len(fit_table)}", "",
             f"{'head':>6} {'D':>8} {'beta_enc':>8} {'beta_rec':>8} {'gamma_ft':>8} {'1/tau':>7} "
             f"{'matching':>8} {'copying':>8}"]
    for row in top.itertuples():
        lines.append(f"{row.label:>6} {row.cmr_distance:8.4f} {row.beta_enc:8.2f} {row.beta_rec:8.2f} "
                     f"{row.gamma_ft:8.2f} {row.inverse_temperature:7.1f} {row.matching_score:8.3f} "
                     f"{row.copying_score:8.3f}")
    lines += ["", f"{'ICL score':<34} {'mean a':>8} {'mean b':>8} {'t':>8} {'p (t)':>9} {'p (Wilcoxon)':>12}"]
    for row in stats_rows:
        lines.append(f"{row['a'] + ' vs ' + row['b']:<34} {row['mean_a']:8.3f} {row['mean_b']:8.3f} "
                     f"{row['t']:8.2f} {row['p_t']:9.2g} {row['p_wilcoxon']:12.2g}")
    return "\n".join(lines)
