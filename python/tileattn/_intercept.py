"""Catching a model's attention calls: the one mechanism under tileattn.diffusers, SlidingTileAttnProcessor and
ActivationCapture.

Diffusers' processors end in `dispatch_attention_fn(q, k, v, ...)` ([B, S, H, D]; it then picks the backend: native
SDPA, flash, flex, sage, xformers...) or, in older or custom processors, `F.scaled_dot_product_attention` ([B, H, S,
D]). While interception is installed both names are replaced (in torch.nn.functional and in every loaded diffusers
module that imported dispatch_attention_fn) by functions that hand the call to the handler active on this thread, if
any. A handler returns the attention output, or None to run the original call unchanged. Outside an active handler,
and while the original runs, the replacements pass straight through, so nothing else in the process changes.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

_real_sdpa = F.scaled_dot_product_attention
_local = threading.local()
_lock = threading.Lock()
_installs = 0
_patched = []  # (module, attribute, original)


@dataclass
class AttentionCall:
    """One attention call as the model made it; `layout` says how q/k/v are laid out ("bshd": dispatch_attention_fn,
    "bhsd": SDPA)."""
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attn_mask: Optional[torch.Tensor]
    dropout_p: float
    is_causal: bool
    scale: Optional[float]
    enable_gqa: bool
    layout: str
    parallel_config: Any
    run_original: Callable[..., torch.Tensor]  # (query, key, value, attn_mask) -> output, in the call's layout

    def bhsd(self):
        """q, k, v as [B, H, S, D] views."""
        if self.layout == "bhsd":
            return self.query, self.key, self.value
        return self.query.transpose(1, 2), self.key.transpose(1, 2), self.value.transpose(1, 2)

    def from_bhsd(self, out: torch.Tensor) -> torch.Tensor:
        """An [B, H, S, D] output in the call's layout."""
        return out if self.layout == "bhsd" else out.transpose(1, 2)

    def original(self) -> torch.Tensor:
        """The call as the model made it (dense), with interception suspended."""
        with suspended():
            return self.run_original(self.query, self.key, self.value, self.attn_mask)


def _handler():
    return getattr(_local, "handler", None)


@contextlib.contextmanager
def active(handler: Optional[Callable[[AttentionCall], Optional[torch.Tensor]]]):
    """Make `handler` receive this thread's attention calls inside the block (None: none)."""
    previous = _handler()
    _local.handler = handler
    try:
        yield
    finally:
        _local.handler = previous


def suspended():
    return active(None)


def push(handler) -> None:
    """active(handler) without a with-block: for module pre-hooks; pop() in the matching post-hook."""
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(_handler())
    _local.handler = handler


def pop() -> None:
    stack = getattr(_local, "stack", None)
    _local.handler = stack.pop() if stack else None


def _routed_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                 **kwargs):
    handler = _handler()
    if handler is not None and not kwargs:
        def run(q, k, v, m):
            return _real_sdpa(q, k, v, attn_mask=m, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                              enable_gqa=enable_gqa)
        out = handler(AttentionCall(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, "bhsd",
                                    None, run))
        if out is not None:
            return out
    return _real_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                      enable_gqa=enable_gqa, **kwargs)


def _routed_dispatch(original):
    @functools.wraps(original)
    def dispatch(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                 attention_kwargs=None, *, backend=None, parallel_config=None):
        def run(q, k, v, m):
            return original(q, k, v, attn_mask=m, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                            enable_gqa=enable_gqa, attention_kwargs=attention_kwargs, backend=backend,
                            parallel_config=parallel_config)
        handler = _handler()
        if handler is not None and not attention_kwargs:
            out = handler(AttentionCall(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                                        "bshd", parallel_config, run))
            if out is not None:
                return out
        with suspended():  # the backend's own SDPA call is part of this call, not a new one
            return run(query, key, value, attn_mask)
    dispatch._tileattn_original = original
    return dispatch


def install() -> None:
    """Replace SDPA and dispatch_attention_fn (reference-counted; uninstall() undoes the last one)."""
    global _installs
    with _lock:
        _installs += 1
        if _installs == 1:
            F.scaled_dot_product_attention = _routed_sdpa
            _patched.append((F, "scaled_dot_product_attention", _real_sdpa))
        # Every call rescans: a model class imported since the first install has its own reference to patch.
        dispatch_module = sys.modules.get("diffusers.models.attention_dispatch")
        if dispatch_module is None:
            return
        original = getattr(dispatch_module.dispatch_attention_fn, "_tileattn_original",
                           dispatch_module.dispatch_attention_fn)
        routed = next((getattr(m, a) for m, a, o in _patched if o is original), None) or _routed_dispatch(original)
        for name, module in list(sys.modules.items()):
            if name.startswith("diffusers.") and getattr(module, "dispatch_attention_fn", None) is original:
                module.dispatch_attention_fn = routed
                _patched.append((module, "dispatch_attention_fn", original))


def uninstall() -> None:
    global _installs
    with _lock:
        if _installs == 0:
            return
        _installs -= 1
        if _installs > 0:
            return
        for module, attribute, original in reversed(_patched):
            setattr(module, attribute, original)
        _patched.clear()


def signature_preserving_wrapper(wrapper, inner) -> None:
    """Give the processor `wrapper` the call signature of the processor `inner` it wraps.

    Diffusers' Attention.forward passes a processor only the keyword arguments its __call__ signature names
    (inspect.signature), so a wrapper declared as __call__(attn, hidden_states, *args, **kwargs) would silently lose
    image_rotary_emb and the like. The wrapper's class is swapped for a per-instance subclass whose __call__ reports
    the inner processor's signature and forwards everything."""
    base = type(wrapper)
    inner_call = type(inner).__call__

    @functools.wraps(inner_call)
    def __call__(self, *args, **kwargs):
        return base.__call__(self, *args, **kwargs)

    wrapper.__class__ = type(base.__name__, (base,), {"__call__": __call__, "__module__": base.__module__})
