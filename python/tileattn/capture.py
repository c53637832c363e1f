"""Capture attention activations for calibration (`tileattn calibrate CAPTURE_DIR ...`).

`ActivationCapture.attach(pipe_or_transformer)` hooks the self-attention layers of a diffusers HunyuanVideo /
HunyuanVideo 1.5 / Wan transformer (as tileattn.diffusers does; processors untouched, so q/k/v are recorded after
RoPE and norms); `wrap(processor, layer)` wraps one processor (its signature kept) for other models. The attention
call (dispatch_attention_fn or SDPA) over `n_video + text_len` tokens is recorded and then runs as usual, dense. For every chosen (step, layer) it writes `step{S}_layer{L}_prompt{P}.safetensors` holding `q`, `k`,
`v` as [B, heads, S, D] (bf16, fp16 or fp32 as the model computes them; other dtypes as fp32) with the string metadata
`video_shape` ("TxHxW"), `text_len`, `step`, `layer` and `prompt`: the format the C++ reader validates.

    capture = tileattn.ActivationCapture("captures/", video_shape=(30, 48, 80), text_len=256, steps=[20, 30],
                                         layers=range(0, 60, 4), prompt="p0")
    hooks = capture.attach(pipe)       # set capture.prompt before each prompt; the step follows the timesteps
    pipe(prompt, ...)
    hooks.remove()

Wrap the original (dense) processors, not STA ones: calibration compares windows against dense attention.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Optional, Tuple

import torch

from . import _intercept
from .processor import DenoisingStep

Triple = Tuple[int, int, int]


class ActivationCapture:
    def __init__(self, out_dir, video_shape: Triple, text_len: int = 0, steps: Optional[Iterable[int]] = None,
                 layers: Optional[Iterable[int]] = None, prompt: str = "0", step: Optional[DenoisingStep] = None):
        """steps / layers: which to record (None: all). prompt: an id written into the metadata and file name."""
        self.out_dir = os.fspath(out_dir)
        self.video_shape = tuple(int(x) for x in video_shape)
        if len(self.video_shape) != 3 or min(self.video_shape) < 1:
            raise ValueError(f"video_shape must be three positive integers, got {video_shape}")
        self.text_len = int(text_len)
        self.steps = None if steps is None else {int(s) for s in steps}
        self.layers = None if layers is None else {int(x) for x in layers}
        self.prompt = str(prompt)
        self.step = step if step is not None else DenoisingStep()
        self.n_tokens = self.video_shape[0] * self.video_shape[1] * self.video_shape[2] + self.text_len
        self.written = []
        os.makedirs(self.out_dir, exist_ok=True)

    def wants(self, layer: int) -> bool:
        return ((self.steps is None or self.step.step in self.steps) and
                (self.layers is None or layer in self.layers))

    def wrap(self, processor, layer: int) -> "CaptureProcessor":
        return CaptureProcessor(processor, layer, self)

    def path(self, layer: int) -> str:
        prompt = re.sub(r"[^A-Za-z0-9_.-]", "_", self.prompt)
        return os.path.join(self.out_dir, f"step{self.step.step}_layer{layer}_prompt{prompt}.safetensors")

    def record(self, layer: int, call: "_intercept.AttentionCall") -> Optional[str]:
        """Saves the call's q/k/v if it is the full video(+text) self-attention sequence of a wanted step/layer."""
        q, k, v = call.bhsd()
        if (self.wants(layer) and q.dim() == 4 and q.shape[2] == self.n_tokens and k.shape[2] == q.shape[2]
                and v.shape == k.shape):
            return self.save(layer, q, k, v)
        return None

    def attach(self, pipe_or_transformer):
        """Record from a diffusers HunyuanVideo / HunyuanVideo 1.5 / Wan transformer (or a pipeline's) without
        replacing its processors: every self-attention layer, layers numbered as tileattn.diffusers numbers them, the
        step counted from the transformer's timestep (self.step follows it). Returns the hooks; call .remove()."""
        from .diffusers import ModelHooks, _transformers_of

        capture = self

        class _CaptureHooks(ModelHooks):
            def on_call(self, layer, call, video):
                capture.step.step = self.step
                if video is not None and tuple(video) != capture.video_shape:
                    raise ValueError(f"the model runs video {tuple(video)}, the capture was made for "
                                     f"{capture.video_shape}")
                capture.record(layer, call)
                return None

        hooks = _CaptureHooks(_transformers_of(pipe_or_transformer))
        hooks._install()
        return hooks

    def save(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
        """Writes one capture; q/k/v are [B, heads, S, D] in natural token order."""
        from safetensors.torch import save_file

        def host(t):
            t = t.detach()
            if t.dtype not in (torch.bfloat16, torch.float16, torch.float32):
                t = t.float()
            return t.to("cpu").contiguous()

        tensors = {"q": host(q), "k": host(k), "v": host(v)}
        if len({t.dtype for t in tensors.values()}) != 1:
            tensors = {name: t.float() for name, t in tensors.items()}
        seen = set()  # safetensors refuses tensors that share memory (e.g. k is v): give each its own copy
        for name, t in tensors.items():
            if t.data_ptr() in seen:
                tensors[name] = t.clone()
            seen.add(tensors[name].data_ptr())
        metadata = {"video_shape": "x".join(str(x) for x in self.video_shape), "text_len": str(self.text_len),
                    "step": str(self.step.step), "layer": str(layer), "prompt": self.prompt}
        path = self.path(layer)
        save_file(tensors, path, metadata=metadata)
        self.written.append(path)
        return path


class CaptureProcessor:
    """Runs the wrapped processor unchanged (its call signature kept), recording its full-sequence attention inputs
    (dispatch_attention_fn or SDPA) at the chosen steps/layers."""

    def __init__(self, processor, layer: int, capture: ActivationCapture):
        self.processor = processor
        self.layer = int(layer)
        self.capture = capture
        _intercept.signature_preserving_wrapper(self, processor)

    def _record(self, call: _intercept.AttentionCall):
        self.capture.record(self.layer, call)
        return None  # the real attention runs

    def __call__(self, attn, *args, **kwargs):
        if not self.capture.wants(self.layer):
            return self.processor(attn, *args, **kwargs)
        _intercept.install()
        try:
            with _intercept.active(self._record):
                return self.processor(attn, *args, **kwargs)
        finally:
            _intercept.uninstall()
