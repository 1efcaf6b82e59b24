"""Merging flash-decoding splits: Triton against the torch reference, and against a direct
softmax over the concatenated splits."""

from __future__ import annotations

import torch

from corral.kernels.decode_split_merge import (
    merge_decode_splits_torch,
    merge_decode_splits_triton,
)
from tests.kernels.kernel_batches import cpu_or_cuda, rel_error, requires_triton

pytestmark = requires_triton


def test_merge_matches_reference_and_ignores_splits_that_never_ran() -> None:
    device = cpu_or_cuda()
    gen = torch.Generator().manual_seed(0)
    num_seqs, num_heads, num_splits, head_dim, partition = 5, 3, 4, 48, 64
    part_out = torch.randn(num_seqs, num_heads, num_splits, head_dim, generator=gen)
    part_lse = 3 * torch.randn(num_seqs, num_heads, num_splits, generator=gen)
    seq_lens = torch.tensor([0, 1, 64, 130, 1000], dtype=torch.int32)
    valid = torch.arange(num_splits)[None, :] < torch.tensor([0, 1, 1, 3, 4])[:, None]
    never_ran = ~valid[:, None, :].expand(num_seqs, num_heads, num_splits)
    part_out[never_ran] = float("nan")  # never written by the split kernel
    part_lse[never_ran] = float("nan")
    args = (part_out.to(device), part_lse.to(device), seq_lens.to(device), partition)
    ref = torch.empty(num_seqs, num_heads, head_dim, device=device)
    merge_decode_splits_torch(*args, ref)
    out = torch.full((num_seqs, num_heads, head_dim), float("nan"), device=device)
    merge_decode_splits_triton(*args, out)
    assert rel_error(out, ref) < 1e-5
    assert torch.equal(out[0].cpu(), torch.zeros(num_heads, head_dim))
    # Split 0 alone for a sequence shorter than one partition.
    assert torch.allclose(out[1].cpu(), part_out[1, :, 0], atol=1e-6)
    # Weights are the splits' softmax masses: exp2(lse) normalised.
    w = torch.softmax(part_lse[3, :, :3] * torch.log(torch.tensor(2.0)), dim=-1)
    expected = (part_out[3, :, :3] * w[..., None]).sum(1)
    assert torch.allclose(out[3].cpu(), expected, atol=1e-5)
