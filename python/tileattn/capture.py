"""Capture attention activations for calibration (`tileattn calibrate CAPTURE_DIR ...`).

`ActivationCapture` wraps a pipeline's attention processors the way SlidingTileAttnProcessor does: while a wrapped
processor runs, its F.scaled_dot_product_attention call over `n_video + text_len` tokens is recorded (and then runs
as usual, dense). For every chosen (step, layer) it writes `step{S}_layer{L}_prompt{P}.safetensors` holding `q`, `k`,
`v` as [B, heads, S, D] (bf16, fp16 or fp32 as the model computes them; other dtypes as fp32) with the string metadata
`video_shape` ("TxHxW"), `text_len`, `step`, `layer` and `prompt`: the format the C++ reader validates.

    capture = tileattn.ActivationCapture("captures/", video_shape=(30, 48, 80), text_len=256, steps=[20, 30],
                                         layers=range(0, 40, 4), prompt="p0")
    for i, block in enumerate(transformer.transformer_blocks):
        block.attn.set_processor(capture.wrap(block.attn.processor, layer=i))
    # advance capture.step.step in callback_on_step_end; set capture.prompt before each prompt

Wrap the original (dense) processors, not STA ones: calibration compares windows against dense attention.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Optional, Tuple

import torch

from .processor import DenoisingStep, _route

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
    """Runs the wrapped processor unchanged, recording its full-sequence SDPA inputs at the chosen steps/layers."""

    def __init__(self, processor, layer: int, capture: ActivationCapture):
        self.processor = processor
        self.layer = int(layer)
        self.capture = capture

    def _record(self, query, key, value, attn_mask, dropout_p, is_causal, scale):
        if (query.dim() == 4 and query.shape[2] == self.capture.n_tokens and key.shape == query.shape
                and value.shape == query.shape):
            self.capture.save(self.layer, query, key, value)
        return None  # the real SDPA runs

    def __call__(self, attn, hidden_states, *args, **kwargs):
        if not self.capture.wants(self.layer):
            return self.processor(attn, hidden_states, *args, **kwargs)
        with _route(self._record):
            return self.processor(attn, hidden_states, *args, **kwargs)
