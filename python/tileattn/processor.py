"""A diffusers-style attention processor that runs Sliding Tile Attention inside an existing processor.

Diffusers' processors (HunyuanVideo's joint video+text attention, Wan's self-attention...) end in one call to
F.scaled_dot_product_attention(q, k, v, attn_mask=...). `SlidingTileAttnProcessor` wraps such a processor. While the
wrapped processor runs, that call goes to tileattn with this layer's per-head windows, provided:
- the sequence is the video tokens followed by `text_len` text tokens (HunyuanVideo appends text after video; Wan's
  self-attention has none);
- any mask only hides padded text.

Every other call falls back to the real SDPA: cross-attention, other lengths, causal or dropout calls, masks that
hide video tokens. So do dense denoising steps (`dense_steps`, or the strategy's own) and layers that have no window.

    step = tileattn.DenoisingStep()
    strategy = tileattn.MaskStrategy.read("windows.json")
    for i, block in enumerate(transformer.transformer_blocks):
        block.attn.set_processor(tileattn.SlidingTileAttnProcessor(
            block.attn.processor, layer=i, video_shape=(30, 48, 80), text_len=256, strategy=strategy, step=step))
    # advance step.step in the pipeline's callback_on_step_end
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .sta import sta_attention
from .strategy import MaskStrategy

Triple = Tuple[int, int, int]
_real_sdpa = F.scaled_dot_product_attention
_routing = threading.local()


class DenoisingStep:
    """The current denoising step, shared by all processors of a pipeline. Set `step` (e.g. in the pipeline's
    callback_on_step_end) or call advance()."""

    def __init__(self, step: int = 0):
        self.step = step

    def advance(self) -> None:
        self.step += 1


def _routed_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                 **kwargs):
    route = getattr(_routing, "active", None)
    if route is not None and not kwargs:
        out = route(query, key, value, attn_mask, dropout_p, is_causal, scale)
        if out is not None:
            return out
    return _real_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                      enable_gqa=enable_gqa, **kwargs)


@contextlib.contextmanager
def _route(fn):
    previous = getattr(_routing, "active", None)
    _routing.active = fn
    installed = F.scaled_dot_product_attention is not _routed_sdpa
    if installed:
        F.scaled_dot_product_attention = _routed_sdpa
    try:
        yield
    finally:
        _routing.active = previous
        if installed:
            F.scaled_dot_product_attention = _real_sdpa


def _text_valid_from_mask(mask: torch.Tensor, n_video: int, text_len: int) -> Optional[torch.Tensor]:
    """Valid text counts per sample from a key-padding style mask ([B, 1, 1|S, S], bool or additive), or None if the
    mask hides anything but trailing text keys (then the caller falls back to SDPA)."""
    if mask.dim() != 4 or mask.shape[-1] != n_video + text_len:
        return None
    keep = mask if mask.dtype == torch.bool else mask > -1e4  # additive masks: 0 keep, -inf (or very negative) drop
    rows = keep[:, 0]  # [B, 1|S, S]
    if not bool(rows.all(dim=1).eq(rows.any(dim=1)).all()):  # every query must see the same keys
        return None
    cols = rows[:, 0]  # [B, S]
    if not bool(cols[:, :n_video].all()):
        return None
    valid = cols[:, n_video:].sum(dim=1).to(torch.int32)
    ar = torch.arange(text_len, device=mask.device)
    if not bool((cols[:, n_video:] == (ar[None, :] < valid[:, None])).all()):  # only a suffix of text may be hidden
        return None
    return valid.contiguous()


class SlidingTileAttnProcessor:
    def __init__(self, processor, layer: int, video_shape: Triple, text_len: int = 0, tile: Triple = (6, 8, 8),
                 strategy: Optional[MaskStrategy] = None, window: Optional[Sequence] = None, dense_steps: int = 0,
                 step: Optional[DenoisingStep] = None):
        """processor: the diffusers processor to wrap. Windows come from `strategy` (per step/layer/head) or `window`
        (one triple or one per head, all steps). The first `dense_steps` steps stay dense."""
        if strategy is None and window is None:
            raise ValueError("SlidingTileAttnProcessor needs a strategy or a window")
        self.processor = processor
        self.layer = layer
        self.video_shape = tuple(int(x) for x in video_shape)
        self.text_len = int(text_len)
        self.tile = tuple(int(x) for x in tile)
        self.strategy = strategy
        self.window = window
        self.dense_steps = int(dense_steps)
        self.step = step if step is not None else DenoisingStep()
        self.n_video = self.video_shape[0] * self.video_shape[1] * self.video_shape[2]
        self._routed_calls = 0
        self._warned = False

    def windows(self, heads: int):
        """This layer's windows at the current step: None (dense / SDPA), or one triple per head."""
        if self.step.step < self.dense_steps:
            return None
        if self.strategy is None:
            return self.window
        per_head = [self.strategy.window_for(self.step.step, self.layer, h) for h in range(heads)]
        if any(w is None for w in per_head):
            return None  # a head without a window: run the whole layer dense
        return per_head

    def _sta(self, query, key, value, attn_mask, dropout_p, is_causal, scale):
        if is_causal or dropout_p > 0.0 or query.dim() != 4 or key.shape[2] != query.shape[2]:
            return None
        if query.shape[2] != self.n_video + self.text_len or query.dtype not in (torch.bfloat16, torch.float16):
            return None
        windows = self.windows(query.shape[1])
        if windows is None:
            return None
        text_valid = None
        if attn_mask is not None:
            text_valid = _text_valid_from_mask(attn_mask, self.n_video, self.text_len)
            if text_valid is None:
                return None
        self._routed_calls += 1
        return sta_attention(query, key, value, self.video_shape, windows, self.tile, self.text_len, text_valid,
                             scale=scale)

    def __call__(self, attn, hidden_states, *args, **kwargs):
        if self.windows(getattr(attn, "heads", 1) or 1) is None:
            return self.processor(attn, hidden_states, *args, **kwargs)
        before = self._routed_calls
        with _route(self._sta):
            out = self.processor(attn, hidden_states, *args, **kwargs)
        if self._routed_calls == before and not self._warned:
            self._warned = True
            warnings.warn(f"SlidingTileAttnProcessor (layer {self.layer}): the wrapped processor made no "
                          f"F.scaled_dot_product_attention call over {self.n_video} video + {self.text_len} text "
                          f"tokens that STA could take (other length, causal/dropout, a mask hiding video tokens, or "
                          f"a different attention backend); this layer ran dense", RuntimeWarning, stacklevel=2)
        return out
