"""Finding and reading head-score files and CMR grid files (the inputs of every fit).

Head-score files come in two layouts, both read here ([LI24]'s scripts each read only one):

* ours and the authors' small models: ``<root>/<model>/all_scores_<model>[_cp<K>].pkl``;
* the authors' larger models: ``<root>/<model>/induction_head_all_scores_<model>[_cp<K>].pkl``.

Model names are matched loosely: case, ``-``/``_``/``.`` and a ``-deduped-v0`` / ``-deduped``
suffix are ignored, so ``pythia-70m`` finds ``pythia-70m-deduped-v0/all_scores_pythia_70m_cp142.pkl``
and ``gpt2-small`` finds ``all_scores_gpt2_small.pkl``. Files are read only through
:func:`icl_cmr.files.reading.load_pickle` (restricted unpickler); unknown keys are ignored.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from icl_cmr.config import (ATTN_CRP_LAGS, BETA_ENC_GRID, BETA_REC_GRID, CMR_CRP_LAGS, CMR_GRID_MEAN_FILENAME,
                            FIT_LAGS, GAMMA_FT_GRID)
from icl_cmr.errors import FileContentError, InputError
from icl_cmr.files.checks import ArraySpec, check_array, check_arrays, recorded_model
from icl_cmr.fits.distance import CmrGrid
from icl_cmr.files.reading import load_json, load_pickle
from icl_cmr.files.score_format import head_labels

logger = logging.getLogger(__name__)

#: Pythia training checkpoints analysed in [LI24] Fig 7: indices K into TransformerLens's list of
#: the v0 Pythia checkpoints (training step 1000 (K + 1)). Source: the authors'
#: ``attn_over_time.py`` (``cp_interv = 10``, ``n_cp = 143``: ``range(0, 143, 10) + [142]``).
CHECKPOINT_INDICES: Tuple[int, ...] = tuple(range(0, 143, 10)) + (142,)

#: The final Pythia checkpoint (step 143000), used as "the trained model".
FINAL_CHECKPOINT: int = CHECKPOINT_INDICES[-1]

#: Default locations, relative to the working directory (the repository root), as in [LI24].
DEFAULT_SCORES_DIR = Path("saved_scores")
DEFAULT_GRID_PATH = Path("saved_crps") / CMR_GRID_MEAN_FILENAME

#: File prefixes of the two layouts, and suffixes of the authors' Pythia folder names.
SCORE_FILE_PREFIXES = ("induction_head_all_scores_", "all_scores_")
_MODEL_SUFFIXES = ("-deduped-v0", "-deduped")
_SCORE_FILE_RE = re.compile(r"^(?:induction_head_)?all_scores_(?P<model>.+?)(?:_cp(?P<cp>\d+))?\.pkl$")


def checkpoint_step(checkpoint: int) -> int:
    """Training step of Pythia v0 checkpoint index ``checkpoint``: 1000 (K + 1)."""
    return 1000 * (int(checkpoint) + 1)


def normalise_model_name(name: str) -> str:
    """Canonical form of a model name for matching files.

    Lower case; ``/`` (HF ids, saved as ``__``), ``_``, ``.`` and ``-`` all become ``-``; a
    ``-deduped-v0`` / ``-deduped`` suffix is dropped. ``Pythia_70m-deduped-v0`` -> ``pythia-70m``;
    ``pythia-1.4b`` -> ``pythia-1-4b``.
    """
    text = name.strip().lower().replace("/", "__")
    text = re.sub(r"[-_.]+", "-", text).strip("-")
    for suffix in _MODEL_SUFFIXES:
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    return text


def parse_score_file_name(path: "str | Path") -> Optional[Tuple[str, Optional[int]]]:
    """(normalised model name, checkpoint index or None) of a score file name; None otherwise."""
    match = _SCORE_FILE_RE.match(Path(path).name)
    if match is None:
        return None
    checkpoint = match.group("cp")
    return normalise_model_name(match.group("model")), None if checkpoint is None else int(checkpoint)


def fit_result_paths(root: "str | Path", model: str) -> Tuple[Path, Path]:
    """Where ``fit_attn_score.py`` saves one model's fits and ``ablation.py`` looks for them.

    Returns
    -------
    (Path, Path)
        ``<root>/<model>/cmr_fit_<model>.pkl`` (keys ``fitted_MSE`` [L, H], ``fitted_params``
        [L, H, 3], ``fitted_scale_factors`` [L, H], ...) and ``<root>/<model>/head_fits_<model>.csv``.
    """
    folder = Path(root) / model
    return folder / f"cmr_fit_{model}.pkl", folder / f"head_fits_{model}.csv"


def other_model_warning(recorded: Optional[str], loaded: str, what: str) -> Optional[str]:
    """The warning for a score or fit file made for another model than the one loaded, else None.

    Parameters
    ----------
    recorded : str or None
        The model the file names (``HeadScores.model``, ``CmrFitFile.model``); None: the file does not
        say (the authors' files), and nothing can be compared.
    loaded : str
        The loaded model's name (:attr:`icl_cmr.heads.models.ModelSpec.name`).
    what : str
        The flag and file, e.g. ``"--fit-file saved_scores/gpt2/cmr_fit_gpt2.pkl"``.

    Names are compared without a hub owner and as :func:`normalise_model_name` makes them, so
    ``EleutherAI__pythia-70m-deduped-v0``, ``Pythia_70m`` and ``pythia-70m`` are one model.
    """
    def bare(name: str) -> str:
        return normalise_model_name(name.replace("/", "__").split("__")[-1])

    if recorded is None or bare(recorded) == bare(loaded):
        return None
    return (f"{what} was made for model {recorded!r}, but the model loaded is {loaded!r}; "
            "its heads are used as they are")


def find_score_file(scores_dir: "str | Path", model: str, checkpoint: Optional[int] = None) -> Path:
    """Find the head-score file of ``model`` (at training checkpoint ``checkpoint``).

    Looks in ``scores_dir`` and its immediate sub-folders for files of either layout whose model
    part matches ``model`` loosely (see :func:`normalise_model_name`).

    Parameters
    ----------
    scores_dir : path
        Root folder, e.g. ``saved_scores``.
    model : str
        Model name, e.g. ``gpt2-small``, ``pythia-70m``, ``qwen-7b``.
    checkpoint : int, optional
        Checkpoint index K (``_cp<K>`` files). None means the trained model: the file without a
        checkpoint, else the final Pythia checkpoint ``_cp142``.

    Returns
    -------
    Path

    Raises
    ------
    InputError
        If no file (or more than one) matches; the message names what was expected where.
    """
    root = Path(scores_dir)
    if not root.is_dir():
        raise InputError(f"scores folder {root} does not exist (pass --scores-dir)")
    wanted = normalise_model_name(model)
    folders = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    matches = {}
    for folder in folders:
        for path in folder.glob("*all_scores_*.pkl"):
            parsed = parse_score_file_name(path)
            if parsed is not None and parsed[0] == wanted:
                matches.setdefault(parsed[1], []).append(path)
    wanted_checkpoints = [checkpoint] if checkpoint is not None else [None, FINAL_CHECKPOINT]
    for cp in wanted_checkpoints:
        found = sorted(matches.get(cp, []))
        if len(found) > 1:
            raise InputError(f"several score files for model {model!r}"
                             f"{'' if cp is None else f' checkpoint {cp}'}: {', '.join(map(str, found))}")
        if found:
            return found[0]
    suffix = "" if checkpoint is None else f"_cp{checkpoint}"
    expected = " or ".join(f"{prefix}<{model}>{suffix}.pkl" for prefix in SCORE_FILE_PREFIXES)
    if checkpoint is None:
        expected += f" (or _cp{FINAL_CHECKPOINT})"
    have = [str(k) for k in sorted(k for k in matches if k is not None)]   # numeric order: 0, 10, 20, ..., 142
    hint = f"; checkpoints found for this model: {', '.join(have)}" if have else ""
    raise InputError(f"no head-score file for model {model!r}{'' if checkpoint is None else f' checkpoint {checkpoint}'}: "
                     f"expected {expected} in {root} or {root}/<model folder>{hint}")


#: The keys of a head-score file this reader uses, with what each must hold (DESIGN.md section 2;
#: the authors' layout in :mod:`icl_cmr.files.score_format`). NaN marks a head that could not be
#: scored (copying scores are all NaN with ``compute_head_scores.py --no-copying``).
HEAD_SCORE_SPECS = {
    "head_scores": ArraySpec(("n_layers", "n_heads"), low=0.0, high=1.0, meaning="matching scores"),
    "copying_score": ArraySpec(("n_layers", "n_heads"), low=-1.0, high=1.0, meaning="copying scores"),
    "CRP_lags": ArraySpec(("n_lags",), nan=False, integer=True, meaning="lags"),
    "CRP_scores": ArraySpec(("n_layers", "n_heads", "n_lags"), meaning="pre-softmax attention by lag"),
    "CRP_scores_sem": ArraySpec(("n_layers", "n_heads", "n_lags"), low=0.0, meaning="standard errors"),
    "labels": ArraySpec(("n_layers", "n_heads"), strings=True, meaning="head labels"),
    "prefix_matching_score": ArraySpec(("n_layers", "n_heads"), low=0.0, high=1.0, meaning="prefix-matching scores"),
}

#: Keys every head-score file has (the authors' and ours).
HEAD_SCORE_REQUIRED = ("head_scores", "copying_score", "CRP_scores")

HEAD_SCORE_KIND = "a head-score file"


@dataclass(frozen=True)
class HeadScores:
    """Head scores of one model (one checkpoint), in layer-major head order.

    Attributes
    ----------
    matching_score : ndarray, shape [L, H]
        Induction-head matching score (attention on lag +1), in [0, 1]; NaN for unscored heads.
    copying_score : ndarray, shape [L, H]
        Copying score in [-1, 1]; NaN where not computed.
    crp : ndarray, shape [L, H, n_lags]
        Attention CRP (pre-softmax scores) at lags ``lags`` (16 lags in every file so far).
    crp_sem : ndarray, shape [L, H, n_lags]
        Its standard error; NaN when the file has none.
    labels : ndarray of str, shape [L, H]
        ``"L{layer}H{head}"``.
    lags : ndarray of int, shape [n_lags]
        The file's ``CRP_lags`` when present, else -8..+7 (the authors' files); strictly increasing.
    path : str
        File read.
    prefix_matching_score : ndarray, shape [L, H], optional
        [CS24]'s prefix-matching score when the file has it (ours), else None.
    model : str, optional
        The model the file says it scored (``metadata["model"]``, ours); None for the authors' files.
    """

    matching_score: np.ndarray
    copying_score: np.ndarray
    crp: np.ndarray
    crp_sem: np.ndarray
    labels: np.ndarray
    lags: np.ndarray
    path: str = ""
    prefix_matching_score: Optional[np.ndarray] = None
    model: Optional[str] = None

    @property
    def n_layers(self) -> int:
        """Number of layers L."""
        return int(self.matching_score.shape[0])

    @property
    def n_heads(self) -> int:
        """Heads per layer H."""
        return int(self.matching_score.shape[1])


def head_scores_from_dict(scores: Any, source: str = "", required: Sequence[str] = HEAD_SCORE_REQUIRED) -> HeadScores:
    """Build :class:`HeadScores` from a score-file dict (authors' or ours; extra keys ignored).

    Parameters
    ----------
    scores : dict
        Needs ``head_scores`` [L,H], ``copying_score`` [L,H], ``CRP_scores`` [L,H,n_lags]; optional
        ``CRP_scores_sem`` [L,H,n_lags], ``labels`` [L,H], ``CRP_lags`` [n_lags] (default -8..+7) and
        ``prefix_matching_score`` [L,H]. Torch tensors are converted. What each must hold:
        :data:`HEAD_SCORE_SPECS`.
    source : str
        Name for error messages.
    required : sequence of str
        Keys that must be present (a reader that needs only the prefix-matching score
        passes ``("prefix_matching_score",)``; absent arrays are then NaN).

    Raises
    ------
    FileContentError
        A required key missing, numbers of the wrong kind (strings, objects), shapes that
        disagree, no heads or no lags, values out of range, infinite values, lags that are
        not whole numbers in increasing order.
    """
    arrays = check_arrays(scores, source, HEAD_SCORE_KIND, HEAD_SCORE_SPECS, required)
    shape = next((arrays[k].shape[:2] for k in ("head_scores", "copying_score", "CRP_scores", "CRP_scores_sem",
                                                 "labels", "prefix_matching_score") if k in arrays), None)
    if shape is None:
        raise FileContentError(source, f"holds no per-head arrays: expected {HEAD_SCORE_KIND} with keys "
                                       f"{', '.join(repr(k) for k in HEAD_SCORE_REQUIRED)}")
    # Our files state their lags (CRP_lags); the authors' are -8..+7.
    lags = arrays.get("CRP_lags")
    if lags is None:
        lags = np.asarray(ATTN_CRP_LAGS, dtype=np.int64)
        if "CRP_scores" in arrays and arrays["CRP_scores"].shape[2] != lags.size:
            raise FileContentError(source, f"'CRP_scores' has {arrays['CRP_scores'].shape[2]} lags but the file has no "
                                           f"'CRP_lags'; without it the authors' {lags.size} lags "
                                           f"{lags[0]}..{lags[-1]} are assumed")
    elif lags.size > 1 and np.any(np.diff(lags) <= 0):
        raise FileContentError(source, f"'CRP_lags' must be strictly increasing, got {lags.tolist()}")
    nan = np.full(shape, np.nan)
    crp = arrays.get("CRP_scores", np.full(shape + (lags.size,), np.nan))
    return HeadScores(matching_score=arrays.get("head_scores", nan), copying_score=arrays.get("copying_score", nan),
                      crp=crp, crp_sem=arrays.get("CRP_scores_sem", np.full_like(crp, np.nan)),
                      labels=arrays["labels"] if "labels" in arrays else head_labels(*shape),
                      lags=lags, path=source, prefix_matching_score=arrays.get("prefix_matching_score"),
                      model=recorded_model(scores))


def read_head_scores(path: "str | Path", required: Sequence[str] = HEAD_SCORE_REQUIRED) -> HeadScores:
    """Read one head-score file (either layout) through the restricted unpickler and validate it.

    Parameters
    ----------
    path : path
        A ``*all_scores_*.pkl`` file (or any pickle of that dict).
    required : sequence of str
        See :func:`head_scores_from_dict`.

    Returns
    -------
    HeadScores

    Raises
    ------
    InputError
        The file does not exist.
    CorruptFileError, UnsafeFileError
        From :func:`icl_cmr.files.reading.load_pickle`.
    FileContentError
        From :func:`head_scores_from_dict`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"head-score file {path} does not exist")
    return head_scores_from_dict(load_pickle(path), source=str(path), required=required)


def load_model_scores(scores_dir: "str | Path", model: str, checkpoint: Optional[int] = None) -> HeadScores:
    """:func:`find_score_file` then :func:`read_head_scores`."""
    path = find_score_file(scores_dir, model, checkpoint)
    logger.info("reading %s", path)
    return read_head_scores(path)


def load_checkpoint_series(scores_dir: "str | Path", model: str,
                           checkpoints: Sequence[int] = CHECKPOINT_INDICES) -> List[HeadScores]:
    """Head scores of ``model`` at every checkpoint in ``checkpoints`` (all must exist).

    Raises
    ------
    InputError
        If a checkpoint is missing or the model's shape changes between checkpoints.
    """
    series = [load_model_scores(scores_dir, model, cp) for cp in checkpoints]
    shapes = {s.matching_score.shape for s in series}
    if len(shapes) > 1:
        raise InputError(f"model {model!r} has different shapes across checkpoints: {sorted(shapes)}")
    if len({tuple(s.lags) for s in series}) > 1:
        raise InputError(f"model {model!r} has different CRP lags across checkpoints")
    return series


# ----------------------------------------------------------------------------- CMR grids

def _grid_axes_from_sidecar(meta: Any, path: Path,
                            grid_shape: Tuple[int, ...]) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Axis values from a grid's JSON sidecar: keys at top level, under ``axes`` or ``parameters``.

    Returns None when the sidecar names no axes (e.g. other metadata); raises
    :class:`FileContentError` when it names them wrongly: values that are not numbers in
    [0, 1], or counts that differ from the grid's ``grid_shape`` [n_beta_enc, n_beta_rec, n_gamma_ft].
    """
    if not isinstance(meta, dict):
        return None
    for container in (meta, meta.get("axes", {}), meta.get("parameters", {})):
        if not isinstance(container, dict):
            continue
        found = {}
        for name in ("beta_enc", "beta_rec", "gamma_ft"):
            key = next((key for key in (name, f"{name}_grid", f"{name}_values") if key in container), None)
            if key is not None:
                found[name] = (key, container[key])
        if len(found) < 3:
            continue
        sizes = {"n_beta_enc": grid_shape[0], "n_beta_rec": grid_shape[1], "n_gamma_ft": grid_shape[2]}
        return tuple(check_array(value, str(path), key, ArraySpec((f"n_{name}",), low=0.0, high=1.0, nan=False,
                                                                  meaning="CMR parameter values"), sizes)
                     for name, (key, value) in found.items())  # type: ignore[return-value]
    return None


def grid_sidecar_candidates(path: Path) -> List[Path]:
    """JSON files that may hold a grid's axes: ``<stem>.json``, and the name ``est_cmr_crp.py`` writes
    beside ``cmr_crp_avg_<n>_<m>.npy``: ``cmr_crp_<n>_<m>.json`` (axes under ``parameters``)."""
    candidates = [path.with_suffix(".json")]
    if "_avg" in path.stem:
        candidates.append(path.with_name(path.stem.replace("_avg", "", 1) + ".json"))
    return candidates


def grid_lags(n_lags: int, path: "str | Path", sidecar: Any = None, sidecar_path: "str | Path | None" = None,
              needed: np.ndarray = FIT_LAGS) -> np.ndarray:
    """The lags of a CMR grid's last axis: ``-m..m`` for ``2 m + 1`` entries.

    ``est_cmr_crp.py --max_lag m`` writes ``2 m + 1`` lags ([LI24]: m = 8, 17 lags). Any ``m`` that
    reaches the lags a fit uses is accepted: the fits use lags -5..+5 only (DESIGN.md section 4), and a
    grid point's CRP cut to those lags and renormalised does not depend on ``m`` (lags beyond ``m``
    count only in each trial's number of draws, whatever ``m`` is).

    Parameters
    ----------
    n_lags : int
        Length of the grid's last axis.
    path : path-like
        The grid file, for messages.
    sidecar : dict, optional
        The grid's JSON sidecar; its ``max_lag`` (top level or under ``parameters``), when given,
        must equal ``m``.
    sidecar_path : path-like, optional
        The sidecar file, for messages.
    needed : ndarray of int
        Lags the caller needs (default the fitting lags -5..+5).

    Returns
    -------
    ndarray of int, shape [n_lags]

    Raises
    ------
    InputError
        An even length, or one too short for ``needed``; a sidecar whose ``max_lag`` disagrees.
    """
    reach = int(np.abs(needed).max())
    max_lag, odd = divmod(int(n_lags) - 1, 2)
    if odd or max_lag < reach:
        raise InputError(f"CMR grid {path} has {n_lags} lags on its last axis; expected 2 m + 1 lags -m..m with "
                         f"m >= {reach} (the fitting lags -{reach}..+{reach}; the paper's grid has "
                         f"{CMR_CRP_LAGS.size}, lags {CMR_CRP_LAGS[0]}..{CMR_CRP_LAGS[-1]})")
    if isinstance(sidecar, dict):
        for container in (sidecar, sidecar.get("parameters")):
            recorded = container.get("max_lag") if isinstance(container, dict) else None
            if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded != max_lag:
                raise FileContentError(sidecar_path or path, f"says max_lag {recorded}, but the grid {path} has "
                                                             f"{n_lags} lags (max_lag {max_lag})")
    if max_lag != int(CMR_CRP_LAGS.max()):
        logger.info("CMR grid %s has lags -%d..+%d, not the paper's %d..+%d: each start position's CRP is "
                    "normalised over its own lags before the mean over starts, so fits differ slightly from a "
                    "-8..+8 grid's (docs/cmr_grid.md)", path, max_lag, max_lag, CMR_CRP_LAGS[0], CMR_CRP_LAGS[-1])
    return np.arange(-max_lag, max_lag + 1)


def read_cmr_grid(path: "str | Path | None" = None, sem_path: "str | Path | None" = None) -> CmrGrid:
    """Read a CMR CRP grid file, its optional SEM file and its axis values, as a :class:`CmrGrid`.

    The arrays are read and validated by :func:`icl_cmr.cmr.grid.load_cmr_grid` (finite,
    non-negative, each CRP summing to 1).

    Parameters
    ----------
    path : path, optional
        ``.npy`` of shape [A, B, C, 2 m + 1] (lags -m..m; the paper's m = 8, and m >= 5 for the
        fitting lags, :func:`grid_lags`). Default ``saved_crps/cmr_crp_avg_20_11.npy``.
    sem_path : path, optional
        SEM file of the same shape. Default: the file beside ``path`` with ``avg`` replaced by
        ``sem`` in its name, when it exists (it is optional).

    Returns
    -------
    CmrGrid

    Notes
    -----
    Axis values come from a JSON sidecar (:func:`grid_sidecar_candidates`; keys ``beta_enc``,
    ``beta_rec``, ``gamma_ft`` at top level or under ``axes`` or ``parameters``) when present;
    otherwise the paper's axes (config.py) are used when the first three axes are [20, 21, 11].

    Raises
    ------
    InputError
        Missing file, wrong shape or values, or a non-default shape without axes.
    """
    from icl_cmr.cmr.grid import load_cmr_grid as load_grid_arrays

    path = Path(path) if path is not None else DEFAULT_GRID_PATH
    if not path.is_file():
        raise InputError(f"CMR grid {path} does not exist: run est_cmr_crp.py to make it, or pass --crp-grid PATH "
                         f"(a [20, 21, 11, 17] .npy; the authors' is {CMR_GRID_MEAN_FILENAME})")
    if sem_path is None:
        candidate = path.with_name(path.name.replace("avg", "sem")) if "avg" in path.name else None
        sem_path = candidate if candidate is not None and candidate.is_file() else None
    mean, sem = load_grid_arrays(path, sem_path)
    axes, lags = grid_axes_and_lags(path, mean.shape)
    if axes is None:
        default_shape = (BETA_ENC_GRID.size, BETA_REC_GRID.size, GAMMA_FT_GRID.size)
        if mean.shape[:3] != default_shape:
            names = " or ".join(str(p) for p in grid_sidecar_candidates(path))
            raise InputError(f"CMR grid {path} has shape {mean.shape}: the axis values of a grid other than "
                             f"{list(default_shape)} x lags must be given in {names} "
                             f"(keys beta_enc, beta_rec, gamma_ft)")
        axes = (BETA_ENC_GRID, BETA_REC_GRID, GAMMA_FT_GRID)
    return CmrGrid(mean=mean, beta_enc=axes[0], beta_rec=axes[1], gamma_ft=axes[2], lags=lags, sem=sem,
                   source=str(path))


def grid_axes_and_lags(path: Path, shape: Tuple[int, ...], needed: np.ndarray = FIT_LAGS
                       ) -> Tuple[Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]], np.ndarray]:
    """Axis values from a grid's JSON sidecar (None when it has none) and the lags of its last axis
    (:func:`grid_lags`, checked against the sidecar's ``max_lag``)."""
    axes, meta, meta_path = None, None, None
    for sidecar in grid_sidecar_candidates(path):
        if sidecar.is_file():
            content = load_json(sidecar)
            axes = _grid_axes_from_sidecar(content, sidecar, shape[:3])
            if axes is not None:
                logger.debug("grid axes from %s", sidecar)
                meta, meta_path = content, sidecar
                break
    return axes, grid_lags(shape[3], path, meta, meta_path, needed)
