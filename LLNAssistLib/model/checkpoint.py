"""Loading other frameworks' checkpoints without running code from them.

An nnU-Net checkpoint is a pickle: besides tensors it holds a few numpy scalars and dtypes (the
training log, the best EMA Dice). `torch.load(weights_only=True)` refuses anything outside torch's
own allow-list; we add exactly those numpy types and nothing else, so a checkpoint carrying any
other object (a function, a class with a `__reduce__` that runs a command) is refused, never run.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError


def _numpy_allow_list() -> list:
    import numpy as np

    try:  # numpy 2 moved the scalar reconstructor
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    dtypes = [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                                           "uint8", "bool")]
    return [scalar, np.dtype, *dtypes]


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint's contents, loaded with weights_only=True and the numpy allow-list."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} is missing; the model folder is incomplete")
    try:
        with torch.serialization.safe_globals(_numpy_allow_list()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        m = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = m.group(1) if m else "an object outside the allow-list"
        raise InputError(f"checkpoint {path} holds an object that is not model data ({what}); refused without "
                         "running it - get the checkpoint from its source again") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise InputError(f"checkpoint {path} is not a readable PyTorch checkpoint ({exc.__class__.__name__}); it is "
                         "corrupt or truncated") from None
