"""tileattn: Sliding Tile Attention for video diffusion transformers on Hopper GPUs."""
from ._ffi import LibraryNotFound, TileattnError, library
from .sta import STAConfig, sta_attention, tile, untile

__all__ = ["STAConfig", "sta_attention", "tile", "untile", "TileattnError", "LibraryNotFound", "library"]
__version__ = "0.1.0"
