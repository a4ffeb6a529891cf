"""The jobs of a sweep, and whether a job's outputs are already there and current.

One job is one run of one experiment script (``python src/<script>.py <argv>``):

* ``scores/<model>[/cp<K>]``: ``compute_head_scores.py`` for one (model, checkpoint);
* ``fit/<model>[/cp<K>]``: ``fit_attn_score.py --no-figures`` on that score file (the trained
  model's fit at the usual ``<scores_dir>/<model>/cmr_fit_<model>.pkl``; other checkpoints'
  under ``<scores_dir>/<model>/checkpoint_fits/``);
* ``ablation/<model>``: ``ablation.py`` with the trained model's fit;
* ``aggregate/...: ``attn_over_size.py`` (models named ``pythia-<size>``), ``attn_over_size_xtra.py``
  (other trained models), ``attn_over_time.py`` and ``select_fit.py`` (models with several
  checkpoints), ``select_fit_xtra.py`` (models with one), on whatever scores finished.

A job is **up to date** (skipped) when every output exists, the metadata its script stored
matches what the plan asks (model, checkpoint, prompt design, seed, settings, and the
``icl_cmr`` version, our code version) and no input changed since: no input's (modification
time, size) differs from what the manifest recorded when the job last ran, or, for outputs the
sweep did not make, no output is older than an input. (Recorded signatures rather than plain
file times, because a script may leave an output untouched when a rerun reproduces it.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from icl_cmr.config import CMR_LIKE_THRESHOLD, DEFAULT_GRID_PATH, FINAL_CHECKPOINT
from icl_cmr.errors import InputError
from icl_cmr.files.outputs import REPO_ROOT
from icl_cmr.files.reading import load_json, load_pickle
from icl_cmr.files.score_format import default_score_path
from icl_cmr.files.scores import normalise_model_name
from icl_cmr.files.writing import PACKAGE_VERSION
from icl_cmr.heads.prompts import PromptConfig
from icl_cmr.heads.registry import resolve_model
from icl_cmr.sweeps.plan import (ABLATION_SETTINGS, AGGREGATE_SETTINGS, CPU_GROUP, FIT_SETTINGS, SCORES_SETTINGS,
                                 ModelEntry, Plan, setting_argv)

#: Where non-final checkpoints' fits go, inside the model's score folder.
CHECKPOINT_FITS_DIR = "checkpoint_fits"
#: Scripts with a ``--no-progress`` flag: their progress bars would fill the job logs.
_QUIET_SCRIPTS = ("compute_head_scores.py", "ablation.py")


@dataclass(frozen=True)
class MetadataCheck:
    """What one output's stored metadata must hold for its job to count as done.

    Attributes
    ----------
    path : str
        A pickle (``metadata`` key) or JSON file (``metadata`` key) written by the job.
    expect : dict
        Dotted key (``"parameters.block_len"``) -> required value.
    path_keys : tuple of str
        Keys of ``expect`` whose values are file paths, compared after resolving them.
    """

    path: str
    expect: Mapping[str, Any]
    path_keys: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Job:
    """One run of one script.

    Attributes
    ----------
    id : str
        ``<stage>/<model>[/cp<K>]`` or ``aggregate/<script>[/<model>]``.
    stage : str
        ``scores``, ``fit``, ``ablation`` or ``aggregate``.
    script : str
        File name in the repository's ``src/``.
    argv : tuple of str
        Arguments after the script.
    model, step : str or None, int or None
        The (model, training step) it is about; None for aggregation / the final model.
    group : str
        Resource group (SLURM).
    depends_on : tuple of str
        Ids of jobs that must succeed first.
    after : tuple of str
        Ids of jobs that must have finished, successfully or not (aggregation uses what finished).
    inputs, outputs : tuple of str
        Files read and written; a job is stale when an output is older than an input.
    checks : tuple of MetadataCheck
        Metadata that decides whether existing outputs match the plan.
    """

    id: str
    stage: str
    script: str
    argv: Tuple[str, ...]
    model: Optional[str] = None
    step: Optional[int] = None
    group: str = CPU_GROUP
    depends_on: Tuple[str, ...] = ()
    after: Tuple[str, ...] = ()
    inputs: Tuple[str, ...] = ()
    outputs: Tuple[str, ...] = ()
    checks: Tuple[MetadataCheck, ...] = ()

    @property
    def log_name(self) -> str:
        return self.id.replace("/", "__") + ".log"

    def command(self, src_dir: "str | Path", python: str = "python") -> List[str]:
        return [python, str(Path(src_dir) / self.script), *self.argv]


# ----------------------------------------------------------------------------- names and paths

def job_id(stage: str, model: str, entry: Optional[ModelEntry] = None, step: Optional[int] = None) -> str:
    suffix = f"/cp{entry.checkpoint_index(step)}" if entry is not None and step is not None else ""
    return f"{stage}/{model}{suffix}"


def score_path(plan: Plan, entry: ModelEntry, step: Optional[int]) -> Path:
    return default_score_path(entry.name, entry.checkpoint_index(step), root=plan.paths["scores_dir"])


def fit_name_and_root(plan: Plan, entry: ModelEntry, step: Optional[int]) -> Tuple[str, Path]:
    """``--save_dir`` and ``--fits-dir`` of a fit: the trained model's at the usual place."""
    root = Path(plan.paths["scores_dir"])
    if step == entry.final_step:
        return entry.name, root
    return f"{entry.name}_cp{entry.checkpoint_index(step)}", root / entry.name / CHECKPOINT_FITS_DIR


def fit_paths(plan: Plan, entry: ModelEntry, step: Optional[int]) -> Tuple[Path, Path]:
    name, root = fit_name_and_root(plan, entry, step)
    return root / name / f"cmr_fit_{name}.pkl", root / name / f"head_fits_{name}.csv"


def _model_source(entry: ModelEntry, step: Optional[int]) -> Tuple[str, Optional[int]]:
    """(``--model`` value, ``--checkpoint`` step or None) of one (model, step)."""
    if step is not None and entry.checkpoint_dirs:
        return entry.checkpoint_dirs[step], None
    return str(entry.source), step


def _default_grid() -> str:
    return str(DEFAULT_GRID_PATH)


def _common_fit_argv(plan: Plan) -> List[str]:
    argv = ["--scores-dir", plan.paths["scores_dir"]]
    argv += setting_argv({k: v for k, v in FIT_SETTINGS.items() if k != "threshold"}, plan.fit)
    return argv


# ----------------------------------------------------------------------------- per-model jobs

def _scores_job(plan: Plan, entry: ModelEntry, step: Optional[int]) -> Job:

    model_arg, checkpoint = _model_source(entry, step)
    out = score_path(plan, entry, step)
    settings = dict(entry.scores)
    argv = ["--model", model_arg, *(["--checkpoint", str(checkpoint)] if checkpoint is not None else []),
            "--out", str(out), *setting_argv(SCORES_SETTINGS, settings), "--no-progress"]
    spec = resolve_model(model_arg, checkpoint=checkpoint)
    design = PromptConfig().to_dict()
    design.pop("batch_size")  # changes no number beyond float rounding; a new batch size reuses old files
    design.update({k: settings[k] for k in design if k in settings})
    if "bos" in settings:
        design["prepend_bos"] = settings["bos"]
    expect: Dict[str, Any] = {"producer": "compute_head_scores.py", "model": spec.name, "source": spec.source,
                              "checkpoint_step": spec.checkpoint_step, "versions.icl_cmr": PACKAGE_VERSION,
                              "parameters.dtype": settings.get("dtype", "float32"),
                              "parameters.copying": settings.get("copying", True)}
    expect.update({f"parameters.{k}": v for k, v in design.items()})
    path_keys: Tuple[str, ...] = ()
    if spec.is_local:
        path_keys = ("source",)
    inputs = [str(Path(model_arg) / "config.json")] if spec.is_local else []
    if "token_pool" in settings:
        inputs.append(settings["token_pool"])
    return Job(id=job_id("scores", entry.name, entry, step), stage="scores", script="compute_head_scores.py",
               argv=tuple(argv), model=entry.name, step=step, group=entry.group, inputs=tuple(inputs),
               outputs=(str(out),), checks=(MetadataCheck(str(out), expect, path_keys),))


def _fit_job(plan: Plan, entry: ModelEntry, step: Optional[int]) -> Job:

    scores = score_path(plan, entry, step)
    name, root = fit_name_and_root(plan, entry, step)
    fit_file, table = fit_paths(plan, entry, step)
    grid = plan.fit.get("crp_grid", _default_grid())
    argv = ["--all_head_scores", str(scores), "--save_dir", name, "--fits-dir", str(root), *_common_fit_argv(plan),
            *setting_argv({"threshold": FIT_SETTINGS["threshold"]}, plan.fit), "--no-figures"]
    expect = {"producer": "fit_attn_score.py", "versions.icl_cmr": PACKAGE_VERSION,
              "parameters.scores_file": str(scores), "parameters.crp_grid": grid,
              "parameters.threshold": plan.fit.get("threshold", CMR_LIKE_THRESHOLD)}
    depends = (job_id("scores", entry.name, entry, step),) if "scores" in plan.stages else ()
    return Job(id=job_id("fit", entry.name, entry, step), stage="fit", script="fit_attn_score.py", argv=tuple(argv),
               model=entry.name, step=step, group=CPU_GROUP, depends_on=depends, inputs=(str(scores), grid),
               outputs=(str(fit_file), str(table)),
               checks=(MetadataCheck(str(fit_file), expect, ("parameters.scores_file", "parameters.crp_grid")),))


def _ablation_job(plan: Plan, entry: ModelEntry) -> Job:

    step = entry.final_step
    fit_file, _ = fit_paths(plan, entry, step)
    spec = resolve_model(str(entry.source))
    out_dir = Path(plan.paths["ablation_dir"])
    out = out_dir / f"ablation_experiment_{spec.name}.pkl"
    argv = ["--model_name", str(entry.source), "--fit-file", str(fit_file), "--out-dir", str(out_dir),
            "--figs-dir", plan.paths["figs_dir"], *setting_argv(ABLATION_SETTINGS, plan.ablation), "--no-progress"]
    expect: Dict[str, Any] = {"producer": "ablation.py", "versions.icl_cmr": PACKAGE_VERSION,
                              "parameters.model": spec.source}
    renamed = {"n_random_sets": "n_random_sets_requested"}
    for key in ("fraction", "method", "n_random_sets", "seq_len", "late_index", "early_index", "dtype"):
        if key in plan.ablation:
            expect[f"parameters.{renamed.get(key, key)}"] = plan.ablation[key]
    if "seed" in plan.ablation:
        expect["seed"] = plan.ablation["seed"]
    depends = (job_id("fit", entry.name, entry, step),) if "fit" in plan.stages else ()
    return Job(id=f"ablation/{entry.name}", stage="ablation", script="ablation.py", argv=tuple(argv),
               model=entry.name, step=None, group=entry.group, depends_on=depends, inputs=(str(fit_file),),
               outputs=(str(out),), checks=(MetadataCheck(str(out), expect, ("parameters.model",) if spec.is_local else ()),))


def fit_steps(plan: Plan, entry: ModelEntry) -> Tuple[Optional[int], ...]:
    return entry.steps if plan.fit_checkpoints == "all" else (entry.final_step,)


# ----------------------------------------------------------------------------- aggregation

def _final_is_default(entry: ModelEntry) -> bool:
    """Whether the fitting scripts find this model's trained-model file without ``--checkpoint``
    (a file without ``_cp``, else ``_cp142``: :func:`icl_cmr.files.scores.find_score_file`)."""
    step = entry.final_step
    return step is None or entry.checkpoint_index(step) == FINAL_CHECKPOINT


def _is_pythia(name: str) -> bool:
    return name.startswith("pythia-") and len(name) > len("pythia-")


def aggregate_jobs(plan: Plan, finished: Optional[Mapping[str, Set[Optional[int]]]] = None) -> List[Job]:
    """The aggregation jobs, on the (model, step) scores in ``finished`` (None: all of the plan).

    A job none of whose inputs finished is left out; a model missing its trained-model scores is
    left out of the by-size figures, and a series model of the over-training ones.
    """
    if "aggregate" not in plan.stages:
        return []
    done = {m.name: set(m.steps) for m in plan.models} if finished is None else finished
    after = tuple(job_id("scores", m.name, m, s) for m in plan.models for s in m.steps) \
        if "scores" in plan.stages else ()
    scores_dir, figs_dir = plan.paths["scores_dir"], plan.paths["figs_dir"]
    grid = plan.fit.get("crp_grid", _default_grid())
    common = ["--scores-dir", scores_dir, "--figs-dir", figs_dir,
              *setting_argv({k: v for k, v in FIT_SETTINGS.items() if k in ("crp_grid", "crp_sem")}, plan.fit),
              *setting_argv({"threshold": AGGREGATE_SETTINGS["threshold"]}, plan.aggregate)]
    base_expect = {"versions.icl_cmr": PACKAGE_VERSION, "parameters.crp_grid": grid,
                   "parameters.threshold": plan.aggregate.get("threshold", CMR_LIKE_THRESHOLD)}
    path_keys = ("parameters.crp_grid",)
    with_final = [m for m in plan.models if m.final_step in done.get(m.name, set()) and _final_is_default(m)]
    jobs: List[Job] = []

    def final_inputs(models: Iterable[ModelEntry]) -> Tuple[str, ...]:
        return tuple(str(score_path(plan, m, m.final_step)) for m in models) + (grid,)

    pythia = [m for m in with_final if _is_pythia(m.name)]
    if pythia:
        out = Path(figs_dir) / "attn_over_size" / "layer_summary.json"
        sizes = [m.name[len("pythia-"):] for m in pythia]
        jobs.append(Job(id="aggregate/attn_over_size", stage="aggregate", script="attn_over_size.py",
                        argv=("--model_size", *sizes, *common), after=after, inputs=final_inputs(pythia),
                        outputs=(str(out),), checks=(MetadataCheck(str(out), {
                            **base_expect, "producer": "attn_over_size.py",
                            "parameters.models": [m.name for m in pythia]}, path_keys),)))
    others = [m for m in with_final if not _is_pythia(m.name)]
    if others:
        out = Path(figs_dir) / "attn_over_size_xtra" / "layer_summary.json"
        jobs.append(Job(id="aggregate/attn_over_size_xtra", stage="aggregate", script="attn_over_size_xtra.py",
                        argv=("--models", *[m.name for m in others], *common), after=after,
                        inputs=final_inputs(others), outputs=(str(out),), checks=(MetadataCheck(str(out), {
                            **base_expect, "producer": "attn_over_size_xtra.py",
                            "parameters.models": [m.name for m in others]}, path_keys),)))
    series = []
    for m in plan.models:
        steps = [s for s in m.steps if s is not None and s in done.get(m.name, set())]
        if not m.is_series or m.steps[-1] not in steps or len(steps) < 2:
            continue  # the last checkpoint defines the heads followed over training
        series.append((m, steps))
        indices = [m.checkpoint_index(s) for s in steps]
        out = Path(figs_dir) / "attn_over_time" / m.name / "layer_over_time.json"
        jobs.append(Job(id=f"aggregate/attn_over_time/{m.name}", stage="aggregate", script="attn_over_time.py",
                        argv=("--model_name", m.name, "--checkpoints", *map(str, indices), *common), after=after,
                        inputs=tuple(str(score_path(plan, m, s)) for s in steps) + (grid,), outputs=(str(out),),
                        checks=(MetadataCheck(str(out), {**base_expect, "producer": "attn_over_time.py",
                                                         "parameters.model": m.name,
                                                         "parameters.checkpoints": indices}, path_keys),)))
    top_dir = Path(plan.paths["top_heads_dir"])
    n_top = list(plan.aggregate.get("n_top", ()))
    n_top_argv = ["--n_top", *map(str, n_top)] if n_top else []
    expect_n_top = {"parameters.n_top": sorted(set(n_top))} if n_top else {}
    if series:
        # Pooled selection: the checkpoints every included model has.
        common_indices = sorted(set.intersection(*({m.checkpoint_index(s) for s in steps} for m, steps in series)))
        tag = plan.aggregate.get("tag", plan.name)
        files = [top_dir / f"cmr_top_crp_fit_{tag}.pkl", top_dir / f"cmr_top_head_score_{tag}.pkl"]
        figs = [Path(figs_dir) / "select_fit" / f"{n}.pdf" for n in
                ("selection_over_training", "selection_final", "selection_vs_human")]
        # The selections do not depend on the threshold, and select_fit*.py do not record it.
        select_expect = {k: v for k, v in base_expect.items() if k != "parameters.threshold"}
        expect = {**select_expect, "producer": "select_fit.py", "parameters.models": [m.name for m, _ in series],
                  "parameters.checkpoints": common_indices, **expect_n_top}
        jobs.append(Job(id="aggregate/select_fit", stage="aggregate", script="select_fit.py",
                        argv=("--models", *[m.name for m, _ in series], "--checkpoints", *map(str, common_indices),
                              *n_top_argv, "--tag", tag, "--top-heads-dir", str(top_dir), *common), after=after,
                        inputs=tuple(str(default_score_path(m.name, k, root=scores_dir)) for m, _ in series
                                     for k in common_indices) + (grid,),
                        outputs=tuple(map(str, files + figs)),
                        checks=tuple(MetadataCheck(str(f), expect, path_keys) for f in files)))
    select_expect = {k: v for k, v in base_expect.items() if k != "parameters.threshold"}
    singles = [m for m in with_final if not m.is_series]
    if singles:
        files = [top_dir / f"{kind}_{m.name}.pkl" for m in singles for kind in ("cmr_top_crp_fit", "cmr_top_head_score")]
        checks = tuple(MetadataCheck(str(top_dir / f"{kind}_{m.name}.pkl"),
                                     {**select_expect, "producer": "select_fit_xtra.py", "parameters.model": m.name,
                                      **expect_n_top}, path_keys)
                       for m in singles for kind in ("cmr_top_crp_fit", "cmr_top_head_score"))
        jobs.append(Job(id="aggregate/select_fit_xtra", stage="aggregate", script="select_fit_xtra.py",
                        argv=("--models", *[m.name for m in singles], *n_top_argv, "--top-heads-dir", str(top_dir),
                              *common), after=after, inputs=final_inputs(singles),
                        outputs=tuple(map(str, files)) + (str(Path(figs_dir) / "select_fit_xtra" /
                                                               "selection_vs_human.pdf"),), checks=checks))
    return jobs


# ----------------------------------------------------------------------------- the whole sweep

def build_jobs(plan: Plan) -> List[Job]:
    """Every job of ``plan`` in a valid run order (scores, fits, ablations, aggregation).

    Raises
    ------
    InputError
        If two models of the plan would share score files (names equal up to case, ``-_.).
    """
    seen: Dict[str, str] = {}
    for m in plan.models:
        key = normalise_model_name(m.name)
        if key in seen:
            raise InputError(f"{plan.path}: models {seen[key]!r} and {m.name!r} would share score files "
                             "(names differing only in case or -_. are the same to the fitting scripts)")
        seen[key] = m.name
    jobs: List[Job] = []
    if "scores" in plan.stages:
        jobs += [_scores_job(plan, m, s) for m in plan.models for s in m.steps]
    if "fit" in plan.stages:
        jobs += [_fit_job(plan, m, s) for m in plan.models for s in fit_steps(plan, m)]
    if "ablation" in plan.stages:
        jobs += [_ablation_job(plan, plan.model(name)) for name in plan.ablation_models]
    jobs += aggregate_jobs(plan)
    return jobs


# ----------------------------------------------------------------------------- up to date?

def _lookup(metadata: Mapping[str, Any], dotted: str) -> Tuple[bool, Any]:
    value: Any = metadata
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _stored_path(text: str) -> str:
    """A path as a script stored it (:func:`icl_cmr.files.outputs.portable_path`: relative to the repository
    root, ``~/..., or absolute), made absolute."""

    if text.startswith("~/"):
        return os.path.expanduser(text)
    return text if os.path.isabs(text) else str(REPO_ROOT / text)


def _same(expected: Any, found: Any, is_path: bool) -> bool:
    if is_path:
        # The plan's paths are relative to the working directory; stored ones to the repository.
        return isinstance(found, str) and os.path.realpath(_stored_path(found)) == os.path.realpath(str(expected))
    if isinstance(expected, (list, tuple)) and isinstance(found, (list, tuple)):
        return len(expected) == len(found) and all(_same(a, b, False) for a, b in zip(expected, found))
    if isinstance(expected, float) or isinstance(found, float):
        return isinstance(found, (int, float)) and not isinstance(found, bool) and float(found) == float(expected)
    return type(expected) is type(found) and expected == found


def read_metadata(path: Path) -> Optional[Mapping[str, Any]]:
    try:
        content = load_json(path) if path.suffix == ".json" else load_pickle(path)
    except (InputError, OSError):
        return None
    metadata = content.get("metadata") if isinstance(content, Mapping) else None
    return metadata if isinstance(metadata, Mapping) else None


def input_signatures(job: Job) -> Dict[str, Optional[List[int]]]:
    """``{input: [mtime_ns, size]}`` (None for a missing input), as the manifest records them."""
    out: Dict[str, Optional[List[int]]] = {}
    for source in job.inputs:
        try:
            info = os.stat(source)
        except OSError:
            out[source] = None
        else:
            out[source] = [info.st_mtime_ns, info.st_size]
    return out


def stale_reason(job: Job, recorded_inputs: Optional[Mapping[str, Any]] = None) -> Optional[str]:
    """Why ``job`` must run (a missing output, metadata that differs, a changed input), or None.

    Parameters
    ----------
    job : Job
    recorded_inputs : mapping, optional
        :func:`input_signatures` as recorded when the job last ran (from the manifest). Without
        them an input counts as changed when it is newer than the oldest output.

    Returns
    -------
    str or None
        None when every output exists, its metadata matches the plan and no input changed.
    """
    times = []
    for output in job.outputs:
        try:
            times.append(os.stat(output).st_mtime_ns)
        except OSError:
            return f"no {output}"
    for check in job.checks:
        metadata = read_metadata(Path(check.path))
        if metadata is None:
            return f"{check.path} has no readable metadata"
        for key, expected in check.expect.items():
            found, value = _lookup(metadata, key)
            if not found or not _same(expected, value, key in check.path_keys):
                return f"{check.path}: {key} is {value!r}, the plan wants {expected!r}"
    if recorded_inputs is not None:
        current = input_signatures(job)
        for source, signature in current.items():
            if signature is None:
                return f"input {source} is missing"
            if list(recorded_inputs.get(source) or []) != signature:
                return f"{source} changed since the job last ran"
        return None
    oldest = min(times) if times else None
    for source in job.inputs:
        try:
            if oldest is not None and os.stat(source).st_mtime_ns > oldest:
                return f"{source} is newer than the outputs"
        except OSError:
            return f"input {source} is missing"
    return None
