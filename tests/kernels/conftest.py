"""Kernel tests run Triton through its CPU interpreter when no GPU is present.

`TRITON_INTERPRET` is set here, before any kernel launches; the kernels compile lazily at
their first launch, so it takes effect even if triton was imported earlier.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
