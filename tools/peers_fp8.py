#!/usr/bin/env python3
"""The peers' benchmark (../shared/peers/peers.py, carried to the device in .peers/) with tileattn's FP8 STA forward
added as one more entry, so FP8, the bf16 kernel, cuDNN and the peers are timed in the same interleaved rounds.

  tileattn_fp8     tileattn.sta_attention(..., precision="fp8") on the natural order: the quantizing pre-pass and
                   the e4m3 kernel, both timed (the workspace is allocated once, outside the timed call)
  tileattn_fp8_tm  the same on tile-major inputs (kernel-only, like the bf16 tileattn_tm entry)

Usage (device): python3 tools/peers_fp8.py --peers tileattn,tileattn_fp8,tileattn_tm,tileattn_fp8_tm,cudnn,... [peers.py args]
Its error columns compare every entry with the bf16 tileattn output and with peers.py's fp32 reference.
"""
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", ".peers"))
sys.path.insert(0, os.path.join(here, "..", "python"))
import peers  # noqa: E402


class Fp8Run:
    """precision='fp8' on whatever inputs and layout the bf16 entry it is mixed into sets up."""

    def run(self):
        wl = self.ctx.wl
        q, k, v = self.args
        self.last = self.mod.sta_attention(q, k, v, video_shape=wl.video, window=wl.window, tile=wl.tile,
                                           text_len=wl.text_len, layout=self.layout, precision="fp8")
        return self.last


class TileattnFp8Peer(Fp8Run, peers.TileattnPeer):
    name = "tileattn_fp8"
    notes = "tileattn.sta_attention(precision='fp8'): e4m3 pre-pass + e4m3 kernel, natural order"


class TileattnFp8TileMajorPeer(Fp8Run, peers.TileattnTileMajorPeer):
    name = "tileattn_fp8_tm"
    notes = "tileattn precision='fp8' with layout='tile_major' on the tile-major inputs the peers get"


for cls in (TileattnFp8Peer, TileattnFp8TileMajorPeer):
    peers.PEER_CLASSES[cls.name] = cls

if __name__ == "__main__":
    peers.main()
