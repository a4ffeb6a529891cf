"""[LI24] Fig 8 as one run: ablate the top CMR-like heads and compare in-context learning (DESIGN.md section 5).

For every evaluation prompt (C4 English validation documents of >= 512 tokens cut to 512, or
local text) the per-token loss is computed for the intact model, with the top ``fraction``
CMR-like heads ablated, and with ``n_random_sets`` seeded random sets of as many heads ablated.
ICL score = loss at ``late_index`` minus loss at ``early_index`` (500 and 50 in the paper).

* :class:`AblationSettings` holds everything ``ablation.py``'s flags set, with the same defaults.
* :func:`check_ablation` checks all that can be checked before the model loads (heads, fit file,
  data, the model's config, a saved unfinished run's settings) and returns an :class:`AblationPlan`.
* :func:`run_ablation` evaluates the prompts batch by batch, each batch saved in a resumable
  :class:`~icl_cmr.files.resume.RunFolder` (a killed run continues where it stopped and gives the same
  result), and returns an :class:`AblationRun`: the authors' result keys plus ours.
* :func:`ablation_outputs` queues the result file, the statistics table and the figures.

The per-batch science (conditions, evaluation, combination) is :mod:`icl_cmr.interventions.icl_ablation`.

Examples
--------
>>> settings = AblationSettings(model="saved_models/toy_lm", heads="L1H0,L1H3", data=Path("texts.jsonl"),
...                             seq_len=256, late_index=246, n_eval=100)        # doctest: +SKIP
>>> run = run_ablation(check_ablation(settings))                                 # doctest: +SKIP
>>> table, text = ablation_statistics(run.result, settings.n_bootstrap, settings.seed)  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from icl_cmr.config import MIN_PAIRS
from icl_cmr.errors import BadFileError, FileContentError, InputError
from icl_cmr.files.memory import check_dataclass_memory, check_memory
from icl_cmr.figures.ablation import plot_icl_score_bars, plot_loss_by_position
from icl_cmr.files.checks import ArraySpec, check_array
from icl_cmr.files.outputs import PendingWrites, portable_path
from icl_cmr.files.reading import load_npz, read_text, to_numpy
from icl_cmr.files.results import read_ablation_result, read_cmr_fit
from icl_cmr.files.resume import RunFolder
from icl_cmr.files.scores import fit_result_paths, other_model_warning
from icl_cmr.files.texts import iter_local_texts
from icl_cmr.files.writing import atomic_write, make_metadata
from icl_cmr.devices import pin_cpu_kernels, resolve_device
from icl_cmr.heads.models import choose_bos, load_model
from icl_cmr.heads.registry import ModelShape, ModelSpec, read_model_shape, resolve_model
from icl_cmr.interventions.head_ablation import Head, format_heads, mean_head_activations, parse_heads, validate_heads
from icl_cmr.interventions.icl_ablation import (ABLATED, ABLATED_RAND, ORIGINAL, AblationConfig, BatchSummary,
                                                combine_batches, conditions, control_head_sets, evaluate_batch,
                                                top_fraction_heads)
from icl_cmr.interventions.icl_score import ABLATION_MEMORY_SETTINGS, ICLScoreConfig, ablation_memory_bytes
from icl_cmr.interventions.texts import TextDataConfig, check_c4_reachable, iter_c4_texts, iter_prompts
from icl_cmr.stats import PairedStatsConfig, bootstrap_memory_bytes, comparison_table, format_table

logger = logging.getLogger(__name__)

#: The producer recorded in the metadata (the script users run).
PRODUCER = "ablation.py"
#: The authors' result keys, in their order.
AUTHORS_KEYS = ("original_icl_score", "ablated_icl_score", "ablated_rand_icl_score")
#: Comparisons of [LI24] ablation.py, in their order.
PAIRS = ((ORIGINAL, ABLATED), (ORIGINAL, ABLATED_RAND), (ABLATED, ABLATED_RAND))
#: What the data are when none are given: the paper's.
C4_DESCRIPTION = "allenai/c4 en validation"

_ABLATION, _ICL, _TEXT = AblationConfig(), ICLScoreConfig(), TextDataConfig()


@dataclass(frozen=True)
class AblationSettings:
    """An ablation run, as ``ablation.py``'s flags set it (same names, same defaults).

    Attributes
    ----------
    model : str
        Registry name, Hugging Face id or local folder.
    heads : str, optional
        Explicit head labels, e.g. ``"L5H1,L6H9"``.
    heads_file : Path, optional
        A text file of head labels (``#`` starts a comment).
    fit_file : Path, optional
        A CMR fit file (``fit_attn_score.py``'s ``cmr_fit_<model>.pkl``): its top ``fraction`` heads by lowest
        CMR distance are ablated. With none of ``heads``, ``heads_file``, ``fit_file``: the fit file of this
        model in ``fits_dir``.
    fits_dir : Path
        Where the default fit file is looked for (``<fits_dir>/<model>/cmr_fit_<model>.pkl``).
    fraction, method, n_random_sets, allow_overlap, seed, n_eval, batch_size
        As :class:`icl_cmr.interventions.icl_ablation.AblationConfig` ([LI24]: top 10%, zero value vectors,
        one random set).
    data : Path, optional
        Local ``.txt``/``.jsonl`` file or folder; None streams C4 English validation ([LI24]).
    data_description : str, optional
        What the data are, for the metadata, when ``data`` is a temporary file.
    seq_len, min_tokens
        Tokens per prompt (BOS included; [LI24]: 512) and the documents kept (default ``seq_len``).
    late_index, early_index : int
        Loss indices of the ICL score ([LI24]: 500 and 50).
    bos : bool, optional
        Start every prompt with a BOS token (True) or not (False); None: the tokenizer's own when it has one.
    device : str, optional
    dtype : str
    n_bootstrap : int
        Bootstrap resamples for the confidence intervals of the statistics.
    """

    model: str = "gpt2-small"
    heads: Optional[str] = None
    heads_file: Optional[Path] = None
    fit_file: Optional[Path] = None
    fits_dir: Path = Path("saved_scores")
    fraction: float = _ABLATION.fraction
    method: str = _ABLATION.method
    n_random_sets: int = _ABLATION.n_random_sets
    allow_overlap: bool = _ABLATION.allow_overlap
    seed: int = _ABLATION.seed
    data: Optional[Path] = None
    data_description: Optional[str] = None
    n_eval: int = _ABLATION.n_eval
    batch_size: int = _ABLATION.batch_size
    seq_len: int = _TEXT.seq_len
    min_tokens: Optional[int] = None
    late_index: int = _ICL.late_index
    early_index: int = _ICL.early_index
    bos: Optional[bool] = None
    device: Optional[str] = None
    dtype: str = "float32"
    n_bootstrap: int = PairedStatsConfig().n_bootstrap

    def ablation_config(self) -> AblationConfig:
        return AblationConfig(fraction=self.fraction, method=self.method, n_random_sets=self.n_random_sets,
                              allow_overlap=self.allow_overlap, seed=self.seed, n_eval=self.n_eval,
                              batch_size=self.batch_size)

    def text_config(self) -> TextDataConfig:
        return TextDataConfig(min_tokens=self.min_tokens or self.seq_len, seq_len=self.seq_len)

    def icl_config(self) -> ICLScoreConfig:
        return ICLScoreConfig(late_index=self.late_index, early_index=self.early_index)


# ----------------------------------------------------------------------------- heads

@dataclass
class HeadChoice:
    """The heads to ablate, known before the model loads (their existence is checked after).

    Attributes
    ----------
    heads : list of (layer, head)
    source : str
        ``"heads"``, the heads file or the fit file.
    distances : list of float or None
        CMR distance of each head when chosen from a fit file.
    fit_shape : tuple or None
        [n_layers, n_heads] of the fit file, which must match the model.
    fit_model : str or None
        The model the fit file says it was made for (None: not a fit file, or the file does not say).
    """

    heads: List[Head]
    source: str
    distances: Optional[List[float]] = None
    fit_shape: Optional[tuple] = None
    fit_model: Optional[str] = None

    @property
    def from_fit_file(self) -> bool:
        """Whether the heads are the top ``fraction`` of a fit file (then ``fraction`` was used)."""
        return self.fit_shape is not None

    def check_model(self, n_layers: int, n_heads: int, model_name: Optional[str] = None) -> None:
        """The heads (or the fit file's shape) against the model; warn when the fit file names another model."""
        if self.fit_shape is not None and self.fit_shape != (n_layers, n_heads):
            raise InputError(f"`fit_file` {self.source} is for a [{self.fit_shape[0]}, {self.fit_shape[1]}] model, "
                             f"but the model has {n_layers} layers x {n_heads} heads", parameters=("fit_file",))
        validate_heads(self.heads, n_layers, n_heads)
        warning = other_model_warning(self.fit_model, model_name, f"the fit file {self.source}") if model_name else None
        if warning:
            logger.warning(warning)


def default_fit_file(settings: AblationSettings, model_name: str) -> Path:
    """The fit file used when no heads are given: ``fit_attn_score.py``'s output for this model."""
    return settings.fit_file if settings.fit_file is not None else fit_result_paths(settings.fits_dir, model_name)[0]


def choose_heads(settings: AblationSettings, model_name: str, fit_file_pending: bool = False) -> Optional[HeadChoice]:
    """At most one of ``heads``, ``heads_file``, ``fit_file``; read and parse it (before the model loads).

    With none, the fit file is :func:`default_fit_file`, which must exist.

    Parameters
    ----------
    settings : AblationSettings
    model_name : str
    fit_file_pending : bool
        The fit file will be written by an earlier step (the pipeline): do not read it yet.

    Returns
    -------
    HeadChoice or None
        None only when the fit file is pending.
    """
    given = [name for name in ("heads", "heads_file", "fit_file") if getattr(settings, name) is not None]
    if len(given) > 1:
        raise InputError(f"give at most one of `heads`, `heads_file` or `fit_file` (got "
                         f"{', '.join(f'`{name}`' for name in given)})",
                         parameters=("heads", "heads_file", "fit_file"))
    fit_file = default_fit_file(settings, model_name)
    if not given and not fit_file.is_file() and not fit_file_pending:
        raise InputError(f"no heads given and no CMR fit at {fit_file}; run fit_attn_score.py for "
                         "this model first, or give `heads`, `heads_file` or `fit_file`",
                         parameters=("heads", "heads_file", "fit_file"))
    if settings.heads is not None:
        return HeadChoice(parse_heads(settings.heads), "--heads")
    if settings.heads_file is not None:
        path = Path(settings.heads_file)
        if not path.is_file():
            raise InputError(f"`heads_file` {path} does not exist", parameters=("heads_file",))
        text = "\n".join(line.split("#", 1)[0] for line in read_text(path).splitlines())
        return HeadChoice(parse_heads(text), str(path))
    if fit_file_pending:
        return None
    if not fit_file.is_file():
        raise InputError(f"`fit_file` {fit_file} does not exist", parameters=("fit_file",))
    fit = read_cmr_fit(fit_file)
    heads = top_fraction_heads(fit.distance, settings.fraction)
    return HeadChoice(heads, str(fit_file), [float(fit.distance[layer, head]) for layer, head in heads],
                      tuple(fit.distance.shape), fit.model)


# ----------------------------------------------------------------------------- checks before the model loads

@dataclass
class AblationPlan:
    """Everything :func:`check_ablation` validated, for :func:`run_ablation`.

    Attributes
    ----------
    settings : AblationSettings
    config : AblationConfig
    data_config : TextDataConfig
    icl_config : ICLScoreConfig
    spec : ModelSpec
    heads : HeadChoice or None
        None while the fit file is still to be written (the pipeline).
    shape : ModelShape
        Read from the model's config, without its weights.
    """

    settings: AblationSettings
    config: AblationConfig
    data_config: TextDataConfig
    icl_config: ICLScoreConfig
    spec: ModelSpec
    heads: Optional[HeadChoice]
    shape: ModelShape


def partial_folder(out_dir: "str | Path", model_name: str) -> Path:
    """The hidden folder of an unfinished run's per-batch results."""
    return Path(out_dir) / f".ablation_experiment_{model_name}.partial"


def argument_settings(plan: AblationPlan, choice: Optional[HeadChoice]) -> Dict[str, Any]:
    """The run parameters the settings alone decide (stored in the metadata and in the partial results'
    fingerprint; :func:`check_ablation` compares them with a saved run before any work).

    ``choice`` is None while the fit file is still to be written: the heads are then unknown, and
    ``fraction`` will be used.
    """
    config, data_config, icl_config = plan.config, plan.data_config, plan.icl_config
    from_fit_file = choice is None or choice.from_fit_file
    settings = {
        "model_name": plan.spec.name, "dtype": plan.settings.dtype, "method": config.method,
        "fraction": config.fraction if from_fit_file else None,  # None: not used
        "n_random_sets_requested": config.n_random_sets,  # more than len(random_heads) when fewer distinct sets exist
        "allow_overlap": config.allow_overlap, "seq_len": data_config.seq_len, "min_tokens": data_config.min_tokens,
        "late_index": icl_config.late_index, "early_index": icl_config.early_index, "batch_size": config.batch_size,
    }
    if choice is not None:
        settings["ablated_heads"] = format_heads(choice.heads)
    return settings


def _check_partial_settings(plan: AblationPlan, folder: Path) -> None:
    """Refuse, before any work, to continue a saved partial run whose settings contradict these.

    Only the settings known before the model loads are compared (the prompts' token hash, BOS and the
    random heads are compared when the run opens its partial results). Fewer prompts than asked are saved
    when the data ran out; more than asked is another run.
    """
    batches = BatchFolder(folder, {})
    try:
        saved = batches.run.saved_settings()
    except BadFileError:
        return  # left to RunFolder.open, which discards it with a warning
    if saved is None:
        return
    requested = argument_settings(plan, plan.heads)
    if isinstance(saved.get("n_eval"), int) and saved["n_eval"] > plan.config.n_eval:
        requested["n_eval"] = plan.config.n_eval
    batches.run.check_settings(requested)


#: At least this many prompts: the statistics compare the conditions over prompts, in pairs.
MIN_PROMPTS = MIN_PAIRS


def check_ablation_memory(settings: AblationSettings, shape: ModelShape) -> None:
    """Refuse an ablation that cannot fit in memory (:func:`~icl_cmr.interventions.icl_ablation.ablation_memory_bytes`
    with the model's heads and vocabulary), naming the settings that drive the estimate."""
    def estimate(changed: AblationSettings) -> int:
        return (ablation_memory_bytes(vars(changed), shape.n_heads, shape.vocab_size)
                + bootstrap_memory_bytes(changed.n_bootstrap, changed.n_eval))

    check_dataclass_memory(estimate, settings, (*ABLATION_MEMORY_SETTINGS, "n_bootstrap"), AblationSettings(), "cpu",
                           "holding the prompts, every condition's results and a batch's logits ({values})")


def check_prompt_count(n_prompts: int, what: str) -> None:
    """Refuse fewer than :data:`MIN_PROMPTS` prompts (``what``: where they come from), before any evaluation."""
    if n_prompts < MIN_PROMPTS:
        raise InputError(f"{what}: the paired statistics compare the conditions over at least {MIN_PROMPTS} prompts",
                         parameters=("n_eval", "data", "seq_len", "min_tokens"))


def check_ablation(settings: AblationSettings, out_dir: Optional["str | Path"] = None, restart: bool = False,
                   fit_file_pending: bool = False) -> AblationPlan:
    """Validate every setting and input that can be checked without the model's weights.

    Parameters
    ----------
    settings : AblationSettings
    out_dir : path-like, optional
        Where the run keeps its partial results (:func:`partial_folder`); a saved run there with other
        settings is refused unless ``restart``.
    restart : bool
    fit_file_pending : bool
        The fit file will be written by an earlier step: do not read it yet.

    Returns
    -------
    AblationPlan

    Raises
    ------
    InputError
        On the first problem found, before anything is loaded or written.
    """
    config, data_config, icl_config = settings.ablation_config(), settings.text_config(), settings.icl_config()
    icl_config.validate(data_config.seq_len)
    check_prompt_count(settings.n_eval, f"`n_eval` is {settings.n_eval}")
    spec = resolve_model(settings.model)
    heads = choose_heads(settings, spec.name, fit_file_pending)
    if settings.data is not None:
        n_documents = sum(1 for _ in islice(iter_local_texts(settings.data), MIN_PROMPTS))
        if n_documents == 0:
            raise InputError(f"`data` {settings.data} holds no document", parameters=("data",))
        if n_documents < MIN_PROMPTS:
            raise InputError(f"`data` {settings.data} holds {n_documents} document: the paired statistics compare the "
                             f"conditions over at least {MIN_PROMPTS} prompts, one per document", parameters=("data",))
    else:
        check_c4_reachable()  # offline: say so now, not after the model has loaded
    # The model's shape from its config (no weights): context, heads, fit file and memory checked before it loads.
    shape = read_model_shape(spec)
    icl_config.validate(data_config.seq_len, shape.n_ctx)
    check_ablation_memory(settings, shape)
    if heads is not None:
        heads.check_model(shape.n_layers, shape.n_heads, spec.name)
    plan = AblationPlan(settings, config, data_config, icl_config, spec, heads, shape)
    if out_dir is not None and not restart:
        _check_partial_settings(plan, partial_folder(out_dir, spec.name))
    return plan


# ----------------------------------------------------------------------------- the partial results

def batch_arrays(summary: BatchSummary) -> Dict[str, np.ndarray]:
    """Flat ``{kind/condition: array}`` of one batch, as its partial-result file holds it."""
    out = {"n_prompts": np.asarray(summary.n_prompts)}
    for kind in ("icl", "loss_sum", "loss_sq_sum"):
        for name, value in getattr(summary, kind).items():
            out[f"{kind}/{name}"] = value
    return out


def batch_from_arrays(arrays: Mapping[str, np.ndarray], source: str = "batch arrays") -> BatchSummary:
    """Inverse of :func:`batch_arrays`, checking that the arrays fit together.

    Raises
    ------
    FileContentError
        ``n_prompts`` missing or not a positive whole number, an unknown key, per-prompt
        scores that are not [n_prompts], loss sums of differing lengths, conditions that
        differ between the three kinds, or values that are not finite numbers.
    """
    if "n_prompts" not in arrays:
        raise FileContentError(source, "missing 'n_prompts': expected a batch summary with keys 'n_prompts', "
                                       "'icl/<condition>', 'loss_sum/<condition>', 'loss_sq_sum/<condition>'")
    count = np.asarray(arrays["n_prompts"])
    if count.shape != () or count.dtype.kind not in "iu" or int(count) < 1:
        raise FileContentError(source, f"'n_prompts' is {count.tolist()!r:.40}, expected a positive whole number")
    sizes = {"n_prompts": int(count)}
    parts: Dict[str, Dict[str, np.ndarray]] = {"icl": {}, "loss_sum": {}, "loss_sq_sum": {}}
    specs = {"icl": ArraySpec(("n_prompts",), nan=False, meaning="ICL scores"),
             "loss_sum": ArraySpec(("n_positions",), low=0.0, nan=False, meaning="loss sums"),
             "loss_sq_sum": ArraySpec(("n_positions",), low=0.0, nan=False, meaning="squared-loss sums")}
    for key, value in arrays.items():
        if key == "n_prompts":
            continue
        kind, _, name = key.partition("/")
        if kind not in parts or not name:
            raise FileContentError(source, f"unexpected key {key!r} in a batch summary")
        parts[kind][name] = check_array(value, source, key, specs[kind], sizes)
    names = {kind: sorted(values) for kind, values in parts.items()}
    if not names["icl"] or len({tuple(v) for v in names.values()}) > 1:
        raise FileContentError(source, f"conditions differ between ICL scores and loss sums: {names}")
    return BatchSummary(n_prompts=sizes["n_prompts"], **parts)


def _save_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


class BatchFolder:
    """An ablation's per-batch results in a :class:`RunFolder`, verified against this run when it resumes.

    Parameters
    ----------
    folder : Path
    fingerprint : dict
        Every parameter that decides the numbers (JSON types).
    n_prompts, batch_size : int
        Batch ``i`` holds ``min(batch_size, n_prompts - i batch_size)`` prompts.
    condition_names : sequence of str
        Conditions every batch must hold (``original``, ``ablated``, ``ablated_rand_<k>``, ``ablated_rand``).
    n_positions : int
        Loss positions per prompt (``seq_len - 1``).
    """

    STATE = "state.json"
    MEANS = "means.npz"

    def __init__(self, folder: Path, fingerprint: dict, n_prompts: int = 0, batch_size: int = 1,
                 condition_names: Sequence[str] = (), n_positions: int = 0):
        self.run = RunFolder(folder, fingerprint, ["batch_*.npz", self.MEANS], settings_file=self.STATE,
                             what="partial results", piece="partial result")
        self.n_prompts, self.batch_size = int(n_prompts), int(batch_size)
        self.condition_names = tuple(condition_names)
        self.n_positions = int(n_positions)

    @property
    def folder(self) -> Path:
        return self.run.folder

    @property
    def n_batches(self) -> int:
        """Batches of the whole run."""
        return -(-self.n_prompts // self.batch_size)

    @staticmethod
    def _batch_name(index: int) -> str:
        return f"batch_{index:06d}.npz"

    @staticmethod
    def _index(path: Path) -> Optional[int]:
        try:
            return int(path.stem.split("_", 1)[1])
        except ValueError:
            return None

    def _batch_problem(self, index: int, summary: BatchSummary) -> Optional[str]:
        """Why a loaded batch cannot be this run's, or None."""
        expected = min(self.batch_size, self.n_prompts - index * self.batch_size)
        if sorted(summary.icl) != sorted(self.condition_names):
            return "its conditions differ from this run's"
        if summary.n_prompts != expected:
            return f"it holds {summary.n_prompts} prompts, expected {expected}"
        lengths = {value.shape for values in (summary.loss_sum, summary.loss_sq_sum) for value in values.values()}
        if lengths != {(self.n_positions,)}:
            return f"its loss curves have shapes {sorted(lengths)}, expected ({self.n_positions},)"
        return None

    def open(self, restart: bool) -> Dict[int, BatchSummary]:
        """Prepare the folder; return the batches already done and verified, by index."""
        self.run.open(restart)
        return self.run.verified_pieces("batch_*.npz", self._index, self.n_batches,
                                        load=lambda path: batch_from_arrays(load_npz(path), source=str(path)),
                                        problem=self._batch_problem)

    def save_batch(self, index: int, summary: BatchSummary) -> None:
        _save_npz(self.run.path(self._batch_name(index)), batch_arrays(summary))

    def load_batches(self) -> List[BatchSummary]:
        """Every batch, in order (all must have been saved)."""
        paths = [self.run.path(self._batch_name(i)) for i in range(self.n_batches)]
        return [batch_from_arrays(load_npz(path), source=str(path)) for path in paths]

    def save_means(self, means: Mapping[int, torch.Tensor]) -> None:
        _save_npz(self.run.path(self.MEANS), {str(layer): to_numpy(value.float()) for layer, value in means.items()})

    def load_means(self, layers: Sequence[int]) -> Optional[Dict[int, np.ndarray]]:
        """Saved per-layer mean activations, or None (absent, or damaged: then removed with a warning)."""
        found = self.run.verified_pieces(
            self.MEANS, lambda path: 0, 1, load=load_npz,
            problem=lambda _, arrays: None if set(arrays) == {str(layer) for layer in layers} else
            "its layers differ from this run's")
        if not found:
            return None
        return {int(layer): value for layer, value in found[0].items()}


# ----------------------------------------------------------------------------- the run

@dataclass
class AblationRun:
    """A finished ablation run.

    Attributes
    ----------
    result : dict
        The authors' keys (``original_icl_score``, ``ablated_icl_score``, ``ablated_rand_icl_score``: [n_eval])
        plus ``ablated_rand_icl_score_sets`` [n_sets, n_eval], ``loss_by_position`` / ``_sem`` (per condition,
        [seq_len - 1]), the head lists, distances and seeds.
    parameters : dict
        Everything that made the numbers (the metadata's ``parameters``).
    model_name : str
    n_prompts : int
    compute_seconds : float
        Seconds spent evaluating batches and mean activations, over every session (loading excluded).
    session_seconds : float
        This session, loading included.
    resumed_batches : int
    seed : int
        Of the random control sets and the statistics' bootstrap.
    device : str
        Where the model ran.
    """

    result: Dict[str, Any]
    parameters: Dict[str, Any]
    model_name: str
    n_prompts: int
    compute_seconds: float
    session_seconds: float
    resumed_batches: int
    seed: int
    device: str

    @property
    def marked_indices(self) -> Tuple[int, int]:
        """The ICL score's two loss indices (early, late)."""
        return self.parameters["early_index"], self.parameters["late_index"]

    def metadata(self) -> Dict[str, Any]:
        """The result file's metadata (plain JSON types)."""
        # Two different clocks, named as such: the evaluation time summed over every session of this run (model
        # loading and data preparation excluded), and this session's time from start to finish (included).
        metadata = make_metadata(PRODUCER, self.parameters, seed=self.seed, device=self.device,
                                 compute_time_all_sessions_s=round(self.compute_seconds, 3),
                                 resumed=bool(self.resumed_batches), resumed_batches=self.resumed_batches,
                                 wall_time_this_session_s=round(self.session_seconds, 3))
        # plain JSON types only: torch.__version__ is a TorchVersion object, which load_pickle rightly refuses
        return json.loads(json.dumps(metadata, default=str))


def _token_hash(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype=np.int64).tobytes()).hexdigest()


def load_prompts(settings: AblationSettings, tokenizer, bos: Optional[int], data_config: TextDataConfig) -> np.ndarray:
    """The first ``n_eval`` prompts, [n, seq_len] int64."""
    texts = iter_local_texts(settings.data) if settings.data is not None else iter_c4_texts()
    prompts = list(islice(iter_prompts(texts, tokenizer, bos, data_config), settings.n_eval))
    if not prompts:
        raise InputError(f"no document of the data reaches {data_config.min_tokens} tokens")
    # before the partial results' folder is made and before any forward pass: a refusal leaves nothing behind
    check_prompt_count(len(prompts), f"only {len(prompts)} document of the data reaches {data_config.min_tokens} "
                                     "tokens")
    if len(prompts) < settings.n_eval:
        logger.warning("only %d documents reach %d tokens; evaluating %d prompts instead of n_eval %d",
                       len(prompts), data_config.min_tokens, len(prompts), settings.n_eval)
    return np.stack(prompts)


def run_ablation(plan: AblationPlan, out_dir: Optional["str | Path"] = None, restart: bool = False,
                 stop_after: Optional[int] = None, progress: bool = True) -> Optional[AblationRun]:
    """Load the model, evaluate every prompt in every condition, and combine the batches.

    Parameters
    ----------
    plan : AblationPlan
        :func:`check_ablation`'s result.
    out_dir : path-like, optional
        Where the per-batch results are kept until the run is whole (:func:`partial_folder`), so a stopped
        run resumes; None: a temporary folder, removed at the end (no resuming).
    restart : bool
        Discard saved partial results instead of resuming them.
    stop_after : int, optional
        Evaluate at most this many new prompts (whole batches), then stop and return None.
    progress : bool
        Show a progress bar.

    Returns
    -------
    AblationRun or None
        None when stopped by ``stop_after`` before the last batch. The partial results are removed by
        :meth:`discard_partial` once the caller has written its outputs.
    """
    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix="icl_cmr_ablation_") as scratch:
            return run_ablation(plan, scratch, restart=True, stop_after=stop_after, progress=progress)
    settings, config, data_config, icl_config, spec = (plan.settings, plan.config, plan.data_config,
                                                       plan.icl_config, plan.spec)
    pin_cpu_kernels()
    device = resolve_device(settings.device)
    session_started = time.monotonic()
    model = load_model(spec, device=device, dtype=settings.dtype, require_hooks=("pattern", "v", "z"))
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    icl_config.validate(data_config.seq_len, int(model.cfg.n_ctx))
    choice = plan.heads or choose_heads(settings, spec.name)
    choice.check_model(n_layers, n_heads, None if plan.heads else spec.name)  # warned in check_ablation
    ablated, head_source, distances = choice.heads, choice.source, choice.distances
    random_sets, seeds = control_head_sets(n_layers, n_heads, ablated, config)
    head_sets = conditions(ablated, random_sets)
    logger.info("ablating %d heads (%s): %s", len(ablated), head_source, format_heads(ablated))
    for seed, heads in zip(seeds, random_sets):
        logger.info("random control (seed %d): %s", seed, format_heads(heads))

    bos = choose_bos(model, settings.bos, spec.trust_remote_code)
    tokens = load_prompts(settings, model.tokenizer, bos.token_id, data_config)
    n_prompts = tokens.shape[0]
    data = settings.data_description or (portable_path(settings.data) if settings.data else C4_DESCRIPTION)
    parameters = {
        "model": portable_path(spec.source) if spec.is_local else spec.source,
        **argument_settings(plan, choice),
        "head_source": portable_path(head_source) if head_source != "--heads" else head_source,
        "fit_file": portable_path(head_source) if choice.from_fit_file else None,
        "random_heads": [format_heads(h) for h in random_sets], "random_seeds": seeds, "data": data,
        "n_eval": int(n_prompts), "tokens_sha256": _token_hash(tokens), "bos": bos.describe(),
    }
    # the model path, data path and head source are descriptive: the token hash and head lists decide
    # whether a run matches
    fingerprint = {key: value for key, value in parameters.items()
                   if key not in ("model", "data", "head_source", "fit_file")}
    names = list(head_sets) + ([ABLATED_RAND] if random_sets else [])
    batches = BatchFolder(partial_folder(out_dir, spec.name), fingerprint, n_prompts, config.batch_size, names,
                          data_config.seq_len - 1)
    try:
        done = batches.open(restart)
        n_batches = batches.n_batches
        if done:
            logger.info("resuming: %d of %d batches already done in %s", len(done), n_batches, batches.folder)
        compute_seconds = batches.run.recorded_seconds()

        means = None
        if config.method == "mean":
            layers = sorted({layer for heads in head_sets.values() for layer, _ in heads})
            saved_means = batches.load_means(layers)
            if saved_means is None:
                started = time.monotonic()
                logger.info("mean hook_z over the %d evaluation prompts (layers %s)", n_prompts, layers)
                stream = (torch.as_tensor(tokens[i:i + config.batch_size]).to(device)
                          for i in range(0, n_prompts, config.batch_size))
                means = mean_head_activations(model, stream, layers=layers)
                batches.save_means(means)
                compute_seconds += time.monotonic() - started
                batches.run.record_seconds(compute_seconds)
            else:
                means = saved_means
            means = {layer: torch.as_tensor(value) for layer, value in means.items()}

        evaluated, n_new_batches = 0, 0
        with tqdm(total=n_batches, initial=len(done), desc=f"ablation {spec.name}", unit="batch",
                  disable=not progress) as bar:
            for index in (i for i in range(n_batches) if i not in done):
                if stop_after is not None and evaluated >= stop_after:
                    logger.info("stopped after %d new prompts (stop_after); %d of %d batches done in %s; rerun the "
                                "same command to continue", evaluated, len(done) + n_new_batches, n_batches,
                                batches.folder)
                    return None
                started = time.monotonic()
                batch = tokens[index * config.batch_size:(index + 1) * config.batch_size]
                summary = evaluate_batch(model, batch, head_sets, config.method, icl_config, config.batch_size, means)
                batches.save_batch(index, summary)
                compute_seconds += time.monotonic() - started
                batches.run.record_seconds(compute_seconds)
                evaluated += batch.shape[0]
                n_new_batches += 1
                bar.update(1)
    except BaseException:
        batches.run.discard_if_empty()  # failed before the first batch (a full disk): nothing to resume, no folder
        raise

    combined = combine_batches(batches.load_batches())
    result = {
        "original_icl_score": combined.icl[ORIGINAL],
        "ablated_icl_score": combined.icl[ABLATED],
        "ablated_rand_icl_score": combined.icl[ABLATED_RAND],
        "ablated_rand_icl_score_sets": np.stack([combined.icl[f"{ABLATED_RAND}_{k}"] for k in range(len(random_sets))]),
        "loss_by_position": combined.loss_mean,
        "loss_by_position_sem": combined.loss_sem,
        "ablated_heads": [f"L{l}H{h}" for l, h in ablated],
        "ablated_heads_cmr_distance": distances,
        "random_heads": [[f"L{l}H{h}" for l, h in heads] for heads in random_sets],
        "random_seeds": seeds,
    }
    return AblationRun(result, parameters, spec.name, int(n_prompts), compute_seconds,
                       time.monotonic() - session_started, len(done), config.seed, device)


def discard_partial(out_dir: "str | Path", model_name: str) -> None:
    """Remove a finished run's partial results (after its outputs are written)."""
    BatchFolder(partial_folder(out_dir, model_name), {}).run.discard()


# ----------------------------------------------------------------------------- statistics and outputs

def condition_samples(result: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """``{original, ablated, ablated_rand}`` per-prompt ICL scores from a result dict (ours or the authors')."""
    missing = [key for key in AUTHORS_KEYS if key not in result]
    if missing:
        raise InputError(f"result file lacks {', '.join(missing)}")
    return {ORIGINAL: to_numpy(result["original_icl_score"]).astype(np.float64),
            ABLATED: to_numpy(result["ablated_icl_score"]).astype(np.float64),
            ABLATED_RAND: to_numpy(result["ablated_rand_icl_score"]).astype(np.float64)}


def loss_curves(result: Mapping[str, Any], names: Sequence[str]) -> Optional[tuple]:
    """``(curves, bands)`` by condition from ``loss_by_position(_sem)``, or None when the result has none."""
    if "loss_by_position" not in result:
        return None
    for key in ("loss_by_position", "loss_by_position_sem"):
        table = result.get(key)
        if not isinstance(table, dict) or any(name not in table for name in names):
            raise InputError(f"result file has 'loss_by_position' but its {key!r} lacks a curve for each of "
                             f"{', '.join(names)}")
    curves = {name: np.asarray(result["loss_by_position"][name], dtype=np.float64) for name in names}
    bands = {name: np.asarray(result["loss_by_position_sem"][name], dtype=np.float64) for name in names}
    if any(curves[name].shape != bands[name].shape or curves[name].ndim != 1 for name in names):
        raise InputError("result file's loss_by_position and loss_by_position_sem must be 1-d curves of equal length")
    return curves, bands


def ablation_statistics(result: Mapping[str, Any], n_bootstrap: int, seed: int) -> Tuple[pd.DataFrame, str]:
    """The paired comparisons of [LI24] ablation.py (:data:`PAIRS`): the table and its printed form."""
    table = comparison_table(condition_samples(result), PAIRS, PairedStatsConfig(n_bootstrap=n_bootstrap, seed=seed))
    return table, format_table(table)


def ablation_outputs(result: Mapping[str, Any], stem: str, out_dir: "str | Path", figs_dir: "str | Path",
                     title: str, n_bootstrap: int, seed: int, pending: PendingWrites,
                     marked_indices: Sequence[int] = ()) -> Tuple[pd.DataFrame, str]:
    """Queue the statistics table (CSV and text) and the figures of one result dict in ``pending``.

    Parameters
    ----------
    result : mapping
        A result dict (ours or the authors').
    stem : str
        ``ablation_experiment_<model>``: the outputs are ``<out_dir>/<stem>_stats.{csv,txt}`` and
        ``<figs_dir>/ablation/<stem>_icl_bars.pdf`` / ``_loss_by_position.pdf``.
    title : str
    n_bootstrap, seed : int
        Of the statistics' bootstrap.
    pending : PendingWrites
        Nothing is written here.
    marked_indices : sequence of int
        Loss indices marked on the loss curves.

    Returns
    -------
    table : pandas.DataFrame
    text : str
        The table as printed.
    """
    samples = condition_samples(result)
    curves = loss_curves(result, list(samples))
    table, text = ablation_statistics(result, n_bootstrap, seed)
    out_dir, figs_dir = Path(out_dir), Path(figs_dir) / "ablation"
    pending.text(out_dir / f"{stem}_stats.csv", table.to_csv(index=False))
    pending.text(out_dir / f"{stem}_stats.txt", text + "\n")
    means = {name: float(np.nanmean(values)) for name, values in samples.items()}
    sems = {name: float(np.nanstd(values, ddof=1) / np.sqrt(np.isfinite(values).sum()))
            for name, values in samples.items()}
    brackets = [(row.a, row.b, row.stars) for row in table.itertuples()]
    pending.figure(figs_dir / f"{stem}_icl_bars.pdf", plot_icl_score_bars(means, sems, brackets, title=title))
    if curves is not None:
        pending.figure(figs_dir / f"{stem}_loss_by_position.pdf",
                       plot_loss_by_position(*curves, marked_indices, title=title))
    return table, text


def run_outputs(run: AblationRun, out_dir: "str | Path", figs_dir: "str | Path", n_bootstrap: int,
                pending: PendingWrites) -> str:
    """Queue every output of a finished run: the result pickle (with the statistics and metadata), the
    statistics table and the figures. Returns the statistics table as printed."""
    stem = f"ablation_experiment_{run.model_name}"
    title = f"{run.model_name} (n = {run.n_prompts}, {run.parameters['method']} ablation)"
    table, text = ablation_outputs(run.result, stem, out_dir, figs_dir, title, n_bootstrap, run.seed, pending,
                                   marked_indices=run.marked_indices)
    result = {**run.result, "stats": table.to_dict(orient="records"), "metadata": run.metadata()}
    pending.pickle(Path(out_dir) / f"{stem}.pkl", result)
    return text


def saved_result_outputs(path: "str | Path", out_dir: "str | Path", figs_dir: "str | Path", n_bootstrap: int,
                         seed: int, pending: PendingWrites) -> str:
    """Re-analyse a saved result file (ours or the authors'): queue its statistics and figures; the printed table.

    Raises
    ------
    InputError
        A missing file, or one that is not an ablation result (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"`from_saved` {path} does not exist", parameters=("from_saved",))
    result = read_ablation_result(path)
    n = len(result["original_icl_score"])
    check_prompt_count(n, f"{path} holds {n} prompt")
    check_memory(bootstrap_memory_bytes(n_bootstrap, n), "cpu",
                 f"the bootstrap of `n_bootstrap` {n_bootstrap} resamples of {n} prompts", ("n_bootstrap",))
    stem = path.stem
    model = stem[len("ablation_experiment_"):] if stem.startswith("ablation_experiment_") else stem
    try:
        title = f"{model} (n = {len(result['original_icl_score'])})"
        _, text = ablation_outputs(result, stem, out_dir, figs_dir, title, n_bootstrap, seed, pending,
                                   marked_indices=result["marked_indices"])
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    return text
