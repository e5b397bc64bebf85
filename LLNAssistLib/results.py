"""The one value `analyze` produces: what the image, the model and the measurements gave. Every
output (tables, label maps, .seg.nrrd, report, key images, DICOM SEG and SR) is written from it by
writers.py; nothing downstream recomputes a measurement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import SimpleITK as sitk


@dataclass
class AnalysisResult:
    image: sitk.Image  # the input volume, on its own grid
    image_canon: sitk.Image  # the same, axial canonical (measurements, key images)
    labels: sitk.Image  # conventions' label values on the input grid
    labels_canon: np.ndarray  # (k, j, i) on the canonical grid
    left: np.ndarray  # canonical: True where a voxel lies left of the patient's midline
    nodes: list  # nodes.Node, measured
    summary: dict  # summary.json (timings completed by the writers)
    timings: dict  # seconds per stage
    source: object  # inputs.LoadedInput: what was read (DICOM headers when a series)
    observer: Optional[dict] = None  # who stands behind the result: None = the algorithm; or {"reader": id}
    provenance: str = "automatic"  # "automatic", "semiautomatic" (reader-corrected) or "manual"
    extra: dict = field(default_factory=dict)

    @property
    def notice(self) -> str:
        """Why the result is outside the validated domain ('' when it is not)."""
        return self.summary.get("domain", {}).get("notice", "")
