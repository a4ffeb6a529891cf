"""Standard CMR's likelihood of whole free-recall sequences (issue 24; DESIGN.md section 8).

The model is the context maintenance and retrieval model as Polyn, Norman & Kahana (2009, Psychol. Rev.
116:129, "PNK09") define it and as Morton & Polyn (2016, J. Mem. Lang. 86:119, "MP16") evaluate it by
likelihood; ``cymr`` (Morton's package, ``cmr.py`` and ``operations.pyx``) implements the same equations
and its conventions are followed here wherever the papers leave a choice. It is **not** the model of
DESIGN.md section 3 ([LI24]'s simulator): that one decays context by ``1 - beta_enc`` per item and picks
items with a linear Luce rule, repeats allowed, until a draw cap.

Layers (localist, one list)
    Item layer f and context layer c have ``N + 1`` units: the ``N`` studied items by serial position
    (0-based) and a **start unit** (index ``N``). ``e_k`` is the unit vector of unit k.
Context update (PNK09 eq. 2-3; cymr ``integrate_context``)
    ``c <- rho c + B c_in`` with ``c_in`` of unit length and
    ``rho = sqrt(1 + B^2 ((c . c_in)^2 - 1)) - B (c . c_in)``, which keeps ``|c| = 1``.
Pre-experimental associations (cymr ``config_loc_cmr``: ``Dfc = 1 - Lfc``, ``Dcf = 1 - Lcf``)
    ``M^FC_pre = (1 - Lfc) I`` and ``M^CF_pre = (1 - Lcf) I`` on the items; the start unit maps to itself
    with weight 1 in both.
Study (PNK09 eq. 2, 4; cymr ``study_list``)
    Context starts at ``c = e_start``. Item i presents ``c_in = M^FC f_i / |M^FC f_i| = e_i`` (nothing was
    learned for i yet; at ``Lfc = 1`` its limit, where cymr would divide 0 by 0) with ``B = B_enc``; then
    ``M^FC_exp += Lfc c_i f_i^T`` and ``M^CF_exp += Lcf_i f_i c_i^T``, ``c_i`` the context just after
    item i, with the primacy gradient ``Lcf_i = Lcf + P1 exp(-P2 i)`` (MP16; cymr ``primacy``). Because
    ``e_i`` is orthogonal to every earlier context, ``rho = sqrt(1 - B_enc^2)`` at every study step and, closed form,
    ``c_i = rho^(i+1) e_start + B_enc sum_{j<=i} rho^(i-j) e_j``: the gradient [LI24]'s
    ``1 - beta_enc`` stands for, hence ``beta_enc = 1 - sqrt(1 - B_enc^2)`` (:func:`li24_beta_enc`).
    After the list, the start context is reinstated: one update with ``c_in = e_start``, ``B = B_start``.
Recall (MP16; cymr ``p_recall``)
    Support of item j: ``a_j = max((M^CF c)_j, amin)`` with ``amin = 1e-6``, where
    ``(M^CF c)_j = (1 - Lcf) c_j + Lcf_j (c_j^study . c)``. Before output k (k items recalled so far) the
    person stops with ``p_stop(k) = min(max(X1 exp(X2 k), 1e-6), 1 - 1e-6)``, and ``p_stop(N) = 1``
    (cymr ``p_stop_op``); else recalls item j among the items **not yet recalled** with
    ``P(j) = (1 - p_stop(k)) exp(2 a_j / T) / sum_{m not recalled} exp(2 a_m / T)``.
    A recalled item r retrieves ``c_in = M^FC f_r / |.| = ((1 - Lfc) e_r + Lfc c_r^study) / |.|`` into
    context with ``B = B_rec`` (PNK09 eq. 2).
Likelihood of a list
    ``P(r_1 ... r_n, stop) = prod_k P(r_k) * p_stop(n)``. Repeats and intrusions are removed from a
    person's sequence before it is scored, as cymr does (``prepare_lists(clean=True)``): the standard model
    can produce neither, and the remaining first recalls are scored as consecutive outputs.

Two departures from cymr, neither changing the model: probabilities are computed in log space (a
log-sum-exp softmax), so no probability is clipped (cymr floors each at 1e-5 before the log); and the
log-likelihood is split exactly into a choice part (everything but X1, X2) and a stop part (X1, X2 and
the number of recalls of each list only), which :mod:`icl_cmr.humans.likelihood_fits` maximises
separately.

Every function takes parameters as :class:`CmrParameters`, whose fields may be arrays of shape [P]: the
likelihood of P parameter sets is computed at once (a whole population of a global optimiser). Over lists
and study positions everything is vectorised; only the loop over output positions stays, because each
recall's context is the previous context drifted by the previous recall (a sequential recurrence).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, Iterable, Sequence

import numpy as np
import pandas as pd

from icl_cmr.errors import InputError

#: Floor of an item's support before the softmax (cymr's ``amin``).
MIN_SUPPORT = 1e-6
#: Floor and ceiling of the stop probability before all items are recalled (cymr's ``pmin``).
MIN_STOP = 1e-6

#: Parameters of the recall choices and of stopping.
CHOICE_PARAMETERS = ("B_enc", "B_start", "B_rec", "Lfc", "Lcf", "P1", "P2", "T")
STOP_PARAMETERS = ("X1", "X2")


@dataclass(frozen=True)
class CmrParameters:
    """Standard CMR's parameters (module docstring); each a float or an array of shape [P].

    Attributes
    ----------
    B_enc, B_start, B_rec : float or ndarray
        Context integration rates at study, at the start-context reinstatement, at recall (0..1).
    Lfc, Lcf : float or ndarray
        Learning rates of item-to-context and context-to-item associations (0..1); pre-experimental
        weights are ``1 - Lfc`` and ``1 - Lcf``.
    T : float or ndarray
        Temperature of the softmax choice rule (> 0).
    X1, X2 : float or ndarray
        Stop probability at output 0 and its exponential growth per output.
    P1, P2 : float or ndarray
        Primacy gradient of ``Lcf`` (0: none).
    """

    B_enc: "float | np.ndarray"
    B_start: "float | np.ndarray"
    B_rec: "float | np.ndarray"
    Lfc: "float | np.ndarray"
    Lcf: "float | np.ndarray"
    T: "float | np.ndarray"
    X1: "float | np.ndarray" = 0.01
    X2: "float | np.ndarray" = 0.3
    P1: "float | np.ndarray" = 0.0
    P2: "float | np.ndarray" = 0.0

    def arrays(self) -> Dict[str, np.ndarray]:
        """Every parameter as a float array of shape [P] (scalars broadcast to the common P)."""
        values = np.broadcast_arrays(*(np.atleast_1d(np.asarray(getattr(self, f.name), dtype=float))
                                       for f in fields(self)))
        if values[0].ndim != 1:
            raise InputError("each CMR parameter must be a number or a 1-D array", parameters=("parameters",))
        return {f.name: np.array(value) for f, value in zip(fields(self), values)}

    @property
    def size(self) -> int:
        """P, the number of parameter sets."""
        return int(self.arrays()["B_enc"].size)

    def check(self) -> None:
        """Raise :class:`InputError`, naming the parameter, for a value outside the model's range."""
        arrays = self.arrays()
        for name in ("B_enc", "B_start", "B_rec", "Lfc", "Lcf"):
            if not np.all((arrays[name] >= 0) & (arrays[name] <= 1)):
                raise InputError(f"`{name}` must lie in [0, 1], got {arrays[name]}", parameters=(name,))
        for name in ("T",):
            if not np.all(arrays[name] > 0):
                raise InputError(f"`{name}` must be > 0, got {arrays[name]}", parameters=(name,))
        for name in ("X1", "X2", "P1", "P2"):
            if not np.all(np.isfinite(arrays[name]) & (arrays[name] >= 0)):
                raise InputError(f"`{name}` must be finite and >= 0, got {arrays[name]}", parameters=(name,))


@dataclass(frozen=True)
class RecallLists:
    """One subject's recall sequences, first recalls of studied items only.

    Attributes
    ----------
    recalls : ndarray of int, shape [L, K]
        Serial positions (0-based) in output order; ``-1`` after the list's last recall. ``K`` >= 1.
    n_items : int
        N, the list length (the same for every list).
    """

    recalls: np.ndarray
    n_items: int

    def __post_init__(self) -> None:
        recalls = np.asarray(self.recalls, dtype=np.int64)
        if recalls.ndim != 2 or recalls.shape[1] < 1:
            raise InputError(f"`recalls` must have shape [lists, outputs >= 1], got {recalls.shape}",
                             parameters=("recalls",))
        if recalls.shape[1] > self.n_items or np.any(recalls >= self.n_items) or np.any(recalls < -1):
            raise InputError(f"`recalls` must hold serial positions 0..{self.n_items - 1} (or -1)",
                             parameters=("recalls", "n_items"))
        padding = recalls < 0
        if np.any(padding[:, :-1] & ~padding[:, 1:]):
            raise InputError("`recalls` has a recall after a -1 (padding must come last)", parameters=("recalls",))
        ordered = np.sort(np.where(padding, -1 - np.arange(recalls.shape[1]), recalls), axis=1)
        if np.any(ordered[:, 1:] == ordered[:, :-1]):
            raise InputError("`recalls` repeats an item within a list (remove repeats first)",
                             parameters=("recalls",))
        object.__setattr__(self, "recalls", recalls)

    @classmethod
    def from_sequences(cls, sequences: Iterable[Sequence[int]], n_items: int) -> "RecallLists":
        """From one sequence of 0-based serial positions per list (empty lists allowed)."""
        sequences = [list(map(int, sequence)) for sequence in sequences]
        width = max([1] + [len(sequence) for sequence in sequences])
        recalls = np.full((len(sequences), width), -1, dtype=np.int64)
        for row, sequence in enumerate(sequences):   # building an array from ragged lists
            recalls[row, :len(sequence)] = sequence
        return cls(recalls, n_items)

    @property
    def n_recalled(self) -> np.ndarray:
        """Recalls of each list, shape [L]."""
        return (self.recalls >= 0).sum(axis=1)

    @property
    def n_lists(self) -> int:
        return int(self.recalls.shape[0])


def li24_beta_enc(B_enc: "float | np.ndarray") -> "float | np.ndarray":
    """[LI24]'s ``beta_enc`` of standard CMR's ``B_enc``: ``1 - sqrt(1 - B_enc^2)``.

    Standard CMR's context keeps ``sqrt(1 - B_enc^2)`` of itself per studied item (module docstring), [LI24]'s
    ``1 - beta_enc`` (DESIGN.md sections 3 and 5), so the two give the same gradient at this value.

    Examples
    --------
    >>> round(float(li24_beta_enc(0.8)), 6)
    0.4
    """
    return 1.0 - np.sqrt(1.0 - np.square(B_enc))


def standard_b_enc(beta_enc: "float | np.ndarray") -> "float | np.ndarray":
    """Standard CMR's ``B_enc`` of [LI24]'s ``beta_enc``: ``sqrt(1 - (1 - beta_enc)^2)`` (inverse of
    :func:`li24_beta_enc`)."""
    return np.sqrt(1.0 - np.square(1.0 - np.asarray(beta_enc, dtype=float)))


def study_contexts(B_enc: np.ndarray, n_items: int) -> np.ndarray:
    """Context just after each study item, closed form (module docstring), shape [P, N, N + 1].

    Unit order: items 0..N-1, then the start unit. ``B_enc`` has shape [P].
    """
    B_enc = np.asarray(B_enc, dtype=float)
    rho = np.sqrt(1.0 - B_enc ** 2)[:, None, None]                        # [P, 1, 1]
    position = np.arange(n_items)
    steps_back = position[:, None] - position[None, :]                    # i - j, [N, N]
    items = np.where(steps_back >= 0, B_enc[:, None, None] * rho ** np.maximum(steps_back, 0), 0.0)
    start = rho[:, :, 0] ** (position + 1)                                # [P, N]
    return np.concatenate([items, start[:, :, None]], axis=2)


def drift(context: np.ndarray, context_input: np.ndarray, B: np.ndarray) -> np.ndarray:
    """One context update ``rho c + B c_in`` (PNK09 eq. 2), over any leading axes.

    Parameters
    ----------
    context, context_input : ndarray, shape [..., D]
        Unit-length context and input.
    B : ndarray
        Broadcastable against ``context[..., :1]``.
    """
    dot = np.sum(context * context_input, axis=-1, keepdims=True)
    rho = np.sqrt(np.maximum(1.0 + B ** 2 * (dot ** 2 - 1.0), 0.0)) - B * dot
    return rho * context + B * context_input


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """log of the softmax over the last axis; ``-inf`` entries (items already recalled) get ``-inf``.
    Each row needs one finite entry. (Written out: scipy's logsumexp costs several times more per call
    at these sizes, and this runs once per output position.)"""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class _Network:
    """A studied list for P parameter sets: what recall needs."""

    recall_weights: np.ndarray     # M^CF rows of the items, [P, N, N + 1]
    retrieved_context: np.ndarray  # normalised M^FC f_r of each item r, [P, N, N + 1]
    start_context: np.ndarray      # context when recall begins, [P, N + 1]
    B_rec: np.ndarray              # [P]
    T: np.ndarray                  # [P]


def _study(parameters: Dict[str, np.ndarray], n_items: int) -> _Network:
    """Study one list for every parameter set (module docstring, "Study")."""
    contexts = study_contexts(parameters["B_enc"], n_items)               # [P, N, D]
    n_sets = contexts.shape[0]
    own_unit = np.concatenate([np.eye(n_items), np.zeros((n_items, 1))], axis=1)[None]   # e_i, [1, N, D]
    lfc, lcf = parameters["Lfc"][:, None, None], parameters["Lcf"][:, None, None]
    lcf_by_position = lcf + parameters["P1"][:, None, None] * np.exp(
        -parameters["P2"][:, None, None] * np.arange(n_items)[None, :, None])
    recall_weights = (1.0 - lcf) * own_unit + lcf_by_position * contexts
    retrieved = (1.0 - lfc) * own_unit + lfc * contexts
    retrieved = retrieved / np.linalg.norm(retrieved, axis=2, keepdims=True)
    start_unit = np.zeros((n_sets, n_items + 1))
    start_unit[:, n_items] = 1.0
    start_context = drift(contexts[:, -1], start_unit, parameters["B_start"][:, None])
    return _Network(recall_weights, retrieved, start_context, parameters["B_rec"], parameters["T"])


def _longest_first(lists: RecallLists) -> np.ndarray:
    """Order of the lists by their number of recalls, most first (stable), shape [L]."""
    return np.argsort(-lists.n_recalled, kind="stable")


def _choice_steps(network: _Network, recalls: np.ndarray, n_steps: int):
    """Yield ``(k, log_choice)`` for outputs k = 0..n_steps-1: log P(item | not stopping) of every item,
    shape [P, R_k, N] (``-inf`` for items already recalled), for the R_k lists with at least k recalls.

    ``recalls`` [L, K] must list the longest sequences first (:func:`_longest_first`), so that the lists
    still recalling at output k are the first rows and each step works on a slice, not on finished lists.
    """
    n_items = network.recall_weights.shape[1]
    n_lists = recalls.shape[0]
    n_recalled = (recalls >= 0).sum(axis=1)
    context = np.repeat(network.start_context[:, None, :], n_lists, axis=1)  # [P, L, D]
    available = np.ones((n_lists, n_items), dtype=bool)
    inverse_temperature = (2.0 / network.T)[:, None, None]
    recall_weights_t = network.recall_weights.transpose(0, 2, 1)            # [P, D, N]
    # Each output's context is the previous one drifted by the previous recall: a sequential loop.
    for k in range(n_steps):
        reached = int(np.count_nonzero(n_recalled >= k))
        if reached == 0:
            return
        support = np.maximum(context[:, :reached] @ recall_weights_t, MIN_SUPPORT)   # [P, R_k, N]
        yield k, _log_softmax(np.where(available[:reached], inverse_temperature * support, -np.inf))
        going = int(np.count_nonzero(n_recalled > k))
        item = recalls[:going, k]
        context[:, :going] = drift(context[:, :going], network.retrieved_context[:, item, :],
                                   network.B_rec[:, None, None])
        available[np.arange(going), item] = False


def choice_log_probabilities(parameters: CmrParameters, lists: RecallLists) -> np.ndarray:
    """log P(r_k | r_1..r_{k-1}, not stopping) of every recall, shape [P, L, K] (0 where no recall)."""
    network = _study(parameters.arrays(), lists.n_items)
    order = _longest_first(lists)
    recalls = lists.recalls[order]
    n_recalled = lists.n_recalled[order]
    out = np.zeros((network.T.size,) + recalls.shape)
    for k, log_choice in _choice_steps(network, recalls, recalls.shape[1]):
        going = int(np.count_nonzero(n_recalled > k))
        out[:, order[:going], k] = log_choice[:, np.arange(going), recalls[:going, k]]
    return out


def choice_log_likelihood(parameters: CmrParameters, lists: RecallLists) -> np.ndarray:
    """Sum over a subject's recalls of log P(recall | not stopping), shape [P]: the part of the
    log-likelihood that depends on every parameter but X1, X2."""
    return choice_log_probabilities(parameters, lists).sum(axis=(1, 2))


def stop_probabilities(X1: np.ndarray, X2: np.ndarray, n_items: int) -> np.ndarray:
    """``p_stop(k)`` for k = 0..N recalls made, shape [P, N + 1] (module docstring; cymr ``p_stop_op``)."""
    X1, X2 = np.atleast_1d(np.asarray(X1, dtype=float)), np.atleast_1d(np.asarray(X2, dtype=float))
    p_stop = np.clip(X1[:, None] * np.exp(X2[:, None] * np.arange(n_items + 1)), MIN_STOP, 1.0 - MIN_STOP)
    p_stop[:, n_items] = 1.0
    return p_stop


def stop_log_likelihood(X1: np.ndarray, X2: np.ndarray, n_recalled: np.ndarray, n_items: int) -> np.ndarray:
    """Sum over lists of ``log p_stop(n) + sum_{k<n} log(1 - p_stop(k))``, n the list's recalls; shape [P]."""
    p_stop = stop_probabilities(X1, X2, n_items)                          # [P, N + 1]
    continue_before = np.concatenate([np.zeros((p_stop.shape[0], 1)),
                                      np.cumsum(np.log1p(-p_stop[:, :-1]), axis=1)], axis=1)
    n_recalled = np.asarray(n_recalled)
    return (continue_before[:, n_recalled] + np.log(p_stop[:, n_recalled])).sum(axis=1)


def log_likelihood(parameters: CmrParameters, lists: RecallLists) -> np.ndarray:
    """log P of every list's whole sequence (recalls, then the stop), summed over lists, shape [P]."""
    arrays = parameters.arrays()
    return (choice_log_likelihood(parameters, lists)
            + stop_log_likelihood(arrays["X1"], arrays["X2"], lists.n_recalled, lists.n_items))


def outcome_probabilities(parameters: CmrParameters, lists: RecallLists) -> np.ndarray:
    """Probability of each outcome before each output: every item, then stopping.

    Returns
    -------
    ndarray, shape [P, L, K + 1, N + 1]
        ``[..., k, j]``: P(recall item j) at output k for j < N, ``[..., k, N]``: P(stop), given the list's
        first k recalls; NaN for outputs after the list stopped. Each defined row sums to 1.
    """
    arrays = parameters.arrays()
    network = _study(arrays, lists.n_items)
    n_items, n_outputs = lists.n_items, lists.recalls.shape[1]
    order = _longest_first(lists)
    recalls = lists.recalls[order]
    p_stop = stop_probabilities(arrays["X1"], arrays["X2"], n_items)     # [P, N + 1]
    n_sets, n_lists = network.T.size, recalls.shape[0]
    out = np.full((n_sets, n_lists, n_outputs + 1, n_items + 1), np.nan)
    # One step more than the longest list (its own stop-or-go-on step), except after all N items:
    # then nothing is left to choose and p_stop(N) = 1.
    for k, log_choice in _choice_steps(network, recalls, min(n_outputs + 1, n_items)):
        reached = log_choice.shape[1]
        out[:, order[:reached], k, :n_items] = (1.0 - p_stop[:, k, None, None]) * np.exp(log_choice)
        out[:, order[:reached], k, n_items] = p_stop[:, k, None]
    complete = lists.n_recalled == n_items
    out[:, complete, n_items, :n_items] = 0.0
    out[:, complete, n_items, n_items] = 1.0
    return out


def simulate_recalls(parameters: CmrParameters, n_items: int, n_lists: int,
                     rng: np.random.Generator) -> RecallLists:
    """Recall sequences drawn from the model at one parameter set (the generative side of the likelihood).

    Parameters
    ----------
    parameters : CmrParameters
        One set (P = 1).
    n_items, n_lists : int
    rng : numpy.random.Generator

    Returns
    -------
    RecallLists
    """
    arrays = parameters.arrays()
    if arrays["B_enc"].size != 1:
        raise InputError("simulate_recalls takes one parameter set", parameters=("parameters",))
    parameters.check()
    network = _study(arrays, n_items)
    p_stop = stop_probabilities(arrays["X1"], arrays["X2"], n_items)[0]
    context = np.repeat(network.start_context, n_lists, axis=0)             # [L, D]
    available = np.ones((n_lists, n_items), dtype=bool)
    recalls = np.full((n_lists, n_items), -1, dtype=np.int64)
    going = np.ones(n_lists, dtype=bool)
    list_index = np.arange(n_lists)
    for k in range(n_items + 1):   # sequential for the same reason as the likelihood
        going &= rng.random(n_lists) >= p_stop[k]
        if not going.any():
            break
        support = np.maximum(context @ network.recall_weights[0].T, MIN_SUPPORT)
        probability = np.exp(_log_softmax(np.where(available, 2.0 * support / network.T[0], -np.inf)))
        cumulative = np.cumsum(probability, axis=1)
        # u in (0, 1]: the first item whose cumulative probability reaches u is one with a positive probability.
        target = (1.0 - rng.random(n_lists))[:, None] * cumulative[:, -1:]
        item = np.minimum((cumulative < target).sum(axis=1), n_items - 1)
        recalls[going, k] = item[going]
        drifted = drift(context, network.retrieved_context[0, item], network.B_rec[0])
        context = np.where(going[:, None], drifted, context)
        available[list_index[going], item[going]] = False
    width = max(1, int((recalls >= 0).sum(axis=1).max()))
    return RecallLists(recalls[:, :width], n_items)


def subject_recall_lists(merged: pd.DataFrame) -> Dict[int, RecallLists]:
    """Each subject's first recalls of studied items, from psifr's merged table (``fr.merge_free_recall``).

    Repeats and intrusions are dropped, as cymr's ``prepare_lists(clean=True)`` does (module docstring);
    lists keep their order (session, then list number); a list with no recall is kept (it scores a stop
    at output 0).

    Returns
    -------
    dict subject -> RecallLists
    """
    list_keys = ["subject"] + (["session", "list"] if "session" in merged.columns else ["list"])
    lengths = merged[merged["study"]].groupby(list_keys).size()                 # one row per list, in order
    first_recalls = merged[merged["recall"] & merged["study"] & ~merged["intrusion"] & (merged["repeat"] == 0)]
    first_recalls = first_recalls.sort_values(list_keys + ["output"])
    row = lengths.index.get_indexer(pd.MultiIndex.from_frame(first_recalls[list_keys]))
    output = first_recalls.groupby(list_keys).cumcount().to_numpy()
    recalls = np.full((len(lengths), max(1, int(output.max(initial=0)) + 1)), -1, dtype=np.int64)
    recalls[row, output] = first_recalls["input"].to_numpy(dtype=np.int64) - 1
    subject_of_list = lengths.index.get_level_values("subject")
    result = {}
    for subject in pd.unique(subject_of_list):   # a loop over people to split the arrays
        mine = np.flatnonzero(subject_of_list == subject)
        n_items = np.unique(lengths.to_numpy()[mine])
        if n_items.size != 1:
            raise InputError(f"subject {subject}: list length varies ({n_items.tolist()}); the model needs one "
                             f"length per subject", parameters=("merged",))
        width = max(1, int((recalls[mine] >= 0).sum(axis=1).max()))
        result[subject] = RecallLists(recalls[mine, :width], int(n_items[0]))
    return result
