"""Finding and reading head-score files (with the CMR grid, :mod:`icl_cmr.files.grids`, the inputs of every fit).

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
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from icl_cmr.config import ATTN_CRP_LAGS, CHECKPOINT_INDICES, FINAL_CHECKPOINT
from icl_cmr.errors import FileContentError, InputError
from icl_cmr.files.checks import ArraySpec, check_arrays, recorded_model
from icl_cmr.files.outputs import searched_at
from icl_cmr.files.reading import load_pickle
from icl_cmr.files.score_format import head_labels
from icl_cmr.heads.results import HeadScores

logger = logging.getLogger(__name__)

#: Default locations, relative to the working directory (the repository root), as in [LI24].
DEFAULT_SCORES_DIR = Path("saved_scores")

#: File prefixes of the two layouts, and suffixes of the authors' Pythia folder names.
SCORE_FILE_PREFIXES = ("induction_head_all_scores_", "all_scores_")
_MODEL_SUFFIXES = ("-deduped-v0", "-deduped")
_SCORE_FILE_RE = re.compile(r"^(?:induction_head_)?all_scores_(?P<model>.+?)(?:_cp(?P<cp>\d+))?\.pkl$")


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
        The loaded model's name (:attr:`icl_cmr.heads.registry.ModelSpec.name`).
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
        raise InputError(f"scores folder {root} does not exist{searched_at(root)} (pass `scores_dir`)",
                         parameters=("scores_dir",))
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

