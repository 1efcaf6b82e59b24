"""Compute kernels: Triton on CUDA, each op in its own module beside a torch reference.

Each module `X` offers `X_torch` (the reference), `X_triton` (the kernel; it also runs on
CPU tensors under `TRITON_INTERPRET=1`) and `X` (dispatch: Triton on CUDA, torch elsewhere):
`write_kv_cache`, `paged_decode_attention`, `paged_prefill_attention`, `token_bitmask`
(`apply_token_bitmask_`), `rms_norm`, `rotary_embedding`, `silu_and_mul`, `fused_moe`
(the mixture-of-experts MLP; `moe_align` sorts its token-expert pairs by expert).
`triton_attention` holds `TritonAttentionBackend`, the attention backend built on them.
Nothing is imported here, so that importing one kernel module stays cheap and free of
import cycles with the engine.

Native CPU kernels are C++ (`csrc/`), compiled on first use and loaded as torch ops by
`cpu_extension` (`load_cpu_ops`); `paged_decode_attention_cpu` is the decode attention the
torch backend uses on CPU. Without a compiler they are skipped and the torch paths run.
"""
