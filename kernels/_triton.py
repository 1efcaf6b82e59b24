"""Triton access for the kernels: optional import, lazy compilation, launch helpers.

Triton is optional: without it every kernel module still imports and dispatches to its torch
reference. Kernels are decorated with `jit` from here rather than `triton.jit`, which
defers the choice between compiled and interpreted mode (`TRITON_INTERPRET=1`) to the first
launch, so that setting the variable after `triton` was imported still takes effect.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    HAS_TRITON = False

    class _MissingLanguage:
        """Stands in for `triton.language` so kernel signatures still evaluate."""

        constexpr = object

        def __getattr__(self, name: str) -> Any:
            raise RuntimeError("triton is not installed")

    tl = _MissingLanguage()


def is_interpreting() -> bool:
    """True when Triton kernels run through the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether dispatchers should pick the Triton kernel for `tensor`: CUDA with triton.

    On CPU the torch reference is faster than the interpreter; tests call the `*_triton`
    functions directly to run the kernels there.
    """
    return HAS_TRITON and tensor.is_cuda


class LazyKernel:
    """A Triton kernel compiled (or wrapped for the interpreter) at its first launch."""

    def __init__(self, fn: Callable[..., None], do_not_specialize: tuple[str, ...] = ()) -> None:
        self.fn = fn
        self.do_not_specialize = do_not_specialize
        self._kernel: Any = None
        self._interpreted: bool | None = None
        functools.update_wrapper(self, fn)

    def _get(self) -> Any:
        if not HAS_TRITON:
            raise RuntimeError("triton is not installed")
        interpreting = is_interpreting()
        if self._kernel is None or self._interpreted != interpreting:
            if interpreting:
                from triton.runtime.interpreter import InterpretedFunction

                self._kernel = InterpretedFunction(self.fn)
            else:
                self._kernel = triton.jit(self.fn, do_not_specialize=self.do_not_specialize)
            self._interpreted = interpreting
        return self._kernel

    def __getitem__(self, grid: Any) -> Any:
        return self._get()[grid]


def jit(fn: Callable[..., None] | None = None, *, do_not_specialize: tuple[str, ...] = ()):
    """Decorator: a Triton kernel whose compilation mode is fixed at first launch.

    `do_not_specialize` names integer arguments that change from step to step (batch
    offsets, split lengths, block-table widths): Triton would otherwise compile a variant
    for each of their divisibility classes, some of them in the middle of serving.
    """
    if fn is None:
        return lambda f: LazyKernel(f, do_not_specialize)
    return LazyKernel(fn, do_not_specialize)


def dot_dtype(dtype: torch.dtype) -> Any:
    """Operand type for `tl.dot` on `dtype` inputs (a constexpr for the kernels).

    The input type itself, except under the interpreter, whose `tl.dot` multiplies bf16 as
    raw integers (triton 3.9): there the operands are widened to float32, which is exact.
    """
    if not HAS_TRITON:
        return None
    if is_interpreting() and dtype in (torch.bfloat16, torch.float16):
        return tl.float32
    return {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}[
        dtype
    ]


def dot_precision(dtype: torch.dtype) -> str:
    """`input_precision` for `tl.dot`: exact float32 products for float32 inputs."""
    return "ieee" if dtype == torch.float32 else "tf32"


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Multiprocessor count of `device` (a small constant for the CPU interpreter)."""
    if device.type != "cuda":
        return 4
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _num_sms(index)
