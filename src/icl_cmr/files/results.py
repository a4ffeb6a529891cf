"""Readers of the result files scripts read back: CMR fits, ablation results, top-head selections, prompts.

One validating reader per format; each loads through :func:`icl_cmr.files.reading.load_pickle`
(restricted, size-checked) and checks every key it uses with
:func:`icl_cmr.files.checks.check_arrays` before any number is used, so a file of the
wrong kind, with strings where numbers belong or with shapes that disagree ends in one
:class:`~icl_cmr.errors.FileContentError` line naming the file and the key. Head-score
files and CMR grids are read by :mod:`icl_cmr.files.scores`.

==============================  =====================================  ==========================
format                          written by                             reader
==============================  =====================================  ==========================
``cmr_fit_<model>.pkl``         ``fit_attn_score.py``                  :func:`read_cmr_fit`
``ablation_experiment_*.pkl``   ``ablation.py`` ([LI24]'s three keys)  :func:`read_ablation_result`
``cmr_top_*_<tag>.pkl``         ``select_fit.py``, ``select_fit_xtra``  :func:`read_top_heads`
``prompts.json``                ``pattern_icl.py``                     :func:`read_pattern_prompts`
==============================  =====================================  ==========================
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from icl_cmr.errors import FileContentError
from icl_cmr.files.checks import ArraySpec, check_array, check_arrays, describe_content, recorded_model, require_dict
from icl_cmr.files.reading import load_json, load_pickle
from icl_cmr.interventions.pattern_tasks import prompts_from_json

# ----------------------------------------------------------------------------- CMR fits

#: Keys of ``fit_attn_score.py``'s fit file this reader uses (DESIGN.md section 4). D >= 0; the
#: parameters are grid values in [0, 1]; NaN marks a head that could not be fitted.
CMR_FIT_SPECS = {
    "fitted_MSE": ArraySpec(("n_layers", "n_heads"), low=0.0, meaning="CMR distances"),
    "fitted_params": ArraySpec(("n_layers", "n_heads", 3), low=0.0, high=1.0,
                               meaning="(beta_enc, beta_rec, gamma_ft)"),
    "fitted_scale_factors": ArraySpec(("n_layers", "n_heads"), low=0.0, meaning="inverse temperatures"),
    "labels": ArraySpec(("n_layers", "n_heads"), strings=True, meaning="head labels"),
}

CMR_FIT_KIND = "a CMR fit file"


@dataclass(frozen=True)
class CmrFitFile:
    """The fit of every head of one model, as read back.

    Attributes
    ----------
    distance : ndarray, shape [L, H]
        CMR distance D (``fitted_MSE``); NaN where no fit.
    params : ndarray, shape [L, H, 3] or None
        Fitted (beta_enc, beta_rec, gamma_ft) when the file has them.
    inverse_temperature : ndarray, shape [L, H] or None
        Fitted scale 1/tau when present.
    labels : ndarray of str, shape [L, H] or None
    path : str
    model : str or None
        The model the fit was made for (``metadata["model"]``); None when the file does not say
        (the authors' files, and ours made before it was recorded).
    """

    distance: np.ndarray
    params: Optional[np.ndarray]
    inverse_temperature: Optional[np.ndarray]
    labels: Optional[np.ndarray]
    path: str
    model: Optional[str] = None


def read_cmr_fit(path: "str | Path") -> CmrFitFile:
    """Read a CMR fit file (``fitted_MSE`` required; parameters, scales and labels checked when present).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    CorruptFileError, UnsafeFileError
        From :func:`icl_cmr.files.reading.load_pickle`.
    FileContentError
        Not a fit file (the message says what it looks like instead), or a key of the wrong
        kind or shape (:data:`CMR_FIT_SPECS`).
    """
    content = load_pickle(path)
    arrays = check_arrays(content, str(path), CMR_FIT_KIND, CMR_FIT_SPECS, ("fitted_MSE",))
    return CmrFitFile(distance=arrays["fitted_MSE"], params=arrays.get("fitted_params"),
                      inverse_temperature=arrays.get("fitted_scale_factors"), labels=arrays.get("labels"),
                      path=str(path), model=recorded_model(content))


# ----------------------------------------------------------------------------- ablation results

#: Per-prompt ICL scores ([LI24] Fig 8): the authors' three keys, then our per-set scores.
ABLATION_SPECS = {
    "original_icl_score": ArraySpec(("n_prompts",), nan=False, meaning="ICL scores"),
    "ablated_icl_score": ArraySpec(("n_prompts",), nan=False, meaning="ICL scores"),
    "ablated_rand_icl_score": ArraySpec(("n_prompts",), nan=False, meaning="ICL scores"),
    "ablated_rand_icl_score_sets": ArraySpec(("n_sets", "n_prompts"), nan=False, meaning="ICL scores"),
}

#: Conditions every ``loss_by_position`` / ``_sem`` dict must have (those the figures draw).
LOSS_CONDITIONS = ("original", "ablated", "ablated_rand")

ABLATION_KIND = "an ablation result"

#: The ICL score's token indices in a result's ``metadata["parameters"]`` (marked in the loss figure).
_INDEX_PARAMETERS = ("early_index", "late_index")


def _loss_curves(result: dict, source: str, sizes: Dict[str, int]) -> Dict[str, Dict[str, np.ndarray]]:
    """``loss_by_position`` and ``loss_by_position_sem``: both or neither, dicts of condition -> [n_positions]."""
    present = [key for key in ("loss_by_position", "loss_by_position_sem") if key in result]
    if not present:
        return {}
    if len(present) == 1:
        other = "loss_by_position_sem" if present[0] == "loss_by_position" else "loss_by_position"
        raise FileContentError(source, f"has '{present[0]}' but no '{other}': expected both (mean and SEM of the "
                                       "loss by token position per condition) or neither")
    curves: Dict[str, Dict[str, np.ndarray]] = {}
    for key in present:
        value = result[key]
        if not isinstance(value, dict):
            raise FileContentError(source, f"'{key}' is a {type(value).__name__}, expected a dict of condition -> "
                                           f"loss by position ({', '.join(LOSS_CONDITIONS)})")
        missing = [name for name in LOSS_CONDITIONS if name not in value]
        if missing:
            raise FileContentError(source, f"'{key}' has no entry for {', '.join(repr(m) for m in missing)} "
                                           f"(found {', '.join(repr(str(k)) for k in value) or 'none'})")
        spec = ArraySpec(("n_positions",), low=0.0, meaning="losses (nats)" if key == "loss_by_position" else "SEMs")
        curves[key] = {name: check_array(value[name], source, f"{key}['{name}']", spec, sizes)
                       for name in value if isinstance(name, str)}
    return curves


def _marked_indices(result: dict, source: str, sizes: Dict[str, int]) -> list:
    """The early/late token indices recorded in the metadata, checked against the loss curves."""
    metadata = result.get("metadata")
    parameters = metadata.get("parameters") if isinstance(metadata, dict) else None
    if not isinstance(parameters, dict):
        return []
    indices = []
    for name in _INDEX_PARAMETERS:
        if name not in parameters:
            continue
        value = parameters[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise FileContentError(source, f"metadata parameter '{name}' is {value!r:.40}, expected a token index "
                                           "(a whole number)")
        if "n_positions" in sizes and not 0 <= value < sizes["n_positions"]:
            raise FileContentError(source, f"metadata parameter '{name}' is {value}, outside the "
                                           f"{sizes['n_positions']} loss positions")
        indices.append(int(value))
    return indices


def read_ablation_result(path: "str | Path") -> Dict[str, Any]:
    """Read an ablation result (ours or the authors' three-key file) and validate it.

    Returns
    -------
    dict
        The file's dict with its arrays converted and checked: the three ICL-score keys
        [n_prompts] (finite), ``ablated_rand_icl_score_sets`` [n_sets, n_prompts] when
        present, ``loss_by_position`` / ``loss_by_position_sem`` (dicts of condition ->
        [n_positions], both or neither), and ``marked_indices``: the ICL score's token
        indices from the metadata (empty for the authors' file). Other keys as stored.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    CorruptFileError, UnsafeFileError
        From :func:`icl_cmr.files.reading.load_pickle`.
    FileContentError
        Not an ablation result (the message says what it looks like instead), scores that are
        not finite numbers, lengths that disagree, a loss curve without its SEM, indices that
        are not whole numbers within the curves.
    """
    source = str(path)
    content = load_pickle(path)
    sizes: Dict[str, int] = {}
    arrays = check_arrays(content, source, ABLATION_KIND, ABLATION_SPECS,
                          ("original_icl_score", "ablated_icl_score", "ablated_rand_icl_score"), sizes)
    result = dict(content)
    result.update(arrays)
    result.update(_loss_curves(content, source, sizes))
    result["marked_indices"] = _marked_indices(content, source, sizes)
    return result


# ----------------------------------------------------------------------------- top-head selections

#: Keys of one selection record (``{"top20": record, ...}``). The authors' records have the first
#: four; ours add the per-head scores and the same over training checkpoints.
SELECTION_SPECS = {
    "MSE": ArraySpec(("n",), low=0.0, meaning="CMR distances"),
    "params": ArraySpec(("n", 3), low=0.0, high=1.0, meaning="(beta_enc, beta_rec, gamma_ft)"),
    "scale_factors": ArraySpec(("n",), low=0.0, meaning="inverse temperatures"),
    "labels": ArraySpec(("n",), strings=True, meaning="head labels"),
    "head_scores": ArraySpec(("n",), low=0.0, high=1.0, meaning="matching scores"),
    "copy_scores": ArraySpec(("n",), low=-1.0, high=1.0, meaning="copying scores"),
    "checkpoints": ArraySpec(("n_checkpoints",), nan=False, integer=True, meaning="checkpoint indices"),
    "MSE_over_training": ArraySpec(("n", "n_checkpoints"), low=0.0, meaning="CMR distances"),
    "params_over_training": ArraySpec(("n", "n_checkpoints", 3), low=0.0, high=1.0,
                                      meaning="(beta_enc, beta_rec, gamma_ft)"),
    "scale_factors_over_training": ArraySpec(("n", "n_checkpoints"), low=0.0, meaning="inverse temperatures"),
    "head_scores_over_training": ArraySpec(("n", "n_checkpoints"), low=0.0, high=1.0, meaning="matching scores"),
    "copy_scores_over_training": ArraySpec(("n", "n_checkpoints"), low=-1.0, high=1.0, meaning="copying scores"),
}

SELECTION_REQUIRED = ("MSE", "params", "scale_factors", "labels")

SELECTION_KIND = "a top-head selection"


def read_top_heads(path: "str | Path") -> Dict[str, Dict[str, Any]]:
    """Read a top-head selection file: ``{"top<N>": record}`` (plus ``metadata``, ignored).

    Returns
    -------
    dict of str -> dict
        Each ``top<N>`` record with its arrays checked and converted (:data:`SELECTION_SPECS`;
        ``MSE``, ``params``, ``scale_factors`` and ``labels`` required); other record keys
        (``selection``, ``selection_name``, ...) as stored. In file order.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    CorruptFileError, UnsafeFileError
        From :func:`icl_cmr.files.reading.load_pickle`.
    FileContentError
        No ``top<N>`` record (the message says what the file is instead, e.g. a head-score
        file), or a record with a key of the wrong kind or shape. Records of one file must
        share their checkpoints.
    """
    source = str(path)
    content = require_dict(load_pickle(path), source, SELECTION_KIND)
    names = [key for key, value in content.items() if isinstance(key, str) and key.startswith("top")
             and isinstance(value, dict)]
    if not names:
        actual = describe_content(content)
        found = ", ".join(repr(k) for k in sorted(map(str, content))[:12]) or "none"
        expected = f"records 'top<N>' with keys {', '.join(repr(k) for k in SELECTION_REQUIRED)}"
        if actual is not None:
            raise FileContentError(source, f"is {actual}, not {SELECTION_KIND} (expected {expected})")
        raise FileContentError(source, f"is not {SELECTION_KIND}: expected {expected} (keys found: {found})")
    records: Dict[str, Dict[str, Any]] = {}
    checkpoints: Dict[str, int] = {}
    for name in names:
        sizes = dict(checkpoints)
        arrays = check_arrays(content[name], f"{source} [{name}]", SELECTION_KIND + " record", SELECTION_SPECS,
                              SELECTION_REQUIRED, sizes)
        if "n_checkpoints" in sizes:
            checkpoints["n_checkpoints"] = sizes["n_checkpoints"]
        records[name] = {**content[name], **arrays}
    return records


# ----------------------------------------------------------------------------- pattern-task prompt files

#: ``format`` of ``pattern_icl.py``'s ``prompts.json`` (:func:`icl_cmr.interventions.pattern_tasks.prompts_to_json`).
PATTERN_PROMPTS_FORMAT = "icl_cmr.pattern_tasks/1"

_PROMPT_FIELDS = ("task", "item", "demo_seed", "query", "label_index", "labels", "text", "segments")
_SEGMENT_FIELDS = ("start", "end", "kind", "category")
_CONFIG_FIELDS = ("shots", "n_items", "demo_seeds", "seed")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str_list(value: Any, min_length: int = 1) -> bool:
    return isinstance(value, list) and len(value) >= min_length and all(isinstance(v, str) for v in value)


def _check_fields(entry: Any, fields: tuple, source: str, where: str) -> dict:
    if not isinstance(entry, dict):
        raise FileContentError(source, f"{where} is a {type(entry).__name__}, expected an object with "
                                       f"{', '.join(fields)}")
    missing = [name for name in fields if name not in entry]
    extra = [str(name) for name in entry if name not in fields]
    if missing or extra:
        raise FileContentError(source, f"{where} has {'no ' + ', '.join(missing) if missing else ''}"
                                       f"{'; ' if missing and extra else ''}"
                                       f"{'unknown ' + ', '.join(extra) if extra else ''}; expected {', '.join(fields)}")
    return entry


def _check_prompt(entry: Any, name: str, source: str, where: str) -> None:
    entry = _check_fields(entry, _PROMPT_FIELDS, source, where)
    problems = []
    if entry["task"] != name:
        problems.append(f"'task' is {entry['task']!r:.40}, expected {name!r}")
    for key in ("item", "demo_seed"):
        if not _is_int(entry[key]) or entry[key] < 0:
            problems.append(f"'{key}' is {entry[key]!r:.40}, expected a non-negative whole number")
    if not _is_str_list(entry["query"]):
        problems.append("'query' must be a non-empty list of strings")
    if not _is_str_list(entry["labels"], 2):
        problems.append("'labels' must be a list of at least 2 strings")
    elif not _is_int(entry["label_index"]) or not 0 <= entry["label_index"] < len(entry["labels"]):
        problems.append(f"'label_index' is {entry['label_index']!r:.40}, expected an index into its "
                        f"{len(entry['labels'])} labels")
    if not isinstance(entry["text"], str) or not entry["text"]:
        problems.append("'text' must be a non-empty string")
    if problems:
        raise FileContentError(source, f"{where}: {problems[0]}")
    if not isinstance(entry["segments"], list):
        raise FileContentError(source, f"{where}: 'segments' is a {type(entry['segments']).__name__}, expected a list")
    for k, segment in enumerate(entry["segments"]):
        at = f"{where}['segments'][{k}]"
        segment = _check_fields(segment, _SEGMENT_FIELDS, source, at)
        if not (_is_int(segment["start"]) and _is_int(segment["end"])
                and 0 <= segment["start"] <= segment["end"] <= len(entry["text"])):
            raise FileContentError(source, f"{at}: start {segment['start']!r:.20} and end {segment['end']!r:.20} "
                                           f"must be character offsets 0 <= start <= end <= {len(entry['text'])}")
        if any(segment[key] is not None and not isinstance(segment[key], str) for key in ("kind", "category")):
            raise FileContentError(source, f"{at}: 'kind' and 'category' must be strings or null")


def read_pattern_prompts(path: "str | Path"):
    """Read ``pattern_icl.py``'s saved ``prompts.json`` (to rerun exactly those prompts) and validate it.

    Returns
    -------
    prompts : dict of str -> list of icl_cmr.interventions.pattern_tasks.PatternPrompt
    config : icl_cmr.interventions.pattern_tasks.PatternTaskConfig

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    CorruptFileError
        Not UTF-8, or not valid JSON.
    FileContentError
        Not a prompt file (wrong ``format``), or a config, task or prompt entry of the wrong
        shape: the message gives its place, e.g. ``tasks['repetition'][3]: 'label_index' is 2,
        expected an index into its 2 labels``.
    """

    source = str(path)
    data = load_json(path)
    if not isinstance(data, dict) or data.get("format") != PATTERN_PROMPTS_FORMAT:
        actual = describe_content(data)
        raise FileContentError(source, f"{'is ' + actual + ', ' if actual else ''}not a pattern-task prompt file: "
                                       f"expected a JSON object with \"format\": \"{PATTERN_PROMPTS_FORMAT}\" "
                                       "(pattern_icl.py's prompts.json)")
    config = _check_fields(data.get("config"), _CONFIG_FIELDS, source, "'config'")
    for key in ("shots", "n_items"):
        if not _is_int(config[key]) or config[key] < 1:
            raise FileContentError(source, f"'config': '{key}' is {config[key]!r:.40}, expected a positive whole number")
    if not _is_int(config["seed"]) or config["seed"] < 0:
        raise FileContentError(source, f"'config': 'seed' is {config['seed']!r:.40}, expected a non-negative whole number")
    if not (isinstance(config["demo_seeds"], list) and config["demo_seeds"]
            and all(_is_int(s) and s >= 0 for s in config["demo_seeds"])):
        raise FileContentError(source, "'config': 'demo_seeds' must be a non-empty list of non-negative whole numbers")
    tasks = data.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise FileContentError(source, f"'tasks' is {'empty' if tasks == {} else 'a ' + type(tasks).__name__}, "
                                       "expected an object of task name -> list of prompts")
    for name, entries in tasks.items():
        if not isinstance(entries, list) or not entries:
            raise FileContentError(source, f"tasks[{name!r}] must be a non-empty list of prompts")
        for index, entry in enumerate(entries):
            _check_prompt(entry, name, source, f"tasks[{name!r}][{index}]")
    return prompts_from_json(data)
