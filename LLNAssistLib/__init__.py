"""LLNAssist library: lateral lymph node assessment on axial T2-weighted pelvic MRI.

Pure Python (no Slicer GUI). The bundled model was trained on synthetic phantoms only.
"""

__version__ = "0.1.0"
