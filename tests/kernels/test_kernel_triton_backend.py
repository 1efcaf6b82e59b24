"""TritonAttentionBackend against TorchAttentionBackend on mixed decode/prefill batches."""

from __future__ import annotations

import pytest
import torch

from corral.engine.attention import TorchAttentionBackend
from corral.kernels.triton_attention import TritonAttentionBackend
from tests.kernels.kernel_batches import (
    TOLERANCE,
    cpu_or_cuda,
    gpu,
    make_paged_batch,
    rel_error,
    requires_cuda,
    requires_triton,
)

pytestmark = requires_triton


def _check_backend(seqs, *, num_kv_heads, group, head_dim, block_size, dtype, device, seed):
    batch = make_paged_batch(
        seqs,
        num_kv_heads=num_kv_heads,
        group=group,
        head_dim=head_dim,
        block_size=block_size,
        dtype=dtype,
        device=device,
        num_padding_tokens=2,
        generator=torch.Generator().manual_seed(seed),
    )
    meta = batch.meta
    num_real = meta.query_start_loc_cpu[-1]
    k_ref, v_ref = batch.k_cache.float(), batch.v_cache.float()
    ref = TorchAttentionBackend().forward(
        batch.query.float(), batch.key.float(), batch.value.float(), k_ref, v_ref, meta,
        batch.scale,
    )
    batch.poison_unused()
    out = TritonAttentionBackend().forward(
        batch.query, batch.key, batch.value, batch.k_cache, batch.v_cache, meta, batch.scale
    )
    used = batch.used_slots
    assert torch.equal(batch.k_cache[used], k_ref[used].to(dtype))
    assert torch.equal(batch.v_cache[used], v_ref[used].to(dtype))
    err = rel_error(out[:num_real], ref[:num_real])
    assert err < TOLERANCE[dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size,group", [(16, 1), (32, 4)])
def test_backend_mixed_batch(dtype, block_size, group) -> None:
    seqs = [(17, 1), (64, 1), (3, 1), (40, 40), (90, 25)]
    _check_backend(
        seqs, num_kv_heads=2, group=group, head_dim=32, block_size=block_size, dtype=dtype,
        device=cpu_or_cuda(), seed=block_size + group,
    )


@pytest.mark.parametrize("seqs", [[(5, 1), (33, 1)], [(12, 12), (50, 7)]])
def test_backend_pure_decode_and_pure_prefill(seqs) -> None:
    _check_backend(
        seqs, num_kv_heads=1, group=3, head_dim=32, block_size=16, dtype=torch.bfloat16,
        device=cpu_or_cuda(), seed=len(seqs[0]) + seqs[1][0],
    )


@gpu
@requires_cuda
def test_backend_gpu_real_size() -> None:
    seqs = [(int(n), 1) for n in torch.randint(1, 3000, (48,)).tolist()]
    seqs += [(1024, 1024), (3000, 256), (700, 300)]
    _check_backend(
        seqs, num_kv_heads=8, group=4, head_dim=128, block_size=16, dtype=torch.bfloat16,
        device=torch.device("cuda"), seed=0,
    )


@gpu
@requires_cuda
def test_backend_decode_in_cuda_graph() -> None:
    # Capture a decode step at one set of lengths, replay it at others.
    seqs = [(100 + 37 * i, 1) for i in range(16)]
    batch = make_paged_batch(
        seqs, num_kv_heads=8, group=4, head_dim=128, block_size=16, dtype=torch.bfloat16,
        device=torch.device("cuda"), generator=torch.Generator().manual_seed(4),
    )
    meta = batch.meta
    meta.max_seq_len = 4096  # the capture bound
    backend = TritonAttentionBackend()
    args = (batch.query, batch.key, batch.value, batch.k_cache, batch.v_cache, meta, batch.scale)
    backend.forward(*args)  # warm-up compiles the kernels outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = backend.forward(*args)
    # New inputs for the replay: shorter contexts (positions within the same blocks).
    new_lens = torch.tensor([n - 5 for n, _ in seqs], dtype=torch.int32, device="cuda")
    meta.seq_lens.copy_(new_lens)
    block_size = 16
    slots = [
        int(meta.block_tables[i, (n - 1) // block_size]) * block_size + (n - 1) % block_size
        for i, n in enumerate(new_lens.tolist())
    ]
    meta.slot_mapping.copy_(torch.tensor(slots, device="cuda"))
    batch.query.copy_(torch.randn_like(batch.query))
    batch.key.copy_(torch.randn_like(batch.key))
    graph.replay()
    torch.cuda.synchronize()
    meta.seq_lens_cpu = new_lens.tolist()
    meta.max_seq_len = max(meta.seq_lens_cpu)
    ref = TorchAttentionBackend().forward(
        batch.query.float(), batch.key.float(), batch.value.float(), batch.k_cache.float(),
        batch.v_cache.float(), meta, batch.scale,
    )
    err = rel_error(out, ref)
    assert err < TOLERANCE[torch.bfloat16], f"relative error {err:.2e}"
