"""SlidingTileAttnProcessor: STA inside one attention processor, for pipelines that are not diffusers' HunyuanVideo /
HunyuanVideo 1.5 / Wan transformers (for those, `tileattn.diffusers.enable_sta` wires every layer and derives the
video shape and step itself).

It wraps a processor and keeps its call signature (diffusers passes a processor only the keyword arguments its
__call__ names, so a generic *args/**kwargs wrapper would lose image_rotary_emb). While the wrapped processor runs, its
dispatch_attention_fn or F.scaled_dot_product_attention call over `video_shape` tokens + `text_len` text tokens goes to
STA with this layer's windows; other calls (other lengths, cross-attention, dropout, masks hiding video tokens) run
dense, with one warning per reason.

    step = tileattn.DenoisingStep()
    for i, block in enumerate(transformer.transformer_blocks):
        block.attn.set_processor(tileattn.SlidingTileAttnProcessor(
            block.attn.processor, layer=i, video_shape=(30, 48, 80), text_len=256, window=(3, 3, 3), step=step))
    # advance step.step in the pipeline's callback_on_step_end
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

from . import _intercept
from .strategy import MaskStrategy

Triple = Tuple[int, int, int]


class DenoisingStep:
    """The current denoising step, shared by all processors of a pipeline. Set `step` (e.g. in the pipeline's
    callback_on_step_end) or call advance()."""

    def __init__(self, step: int = 0):
        self.step = step

    def advance(self) -> None:
        self.step += 1


class SlidingTileAttnProcessor:
    def __init__(self, processor, layer: int, video_shape: Triple, text_len: int = 0, tile: Triple = (6, 8, 8),
                 strategy: Optional[MaskStrategy] = None, window: Optional[Sequence] = None, dense_steps: int = 0,
                 step: Optional[DenoisingStep] = None, precision: Optional[str] = None):
        """processor: the processor to wrap. Windows come from `strategy` (per step/layer/head) or `window` (one
        triple or one per head, all steps). The first `dense_steps` steps stay dense. precision: "native" or "fp8";
        default the strategy's precision for this layer, else native."""
        from .diffusers import StaHandle
        from .sta import _triple
        if strategy is None and window is None:
            raise ValueError("SlidingTileAttnProcessor needs a strategy or a window")
        if window is not None and not (len(window) == 3 and all(isinstance(x, int) for x in window)):
            window = [_triple(w, f"window[{i}]") for i, w in enumerate(window)]
        self.processor = processor
        self.layer = int(layer)
        self.video_shape = _triple(video_shape, "video_shape")
        self.text_len = int(text_len)
        self.step = step if step is not None else DenoisingStep()
        self.n_tokens = math.prod(self.video_shape) + self.text_len
        self._sta = StaHandle([], window, strategy, _triple(tile, "tile"), int(dense_steps), strict=False,
                              precision=precision)
        _intercept.signature_preserving_wrapper(self, processor)

    @property
    def routed_calls(self) -> int:
        return self._sta.routed.get(self.layer, 0)

    def _route(self, call: _intercept.AttentionCall):
        q = call.bhsd()[0]
        if q.dim() != 4 or q.shape[2] != self.n_tokens:
            return None  # not this layer's video(+text) sequence
        self._sta.step = self.step.step
        return self._sta.on_call(self.layer, call, self.video_shape)

    def __call__(self, attn, *args, **kwargs):
        before = (self.routed_calls, sum(self._sta.dense.values()), len(self._sta.fallbacks.get(self.layer, [])))
        _intercept.install()
        try:
            with _intercept.active(self._route):
                out = self.processor(attn, *args, **kwargs)
        finally:
            _intercept.uninstall()
        after = (self.routed_calls, sum(self._sta.dense.values()), len(self._sta.fallbacks.get(self.layer, [])))
        if after == before:  # no call over this layer's sequence at all: say so once
            self._sta.on_unmatched(self.layer, self.n_tokens)
        return out
