"""Ablate the top CMR-like heads of a model and compare in-context learning ([LI24] Fig 8; DESIGN.md section 5).

For every evaluation prompt (C4 English validation documents of >= 512 tokens cut to 512,
or local text with ``--data``) the per-token loss is computed for the intact model, with the
top ``--fraction`` CMR-like heads ablated, and with ``--n-random-sets`` seeded random sets of
as many heads ablated. ICL score = loss at index ``--late-index`` minus loss at
``--early-index`` (500 and 50 in the paper). Writes:

* ``<out-dir>/ablation_experiment_<model>.pkl``: the authors' keys ``original_icl_score``,
  ``ablated_icl_score``, ``ablated_rand_icl_score`` (arrays [n_eval]) plus per-set control
  scores, mean loss by position per condition (``loss_by_position`` / ``_sem``), head lists,
  seeds, the statistics table and ``metadata``;
* ``<out-dir>/ablation_experiment_<model>_stats.{csv,txt}``: paired t-test, Wilcoxon,
  bootstrap CI of the mean difference, Cohen's d_z for each pair of conditions;
* ``<figs-dir>/ablation/<model>_icl_bars.pdf`` and ``<model>_loss_by_position.pdf``.

Every argument and input (heads, fit file, data, output folders) is checked before the model
loads, and the outputs are written only once the whole result is computed.

Resumable: each batch's results go to ``<out-dir>/.ablation_experiment_<model>.partial/``
atomically; rerunning the same command continues where it stopped (the default, as for every
long job of this project; ``--restart`` discards them, ``--resume`` is accepted and changes
nothing). Each saved batch is verified when resuming; a damaged one (truncated, garbled, wrong
shape) is discarded with a warning and recomputed, so the final file equals an uninterrupted
run's. The metadata says whether the run was resumed (``resumed``, ``resumed_batches``) and gives
``compute_time_all_sessions_s`` (seconds spent evaluating batches and mean activations, summed over
every session; loading excluded) and ``wall_time_this_session_s`` (this session, loading included).
``--from-saved FILE`` re-analyses and re-plots an existing result file (ours or the authors').

Examples::

    python src/ablation.py --model_name gpt2-small          # heads from saved_scores/gpt2-small/cmr_fit_gpt2-small.pkl
    python src/ablation.py --model_name ./my_model --heads L1H0,L1H3 --data texts/ --seq-len 256 --late-index 246
    python src/ablation.py --from-saved ../shared/official/saved_ablation/ablation_experiment_gpt2-small.pkl
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

import numpy as np

from icl_cmr.interventions.icl_ablation import (ABLATED, ABLATED_RAND, ORIGINAL, AblationConfig, BatchSummary,
                                                combine_batches, conditions, control_head_sets, evaluate_batch,
                                                top_fraction_heads)
from icl_cmr.cli.args import (OneLineErrorParser, device_arg, fraction, given_options, int_range, non_negative_int,
                              positive_int, refuse_options, run_cli, seed_int, setup_logging)
from icl_cmr.devices import resolve_device
from icl_cmr.cli.flags import flag_errors
from icl_cmr.errors import BadFileError, InputError
from icl_cmr.interventions.head_ablation import (ABLATION_METHODS, format_heads, mean_head_activations, parse_heads,
                                                 validate_heads)
from icl_cmr.interventions.icl_score import ICLScoreConfig
from icl_cmr.files.writing import atomic_write, make_metadata, save_json
from icl_cmr.files.folders import ensure_writable_dir
from icl_cmr.files.reading import load_json, load_npz, read_text, to_numpy
from icl_cmr.heads.models import DTYPES, choose_bos, load_model, read_model_shape, resolve_model
from icl_cmr.files.outputs import PendingWrites, log_written, portable_path
from icl_cmr.files.resume import differing_settings
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.devices import pin_cpu_kernels
from icl_cmr.files.results import read_ablation_result, read_cmr_fit
from icl_cmr.files.scores import fit_result_paths, other_model_warning
from icl_cmr.stats import PairedStatsConfig, comparison_table, format_table
from icl_cmr.interventions.texts import TextDataConfig, check_c4_reachable, iter_c4_texts, iter_prompts
from icl_cmr.files.texts import iter_local_texts

logger = logging.getLogger("ablation")

PRODUCER = "ablation.py"
#: The authors' result keys, in their order.
AUTHORS_KEYS = ("original_icl_score", "ablated_icl_score", "ablated_rand_icl_score")
#: Comparisons of [LI24] ablation.py, in their order.
PAIRS = ((ORIGINAL, ABLATED), (ORIGINAL, ABLATED_RAND), (ABLATED, ABLATED_RAND))


def build_parser() -> argparse.ArgumentParser:
    config, icl, data = AblationConfig(), ICLScoreConfig(), TextDataConfig()
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-m", "--model_name", "--model-name", dest="model_name", default="gpt2-small",
                        help="registry name (gpt2-small, pythia-70m, ..., mistral-7b, llama3-8b), Hugging Face id "
                             "or local folder saved with save_pretrained")
    heads = parser.add_argument_group("heads to ablate (exactly one)")
    heads.add_argument("--heads", default=None, help="explicit labels, e.g. L5H1,L6H9")
    heads.add_argument("--heads-file", type=Path, default=None,
                       help="text file of labels (comma/space/newline separated; # starts a comment)")
    heads.add_argument("--fits-dir", type=Path, default=Path("saved_scores"),
                       help="without --heads/--heads-file/--fit-file, use <fits-dir>/<model>/cmr_fit_<model>.pkl "
                            "(fit_attn_score.py's output; default: %(default)s)")
    heads.add_argument("--fit-file", type=Path, default=None,
                       help="pickle with 'fitted_MSE' [L, H] (fit_attn_score.py's cmr_fit_<model>.pkl): the top "
                            "--fraction heads by lowest CMR distance are ablated (NaN never picked)")
    parser.add_argument("--fraction", type=fraction, default=config.fraction,
                        help="fraction of all heads taken from the fit file ([LI24]: top 10%%; count floor(f L H)); "
                             "not with --heads / --heads-file")
    parser.add_argument("--method", choices=ABLATION_METHODS, default=config.method,
                        help="value: zero value vectors ([LI24]); output: zero the head output hook_z (identical "
                             "in exact arithmetic); mean: per-position mean hook_z over the evaluation set")
    parser.add_argument("--n-random-sets", type=positive_int, default=config.n_random_sets,
                        help="random control sets; ablated_rand_icl_score is their per-prompt mean ([LI24]: 1)")
    parser.add_argument("--allow-overlap", action="store_true",
                        help="random sets may include ablated heads, as [LI24] drew them (default: excluded)")
    parser.add_argument("--seed", type=seed_int, default=config.seed,
                        help="random set k uses seed + k (a seed repeating an earlier set is skipped)")
    parser.add_argument("--data", type=Path, default=None,
                        help="local .txt file (one document), .jsonl file (one document per line, field 'text') "
                             "or a folder of them; default: stream C4 English validation ([LI24])")
    parser.add_argument("--n-eval", type=positive_int, default=config.n_eval,
                        help="evaluation prompts ([LI24] script: 1000; their GPT-2 file: 5000)")
    parser.add_argument("--batch-size", type=positive_int, default=config.batch_size, help="prompts per forward pass")
    # >= 3: the ICL score needs 0 <= early < late <= seq_len - 2 (ICLScoreConfig.validate)
    parser.add_argument("--seq-len", type=int_range(3), default=data.seq_len,
                        help="tokens per prompt, BOS included ([LI24]: 512)")
    parser.add_argument("--min-tokens", type=positive_int, default=None,
                        help="keep documents with at least this many tokens (default: --seq-len; [LI24]: 512)")
    parser.add_argument("--late-index", type=positive_int, default=icl.late_index,
                        help="loss index of the late token ([LI24]: 500)")
    parser.add_argument("--early-index", type=non_negative_int, default=icl.early_index,
                        help="loss index of the early token ([LI24]: 50)")
    parser.add_argument("--bos", action=argparse.BooleanOptionalAction, default=None,
                        help="start every prompt with a BOS token (--bos) or not (--no-bos); default: the tokenizer's "
                             "own BOS token when it defines one, none otherwise (loss index 0 is then a text token)")
    parser.add_argument("--device", type=device_arg, default=None,
                        help="cpu, cuda, cuda:N or mps (default: cuda when available)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--restart", action="store_true",
                        help="discard saved partial results of this model and start over (default: resume)")
    parser.add_argument("--resume", action="store_true",
                        help="resume an interrupted run (the default; accepted for uniformity with the other scripts)")
    parser.add_argument("--stop-after", type=positive_int, default=None,
                        help="evaluate at most this many new prompts (whole batches), then stop; rerun to resume")
    parser.add_argument("--from-saved", type=Path, default=None,
                        help="re-analyse and re-plot an existing result file instead of running a model")
    parser.add_argument("--out-dir", type=Path, default=Path("saved_ablation"), help="result folder")
    parser.add_argument("--figs-dir", type=Path, default=Path("figs"), help="figures go to <figs-dir>/ablation/")
    parser.add_argument("--n-bootstrap", type=positive_int, default=PairedStatsConfig().n_bootstrap,
                        help="bootstrap resamples for the CI of mean differences")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


# ----------------------------------------------------------------------------- heads

def read_heads_file(path: Path) -> List[tuple]:
    """Head labels from a text file (``#`` comments allowed)."""
    if not path.is_file():
        raise FileNotFoundError(f"--heads-file {path} does not exist")
    text = "\n".join(line.split("#", 1)[0] for line in read_text(path).splitlines())
    return parse_heads(text)


def read_fit_file(path: Path):
    """A fit file (validated by :func:`icl_cmr.files.results.read_cmr_fit`): ``.distance`` [L, H], ``.model``."""
    if not path.is_file():
        raise FileNotFoundError(f"--fit-file {path} does not exist")
    return read_cmr_fit(path)


@dataclass
class HeadChoice:
    """The heads to ablate, known before the model loads (their existence is checked after).

    Attributes
    ----------
    heads : list of (layer, head)
    source : str
        ``--heads``, the heads file or the fit file.
    distances : list of float or None
        CMR distance of each head when chosen from a fit file.
    fit_shape : tuple or None
        [n_layers, n_heads] of the fit file, which must match the model.
    fit_model : str or None
        The model the fit file says it was made for (None: not a fit file, or the file does not say).
    """

    heads: List[tuple]
    source: str
    distances: Optional[List[float]] = None
    fit_shape: Optional[tuple] = None
    fit_model: Optional[str] = None

    @property
    def from_fit_file(self) -> bool:
        """Whether the heads are the top ``--fraction`` of a fit file (then ``--fraction`` was used)."""
        return self.fit_shape is not None

    def check_model(self, n_layers: int, n_heads: int, model_name: Optional[str] = None) -> None:
        """The heads (or the fit file's shape) against the model; warn when the fit file names another model."""
        if self.fit_shape is not None and self.fit_shape != (n_layers, n_heads):
            raise InputError(f"--fit-file {self.source} is for a [{self.fit_shape[0]}, {self.fit_shape[1]}] model, "
                             f"but the model has {n_layers} layers x {n_heads} heads")
        validate_heads(self.heads, n_layers, n_heads)
        warning = other_model_warning(self.fit_model, model_name, f"--fit-file {self.source}") if model_name else None
        if warning:
            logger.warning(warning)


def check_head_flags(args: argparse.Namespace, model_name: str, fit_file_pending: bool = False) -> Optional[HeadChoice]:
    """At most one of ``--heads``, ``--heads-file``, ``--fit-file``; read and parse it (before the model loads).

    With none, ``--fit-file`` becomes ``fit_attn_score.py``'s output for this model,
    ``<fits-dir>/<model>/cmr_fit_<model>.pkl``, which must exist.

    Parameters
    ----------
    args : argparse.Namespace
    model_name : str
    fit_file_pending : bool
        The fit file will be written by an earlier step (``run_pipeline.py``): do not read it yet.

    Returns
    -------
    HeadChoice or None
        None only when the fit file is pending.
    """
    given = [name for name in ("heads", "heads_file", "fit_file") if getattr(args, name) is not None]
    if len(given) > 1:
        raise InputError("give at most one of --heads, --heads-file or --fit-file (got "
                         + ", ".join("--" + g.replace("_", "-") for g in given) + ")")
    if not given:
        args.fit_file, _ = fit_result_paths(args.fits_dir, model_name)
        if not args.fit_file.is_file() and not fit_file_pending:
            raise InputError(f"no heads given and no CMR fit at {args.fit_file}; run fit_attn_score.py for "
                             "this model first, or give --heads, --heads-file or --fit-file")
    if args.heads is not None:
        return HeadChoice(parse_heads(args.heads), "--heads")
    if args.heads_file is not None:
        return HeadChoice(read_heads_file(args.heads_file), str(args.heads_file))
    if fit_file_pending:
        return None
    fit = read_fit_file(args.fit_file)
    heads = top_fraction_heads(fit.distance, args.fraction)
    return HeadChoice(heads, str(args.fit_file), [float(fit.distance[layer, head]) for layer, head in heads],
                      tuple(fit.distance.shape), fit.model)


# ----------------------------------------------------------------------------- checks before the model loads

@dataclass
class Checked:
    """Everything :func:`check_arguments` validated, for :func:`run`."""

    config: AblationConfig
    data_config: TextDataConfig
    icl_config: ICLScoreConfig
    spec: object
    heads: Optional[HeadChoice]
    shape: object = None  # icl_cmr.heads.models.ModelShape, read from the model's config without its weights


def check_data(path: Optional[Path]) -> None:
    """``--data`` exists, has a supported type and yields at least one document (read lazily otherwise)."""
    if path is None:
        return
    if next(iter_local_texts(path), None) is None:
        raise InputError(f"--data {path} holds no document")


def check_arguments(args: argparse.Namespace, fit_file_pending: bool = False) -> Checked:
    """Validate every argument and input that can be checked without the model, and the output folders.

    Raises
    ------
    InputError, FileNotFoundError
        On the first problem found, before anything is loaded or written.
    """
    if args.restart and args.resume:
        raise InputError("give --restart (discard saved partial results) or --resume (the default), not both")
    config = AblationConfig(fraction=args.fraction, method=args.method, n_random_sets=args.n_random_sets,
                            allow_overlap=args.allow_overlap, seed=args.seed, n_eval=args.n_eval,
                            batch_size=args.batch_size)
    data_config = TextDataConfig(min_tokens=args.min_tokens or args.seq_len, seq_len=args.seq_len)
    icl_config = ICLScoreConfig(late_index=args.late_index, early_index=args.early_index)
    icl_config.validate(data_config.seq_len)
    spec = resolve_model(args.model_name)
    heads = check_head_flags(args, spec.name, fit_file_pending)
    check_data(args.data)
    if args.data is None:
        check_c4_reachable()  # offline: say so now, not after the model has loaded
    check_writable_dir(args.out_dir, "--out-dir")
    check_writable_dir(args.figs_dir / "ablation", "--figs-dir")
    # The model's shape from its config (no weights): context, heads and fit file checked before it loads.
    shape = read_model_shape(spec)
    icl_config.validate(data_config.seq_len, shape.n_ctx)
    if heads is not None:
        heads.check_model(shape.n_layers, shape.n_heads, spec.name)
    checked = Checked(config, data_config, icl_config, spec, heads, shape)
    check_partial_settings(args, checked)
    return checked


#: Options that only a model run uses (not ``--from-saved``'s re-analysis).
RUN_OPTIONS = ("model_name", "heads", "heads_file", "fits_dir", "fit_file", "fraction", "method", "n_random_sets",
               "allow_overlap", "data", "n_eval", "batch_size", "seq_len", "min_tokens", "late_index", "early_index",
               "bos", "device", "dtype", "restart", "resume", "stop_after")


def check_option_groups(parser: argparse.ArgumentParser, args: argparse.Namespace, given: frozenset) -> None:
    """Refuse options that the other options given make meaningless (they would be silently ignored)."""
    if args.from_saved is not None:
        refuse_options(parser, given, RUN_OPTIONS, "with --from-saved (it re-analyses a saved result)")
    if args.heads is not None or args.heads_file is not None:
        refuse_options(parser, given, ("fraction",), "with --heads / --heads-file (it takes the top heads of a "
                                                     "fit file)")
    if args.heads is not None or args.heads_file is not None or args.fit_file is not None:
        refuse_options(parser, given, ("fits_dir",), "with --heads / --heads-file / --fit-file (it locates the "
                                                     "default fit file)")


# ----------------------------------------------------------------------------- prompts and partial results

def load_prompts(args: argparse.Namespace, tokenizer, bos: Optional[int], data_config: TextDataConfig) -> np.ndarray:
    """The first ``--n-eval`` prompts, [n, seq_len] int64."""
    texts = iter_local_texts(args.data) if args.data is not None else iter_c4_texts()
    prompts = list(islice(iter_prompts(texts, tokenizer, bos, data_config), args.n_eval))
    if not prompts:
        raise InputError(f"no document of the data reaches {data_config.min_tokens} tokens")
    if len(prompts) < args.n_eval:
        logger.warning("only %d documents reach %d tokens; evaluating %d prompts instead of --n-eval %d",
                       len(prompts), data_config.min_tokens, len(prompts), args.n_eval)
    return np.stack(prompts)


def _save_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


def _load_npz(path: Path) -> Dict[str, np.ndarray]:
    """Every array of a partial-result file (:func:`icl_cmr.files.reading.load_npz`: sizes and zip CRC-32 checked).

    Raises
    ------
    icl_cmr.errors.BadFileError
        Truncated or garbled file (``CorruptFileError``), or one holding objects (``UnsafeFileError``).
    """
    return load_npz(path)


#: Key of each batch file holding the seconds spent computing it (for the total time of resumed runs).
WALL_KEY = "wall_seconds"


def _without_wall(arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {key: value for key, value in arrays.items() if key != WALL_KEY}


def partial_folder(out_dir: Path, model_name: str) -> Path:
    """The hidden folder of an unfinished run's per-batch results."""
    return Path(out_dir) / f".ablation_experiment_{model_name}.partial"


def argument_settings(args: argparse.Namespace, checked: "Checked", choice: Optional["HeadChoice"]) -> dict:
    """The run parameters that the arguments alone decide (stored in the metadata and in the partial results'
    fingerprint; :func:`check_partial_settings` compares them before any work).

    ``choice`` is None while the fit file is still to be written (``run_pipeline.py``): the heads are then
    unknown, and ``--fraction`` will be used.
    """
    config, data_config, icl_config = checked.config, checked.data_config, checked.icl_config
    from_fit_file = choice is None or choice.from_fit_file
    settings = {
        "model_name": checked.spec.name, "dtype": args.dtype, "method": config.method,
        "fraction": config.fraction if from_fit_file else None,  # None: not used
        "n_random_sets_requested": config.n_random_sets,  # more than len(random_heads) when fewer distinct sets exist
        "allow_overlap": config.allow_overlap, "seq_len": data_config.seq_len, "min_tokens": data_config.min_tokens,
        "late_index": icl_config.late_index, "early_index": icl_config.early_index, "batch_size": config.batch_size,
    }
    if choice is not None:
        settings["ablated_heads"] = format_heads(choice.heads)
    return settings


def check_partial_settings(args: argparse.Namespace, checked: "Checked") -> None:
    """Refuse, before any work, to continue a saved partial run whose settings contradict the requested ones.

    Only the settings the arguments decide alone are compared here (fraction, method, random sets, lengths
    and indices, batch size, dtype, and the heads when they are known before the model loads); the rest
    (the prompts' token hash, BOS, the random heads) is compared when the run opens its partial results
    (:meth:`PartialResults.open`). A damaged state file is left to that step, which discards it with a warning.

    Raises
    ------
    InputError
        Naming each differing setting with its saved and requested value, and ``--restart``.
    """
    if args.restart:
        return
    folder = partial_folder(args.out_dir, checked.spec.name)
    state = folder / PartialResults.STATE
    if not state.is_file():
        return
    try:
        saved = load_json(state)
    except BadFileError:
        return
    if not isinstance(saved, dict):
        return
    config = checked.config
    requested = json.loads(json.dumps(argument_settings(args, checked, checked.heads)))
    differing = [key for key, value in requested.items() if key in saved and saved[key] != value]
    # fewer prompts than asked are saved when the data ran out; more than asked is another run
    if isinstance(saved.get("n_eval"), int) and saved["n_eval"] > config.n_eval:
        differing.append("n_eval")
        requested["n_eval"] = config.n_eval
    if differing:
        changes = "; ".join(f"{key}: {saved[key]} there, {requested[key]} now" for key in differing)
        raise InputError(f"partial results in {folder} were made with other settings ({changes}); rerun with those "
                         "settings to resume, or add --restart to discard them")


class PartialResults:
    """One folder of per-batch results, valid only for the parameters it was started with.

    Parameters
    ----------
    folder : Path
    fingerprint : dict
        Every parameter that decides the numbers (JSON types); a saved run with another
        fingerprint is never mixed in.
    n_prompts, batch_size : int
        To verify each saved batch: batch ``i`` holds ``min(batch_size, n_prompts - i batch_size)`` prompts.
    condition_names : sequence of str
        Conditions every batch must hold (``original``, ``ablated``, ``ablated_rand_<k>``, ``ablated_rand``).
    n_positions : int
        Loss positions per prompt (``seq_len - 1``).
    """

    STATE = "state.json"
    MEANS = "means.npz"

    def __init__(self, folder: Path, fingerprint: dict, n_prompts: int = 0, batch_size: int = 1,
                 condition_names: Sequence[str] = (), n_positions: int = 0):
        self.folder = folder
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.n_prompts, self.batch_size = int(n_prompts), int(batch_size)
        self.condition_names = tuple(condition_names)
        self.n_positions = int(n_positions)

    @property
    def n_batches(self) -> int:
        """Batches of the whole run."""
        return -(-self.n_prompts // self.batch_size)

    def open(self, restart: bool) -> Set[int]:
        """Prepare the folder; return the indices of the batches already done and verified.

        Raises
        ------
        InputError
            If the folder holds a run with other settings (``--restart`` discards it).
        """
        if restart and self.folder.exists():
            self.discard()
        state_path = self.folder / self.STATE
        if state_path.is_file():
            try:
                saved = load_json(state_path)
                if not isinstance(saved, dict):
                    raise BadFileError(state_path, f"holds a {type(saved).__name__}, not the settings of a partial run")
            except BadFileError as err:
                logger.warning("the state file of the partial results in %s is damaged (%s); discarding them and "
                               "starting over", self.folder, err.problem)
                self.discard()
                saved = None
            if saved is not None and saved != self.fingerprint:
                changed = differing_settings(saved, self.fingerprint)
                raise InputError(f"partial results in {self.folder} were made with other settings ({', '.join(changed)}); "
                                 "rerun with those settings to resume, or add --restart to discard them")
        if not state_path.is_file():
            ensure_writable_dir(self.folder)
            save_json(state_path, self.fingerprint)
        return self._verified_batches()

    @staticmethod
    def _batch_name(index: int) -> str:
        return f"batch_{index:06d}.npz"

    def _batch_problem(self, index: int, arrays: Dict[str, np.ndarray], source: str) -> Optional[str]:
        """Why a loaded batch cannot be used, or None when it is sound and matches this run."""
        try:
            summary = BatchSummary.from_arrays(_without_wall(arrays), source=source)
        except BadFileError as err:
            return err.problem
        expected = min(self.batch_size, self.n_prompts - index * self.batch_size)
        if sorted(summary.icl) != sorted(self.condition_names):
            return "its conditions differ from this run's"
        if summary.n_prompts != expected:
            return f"it holds {summary.n_prompts} prompts, expected {expected}"
        lengths = {value.shape for values in (summary.loss_sum, summary.loss_sq_sum) for value in values.values()}
        if lengths != {(self.n_positions,)}:
            return f"its loss curves have shapes {sorted(lengths)}, expected ({self.n_positions},)"
        return None

    def _verified_batches(self) -> Set[int]:
        done: Set[int] = set()
        for path in sorted(self.folder.glob("batch_*.npz")):
            try:
                index = int(path.stem.split("_", 1)[1])
            except ValueError:
                continue
            if not 0 <= index < self.n_batches:
                logger.warning("ignoring %s: this run has %d batches", path, self.n_batches)
                continue
            try:
                problem = self._batch_problem(index, _load_npz(path), str(path))
            except BadFileError as err:
                problem = err.problem
            if problem is not None:
                logger.warning("discarding damaged partial result %s (%s); it will be recomputed", path, problem)
                path.unlink()
                continue
            done.add(index)
        return done

    def save_batch(self, index: int, summary: BatchSummary, wall_seconds: float) -> None:
        _save_npz(self.folder / self._batch_name(index), {**summary.to_arrays(), WALL_KEY: np.asarray(wall_seconds)})

    def load_batches(self) -> List[BatchSummary]:
        """Every batch, in order (all must have been saved)."""
        paths = [self.folder / self._batch_name(i) for i in range(self.n_batches)]
        return [BatchSummary.from_arrays(_without_wall(_load_npz(path)), source=str(path)) for path in paths]

    def wall_seconds(self) -> float:
        """Seconds spent on the saved batches and means, over every session of this run."""
        paths = [self.folder / self._batch_name(i) for i in range(self.n_batches)] + [self.folder / self.MEANS]
        return float(sum(_load_npz(p).get(WALL_KEY, 0.0) for p in paths if p.is_file()))

    def save_means(self, means, wall_seconds: float) -> None:
        _save_npz(self.folder / self.MEANS, {**{str(layer): to_numpy(value.float()) for layer, value in means.items()},
                                             WALL_KEY: np.asarray(wall_seconds)})

    def load_means(self, layers: Sequence[int]):
        """Saved per-layer mean activations, or None (absent, or damaged: then removed with a warning)."""
        path = self.folder / self.MEANS
        if not path.is_file():
            return None
        try:
            arrays = _load_npz(path)
        except BadFileError as err:
            arrays, problem = None, err.problem
        else:
            problem = None if set(arrays) == {str(layer) for layer in layers} | {WALL_KEY} else \
                "its layers differ from this run's"
        if problem is not None:
            logger.warning("discarding damaged partial result %s (%s); it will be recomputed", path, problem)
            path.unlink()
            return None
        return {int(layer): value for layer, value in arrays.items() if layer != WALL_KEY}

    def discard(self) -> None:
        """Remove this run's files (only names this class writes) and the folder."""
        for path in self.folder.glob("*"):
            if path.name in (self.STATE, self.MEANS) or (path.name.startswith("batch_") and path.suffix == ".npz"):
                path.unlink()
        try:
            self.folder.rmdir()
        except OSError:
            logger.warning("left %s in place: it holds files this script did not write", self.folder)


# ----------------------------------------------------------------------------- analysis and figures

def condition_samples(result: dict) -> Dict[str, np.ndarray]:
    """``{original, ablated, ablated_rand}`` per-prompt ICL scores from a result dict (ours or the authors')."""
    missing = [key for key in AUTHORS_KEYS if key not in result]
    if missing:
        raise InputError(f"result file lacks {', '.join(missing)}")
    return {ORIGINAL: to_numpy(result["original_icl_score"]).astype(np.float64),
            ABLATED: to_numpy(result["ablated_icl_score"]).astype(np.float64),
            ABLATED_RAND: to_numpy(result["ablated_rand_icl_score"]).astype(np.float64)}


def loss_curves(result: dict, names: Sequence[str]) -> Optional[tuple]:
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


def analyse(result: dict, stem: str, args: argparse.Namespace, title: str, pending: PendingWrites,
            marked_indices: Sequence[int] = ()):
    """Statistics table (printed) and figures of one result dict, queued in ``pending`` (nothing written here)."""
    from icl_cmr.figures.ablation import plot_icl_score_bars, plot_loss_by_position

    samples = condition_samples(result)
    curves = loss_curves(result, list(samples))
    table = comparison_table(samples, PAIRS, PairedStatsConfig(n_bootstrap=args.n_bootstrap, seed=args.seed))
    text = format_table(table)
    pending.text(args.out_dir / f"{stem}_stats.csv", table.to_csv(index=False))
    pending.text(args.out_dir / f"{stem}_stats.txt", text + "\n")
    means = {name: float(np.nanmean(values)) for name, values in samples.items()}
    sems = {name: float(np.nanstd(values, ddof=1) / np.sqrt(np.isfinite(values).sum())) for name, values in samples.items()}
    brackets = [(row.a, row.b, row.stars) for row in table.itertuples()]
    figs_dir = args.figs_dir / "ablation"
    pending.figure(figs_dir / f"{stem}_icl_bars.pdf", plot_icl_score_bars(means, sems, brackets, title=title))
    if curves is not None:
        pending.figure(figs_dir / f"{stem}_loss_by_position.pdf",
                       plot_loss_by_position(*curves, marked_indices, title=title))
    return table, text


def from_saved(args: argparse.Namespace) -> None:
    path = args.from_saved
    if not path.is_file():
        raise FileNotFoundError(f"--from-saved {path} does not exist")
    check_writable_dir(args.out_dir, "--out-dir")
    check_writable_dir(args.figs_dir / "ablation", "--figs-dir")
    result = read_ablation_result(path)
    stem = path.stem
    model = stem[len("ablation_experiment_"):] if stem.startswith("ablation_experiment_") else stem
    n = len(result["original_icl_score"])
    pending = PendingWrites()
    try:
        _, text = analyse(result, stem, args, title=f"{model} (n = {n})", pending=pending,
                          marked_indices=result["marked_indices"])
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    print(text)
    log_written(logger, pending.commit())


# ----------------------------------------------------------------------------- the experiment

def _token_hash(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype=np.int64).tobytes()).hexdigest()


def run(args: argparse.Namespace, checked: Optional[Checked] = None) -> None:
    """The experiment; ``checked`` is :func:`check_arguments`'s result (computed here when None).

    ``args.data_description`` (optional, set by ``run_pipeline.py``) replaces the data path in the
    metadata when the data file is a temporary one.
    """
    checked = checked or check_arguments(args)
    import torch
    from tqdm.auto import tqdm

    pin_cpu_kernels()
    config, data_config, icl_config, spec = checked.config, checked.data_config, checked.icl_config, checked.spec
    device = resolve_device(args.device)
    session_started = time.monotonic()
    model = load_model(spec, device=device, dtype=args.dtype, require_hooks=("pattern", "v", "z"))
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    icl_config.validate(data_config.seq_len, int(model.cfg.n_ctx))
    choice = checked.heads or check_head_flags(args, spec.name)
    choice.check_model(n_layers, n_heads, None if checked.heads else spec.name)  # warned in check_arguments
    ablated, head_source, distances = choice.heads, choice.source, choice.distances
    random_sets, seeds = control_head_sets(n_layers, n_heads, ablated, config)
    head_sets = conditions(ablated, random_sets)
    logger.info("ablating %d heads (%s): %s", len(ablated), head_source, format_heads(ablated))
    for seed, heads in zip(seeds, random_sets):
        logger.info("random control (seed %d): %s", seed, format_heads(heads))

    bos = choose_bos(model, args.bos, spec.trust_remote_code)
    tokens = load_prompts(args, model.tokenizer, bos.token_id, data_config)
    n_prompts = tokens.shape[0]
    data = getattr(args, "data_description", None) or (portable_path(args.data) if args.data else
                                                        "allenai/c4 en validation")
    parameters = {
        "model": portable_path(spec.source) if spec.is_local else spec.source,
        **argument_settings(args, checked, choice),
        "head_source": portable_path(head_source) if head_source != "--heads" else head_source,
        "fit_file": portable_path(head_source) if choice.from_fit_file else None,
        "random_heads": [format_heads(h) for h in random_sets], "random_seeds": seeds, "data": data,
        "n_eval": int(n_prompts), "tokens_sha256": _token_hash(tokens), "bos": bos.describe(),
    }
    out_dir = ensure_writable_dir(args.out_dir)
    # the model path, data path and head source are descriptive: the token hash and head lists decide
    # whether a run matches
    fingerprint = {key: value for key, value in parameters.items()
                   if key not in ("model", "data", "head_source", "fit_file")}
    names = list(head_sets) + ([ABLATED_RAND] if random_sets else [])
    partial = PartialResults(partial_folder(out_dir, spec.name), fingerprint, n_prompts,
                             config.batch_size, names, data_config.seq_len - 1)
    done = partial.open(args.restart)
    n_batches = partial.n_batches
    if done:
        logger.info("resuming: %d of %d batches already done in %s", len(done), n_batches, partial.folder)

    means = None
    if config.method == "mean":
        layers = sorted({layer for heads in head_sets.values() for layer, _ in heads})
        means = partial.load_means(layers)
        if means is None:
            started = time.monotonic()
            logger.info("mean hook_z over the %d evaluation prompts (layers %s)", n_prompts, layers)
            batches = (torch.as_tensor(tokens[i:i + config.batch_size]).to(device)
                       for i in range(0, n_prompts, config.batch_size))
            means = mean_head_activations(model, batches, layers=layers)
            partial.save_means(means, time.monotonic() - started)
        means = {layer: torch.as_tensor(value) for layer, value in means.items()}

    evaluated, n_new_batches, stopped = 0, 0, False
    with tqdm(total=n_batches, initial=len(done), desc=f"ablation {spec.name}", unit="batch",
              disable=args.no_progress) as progress:
        for index in (i for i in range(n_batches) if i not in done):
            if args.stop_after is not None and evaluated >= args.stop_after:
                stopped = True
                break
            started = time.monotonic()
            batch = tokens[index * config.batch_size:(index + 1) * config.batch_size]
            summary = evaluate_batch(model, batch, head_sets, config.method, icl_config, config.batch_size, means)
            partial.save_batch(index, summary, time.monotonic() - started)
            evaluated += batch.shape[0]
            n_new_batches += 1
            progress.update(1)
    if stopped:
        logger.info("stopped after %d new prompts (--stop-after); %d of %d batches done in %s; rerun the same "
                    "command to continue", evaluated, len(done) + n_new_batches, n_batches,
                    partial.folder)
        return

    combined = combine_batches(partial.load_batches())
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
    stem = f"ablation_experiment_{spec.name}"
    pending = PendingWrites()
    table, text = analyse(result, stem, args, title=f"{spec.name} (n = {n_prompts}, {config.method} ablation)",
                          pending=pending, marked_indices=(icl_config.early_index, icl_config.late_index))
    result["stats"] = table.to_dict(orient="records")
    compute_seconds = partial.wall_seconds()
    # Two different clocks, named as such: the evaluation time summed over every session of this run (model
    # loading and data preparation excluded), and this session's time from start to finish (included).
    metadata = make_metadata(PRODUCER, parameters, seed=config.seed, device=device,
                             compute_time_all_sessions_s=round(compute_seconds, 3), resumed=bool(done),
                             resumed_batches=len(done),
                             wall_time_this_session_s=round(time.monotonic() - session_started, 3))
    # plain JSON types only: torch.__version__ is a TorchVersion object, which load_pickle rightly refuses
    result["metadata"] = json.loads(json.dumps(metadata, default=str))
    pending.pickle(out_dir / f"{stem}.pkl", result)
    if getattr(args, "print_table", True):  # run_pipeline.py prints it in its own summary
        print(text)
    log_written(logger, pending.commit())
    partial.discard()


def main(argv: Optional[Sequence[str]] = None) -> Optional[int]:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_option_groups(parser, args, given_options(parser, argv))
    setup_logging(args.verbose, progress=not args.no_progress)
    with flag_errors(parser):
        if args.from_saved is not None:
            from_saved(args)
        else:
            run(args)
    return None


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
