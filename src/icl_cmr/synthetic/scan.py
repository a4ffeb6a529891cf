"""Mamba's selective scan ([GD23] section 3.2, Algorithm 2), two exact implementations.

For a batch b, channel d and state dimension n, with the discretisation of [GD23]
eq. (4) (zero-order hold for A, Euler for B, as the reference implementation and
``transformers``' ``MambaMixer`` do)::

    h[t, d, n] = exp(delta[t, d] A[d, n]) h[t-1, d, n] + (delta[t, d] B[t, n]) u[t, d]
    y[t, d]    = sum_n C[t, n] h[t, d, n]

starting from ``h[-1] = h0`` (zeros for a fresh sequence). The skip term ``D u`` and
the output gate stay with the caller (:mod:`icl_cmr.synthetic.mamba`).

* :func:`selective_scan` with ``method="numba"`` (CPU): a compiled sequential loop
  that never forms the [batch, length, channel, state] tensor of states except, when
  gradients are needed, to keep them for the backward pass; the backward pass is the
  same recurrence run in reverse (hand-derived gradients, checked against autograd
  through ``transformers``' own scan in the tests).
* ``method="torch"`` (any device, autograd by torch): a chunked Hillis-Steele scan,
  log2(chunk) vectorised steps per chunk, the state carried from chunk to chunk.
  This is the path for CUDA.

Both run in float32 whatever the caller's dtype (the library's scan does the same).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from numba import njit

from icl_cmr.devices import CompiledKernels
from icl_cmr.errors import InputError

#: Scan implementations; "auto" picks numba on the CPU and torch elsewhere.
SCAN_METHODS = ("auto", "numba", "torch")

#: Positions per chunk of the torch scan: memory ~ batch x chunk x channels x states floats.
TORCH_SCAN_CHUNK = 256


# ----------------------------------------------------------------------------- compiled kernels

@njit(cache=True, nogil=True)
def _scan_forward_kernel(u, delta, A, B, C, h0, y, h_last):  # pragma: no cover - compiled
    """Sequential scan without keeping the states (inference)."""
    batch, length, channels = u.shape
    n_state = A.shape[1]
    h = np.empty(n_state, dtype=np.float32)
    for b in range(batch):
        for d in range(channels):
            for n in range(n_state):
                h[n] = h0[b, d, n]
            for t in range(length):
                dt_x = delta[b, t, d]
                x = u[b, t, d]
                acc = np.float32(0.0)
                for n in range(n_state):
                    h[n] = np.exp(dt_x * A[d, n]) * h[n] + (dt_x * B[b, t, n]) * x
                    acc += C[b, t, n] * h[n]
                y[b, t, d] = acc
            for n in range(n_state):
                h_last[b, d, n] = h[n]


@njit(cache=True, nogil=True)
def _scan_forward_store_kernel(u, delta, A, B, C, h0, y, states, decay):  # pragma: no cover - compiled
    """Sequential scan keeping every state and every exp(delta A) in ``states``, ``decay``
    [batch, length, channel, state] for the backward pass (training)."""
    batch, length, channels = u.shape
    n_state = A.shape[1]
    h = np.empty(n_state, dtype=np.float32)
    for b in range(batch):
        for d in range(channels):
            for n in range(n_state):
                h[n] = h0[b, d, n]
            for t in range(length):
                dt_x = delta[b, t, d]
                x = u[b, t, d]
                acc = np.float32(0.0)
                for n in range(n_state):
                    decay[b, t, d, n] = np.exp(dt_x * A[d, n])
                    h[n] = decay[b, t, d, n] * h[n] + (dt_x * B[b, t, n]) * x
                    acc += C[b, t, n] * h[n]
                    states[b, t, d, n] = h[n]
                y[b, t, d] = acc


@njit(cache=True, nogil=True)
def _scan_backward_kernel(decay, u, delta, A, B, C, h0, states, grad_y, grad_h_last,
                          grad_u, grad_delta, grad_A, grad_B, grad_C, grad_h0):  # pragma: no cover - compiled
    """Reverse-mode gradients of the scan (accumulates into grad_A, grad_B, grad_C).

    With ``g_h`` the gradient reaching h[t] (from y[t] and from h[t+1]):
    dL/dC[t] += g_y h[t]; dL/d decay[t] = g_h h[t-1], and decay = exp(delta A) gives
    dL/d delta += g_decay decay A, dL/dA += g_decay decay delta; the input term
    (delta B) u gives dL/d delta += g_h B u, dL/dB += g_h delta u, dL/du += g_h delta B;
    and h[t-1] receives g_h decay[t].
    """
    batch, length, channels, n_state = decay.shape
    grad_h = np.empty(n_state, dtype=np.float32)
    for b in range(batch):
        for d in range(channels):
            for n in range(n_state):
                grad_h[n] = grad_h_last[b, d, n]
            for t in range(length - 1, -1, -1):
                dt = delta[b, t, d]
                x = u[b, t, d]
                g = grad_y[b, t, d]
                g_dt = np.float32(0.0)
                g_x = np.float32(0.0)
                for n in range(n_state):
                    grad_C[b, t, n] += g * states[b, t, d, n]
                    gh = grad_h[n] + g * C[b, t, n]
                    h_prev = states[b, t - 1, d, n] if t > 0 else h0[b, d, n]
                    g_decay = gh * h_prev * decay[b, t, d, n]
                    g_dt += gh * B[b, t, n] * x + g_decay * A[d, n]
                    g_x += gh * dt * B[b, t, n]
                    grad_B[b, t, n] += gh * dt * x
                    grad_A[d, n] += g_decay * dt
                    grad_h[n] = gh * decay[b, t, d, n]
                grad_delta[b, t, d] = g_dt
                grad_u[b, t, d] = g_x
            for n in range(n_state):
                grad_h0[b, d, n] = grad_h[n]


#: The kernels as Python code calls them: a damaged on-disk cache is recompiled with a warning.
_CACHED = CompiledKernels(__name__, _scan_forward_kernel, _scan_forward_store_kernel, _scan_backward_kernel)


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to(torch.float32).numpy())


class _NumbaScan(torch.autograd.Function):
    """Autograd wrapper of the compiled kernels (CPU tensors, float32)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0):
        u_, delta_, A_, B_, C_, h0_ = (_as_numpy(t) for t in (u, delta, A, B, C, h0))
        y = np.empty(u_.shape, dtype=np.float32)
        if any(ctx.needs_input_grad):
            states = np.empty(u_.shape + A_.shape[1:], dtype=np.float32)
            decay = np.empty_like(states)
            _CACHED.call(_scan_forward_store_kernel, u_, delta_, A_, B_, C_, h0_, y, states, decay)
            h_last = states[:, -1].copy()
            ctx.arrays = (decay, u_, delta_, A_, B_, C_, h0_, states)
        else:
            h_last = np.empty(h0_.shape, dtype=np.float32)
            _CACHED.call(_scan_forward_kernel, u_, delta_, A_, B_, C_, h0_, y, h_last)
        return torch.from_numpy(y), torch.from_numpy(h_last)

    @staticmethod
    def backward(ctx, grad_y, grad_h_last):
        decay, u, delta, A, B, C, h0, states = ctx.arrays
        grad_y = np.zeros_like(u) if grad_y is None else _as_numpy(grad_y)
        grad_h_last = np.zeros_like(h0) if grad_h_last is None else _as_numpy(grad_h_last)
        grads = [np.zeros_like(a) for a in (u, delta, A, B, C, h0)]
        _CACHED.call(_scan_backward_kernel, decay, u, delta, A, B, C, h0, states, grad_y, grad_h_last, *grads)
        del ctx.arrays
        return tuple(torch.from_numpy(g) for g in grads)


# ----------------------------------------------------------------------------- torch scan

def _torch_scan(u, delta, A, B, C, h0, chunk: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Chunked Hillis-Steele scan of ``h[t] = a[t] h[t-1] + b[t]`` (autograd-friendly, any device)."""
    length = u.shape[1]
    outputs = []
    h = h0
    for start in range(0, length, chunk):
        stop = min(length, start + chunk)
        dt = delta[:, start:stop, :, None]                                   # [B, T, D, 1]
        a = torch.exp(dt * A)                                                # [B, T, D, N]
        b = (dt * B[:, start:stop, None, :]) * u[:, start:stop, :, None]
        b = torch.cat([a[:, :1] * h[:, None] + b[:, :1], b[:, 1:]], dim=1)   # fold in the carried state
        offset = 1
        # log2(T) steps: after the step with offset k, (a[t], b[t]) compose positions t-2k+1 .. t.
        while offset < stop - start:
            b = torch.cat([b[:, :offset], a[:, offset:] * b[:, :-offset] + b[:, offset:]], dim=1)
            a = torch.cat([a[:, :offset], a[:, offset:] * a[:, :-offset]], dim=1)
            offset *= 2
        outputs.append((b * C[:, start:stop, None, :]).sum(dim=-1))
        h = b[:, -1]
    return torch.cat(outputs, dim=1), h


# ----------------------------------------------------------------------------- public entry point

def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   h0: Optional[torch.Tensor] = None, method: str = "auto",
                   chunk: int = TORCH_SCAN_CHUNK) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run the selective scan (module docstring) over a block of positions.

    Parameters
    ----------
    u : Tensor, shape [batch, length, channels]
        Input of the scan (the conv branch after SiLU).
    delta : Tensor, shape [batch, length, channels]
        Step sizes, already through softplus (> 0).
    A : Tensor, shape [channels, states]
        Continuous-time state matrix (diagonal per channel), ``-exp(A_log)`` (< 0).
    B, C : Tensor, shape [batch, length, states]
        Input-dependent input and output projections.
    h0 : Tensor, shape [batch, channels, states], optional
        State before the first position (default zeros).
    method : {"auto", "numba", "torch"}
        "auto": numba for CPU tensors, torch elsewhere.
    chunk : int
        Positions per chunk of the torch scan.

    Returns
    -------
    y : Tensor, shape [batch, length, channels], float32
        ``sum_n C[t, n] h[t, d, n]`` (without the ``D u`` skip term).
    h_last : Tensor, shape [batch, channels, states], float32
        The state after the last position (feed it as ``h0`` of the next block).

    Raises
    ------
    InputError
        Unknown method, numba asked for on a non-CPU device, or shapes that do not fit.
    """
    if method not in SCAN_METHODS:
        raise InputError(f"scan method must be one of {SCAN_METHODS}, got {method!r}")
    batch, length, channels = u.shape
    n_state = A.shape[-1]
    if delta.shape != u.shape or A.shape != (channels, n_state) or B.shape != (batch, length, n_state) \
            or C.shape != B.shape:
        raise InputError(f"selective_scan shapes do not fit: u {tuple(u.shape)}, delta {tuple(delta.shape)}, "
                         f"A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}")
    if h0 is None:
        h0 = torch.zeros((batch, channels, n_state), dtype=torch.float32, device=u.device)
    if method == "auto":
        method = "numba" if u.device.type == "cpu" else "torch"
    if method == "numba" and u.device.type != "cpu":
        raise InputError(f"the numba scan runs on the CPU; tensors are on {u.device}: use method 'torch'")
    tensors = [t.to(torch.float32) for t in (u, delta, A, B, C, h0)]
    if method == "numba":
        return _NumbaScan.apply(*tensors)
    return _torch_scan(*tensors, chunk=chunk)
