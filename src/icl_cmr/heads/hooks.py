"""Attention hooks that hold what their names say, on every architecture we accept.

Head scores read ``hook_attn_scores`` (the softmax input: [LI24]'s ``CRP_scores``, which
the CMR fit reads) and ``hook_pattern``; the [CS24] attention knockout edits
``hook_attn_scores``; ablations edit ``hook_v`` / ``hook_z``. TransformerLens 4 fires
these inside its own attention code for most architectures (GPT-2, GPT-NeoX, Llama,
Mistral, Qwen2, Gemma, Phi, ...). Its generic bridge (GPT-J, OPT, GPT-Neo, ...) instead
lets the Hugging Face module compute attention and fires both hooks afterwards with the
*post-softmax* weights: the "scores" would silently be probabilities and an edit would
change nothing. Some bridges also keep each layer's full [batch, head, query, key] pattern
on the module after the forward, so memory grows by one pattern per layer.

:func:`prepare_attention_hooks` fixes and checks a loaded model, in this order:

1. each attention module drops the pattern it keeps once its forward returns (and no
   longer returns its weights to the Hugging Face layer loop: read them at ``hook_pattern``),
   and the key/value cache is switched off, so no layer's tensors outlive the next layer;
2. a probe on a few random tokens checks that every layer fires each hook exactly once,
   that ``softmax(hook_attn_scores) == hook_pattern``, and that an edit of
   ``hook_attn_scores`` (and of ``hook_v`` / ``hook_z`` when asked) changes the logits;
3. when the scores fail and the Hugging Face model computes attention through
   transformers' ``AttentionInterface``, its attention is routed through
   :func:`hooked_eager_attention`, which fires the bridge's own hooks inside the
   computation, and the probe runs again; the logits must equal the original model's;
4. otherwise the model is refused with one :class:`~icl_cmr.errors.InputError` line;
5. the bridge is then checked against the model it wraps: on the same probe tokens, the
   Hugging Face model's own forward pass (its own modules put back for one pass, the same
   weights, eager attention) must give the bridge's logits and the last layer's
   ``hook_pattern`` within the dtype's tolerance. An adapter that drops a config option
   (GPT-2's ``scale_attn_weights=False``: TransformerLens 4.3 still divides by sqrt(d_head))
   is refused in one line naming the model type, the differences and, where known, the
   option. A bridge whose forward pass fails on the probe is refused the same way.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from icl_cmr.errors import InputError

logger = logging.getLogger(__name__)

#: TransformerLens 4 hook-name templates, per layer. ``pattern`` and ``attn_scores``
#: are [batch, head, query, key]; ``q``/``z`` are [batch, pos, head, d_head];
#: ``k``/``v`` are [batch, pos, kv_head, d_head] (kv_head < head for grouped-query models).
HOOK_TEMPLATES = {
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "attn_scores": "blocks.{layer}.attn.hook_attn_scores",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "z": "blocks.{layer}.attn.hook_z",
    "attn_out": "blocks.{layer}.attn.hook_out",
}


def describe_exception(err: BaseException) -> str:
    """``Type: first line of the message`` (or ``Type`` alone), for one-line refusals."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


#: Packages whose exceptions, raised while a model loads or runs its probe, mean that the library cannot
#: handle this model (an adapter's AssertionError or RuntimeError), not a bug of ours or of a caller.
_LIBRARY_PACKAGES = frozenset({"transformer_lens", "transformers", "torch", "safetensors", "tokenizers",
                               "huggingface_hub", "accelerate"})


def raised_by_libraries(err: BaseException) -> bool:
    """Whether ``err`` was raised inside TransformerLens, transformers, torch, ... (its innermost Python frame)."""
    trace, module = err.__traceback__, ""
    while trace is not None:
        module = trace.tb_frame.f_globals.get("__name__", "")
        trace = trace.tb_next
    return module.split(".")[0] in _LIBRARY_PACKAGES


def transformer_lens_version() -> str:
    """The installed TransformerLens version, named in refusals: adapters change between releases."""
    try:
        return version("transformer-lens")
    except PackageNotFoundError:
        return "(version unknown)"


def hook_name(layer: int, kind: str) -> str:
    """The TransformerLens 4 hook name for ``kind`` (a key of :data:`HOOK_TEMPLATES`) at ``layer``."""
    try:
        return HOOK_TEMPLATES[kind].format(layer=layer)
    except KeyError:
        raise InputError(f"unknown hook kind {kind!r}; accepted: {sorted(HOOK_TEMPLATES)}") from None


#: Name under which :func:`hooked_eager_attention` is registered with transformers.
HOOKED_ATTENTION_NAME = "icl_cmr_hooked_eager"

#: Attribute of a Hugging Face attention module holding its bridge's (scores, pattern) hooks.
_HOOKS_ATTRIBUTE = "_icl_cmr_attention_hooks"

#: Tokens in the probe input: enough for a query with several earlier keys, cheap for any model.
PROBE_TOKENS = 8

#: Attributes on which TransformerLens 4 attention bridges keep the last pattern/scores.
_RETAINED_ATTRIBUTES = ("_pattern", "_attn_scores", "_captured_pre_ln_residual")

#: Hook kinds the probe can check (keys of :data:`HOOK_TEMPLATES`).
CHECKABLE_HOOKS = ("attn_scores", "pattern", "v", "z")

#: Largest |softmax(scores) - pattern| accepted, by dtype: float32 rounding, and the
#: 8-bit (bfloat16) / 11-bit (float16) mantissas of half-precision patterns.
_SOFTMAX_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9, torch.bfloat16: 1e-2, torch.float16: 2e-3}

#: Largest logit difference accepted between the original and the rerouted attention,
#: relative to the largest |logit|: float32 kernel rounding, and half precision.
_REROUTE_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def hooked_eager_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: Optional[torch.Tensor], scaling: Optional[float] = None,
                           dropout: float = 0.0, softcap: Optional[float] = None, **kwargs):
    """Eager attention that fires the bridge's ``hook_attn_scores`` and ``hook_pattern`` inside.

    The transformers ``AttentionInterface`` signature: called by a Hugging Face attention
    module after its projections and rotary embedding. Scores are computed in float32
    (as GPT-J's own eager attention does; more exact than half precision elsewhere).

    Parameters
    ----------
    module : torch.nn.Module
        The Hugging Face attention module; :func:`prepare_attention_hooks` gave it its
        bridge's hooks.
    query : Tensor, shape [batch, head, query, d_head]
    key, value : Tensor, shape [batch, kv_head, key, d_head]
        ``head`` is a multiple of ``kv_head`` (grouped-query attention repeats kv heads).
    attention_mask : Tensor, shape [batch, 1, query, >= key], or None
        Additive float mask (or boolean, True = visible), as transformers' eager mask.
    scaling : float, optional
        Multiplier of ``q . k`` (default ``d_head ** -0.5``).
    dropout : float
        Attention dropout, applied in training mode only.
    softcap : float, optional
        Logit soft-capping ``softcap * tanh(scores / softcap)`` before the mask (Gemma-2).

    Returns
    -------
    output : Tensor, shape [batch, query, head, d_head]
    weights : None
        So that the bridge does not fire its hooks a second time, after the fact.

    Raises
    ------
    InputError
        If the module was not prepared, or the call carries attention sinks this
        function does not implement.
    """
    hooks = module.__dict__.get(_HOOKS_ATTRIBUTE)
    if hooks is None:
        raise InputError(f"{type(module).__name__} was routed through {HOOKED_ATTENTION_NAME} without its hooks")
    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        raise InputError(f"{type(module).__name__} uses attention sinks, which {HOOKED_ATTENTION_NAME} "
                         "does not implement")
    scores_hook, pattern_hook = hooks
    if key.shape[1] != query.shape[1]:
        repeats = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeats, dim=1), value.repeat_interleave(repeats, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        mask = attention_mask[..., : key.shape[-2]]
        if mask.dtype == torch.bool:
            mask = torch.zeros((), dtype=scores.dtype, device=scores.device).masked_fill(
                ~mask, torch.finfo(scores.dtype).min)
        scores = scores + mask.to(scores.dtype)
    scores = scores_hook(scores)
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    if module.training and dropout > 0:
        weights = torch.nn.functional.dropout(weights, p=dropout)
    weights = pattern_hook(weights)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


def _register_hooked_attention() -> None:
    """Register :func:`hooked_eager_attention` (and the eager mask) with transformers, once per process.

    transformers keeps attention implementations in a process-wide registry; registering
    under our own name changes nothing for models that do not ask for it.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    if HOOKED_ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(HOOKED_ATTENTION_NAME, hooked_eager_attention)
        AttentionMaskInterface.register(HOOKED_ATTENTION_NAME, eager_mask)


# ----------------------------------------------------------------------------- the probe

def _attention_modules(model) -> List[torch.nn.Module]:
    return [model.blocks[layer].attn for layer in range(int(model.cfg.n_layers))]


def _release_retained_patterns(model) -> None:
    """After each attention forward, drop every reference to its pattern that would outlive it.

    Some bridges keep the last pattern/scores on the module (GPT-2, GPT-NeoX), and some
    return the weights to a Hugging Face decoder loop that holds them until the next
    layer returns (Bloom). Both go: the hooks are where patterns are read.
    """
    def release(module, inputs, output):  # noqa: ARG001 - torch forward-hook signature
        for attribute in _RETAINED_ATTRIBUTES:
            if getattr(module, attribute, None) is not None:
                setattr(module, attribute, None)
        if isinstance(output, tuple) and len(output) >= 2 and isinstance(output[1], torch.Tensor) \
                and output[1].ndim == 4:
            return (output[0], None) + tuple(output[2:])
        return None

    hf_config = getattr(getattr(model, "original_model", None), "config", None)
    if hf_config is not None and getattr(hf_config, "use_cache", False):
        # A key/value cache keeps every layer's keys and values for generation; these
        # passes never reuse them (GPT-NeoX: +2 x [batch, head, pos, d_head] per layer).
        hf_config.use_cache = False
    for module in _attention_modules(model):
        if not getattr(module, "_icl_cmr_releases_patterns", False):
            # always_call: also when a hook stops the pass inside this module (head_scores.stop_after_last_attention)
            module.register_forward_hook(release, always_call=True)
            module._icl_cmr_releases_patterns = True


def _probe_tokens(model) -> torch.Tensor:
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    vocab = int(model.cfg.d_vocab)
    return torch.randint(0, vocab, (1, PROBE_TOKENS), generator=generator).to(device)


def _run(model, tokens: torch.Tensor, hooks) -> torch.Tensor:
    try:
        with torch.inference_mode():
            return model.run_with_hooks(tokens, fwd_hooks=hooks, return_type="logits")
    except Exception as err:  # an adapter that loads a configuration it cannot run (RuntimeError, AssertionError, ...)
        if isinstance(err, (InputError, MemoryError)) or not raised_by_libraries(err):
            raise
        raise InputError(f"{describe_model(model)} is not supported by TransformerLens {transformer_lens_version()}: "
                         f"its forward pass fails on a probe of {PROBE_TOKENS} tokens ({describe_exception(err)})") from err


def _capture(model, tokens: torch.Tensor, kinds: Sequence[str]) -> Tuple[torch.Tensor, Dict[str, list]]:
    """Logits and, per hook name, every tensor it fired with during one forward pass."""
    fired: Dict[str, list] = {}

    def record(tensor, hook):
        fired.setdefault(hook.name, []).append(tensor.detach().clone())

    names = [hook_name(layer, kind) for layer in range(int(model.cfg.n_layers)) for kind in kinds]
    logits = _run(model, tokens, [(name, record) for name in names])
    return logits, {name: fired.get(name, []) for name in names}


def _scores_problem(model, tokens: torch.Tensor) -> Optional[str]:
    """Why ``hook_attn_scores`` is not the softmax input, or None when it is (with edits that reach the logits)."""
    logits, fired = _capture(model, tokens, ("attn_scores", "pattern"))
    for layer in range(int(model.cfg.n_layers)):
        scores, patterns = fired[hook_name(layer, "attn_scores")], fired[hook_name(layer, "pattern")]
        if len(scores) != 1 or len(patterns) != 1:
            return (f"layer {layer} fired hook_attn_scores {len(scores)} and hook_pattern {len(patterns)} times "
                    "in one forward pass (expected once each)")
        gap = (torch.softmax(scores[0].float(), dim=-1) - patterns[0].float()).abs().max().item()
        if not gap <= _SOFTMAX_TOLERANCE.get(patterns[0].dtype, 1e-2):
            return (f"softmax(hook_attn_scores) differs from hook_pattern by {gap:.3g} at layer {layer}: "
                    "the hook does not hold the pre-softmax scores")

    def cut_earlier_keys(scores, hook):  # noqa: ARG001
        # the last query keeps only itself: a change large enough to reach half-precision logits
        scores[..., -1, :-1] = torch.finfo(scores.dtype).min
        return scores

    names = [hook_name(layer, "attn_scores") for layer in range(int(model.cfg.n_layers))]
    edited_patterns: Dict[str, torch.Tensor] = {}

    def record_pattern(pattern, hook):
        edited_patterns[hook.name] = pattern.detach()[..., -1, :-1].float().clone()

    edited = _run(model, tokens, [(name, cut_earlier_keys) for name in names]
                  + [(hook_name(layer, "pattern"), record_pattern) for layer in range(int(model.cfg.n_layers))])
    for layer in range(int(model.cfg.n_layers)):
        weight = edited_patterns.get(hook_name(layer, "pattern"))
        if weight is None or weight.abs().max().item() > _SOFTMAX_TOLERANCE.get(logits.dtype, 1e-2):
            return f"an edit of hook_attn_scores at layer {layer} does not reach hook_pattern"
    if torch.equal(edited, logits):
        return "an edit of hook_attn_scores does not change the logits"
    return None


def _edit_problem(model, tokens: torch.Tensor, kind: str) -> Optional[str]:
    """Why zeroing ``hook_<kind>`` of every layer leaves the logits unchanged, or None."""
    def zero(activation, hook):  # noqa: ARG001
        return torch.zeros_like(activation)

    logits = _run(model, tokens, [])
    names = [hook_name(layer, kind) for layer in range(int(model.cfg.n_layers))]
    if torch.equal(_run(model, tokens, [(name, zero) for name in names]), logits):
        return f"zeroing hook_{kind} does not change the logits"
    return None


def _route_through_hooked_attention(model) -> bool:
    """Route a generic bridge's Hugging Face attention through :func:`hooked_eager_attention`.

    Returns False when the Hugging Face model does not compute attention through
    transformers' ``AttentionInterface`` (e.g. GPT-Neo), so it cannot be rerouted.
    """
    hf_model = getattr(model, "original_model", None)
    if hf_model is None or not hf_model._can_set_attn_implementation():
        return False
    _register_hooked_attention()
    for module in _attention_modules(model):
        original = getattr(module, "original_component", None)
        if original is None:
            return False
        # __dict__, not setattr: the hooks must not become submodules of the HF module.
        original.__dict__[_HOOKS_ATTRIBUTE] = (module.hook_attn_scores, module.hook_pattern)
    hf_model.set_attn_implementation(HOOKED_ATTENTION_NAME)
    return hf_model.config._attn_implementation == HOOKED_ATTENTION_NAME


def architecture_name(model) -> str:
    """The Hugging Face architecture of a bridged model (e.g. ``GPTJForCausalLM``), for messages."""
    hf_model = getattr(model, "original_model", None)
    return type(hf_model).__name__ if hf_model is not None else type(model).__name__


def describe_model(model) -> str:
    """``model_type (architecture)`` of a bridged model, e.g. ``gpt2 (GPT2LMHeadModel)``, for messages."""
    config = getattr(getattr(model, "original_model", None), "config", None)
    model_type = getattr(config, "model_type", None)
    return f"{model_type} ({architecture_name(model)})" if model_type else architecture_name(model)


# ----------------------------------------------------------------------------- the bridge against Hugging Face

#: Largest logit difference accepted between the bridge and the wrapped Hugging Face model on the
#: probe, relative to the largest |logit|: float32 kernel rounding (measured <= 4e-7 on the 15
#: architectures of tests/test_architectures.py), half precision (bfloat16: 8-bit mantissa; OPT's
#: rerouted attention, scored in float32, measured 4e-3).
_FIDELITY_LOGIT_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.bfloat16: 5e-2, torch.float16: 1e-2}

#: Largest attention-probability difference accepted (absolute; measured <= 3e-6 in float32, <= 4e-3,
#: one bfloat16 step, in bfloat16).
_FIDELITY_PATTERN_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.bfloat16: 2e-2, torch.float16: 5e-3}

#: Config attributes a TransformerLens 4 adapter reads nowhere, per ``model_type``, with the value its
#: own code assumes; named in a refusal when the config says otherwise (measured with TransformerLens
#: 4.3, tests/test_bridge_fidelity.py). GPT-2's bridge always divides q.k by sqrt(d_head).
KNOWN_IGNORED_CONFIG = {"gpt2": {"scale_attn_weights": True}}

_ORIGINAL = "_original_component"


@contextlib.contextmanager
def hugging_face_modules(hf_model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The bridge's wrapped Hugging Face model with its own modules back in place, for one forward pass.

    TransformerLens 4 replaces each mapped submodule of the Hugging Face model (embeddings, the list
    of blocks, attention, MLP, norms, unembedding) by a bridge component that keeps the original as
    its ``_original_component``, so calling the Hugging Face model runs the bridge's code. Inside
    this context every bridge component (and every list of bridged blocks) is swapped back for the
    module it wraps: the same objects and weights, nothing copied; on exit the bridge is put back.

    Parameters
    ----------
    hf_model : torch.nn.Module
        ``bridge.original_model``.

    Yields
    ------
    torch.nn.Module
        ``hf_model`` itself, whose forward now runs Hugging Face's code only.
    """
    swaps: List[Tuple[torch.nn.Module, str, torch.nn.Module]] = []
    visited = set()

    def unwrap(child: torch.nn.Module) -> torch.nn.Module:
        while _ORIGINAL in child._modules and child._modules[_ORIGINAL] is not None:
            child = child._modules[_ORIGINAL]
        return child

    def restore(module: torch.nn.Module) -> None:
        if id(module) in visited:
            return
        visited.add(id(module))
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            original = unwrap(child)
            if isinstance(child, torch.nn.ModuleList) and any(unwrap(item) is not item for item in child):
                original = torch.nn.ModuleList([unwrap(item) for item in child])
            if original is not child:
                swaps.append((module, name, child))
                module._modules[name] = original
            restore(original)

    try:
        restore(hf_model)
        yield hf_model
    finally:
        for module, name, child in reversed(swaps):
            module._modules[name] = child


def _hugging_face_forward(model, tokens: torch.Tensor, layer: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The wrapped Hugging Face model's own logits on ``tokens`` and its attention probabilities at ``layer``.

    Eager attention (the only kind that returns probabilities) for this pass, whatever the model
    runs otherwise (e.g. :data:`HOOKED_ATTENTION_NAME`). Returns ``(logits [batch, pos, vocab],
    pattern [batch, head, query, key] or None when the layer's module returns none)``.
    """
    hf_model = model.original_model
    attention = getattr(model.blocks[layer].attn, "original_component", None)
    batch, n_pos = tokens.shape
    found: Dict[str, torch.Tensor] = {}

    def record(module, inputs, output):  # noqa: ARG001 - torch forward-hook signature
        for item in output[1:] if isinstance(output, tuple) else ():
            if isinstance(item, torch.Tensor) and item.ndim == 4 and item.shape[0] == batch \
                    and tuple(item.shape[2:]) == (n_pos, n_pos):
                found.setdefault("pattern", item.detach().clone())
                return

    implementation = getattr(hf_model.config, "_attn_implementation", None)
    handle = attention.register_forward_hook(record) if attention is not None else None
    try:
        with torch.inference_mode(), hugging_face_modules(hf_model):
            switch = implementation not in (None, "eager") and hf_model._can_set_attn_implementation()
            if switch:
                hf_model.set_attn_implementation("eager")
            try:
                output = hf_model(tokens, output_attentions=True, use_cache=False)
            finally:
                if switch:
                    hf_model.set_attn_implementation(implementation)
    finally:
        if handle is not None:
            handle.remove()
    logits = output.logits if hasattr(output, "logits") else output[0]
    return logits, found.get("pattern")


def _ignored_config(model) -> str:
    """``"; the config sets X=v, which TransformerLens ignores (it assumes w)"`` for known cases, else ``""``."""
    config = model.original_model.config
    ignored = KNOWN_IGNORED_CONFIG.get(getattr(config, "model_type", None), {})
    found = [f"{name}={getattr(config, name)!r}" for name, assumed in ignored.items()
             if hasattr(config, name) and getattr(config, name) != assumed]
    if not found:
        return ""
    assumed = ", ".join(f"{value!r}" for name, value in ignored.items() if getattr(config, name) != value)
    return f"; the config sets {', '.join(found)}, which TransformerLens ignores (it assumes {assumed})"


@dataclass(frozen=True)
class BridgeAgreement:
    """How closely a bridge reproduces the Hugging Face model it wraps on one input (:func:`compare_with_hugging_face`).

    Attributes
    ----------
    logit_gap : float
        Largest |bridge - Hugging Face| logit.
    largest_logit : float
        Largest |logit| of the Hugging Face model (at least 1): the logit tolerance is relative to it.
    pattern_gap : float or None
        Largest |bridge ``hook_pattern`` - Hugging Face attention probability| at ``layer``; None when
        the Hugging Face attention module returns no probabilities.
    layer : int
        The layer whose pattern is compared (the last: a per-layer rule such as GPT-2's
        ``scale_attn_by_inverse_layer_idx`` leaves layer 0 alone).
    dtype : torch.dtype
        The weights' precision, which sets the tolerances.
    """

    logit_gap: float
    largest_logit: float
    pattern_gap: Optional[float]
    layer: int
    dtype: torch.dtype

    @property
    def logit_tolerance(self) -> float:
        """Largest accepted logit gap relative to :attr:`largest_logit`."""
        return _FIDELITY_LOGIT_TOLERANCE.get(self.dtype, 5e-2)

    @property
    def pattern_tolerance(self) -> float:
        """Largest accepted attention-probability gap."""
        return _FIDELITY_PATTERN_TOLERANCE.get(self.dtype, 2e-2)

    @property
    def agrees(self) -> bool:
        """Whether both gaps are within the dtype's tolerances."""
        return self.logit_gap <= self.logit_tolerance * self.largest_logit and (
            self.pattern_gap is None or self.pattern_gap <= self.pattern_tolerance)

    def describe(self) -> str:
        """What differs and the tolerance, for a refusal."""
        pattern = "" if self.pattern_gap is None else \
            f" and layer {self.layer}'s attention pattern by {self.pattern_gap:.2g}"
        return (f"its logits differ from the Hugging Face model's own by {self.logit_gap:.3g} "
                f"({self.logit_gap / self.largest_logit:.2%} of the largest){pattern} "
                f"({str(self.dtype).replace('torch.', '')} tolerance: {self.logit_tolerance:.2%} and "
                f"{self.pattern_tolerance:g})")


def compare_with_hugging_face(model, tokens: Optional[torch.Tensor] = None) -> BridgeAgreement:
    """Run the bridge and the Hugging Face model it wraps on the same tokens and measure how far apart they are.

    Parameters
    ----------
    model : transformer_lens.model_bridge.TransformerBridge
        Loaded with ``boot_transformers`` (``model.original_model`` is the wrapped model).
    tokens : Tensor, shape [batch, pos], optional
        Default: the probe's :data:`PROBE_TOKENS` random tokens.

    Returns
    -------
    BridgeAgreement

    Raises
    ------
    InputError
        The bridge's forward pass fails.
    Exception
        Whatever the Hugging Face forward pass raises.
    """
    tokens = _probe_tokens(model) if tokens is None else tokens
    layer = int(model.cfg.n_layers) - 1
    captured: Dict[str, torch.Tensor] = {}

    def record(pattern, hook):  # noqa: ARG001
        captured["pattern"] = pattern.detach().clone()

    logits = _run(model, tokens, [(hook_name(layer, "pattern"), record)])
    reference, reference_pattern = _hugging_face_forward(model, tokens, layer)
    pattern = captured.get("pattern")
    pattern_gap = None
    if reference_pattern is not None and pattern is not None and pattern.shape == reference_pattern.shape:
        pattern_gap = (pattern.float() - reference_pattern.float()).abs().max().item()
    return BridgeAgreement(logit_gap=(logits.float() - reference.float()).abs().max().item(),
                           largest_logit=max(1.0, reference.float().abs().max().item()),
                           pattern_gap=pattern_gap, layer=layer, dtype=next(model.parameters()).dtype)


def _fidelity_problem(model, tokens: torch.Tensor) -> Optional[str]:
    """Why the bridge cannot be trusted to compute what the Hugging Face model it wraps computes, or None."""
    try:
        agreement = compare_with_hugging_face(model, tokens)
    except Exception as err:  # the reference itself cannot run: nothing to compare against
        if isinstance(err, (InputError, MemoryError)) or not raised_by_libraries(err):
            raise
        return (f"the wrapped Hugging Face model's own forward pass fails on a probe of {PROBE_TOKENS} tokens "
                f"({describe_exception(err)}), so TransformerLens's cannot be checked against it")
    if agreement.agrees:
        logger.debug("%s: TransformerLens agrees with the Hugging Face forward pass (logits %.2g, layer %d "
                     "pattern %s)", describe_model(model), agreement.logit_gap, agreement.layer,
                     agreement.pattern_gap)
        return None
    return f"on a probe of {PROBE_TOKENS} tokens {agreement.describe()}{_ignored_config(model)}"


def prepare_attention_hooks(model, require: Sequence[str] = ("attn_scores", "pattern")) -> None:
    """Make the attention hooks of a TransformerLens 4 model trustworthy, or refuse the model.

    Parameters
    ----------
    model : transformer_lens.model_bridge.TransformerBridge
        Freshly loaded, in evaluation mode.
    require : sequence of {"attn_scores", "pattern", "v", "z"}
        The hooks the caller reads or edits. ``"attn_scores"`` means: the pre-softmax
        scores, and edits of them reach the model's output (the knockout); ``"v"`` /
        ``"z"``: zeroing them changes the output (ablations). ``hook_pattern`` is
        always checked to fire once per layer.

    Raises
    ------
    InputError
        One line naming the architecture and what is wrong, when a required hook
        cannot be made to hold what its name says, when the bridge's forward pass fails,
        or when its logits or last layer's pattern differ from the wrapped Hugging Face
        model's own beyond the dtype's tolerance (:func:`hugging_face_modules`).
    """
    unknown = sorted(set(require) - set(CHECKABLE_HOOKS))
    if unknown:
        raise InputError(f"unknown hook kinds {unknown}; accepted: {', '.join(CHECKABLE_HOOKS)}")
    _release_retained_patterns(model)
    tokens = _probe_tokens(model)
    if "attn_scores" in require:
        problem = _scores_problem(model, tokens)
        if problem is not None:
            original_logits = _run(model, tokens, [])
            if _route_through_hooked_attention(model):
                rerouted = _run(model, tokens, [])
                gap = (rerouted.float() - original_logits.float()).abs().max().item()
                scale = max(1.0, original_logits.float().abs().max().item())
                if gap > _REROUTE_TOLERANCE.get(original_logits.dtype, 5e-2) * scale:
                    problem = f"its attention rerouted through {HOOKED_ATTENTION_NAME} changes the logits by {gap:.3g}"
                else:
                    logger.info("%s: TransformerLens fires hook_attn_scores after the softmax; attention now runs "
                                "through %s, which fires the hooks inside (logits agree to %.2g)",
                                architecture_name(model), HOOKED_ATTENTION_NAME, gap)
                    problem = _scores_problem(model, tokens)
            if problem is not None:
                raise InputError(f"{architecture_name(model)} is not supported: {problem}; its attention scores "
                                 "and knockouts would be wrong")
    else:
        _, fired = _capture(model, tokens, ("pattern",))
        for name, tensors in fired.items():
            if len(tensors) != 1:
                raise InputError(f"{architecture_name(model)} is not supported: {name} fired {len(tensors)} times in "
                                 "one forward pass (expected once)")
    for kind in ("v", "z"):
        if kind in require:
            problem = _edit_problem(model, tokens, kind)
            if problem is not None:
                raise InputError(f"{architecture_name(model)} is not supported: {problem}; ablations would do nothing")
    if getattr(model, "original_model", None) is not None:
        problem = _fidelity_problem(model, tokens)
        if problem is not None:
            raise InputError(f"{describe_model(model)} is not supported by TransformerLens "
                             f"{transformer_lens_version()}: {problem}; its scores and losses would be wrong")
