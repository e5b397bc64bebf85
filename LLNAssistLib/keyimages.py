"""Key-image renderers, handed to the writers (the pipeline never imports a renderer).

A renderer takes (result, folder) and returns ({node_id: KeyImage}, overview, its name).
`best_available` uses real Slicer slice views (slicer-core, offscreen EGL) when they work here and
matplotlib otherwise; LLNASSIST_KEY_IMAGES=matplotlib forces the latter.
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk


def matplotlib_images(result, folder, why: str = ""):
    from . import report

    img_arr = sitk.GetArrayFromImage(result.image_canon).astype(np.float32)
    lab_arr, nodes, spacing = result.labels_canon, result.nodes, result.image_canon.GetSpacing()
    images = {n.node_id: report.key_image(img_arr, lab_arr, n, spacing) for n in nodes}
    k = max(nodes, key=lambda q: q.short_axis_mm).axes.key_slice if nodes else lab_arr.shape[0] // 2
    return images, report.overview_image(img_arr, lab_arr, k, spacing), "matplotlib" + (f" ({why})" if why else "")


def best_available(result, folder):
    why = "LLNASSIST_KEY_IMAGES=matplotlib"
    if os.environ.get("LLNASSIST_KEY_IMAGES", "slicer") != "matplotlib":
        try:
            from . import mrml_bridge

            images, overview = mrml_bridge.report_images(result.image, folder)
            return images, overview, "slicer slice view (offscreen)"
        except ImportError:
            why = "slicer-core not installed"
        except Exception as exc:  # no EGL/GL on this machine: the report still gets images
            why = f"slicer rendering failed: {exc.__class__.__name__}"
    return matplotlib_images(result, folder, why)
