"""A 2-layer Mamba for the induction-heads task ([GD23] section 4.1.2, Table 11; DESIGN.md section 7).

The model definition and saved format are ``transformers``' ``MambaConfig`` /
``MambaForCausalLM``: :class:`InductionMamba` subclasses it, so its state dict loads
into a plain ``MambaForCausalLM`` and vice versa. Defaults: d_model 64, 2 layers,
state size 16, expansion 2, conv width 4, vocabulary 16 (66,496 parameters with
the tied unembedding; [GD23] report 74K for theirs).

What the subclass adds is a fast exact forward, :meth:`InductionMamba.last_logits`:
the sequence runs in chunks of positions through both layers, each layer carrying
its convolution window (3 positions) and its SSM state ([batch, 128, 16]) from chunk to
chunk, so memory does not grow with length; the scan itself is
:func:`icl_cmr.synthetic.scan.selective_scan` (a compiled loop on the CPU, a chunked
parallel scan elsewhere). Run with one chunk it is also the training forward, with
gradients. Tests check it against ``MambaForCausalLM.forward`` (the library's own
PyTorch path) on the same weights: logits and every parameter's gradient to 1e-5.

Two options reproduce ``mamba_ssm``'s first release (``MambaLMHeadModel``, commit 33dc96c,
2023-12-04), which [GD23] section 3.4 describes ("we choose LayerNorm"):
``norm="layernorm"`` puts ``torch.nn.LayerNorm`` (weight and bias) where ``MambaForCausalLM``
has its RMSNorm, in every block and before the head (66,688 parameters at the defaults), and
``initialization="mamba_ssm"`` draws the weights as that release does (:func:`init_like_mamba_ssm`).
A LayerNorm model's state dict has the norms' biases, so it loads into an :class:`InductionMamba`
built from the same config, not into a plain ``MambaForCausalLM``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import MambaConfig, MambaForCausalLM

from icl_cmr.errors import InputError
from icl_cmr.synthetic.task import VOCAB_SIZE
from icl_cmr.synthetic.scan import SCAN_METHODS, selective_scan

#: Positions per chunk of :meth:`InductionMamba.last_logits` for long inputs. Memory per chunk is
#: about batch x chunk x (2 x 128 + 64 + 36) floats per layer (the torch scan adds its own
#: batch x 256 x 128 x 16 blocks, icl_cmr.synthetic.scan.TORCH_SCAN_CHUNK). Our choice.
DEFAULT_CHUNK = 2 ** 14
#: Block and final norms: ``transformers``' RMSNorm (the shipped models), or LayerNorm as in
#: ``mamba_ssm``'s first release and [GD23] section 3.4.
MAMBA_NORMS = ("rmsnorm", "layernorm")
#: Weight initialisations: ``transformers``' ``MambaPreTrainedModel._init_weights`` (the shipped
#: models), or ``mamba_ssm``'s first release (:func:`init_like_mamba_ssm`).
MAMBA_INITIALIZATIONS = ("transformers", "mamba_ssm")
#: ``mamba_ssm``'s ``_init_weights`` defaults: the embedding's standard deviation, and one residual
#: branch per block (``out_proj`` rescaled by 1 / sqrt(1 x n_layers)).
MAMBA_SSM_EMBEDDING_STD = 0.02
MAMBA_SSM_RESIDUALS_PER_LAYER = 1


@dataclass(frozen=True)
class InductionMambaConfig:
    """Hyper-parameters of the task's Mamba. [GD23] section 4.1.2 / Table 11 (2 layers, d_model 64)."""

    vocab_size: int = VOCAB_SIZE
    d_model: int = 64
    n_layers: int = 2
    #: SSM state size N and expansion E (d_inner = E d_model): Mamba's defaults, [GD23] section 3.4.
    d_state: int = 16
    expand: int = 2
    #: Width of the causal depthwise convolution: Mamba's default.
    d_conv: int = 4
    #: One of :data:`MAMBA_NORMS` (the shipped models: RMSNorm).
    norm: str = "rmsnorm"
    #: One of :data:`MAMBA_INITIALIZATIONS` (the shipped models: ``transformers``'). Only a fresh model
    #: depends on it; it is kept in the config to say how a trained one began.
    initialization: str = "transformers"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "d_state", "expand", "d_conv"):
            if getattr(self, name) < 1:
                raise InputError(f"`{name}` must be >= 1, got {getattr(self, name)}", parameters=(name,))
        for name, choices in (("norm", MAMBA_NORMS), ("initialization", MAMBA_INITIALIZATIONS)):
            if getattr(self, name) not in choices:
                raise InputError(f"`{name}` must be one of {choices}, got {getattr(self, name)!r}",
                                 parameters=(name,))

    def to_dict(self) -> dict:
        return asdict(self)

    def to_hf(self) -> MambaConfig:
        """The ``transformers.MambaConfig`` (library defaults for everything not listed here)."""
        return MambaConfig(vocab_size=self.vocab_size, hidden_size=self.d_model, num_hidden_layers=self.n_layers,
                           state_size=self.d_state, expand=self.expand, conv_kernel=self.d_conv,
                           pad_token_id=0, bos_token_id=0, eos_token_id=0, use_cache=False,
                           induction_norm=self.norm, induction_initialization=self.initialization)


class InductionMamba(MambaForCausalLM):
    """``MambaForCausalLM`` with a chunked, memory-bounded last-position forward (module docstring)."""

    @classmethod
    def from_config(cls, config: InductionMambaConfig) -> "InductionMamba":
        """A freshly initialised model (``config.initialization``, seeded by torch's RNG)."""
        model = cls(config.to_hf())
        if config.norm == "layernorm":
            model._use_layer_norm()
        if config.initialization == "mamba_ssm":
            init_like_mamba_ssm(model)
        return model

    def _use_layer_norm(self) -> None:
        """Every block's norm and the final norm become ``nn.LayerNorm`` (weight 1, bias 0)."""
        d_model, eps = self.config.hidden_size, self.config.layer_norm_epsilon
        device, dtype = self.backbone.norm_f.weight.device, self.backbone.norm_f.weight.dtype
        for block in self.backbone.layers:
            block.norm = nn.LayerNorm(d_model, eps=eps, device=device, dtype=dtype)
        self.backbone.norm_f = nn.LayerNorm(d_model, eps=eps, device=device, dtype=dtype)

    @property
    def induction_config(self) -> InductionMambaConfig:
        """The :class:`InductionMambaConfig` this model's ``MambaConfig`` was built from."""
        config = self.config
        return InductionMambaConfig(vocab_size=config.vocab_size, d_model=config.hidden_size,
                                    n_layers=config.num_hidden_layers, d_state=config.state_size,
                                    expand=config.expand, d_conv=config.conv_kernel,
                                    norm=getattr(config, "induction_norm", "rmsnorm"),
                                    initialization=getattr(config, "induction_initialization", "transformers"))

    # ------------------------------------------------------------------ one chunk through one layer

    def _mixer_chunk(self, mixer, hidden: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor,
                     method: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``MambaMixer`` on positions [s, s + T) given the state before s.

        Parameters
        ----------
        hidden : Tensor, shape [B, T, d_model]
            The block's normalised input.
        conv_state : Tensor, shape [B, d_inner, d_conv - 1]
            The conv branch's inputs at the d_conv - 1 positions before s (zeros at s = 0,
            which is the library's zero padding).
        ssm_state : Tensor, shape [B, d_inner, d_state]

        Returns
        -------
        out : Tensor, shape [B, T, d_model]
        conv_state, ssm_state : the states after position s + T - 1
        delta : Tensor, shape [B, T, d_inner], float32
            The step sizes the scan used (:meth:`step_sizes`).
        """
        x, gate, delta, B, C, new_conv_state = self._ssm_inputs(mixer, hidden, conv_state)
        A = -torch.exp(mixer.A_log.float())
        y, new_ssm_state = selective_scan(x, delta, A, B, C, ssm_state, method=method)
        y = y + x.float() * mixer.D.float()
        y = y * F.silu(gate.float())
        return mixer.out_proj(y.to(hidden.dtype)), new_conv_state, new_ssm_state, delta

    @staticmethod
    def _ssm_inputs(mixer, hidden: torch.Tensor, conv_state: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The scan's inputs on positions [s, s + T) given the conv inputs before s.

        Returns
        -------
        x, gate : Tensor, shape [B, T, d_inner]
            The convolved branch (the scan's input) and the gate branch.
        delta : Tensor, shape [B, T, d_inner], float32
            The step sizes softplus(dt_proj(...)): how much each channel writes and forgets at each position.
        B, C : Tensor, shape [B, T, d_state]
        conv_state : Tensor, shape [B, d_inner, d_conv - 1]
            The conv inputs after position s + T - 1.
        """
        d_inner = mixer.intermediate_size
        x, gate = mixer.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)          # [B, d_inner, T] each
        padded = torch.cat([conv_state.to(x.dtype), x], dim=-1)
        new_conv_state = padded[:, :, padded.shape[-1] - conv_state.shape[-1]:]
        x = mixer.act(F.conv1d(padded, mixer.conv1d.weight, mixer.conv1d.bias, groups=d_inner))
        x = x.transpose(1, 2)                                                      # [B, T, d_inner]
        time_step, B, C = torch.split(mixer.x_proj(x), [mixer.time_step_rank, mixer.ssm_state_size,
                                                         mixer.ssm_state_size], dim=-1)
        delta = F.softplus(F.linear(time_step, mixer.dt_proj.weight).float() + mixer.dt_proj.bias.float())
        return x, gate.transpose(1, 2), delta, B, C, new_conv_state

    def initial_states(self, batch: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Zero conv and SSM states of every layer, on the model's device."""
        config = self.config
        device = self.backbone.embeddings.weight.device
        return [(torch.zeros((batch, config.intermediate_size, config.conv_kernel - 1), device=device,
                             dtype=self.backbone.embeddings.weight.dtype),
                 torch.zeros((batch, config.intermediate_size, config.state_size), device=device,
                             dtype=torch.float32))
                for _ in range(config.num_hidden_layers)]

    def forward_chunk(self, tokens: torch.Tensor, states: List[Tuple[torch.Tensor, torch.Tensor]],
                      method: str = "auto") -> Tuple[torch.Tensor, List[Tuple[torch.Tensor, torch.Tensor]]]:
        """Residual stream after the last layer at a chunk of positions, and the states after it.

        Parameters
        ----------
        tokens : LongTensor, shape [B, T]
            Positions s .. s + T - 1 of the sequence.
        states : list of (conv_state, ssm_state), one per layer
            The states before position s (:meth:`initial_states` at s = 0).
        method : {"auto", "numba", "torch"}
            The scan implementation (:func:`icl_cmr.synthetic.scan.selective_scan`).

        Returns
        -------
        hidden : Tensor, shape [B, T, d_model] (before the final norm)
        states : list of (conv_state, ssm_state)
        """
        hidden, new_states, _ = self._layers_chunk(tokens, states, method)
        return hidden, new_states

    def _layers_chunk(self, tokens: torch.Tensor, states: List[Tuple[torch.Tensor, torch.Tensor]], method: str,
                      keep_step_sizes: bool = False) -> Tuple[torch.Tensor, list, List[torch.Tensor]]:
        """:meth:`forward_chunk`, and each layer's step sizes [B, T, d_inner] when ``keep_step_sizes``."""
        hidden = self.backbone.embeddings(tokens)
        new_states, step_sizes = [], []
        for block, (conv_state, ssm_state) in zip(self.backbone.layers, states):
            residual = hidden.float() if block.residual_in_fp32 else hidden
            normed = block.norm(hidden.to(block.norm.weight.dtype))
            out, conv_state, ssm_state, delta = self._mixer_chunk(block.mixer, normed, conv_state, ssm_state, method)
            if keep_step_sizes:
                step_sizes.append(delta)
            hidden = residual + out
            new_states.append((conv_state, ssm_state))
        return hidden, new_states, step_sizes

    @torch.no_grad()
    def step_sizes(self, tokens: torch.Tensor, method: str = "auto") -> List[torch.Tensor]:
        """Every layer's step sizes delta at every position (one chunk: for analysis at moderate lengths).

        Parameters
        ----------
        tokens : LongTensor, shape [B, L]

        Returns
        -------
        list of Tensor, one per layer, shape [B, L, d_inner] (float32)
            Channel c at position t multiplies state n by exp(delta[t, c] * A[c, n]) and adds
            delta[t, c] * B[t, n] * x[t, c]: a large delta writes, a small one keeps.
        """
        if method not in SCAN_METHODS:
            raise InputError(f"method must be one of {SCAN_METHODS}, got {method!r}")
        return self._layers_chunk(tokens, self.initial_states(tokens.shape[0]), method, keep_step_sizes=True)[2]

    def last_logits(self, tokens: torch.Tensor, method: str = "auto",
                    chunk_size: Optional[int] = None) -> torch.Tensor:
        """Logits at the last position, the sequence run in chunks (memory independent of length).

        Parameters
        ----------
        tokens : LongTensor, shape [B, L]
        method : {"auto", "numba", "torch"}
            The scan implementation; "auto": numba on the CPU, torch elsewhere.
        chunk_size : int, optional
            Positions per chunk (default :data:`DEFAULT_CHUNK`, 2^14: training lengths run as
            one chunk). Gradients flow through every chunk.

        Returns
        -------
        Tensor, shape [B, vocab]
        """
        if method not in SCAN_METHODS:
            raise InputError(f"method must be one of {SCAN_METHODS}, got {method!r}")
        length = tokens.shape[1]
        chunk_size = DEFAULT_CHUNK if chunk_size is None else chunk_size
        if chunk_size < 1:
            raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
        states = self.initial_states(tokens.shape[0])
        hidden = None
        for start in range(0, length, chunk_size):
            hidden, states = self.forward_chunk(tokens[:, start:start + chunk_size], states, method)
        last = self.backbone.norm_f(hidden[:, -1])
        return self.lm_head(last.to(self.lm_head.weight.dtype))


@torch.no_grad()
def init_like_mamba_ssm(model: InductionMamba) -> None:
    """Redraw ``model``'s weights as ``mamba_ssm``'s first release draws a ``MambaLMHeadModel``'s.

    That release (``mamba_ssm/modules/mamba_simple.py``, ``models/mixer_seq_simple.py``):
    ``in_proj``, ``conv1d`` (weight and bias) and ``x_proj`` keep PyTorch's default
    initialisation (uniform in +-1/sqrt(fan_in)); ``out_proj`` too, divided by sqrt(n_layers);
    the embedding, shared with the head, is N(0, 0.02^2); norms are weight 1 (bias 0). ``dt_proj``,
    ``A_log`` and ``D`` are drawn as ``transformers`` draws them, which is the same recipe
    (uniform dt in [1e-3, 1e-1] through the inverse softplus, A = 1..N, D = 1), so they are redrawn
    with it. ``transformers`` instead draws ``in_proj``, ``x_proj`` and the embedding from
    N(0, 0.1^2), sets the conv bias to 0 and does not rescale ``out_proj``.
    """
    n_layers = len(model.backbone.layers)
    for block in model.backbone.layers:
        mixer = block.mixer
        for linear in (mixer.in_proj, mixer.x_proj, mixer.out_proj, mixer.conv1d):
            linear.reset_parameters()
        mixer.out_proj.weight /= math.sqrt(MAMBA_SSM_RESIDUALS_PER_LAYER * n_layers)
        mixer.init_mamba_weights()
        _reset_norm(block.norm)
    _reset_norm(model.backbone.norm_f)
    nn.init.normal_(model.backbone.embeddings.weight, std=MAMBA_SSM_EMBEDDING_STD)


def _reset_norm(norm: nn.Module) -> None:
    """Weight 1 and, for LayerNorm, bias 0 (``MambaRMSNorm`` has no ``reset_parameters``)."""
    nn.init.ones_(norm.weight)
    if getattr(norm, "bias", None) is not None:
        nn.init.zeros_(norm.bias)


def build_mamba(config: Optional[InductionMambaConfig] = None) -> InductionMamba:
    """A freshly initialised :class:`InductionMamba` (seed torch first for reproducible weights)."""
    return InductionMamba.from_config(config or InductionMambaConfig())

