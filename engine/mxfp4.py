"""MXFP4 expert weights (gpt-oss checkpoints) dequantized at load.

A tensor `X` is stored as `X_blocks` (uint8 `[..., groups, 16]`: 32 four-bit E2M1 values
per group, the low nibble first) and `X_scales` (uint8 `[..., groups]`: one E8M0 power of two
per group, `2 ** (s - 127)`). The checkpoint keeps each expert matrix output rows first
(`[experts, out, in]`); Corral's experts are `[experts, in, out]`, hence the transpose.
"""

from __future__ import annotations

import torch

# The 16 E2M1 values by code: sign bit, two exponent bits, one mantissa bit.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
               -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
SUFFIXES = ("_blocks", "_scales")


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """blocks [..., G, 16] uint8 and scales [..., G] uint8 -> values [..., G * 32]."""
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != 16:
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} do not match scales "
                         f"{tuple(scales.shape)}")
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32)
    codes = blocks.to(torch.uint8)
    values = torch.stack([table[(codes & 0x0F).long()], table[(codes >> 4).long()]], dim=-1)
    values = values.flatten(-2)  # [..., G, 32], low nibble first
    exponents = scales.to(torch.int32) - 127
    values = torch.ldexp(values, exponents.unsqueeze(-1))
    return values.flatten(-2).to(dtype)


def expert_matrix(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """A checkpoint's `[experts, out, groups, 16]` MXFP4 matrix as Corral's
    `[experts, in, out]` float32 one."""
    return dequantize_mxfp4(blocks, scales).transpose(-1, -2).contiguous()
