"""The segmentation network: a 2.5D in-plane MONAI DynUNet (slice and neighbours in, 6 classes out).

Why 2.5D: slices are 3-4 mm thick, so a node spans 1-3 slices and 3D kernels add cost across a
direction with little context; in-plane 2D convolutions on 0.7 mm pixels see node borders and
texture, and neighbouring slices as channels give the through-plane cue. See README (model card).
"""

from __future__ import annotations

from monai.networks.nets import DynUNet

DEFAULT_ARCH = {
    "name": "DynUNet2.5D",
    "in_channels": 3,
    "out_channels": 6,
    "filters": [16, 32, 64, 128, 160],
    "norm": "instance",
}


def build(arch: dict) -> DynUNet:
    levels = len(arch["filters"])
    kernels = [[3, 3]] * levels
    strides = [[1, 1]] + [[2, 2]] * (levels - 1)
    return DynUNet(
        spatial_dims=2,
        in_channels=arch["in_channels"],
        out_channels=arch["out_channels"],
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=arch["filters"],
        norm_name=arch.get("norm", "instance"),
        res_block=arch.get("res_block", False),
        deep_supervision=False,
    )
