"""Sliding Tile Attention inside diffusers' video transformers: HunyuanVideo, HunyuanVideo 1.5 and Wan 2.1 / 2.2.

    import tileattn.diffusers as ta
    ta.enable_sta(pipe, window=(3, 3, 3))                      # or strategy="windows.json", dense_steps=..., strict=...
                                                               # precision="fp8" (or per layer, from the strategy)
    video = pipe(prompt, ...).frames
    ta.disable_sta(pipe)

What it does, per model:
- Finds the self-attention layers (HunyuanVideo: the 20 dual-stream `transformer_blocks[i].attn` then the 40
  `single_transformer_blocks[i].attn`, layers 0..59; HunyuanVideo 1.5: `transformer_blocks[i].attn`; Wan:
  `blocks[i].attn1`). Cross-attention (Wan's attn2) and the text-only token refiners are left alone.
- Puts a forward pre-hook and post-hook on each of those modules and on the transformer; processors are not replaced,
  so their signatures, RoPE, norms and masks stay exactly as diffusers wrote them. Inside a hooked layer, the
  processor's `dispatch_attention_fn` call (whatever backend the model is set to: native, flash, flex, sage,
  xformers...) or F.scaled_dot_product_attention call is answered by tileattn's STA (tileattn._intercept).
- Derives the video shape from each transformer call's latent and the model's patch sizes (any resolution and frame
  count; partial tiles are fine); the text length is the rest of the sequence (HunyuanVideo appends text after video).
- Counts denoising steps from the transformer's `timestep`: a smaller timestep than the last call starts the next
  step, an equal one is the same step (classifier-free guidance's second call), a larger one starts a new generation
  at step 0. `handle.step` can also be set by hand.
- Maps diffusers' masks to STA: a key-padding mask ([B, 1, 1, S], HunyuanVideo) or the pairwise m_i & m_j mask
  ([B, 1, S, S], HunyuanVideo 1.5) whose padding is a suffix of the text becomes per-sample `text_valid` (padded text
  keys get no weight); padded query rows of a pairwise mask get what the dense path gives them (it is run for those
  rows only).
- Anything it cannot route (cross-attention, a mask that hides video tokens, fp32 on the GPU, dropout, ...) runs
  dense and is reported once per layer and reason (a RoutingWarning), or raises RoutingError with strict=True.
"""
from __future__ import annotations

import inspect
import math
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from . import _intercept
from .ops import check_precision
from .sta import _triple, sta_attention
from .strategy import MaskStrategy

Triple = Tuple[int, int, int]

__all__ = ["enable_sta", "disable_sta", "sta_handle", "StaHandle", "ModelHooks", "RoutingError", "RoutingWarning",
           "self_attention_layers", "video_shape_of"]


class RoutingError(RuntimeError):
    """strict=True: an attention call of a routed layer that STA cannot take."""


class RoutingWarning(RuntimeWarning):
    """An attention call of a routed layer ran dense; the message names the layer and the reason."""


class _Unroutable(Exception):
    pass


# ---- the models ----

# Self-attention modules per model class: (block list attribute, attention attribute), in layer order.
_LAYERS = {
    "HunyuanVideoTransformer3DModel": (("transformer_blocks", "attn"), ("single_transformer_blocks", "attn")),
    "HunyuanVideo15Transformer3DModel": (("transformer_blocks", "attn"),),
    "WanTransformer3DModel": (("blocks", "attn1"),),
}


def self_attention_layers(transformer) -> List[torch.nn.Module]:
    """The self-attention modules STA routes, in layer order (the layer index a strategy file uses)."""
    name = type(transformer).__name__
    if name not in _LAYERS:
        raise TypeError(f"transformer: {name} is not supported (supported: {', '.join(sorted(_LAYERS))})")
    layers = []
    for blocks, attribute in _LAYERS[name]:
        for block in getattr(transformer, blocks, None) or []:
            layers.append(getattr(block, attribute))
    return layers


def _patch_sizes(config) -> Triple:
    patch = config.patch_size
    if isinstance(patch, int):
        return int(getattr(config, "patch_size_t", 1) or 1), patch, patch
    return tuple(int(p) for p in patch)  # type: ignore[return-value]


def video_shape_of(transformer, latent: torch.Tensor) -> Triple:
    """(T, H, W) in tokens of a latent [B, C, F, H, W] after the model's patchify."""
    if latent.dim() != 5:
        raise ValueError(f"hidden_states: expected a latent [B, C, F, H, W], got shape {tuple(latent.shape)}")
    pt, ph, pw = _patch_sizes(transformer.config)
    return latent.shape[2] // pt, latent.shape[3] // ph, latent.shape[4] // pw


def _transformers_of(obj) -> List[torch.nn.Module]:
    """A pipeline's transformers (Wan 2.2 has two: transformer and transformer_2), or the transformer itself."""
    if isinstance(obj, torch.nn.Module):
        return [obj]
    found = [getattr(obj, name, None) for name in ("transformer", "transformer_2")]
    found = [t for t in found if isinstance(t, torch.nn.Module)]
    if not found:
        raise TypeError(f"pipe_or_transformer: {type(obj).__name__} is neither a transformer nor a pipeline with a "
                        "`transformer`")
    return found


# ---- masks ----

def _keep(mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        raise _Unroutable(f"an attention mask of dtype {mask.dtype}")
    keep = mask == 0
    if not bool((keep | (mask <= -1e4)).all()):  # an additive bias, not a mask
        raise _Unroutable("an additive attention mask with values other than 0 and -inf (a bias)")
    return keep


def _pairwise_ok(keep: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, chunk: int = 4096) -> bool:
    """keep[b, i, j] == rows[b, i] & cols[b, j] everywhere (in row chunks: HunyuanVideo 1.5's mask is B*S*S)."""
    for start in range(0, keep.shape[1], chunk):
        part = keep[:, start:start + chunk]
        if not bool((part == (rows[:, start:start + chunk, None] & cols[:, None, :])).all()):
            return False
    return True


@dataclass
class _MaskPlan:
    text_valid: Optional[torch.Tensor]  # int32 [B] on the mask's device
    padded_rows: Optional[List[int]]    # per sample: first padded query row (pairwise masks), else None


def _mask_plan(mask: Optional[torch.Tensor], batch: int, tokens: int, n_video: int) -> _MaskPlan:
    """STA's form of a diffusers mask over `tokens` keys (video first, then text), or _Unroutable."""
    if mask is None:
        return _MaskPlan(None, None)
    keep = _keep(mask)
    if keep.dim() == 2:
        keep = keep[:, None, None, :]
    if keep.dim() != 4 or keep.shape[1] != 1 or keep.shape[-1] != tokens or keep.shape[-2] not in (1, tokens):
        raise _Unroutable(f"an attention mask of shape {tuple(mask.shape)} (STA takes [B, 1, 1|S, S] key padding)")
    keep = keep.expand(batch, 1, keep.shape[-2], tokens)[:, 0]  # [B, 1|S, S]
    if keep.shape[1] == 1:
        cols, rows = keep[:, 0], None
    else:
        rows, cols = keep.any(dim=2), keep.any(dim=1)
        if not _pairwise_ok(keep, rows, cols):
            raise _Unroutable("an attention mask that is not key padding (nor its pairwise m_i & m_j form)")
    text_len = tokens - n_video
    if not bool(cols[:, :n_video].all()):
        raise _Unroutable("an attention mask that hides video tokens")
    valid = cols[:, n_video:].sum(dim=1, dtype=torch.int32)
    if not bool((cols[:, n_video:] == (torch.arange(text_len, device=cols.device)[None] < valid[:, None])).all()):
        raise _Unroutable("an attention mask that hides text tokens other than a trailing run (padding)")
    padded = None
    if rows is not None:
        if not bool((rows == cols).all()):
            raise _Unroutable("a pairwise attention mask whose query rows differ from its key columns")
        if not bool(rows.all()):
            padded = [n_video + int(v) for v in valid.tolist()]
    return _MaskPlan(valid.contiguous(), padded)


# ---- the handle ----

class ModelHooks:
    """Hooks on a set of transformers and their self-attention layers: the denoising step (from `timestep`), the
    video shape of the call in flight, and each layer's attention calls handed to `on_call(layer, call, video)`,
    which returns the output or None (the original call runs). Base of StaHandle and of ActivationCapture.attach."""

    def __init__(self, transformers):
        self.transformers = transformers
        self.step = 0
        self._last_timestep: Optional[float] = None
        self._local = threading.local()  # video shape of the transformer call in flight on this thread
        self._hooks = []
        self.num_layers = 0

    def on_call(self, layer: int, call: _intercept.AttentionCall, video) -> Optional[torch.Tensor]:
        raise NotImplementedError

    def observe_timestep(self, timestep) -> None:
        """A smaller timestep than the last call: the next step; a larger one: a new generation (step 0)."""
        if timestep is None:
            return
        t = float(torch.as_tensor(timestep).float().max()) if not isinstance(timestep, (int, float)) else timestep
        last = self._last_timestep
        if last is not None and t < last:
            self.step += 1
        elif last is not None and t > last:
            self.step = 0
        self._last_timestep = t

    def _install(self) -> None:
        _intercept.install()
        layer = 0
        for transformer in self.transformers:
            self._hooks.append(transformer.register_forward_pre_hook(self._transformer_pre, with_kwargs=True))
            self._hooks.append(transformer.register_forward_hook(self._transformer_post, always_call=True))
            for module in self_attention_layers(transformer):
                def handler(call, i=layer):
                    return self.on_call(i, call, getattr(self._local, "video", None))
                self._hooks.append(module.register_forward_pre_hook(lambda m, a, h=handler: _intercept.push(h)))
                self._hooks.append(module.register_forward_hook(lambda m, a, o: _intercept.pop(), always_call=True))
                layer += 1
        self.num_layers = layer

    def _transformer_pre(self, module, args, kwargs):
        names = list(inspect.signature(module.forward).parameters)
        bound = dict(zip(names, args), **kwargs)
        latent = bound.get("hidden_states")
        stack = getattr(self._local, "stack", [])
        stack.append(getattr(self._local, "video", None))
        self._local.stack = stack
        self._local.video = video_shape_of(module, latent) if isinstance(latent, torch.Tensor) else None
        self._local.masks = {}  # per-call caches (StaHandle's mask analyses) live for one transformer call
        self.observe_timestep(bound.get("timestep"))

    def _transformer_post(self, module, args, output):
        stack = getattr(self._local, "stack", [])
        self._local.video = stack.pop() if stack else None
        self._local.masks = {}

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        if self._hooks:
            _intercept.uninstall()
        self._hooks = []


class StaHandle(ModelHooks):
    """What enable_sta installed on one pipeline or transformer: the window source, the step counter, the hooks and
    what was routed. `handle.step` is the current denoising step; `handle.report()` says what ran where."""

    def __init__(self, transformers, window, strategy, tile, dense_steps, strict, precision=None):
        super().__init__(transformers)
        self.strategy = strategy
        self.precision = None if precision is None else check_precision(precision)
        self.window = window
        self.tile = tile
        self.dense_steps = dense_steps
        self.strict = strict
        self.routed: Dict[int, int] = {}      # layer -> calls STA answered
        self.dense: Dict[int, int] = {}       # layer -> calls that ran dense by design (dense steps, no window)
        self.fallbacks: Dict[int, List[str]] = {}  # layer -> reasons it ran dense unexpectedly

    def windows(self, layer: int, heads: int, grid: Triple) -> Optional[List[Triple]]:
        """This layer's per-head windows at the current step, clamped to the tile grid; None: dense."""
        if self.step < self.dense_steps:
            return None
        if self.strategy is not None:
            per_head = [self.strategy.window_for(self.step, layer, h) for h in range(heads)]
            if any(w is None for w in per_head):
                return None
        elif len(self.window) == 3 and all(isinstance(x, int) for x in self.window):
            per_head = [self.window] * heads
        else:
            if len(self.window) != heads:
                raise _Unroutable(f"{len(self.window)} per-head windows for a layer of {heads} heads")
            per_head = list(self.window)
        # A window wider than the grid is the full axis (small or low-resolution videos).
        return [tuple(min(int(w[a]), grid[a]) for a in range(3)) for w in per_head]

    def precision_for(self, layer: int) -> str:
        """The STA forward's precision for this layer: enable_sta's precision if given, else the strategy's for the
        layer, else native."""
        if self.precision is not None:
            return self.precision
        return self.strategy.precision_for(layer) if self.strategy is not None else "native"

    def _fallback(self, layer: int, reason: str) -> None:
        if self.strict:
            raise RoutingError(f"tileattn STA, layer {layer}: {reason}")
        reasons = self.fallbacks.setdefault(layer, [])
        if reason not in reasons:
            reasons.append(reason)
            warnings.warn(f"tileattn STA, layer {layer}: ran dense: {reason}", RoutingWarning, stacklevel=3)

    def on_unmatched(self, layer: int, tokens: int) -> None:
        self._fallback(layer, f"no attention call over the layer's {tokens} tokens (other length, or another "
                              "attention function)")

    def on_call(self, layer: int, call: _intercept.AttentionCall, video) -> Optional[torch.Tensor]:
        try:
            return self._sta(layer, call, video)
        except _Unroutable as e:
            self._fallback(layer, str(e))
            return None

    def _sta(self, layer: int, call: _intercept.AttentionCall, video) -> Optional[torch.Tensor]:
        if video is None:
            raise _Unroutable("the layer ran outside its transformer's forward (no video shape)")
        q, k, v = call.bhsd()
        if q.dim() != 4 or k.shape[2] != q.shape[2]:
            raise _Unroutable(f"not self-attention over one sequence (q {tuple(q.shape)}, k {tuple(k.shape)})")
        pc = call.parallel_config
        if pc is not None and getattr(pc, "context_parallel_config", None) is not None:
            try:
                from .distributed import route_context_parallel  # STA on this rank's heads under Ulysses
            except ImportError:
                raise _Unroutable("diffusers context parallelism (this build has no tileattn.distributed)") from None
            return route_context_parallel(self, layer, call, video)
        tile = self.tile
        grid = tuple(-(-n // t) for n, t in zip(video, tile))
        windows = self.windows(layer, q.shape[1], grid)
        if windows is None:
            self.dense[layer] = self.dense.get(layer, 0) + 1
            return None
        n_video = math.prod(video)
        tokens = q.shape[2]
        if tokens < n_video:
            raise _Unroutable(f"{tokens} tokens, fewer than the {n_video} video tokens of {video}")
        if call.dropout_p > 0.0 or call.is_causal:
            raise _Unroutable("dropout or a causal mask")
        if q.device.type == "cuda" and q.dtype not in (torch.bfloat16, torch.float16):
            raise _Unroutable(f"{q.dtype} on the GPU (the kernels take bf16/fp16; run the model in bf16)")
        if q.device.type == "cuda" and q.shape[-1] not in (64, 128):
            raise _Unroutable(f"head_dim {q.shape[-1]} (the kernels take 64 or 128)")
        if q.shape[1] % k.shape[1] != 0:
            raise _Unroutable(f"{q.shape[1]} query heads over {k.shape[1]} key heads")
        plan = self._mask_plan_cached(call.attn_mask, q.shape[0], tokens, n_video)
        from ._ffi import TileattnArgumentError
        try:
            out = sta_attention(q, k, v, video, windows, tile, tokens - n_video, plan.text_valid, scale=call.scale,
                                precision=self.precision_for(layer))
        except (TileattnArgumentError, ValueError, TypeError) as e:
            raise _Unroutable(str(e)) from None
        if plan.padded_rows is not None:
            out = self._dense_rows(call, out, plan.padded_rows)
        self.routed[layer] = self.routed.get(layer, 0) + 1
        return call.from_bhsd(out)

    def _mask_plan_cached(self, mask, batch, tokens, n_video) -> _MaskPlan:
        """_mask_plan, once per mask tensor and transformer call: HunyuanVideo hands every block the same mask, and
        each analysis synchronises with the GPU (which would let the host fall behind the kernels)."""
        if mask is None:
            return _MaskPlan(None, None)
        cache = getattr(self._local, "masks", None)
        if cache is None:
            cache = self._local.masks = {}
        key = (mask.data_ptr(), mask._version, tuple(mask.shape), mask.stride(), mask.dtype, mask.device, batch,
               tokens, n_video)
        if key not in cache:
            cache[key] = (_mask_plan(mask, batch, tokens, n_video), mask)  # holding the mask keeps its address ours
        return cache[key][0]

    @staticmethod
    def _dense_rows(call, out: torch.Tensor, first_padded: List[int]) -> torch.Tensor:
        """Padded query rows (pairwise masks) as the dense path computes them: the original call on those rows."""
        out = out.clone()
        for b, start in enumerate(first_padded):
            if start >= out.shape[2]:
                continue
            rows = slice(start, None)
            if call.layout == "bhsd":
                q = call.query[b:b + 1, :, rows]
            else:
                q = call.query[b:b + 1, rows]
            mask = call.attn_mask[b:b + 1, :, rows] if call.attn_mask.shape[-2] != 1 else call.attn_mask[b:b + 1]
            with _intercept.suspended():
                dense = call.run_original(q, call.key[b:b + 1], call.value[b:b + 1], mask)
            out[b, :, rows] = dense[0] if call.layout == "bhsd" else dense[0].transpose(0, 1)
        return out

    def report(self) -> str:
        """One line per layer that did not run STA as asked: the reasons, and the call counts."""
        lines = [f"tileattn STA on {self.num_layers} self-attention layers: "
                 f"{sum(self.routed.values())} calls STA, {sum(self.dense.values())} dense by design (dense steps "
                 f"or no window)"]
        for layer in sorted(self.fallbacks):
            lines.append(f"  layer {layer}: ran dense: {'; '.join(self.fallbacks[layer])}")
        return "\n".join(lines)


def enable_sta(pipe_or_transformer, window: Optional[Union[Sequence[int], Sequence[Sequence[int]]]] = None,
               strategy: Optional[Union[MaskStrategy, str, os.PathLike]] = None, tile: Optional[Sequence[int]] = None,
               dense_steps: Optional[int] = None, strict: bool = False,
               precision: Optional[str] = None) -> StaHandle:
    """Run every self-attention layer of a diffusers HunyuanVideo / HunyuanVideo 1.5 / Wan transformer (or of a
    pipeline's transformers) with Sliding Tile Attention.

    window: (wt, wh, ww) in tiles for every layer and head, or one triple per head; default (3, 3, 3).
    strategy: a MaskStrategy or the path of a strategy file (FastVideo's format or tileattn's): windows per (step,
        layer, head); its dense steps, and steps/layers/heads it has no window for, run dense. Give window or
        strategy, not both.
    tile: the tile in tokens; default the strategy's tile, else (6, 8, 8).
    dense_steps: the first steps run dense; default the strategy's dense steps, else 0.
    strict: raise RoutingError instead of running a layer dense when STA cannot take its call.
    precision: "native" or "fp8" for every routed layer (fp8: 8-bit tensor cores, forward only, see
        tileattn.sta_attention); default the strategy's per-layer precision ("precision" / "layer_precision" in
        tileattn's strategy format), else native. An fp8 layer called with grad enabled on inputs that require grad
        runs dense (RoutingWarning; RoutingError with strict): diffusers' pipelines run under torch.no_grad().
    Returns the StaHandle (also found by sta_handle(pipe_or_transformer)); disable_sta undoes everything."""
    if window is not None and strategy is not None:
        raise ValueError("window and strategy: give one, not both")
    if isinstance(strategy, (str, os.PathLike)):
        strategy = MaskStrategy.read(os.fspath(strategy))
    if strategy is not None and not isinstance(strategy, MaskStrategy):
        raise TypeError(f"strategy must be a MaskStrategy or a path, got {type(strategy).__name__}")
    if strategy is None:
        window = (3, 3, 3) if window is None else window
        if len(window) == 3 and all(isinstance(x, int) for x in window):
            window = _triple(window, "window")
        else:
            window = [_triple(w, f"window[{i}]") for i, w in enumerate(window)]
    if tile is None:
        tile = strategy.tile if strategy is not None and strategy.tile else (6, 8, 8)
    tile = _triple(tile, "tile")
    if strategy is not None and strategy.tile and tuple(strategy.tile) != tile:
        raise ValueError(f"tile {tile} differs from the strategy's tile {tuple(strategy.tile)}, which its windows "
                         "are counted in")
    if dense_steps is None:
        dense_steps = 0  # a strategy's own dense steps are applied by MaskStrategy.window_for
    if int(dense_steps) < 0:
        raise ValueError(f"dense_steps must be >= 0, got {dense_steps}")
    transformers = _transformers_of(pipe_or_transformer)
    for t in transformers:
        self_attention_layers(t)  # TypeError naming an unsupported model before anything is installed
        if getattr(t, "_tileattn_sta", None) is not None:
            raise RuntimeError(f"{type(t).__name__} already has STA enabled; call disable_sta first")
    handle = StaHandle(transformers, window, strategy, tile, int(dense_steps), bool(strict), precision)
    handle._install()
    for t in transformers:
        t._tileattn_sta = handle
    return handle


def sta_handle(pipe_or_transformer) -> Optional[StaHandle]:
    """The StaHandle enable_sta installed, or None."""
    return getattr(_transformers_of(pipe_or_transformer)[0], "_tileattn_sta", None)


def disable_sta(pipe_or_transformer) -> None:
    """Remove what enable_sta installed (hooks and, with the last handle, the attention interception)."""
    for t in _transformers_of(pipe_or_transformer):
        handle = getattr(t, "_tileattn_sta", None)
        if handle is not None:
            handle.remove()
            for other in handle.transformers:
                other._tileattn_sta = None
