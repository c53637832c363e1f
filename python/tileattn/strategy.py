"""Mask-strategy files (which window each denoising step / layer / head uses, and which layers run the FP8 forward),
read by the C++ library so that Python and C++ accept and reject exactly the same files."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from . import _ffi

Triple = Tuple[int, int, int]


@dataclass
class MaskStrategy:
    windows: Dict[Tuple[int, int, int], Triple] = field(default_factory=dict)  # (step, layer, head) -> window
    default: Optional[Triple] = None
    dense_steps: int = 0
    video_shape: Optional[Triple] = None
    tile: Optional[Triple] = None
    text_len: Optional[int] = None
    precision: str = "native"                                   # every layer's, unless layer_precision names it
    layer_precision: Dict[int, str] = field(default_factory=dict)  # layer -> "native" | "fp8"

    @classmethod
    def read(cls, path: str) -> "MaskStrategy":
        """Reads FastVideo's format or tileattn's; raises TileattnFileError naming the file, key and problem."""
        doc = json.loads(_ffi.read_mask_strategy_json(str(path)))
        windows = {tuple(int(x) for x in key.split("_")): tuple(value) for key, value in doc["windows"].items()}
        return cls(windows=windows, default=tuple(doc["default"]) if doc.get("default") else None,
                   dense_steps=int(doc.get("dense_steps", 0)),
                   video_shape=tuple(doc["video_shape"]) if "video_shape" in doc else None,
                   tile=tuple(doc["tile"]) if "tile" in doc else None, text_len=doc.get("text_len"),
                   precision=doc.get("precision", "native"),
                   layer_precision={int(layer): p for layer, p in doc.get("layer_precision", {}).items()})

    def window_for(self, step: int, layer: int, head: int) -> Optional[Triple]:
        """The window of (step, layer, head); None means dense attention (a dense step, or no entry and no default)."""
        if step < self.dense_steps:
            return None
        return self.windows.get((step, layer, head), self.default)

    def precision_for(self, layer: int) -> str:
        """The precision ("native" or "fp8") the STA forward of `layer` runs at (every step)."""
        return self.layer_precision.get(layer, self.precision)
