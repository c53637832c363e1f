"""tileattn: Sliding Tile Attention (and FG-Attn, fine-grained sparse attention) for video diffusion transformers on
Hopper GPUs.

`import tileattn` works without PyTorch or a GPU (the library is loaded on first use); the attention functions need
PyTorch, a CUDA build of libtileattn and a Hopper GPU.
"""
from ._ffi import LibraryNotFound, TileattnArgumentError, TileattnError, TileattnFileError, library

__version__ = "0.1.0"
__all__ = ["AttentionPlan", "StaPlan", "STAConfig", "sta_attention", "tile", "untile", "FgPlan", "fg_attention",
           "synthetic_fg_plan", "dynamic_fg_plan", "FgMaskCache", "MaskStrategy", "DenoisingStep", "SlidingTileAttnProcessor",
           "ActivationCapture", "CaptureProcessor", "TileattnError", "TileattnArgumentError", "TileattnFileError",
           "LibraryNotFound", "library"]

_LAZY = {"AttentionPlan": "plan", "StaPlan": "sta", "STAConfig": "sta", "sta_attention": "sta", "tile": "sta",
         "untile": "sta", "FgPlan": "fg",
         "fg_attention": "fg", "synthetic_fg_plan": "fg", "dynamic_fg_plan": "fg", "FgMaskCache": "fg",
         "MaskStrategy": "strategy",
         "DenoisingStep": "processor", "SlidingTileAttnProcessor": "processor", "ActivationCapture": "capture",
         "CaptureProcessor": "capture"}


def __getattr__(name):  # PEP 562: torch-dependent parts load on first use
    if name in ("diffusers", "distributed"):  # submodules: tileattn.diffusers.enable_sta(...)
        import importlib
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # a plain attribute from now on (torch.compile sees an ordinary module global)
        return value
    raise AttributeError(f"module 'tileattn' has no attribute {name!r}")
