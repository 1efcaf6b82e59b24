"""gpt-oss on tiny random checkpoints: logits equal transformers' forward through prefill
and paged decode steps (sinks, a sliding window shorter than the context, YaRN rotary,
routed experts with the clamped SwiGLU), and greedy tokens through `LLM` equal
transformers' `generate` (float32, CPU)."""

from __future__ import annotations

import pytest
import torch

from corral.engine import LLM, SamplingParams
from corral.engine.config import EngineConfig
from corral.engine.model_runner import ModelRunner
from tests.engine.test_model_families import meta_for

TINY = dict(hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
            sliding_window=4, layer_types=["sliding_attention", "full_attention"],
            max_position_embeddings=512, rms_norm_eps=1e-5)


def make_checkpoint(path, vocab_size: int, std: float = 0.05):
    """A random GptOssForCausalLM saved in the Hugging Face layout; the transformers model."""
    import transformers

    config = transformers.GptOssConfig(vocab_size=vocab_size, **TINY)
    torch.manual_seed(0)
    model = transformers.GptOssForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("router.weight"):  # routes that differ token by token
                param.normal_(0, 1.0)
            elif name.endswith("sinks"):
                param.normal_(0, 1.0)
            elif name.endswith("norm.weight"):
                param.normal_(1, 0.2)
            else:
                param.normal_(0, std)
    model.save_pretrained(path)
    return model


def test_logits_match_transformers(tmp_path):
    reference = make_checkpoint(tmp_path, vocab_size=256)
    runner = ModelRunner(EngineConfig(model=str(tmp_path), num_blocks=16, block_size=8,
                                      dtype="float32", device="cpu"),
                         tmp_path, None, None)
    runner.allocate_kv_cache()
    assert [layer.self_attn.window for layer in runner.model.layers] == [4, None]
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (30,))
    with torch.inference_mode():
        expected = reference(ids.unsqueeze(0)).logits[0]  # [30, vocab]
        block_table = [3, 7, 1, 12]
        got = []
        done = 0
        for n in [12, 8] + [1] * 10:  # two prefill chunks, then paged decode steps
            positions, meta = meta_for(done, n, block_table, 8)
            hidden = runner.model(ids[done : done + n], positions, runner.kv_caches, meta)
            got.append(runner.model.compute_logits(hidden))
            done += n
    torch.testing.assert_close(torch.cat(got), expected, rtol=1e-4, atol=1e-4)


def test_greedy_tokens_match_transformers(tmp_path, model_dir):
    """Served by `LLM` with the embedded model's tokenizer (the vocabulary is its size)."""
    import transformers

    vocab_size = len(transformers.AutoTokenizer.from_pretrained(model_dir))
    model = make_checkpoint(tmp_path, vocab_size, std=0.2)
    prompts = [[1, 2, 3, 4, 5], list(range(100, 140)), [7] * 21]
    with LLM(str(tmp_path), tokenizer=str(model_dir), dtype="float32", device="cpu",
             num_blocks=64, max_model_len=256) as llm:
        outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=10,
                                                       ignore_eos=True))
    for prompt, out in zip(prompts, outputs, strict=True):
        with torch.inference_mode():
            expected = model.generate(torch.tensor([prompt]), max_new_tokens=10,
                                      do_sample=False, eos_token_id=None,
                                      pad_token_id=0)[0, len(prompt):]
        assert out.outputs[0].token_ids == expected.tolist()


def test_mxfp4_values_and_layout():
    from corral.engine.mxfp4 import E2M1_VALUES, dequantize_mxfp4, expert_matrix

    torch.manual_seed(2)
    codes = torch.randint(0, 16, (3, 5, 2, 32))  # [experts, out, groups, 32 values]
    scales = torch.randint(120, 134, (3, 5, 2), dtype=torch.uint8)
    blocks = (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)  # low nibble first
    expected = torch.tensor(E2M1_VALUES)[codes] * 2.0 ** (scales.float() - 127)[..., None]
    values = dequantize_mxfp4(blocks, scales)
    assert torch.equal(values, expected.flatten(-2))
    assert torch.equal(expert_matrix(blocks, scales), expected.flatten(-2).transpose(1, 2))


def _quantize_mxfp4(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[E, in, out] -> (blocks [E, out, in/32, 16], scales [E, out, in/32]): each group of 32
    scaled by a power of two so its largest value fits E2M1, values rounded to the nearest
    code."""
    from corral.engine.mxfp4 import E2M1_VALUES

    rows = matrix.transpose(1, 2)  # [E, out, in]
    groups = rows.reshape(*rows.shape[:-1], -1, 32)
    peak = groups.abs().amax(-1).clamp(min=1e-12)
    exponent = torch.ceil(torch.log2(peak / 6.0)).clamp(-127, 127)
    scaled = groups / 2.0 ** exponent[..., None]
    table = torch.tensor(E2M1_VALUES)
    codes = (scaled[..., None] - table).abs().argmin(-1)
    blocks = (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)
    return blocks, (exponent + 127).to(torch.uint8)


def test_mxfp4_checkpoint_loads_as_its_dequantized_weights(tmp_path):
    """Experts stored as MXFP4 pairs load as the values they stand for: logits equal
    transformers' on the dequantized weights."""
    from safetensors.torch import load_file, save_file

    from corral.engine.mxfp4 import expert_matrix

    reference = make_checkpoint(tmp_path, vocab_size=256)
    TINY_IN = TINY["hidden_size"]
    assert TINY_IN % 32 == 0 and TINY["intermediate_size"] % 32 == 0
    (file,) = tmp_path.glob("*.safetensors")
    state = load_file(str(file))
    with torch.no_grad():
        for name in [n for n in state if n.endswith(("experts.gate_up_proj",
                                                     "experts.down_proj"))]:
            blocks, scales = _quantize_mxfp4(state.pop(name))
            state[name + "_blocks"], state[name + "_scales"] = blocks, scales
            reference.get_parameter(name).copy_(expert_matrix(blocks, scales))
    save_file(state, str(file), metadata={"format": "pt"})
    runner = ModelRunner(EngineConfig(model=str(tmp_path), num_blocks=16, block_size=8,
                                      dtype="float32", device="cpu"), tmp_path, None, None)
    runner.allocate_kv_cache()
    ids = torch.randint(0, 256, (10,))
    with torch.inference_mode():
        expected = reference(ids.unsqueeze(0)).logits[0]
        positions, meta = meta_for(0, 10, [2, 5], 8)
        got = runner.model.compute_logits(runner.model(ids, positions, runner.kv_caches, meta))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def _chunked_logits(model, kv_caches, ids: torch.Tensor) -> torch.Tensor:
    """Two prefill chunks, then paged decode steps, through `model`; [len(ids), vocab]."""
    block_table = [3, 7, 1, 12, 5, 9][: -(-len(ids) // 8)]  # scattered blocks of 8 tokens
    assert len(block_table) * 8 >= len(ids)
    got = []
    done = 0
    with torch.inference_mode():
        for n in [12, 8] + [1] * (len(ids) - 20):
            positions, meta = meta_for(done, n, block_table, 8)
            device = kv_caches[0][0].device
            meta.query_start_loc, meta.seq_lens, meta.block_tables, meta.slot_mapping = (
                t.to(device) for t in (meta.query_start_loc, meta.seq_lens,
                                       meta.block_tables, meta.slot_mapping))
            hidden = model(ids[done : done + n].to(device), positions.to(device), kv_caches,
                           meta)
            got.append(model.compute_logits(hidden).cpu())
            done += n
    return torch.cat(got)


def _triton_model(path, device: torch.device, dtype: torch.dtype = torch.float32):
    """The checkpoint on the Triton attention backend (interpreted on the CPU)."""
    from corral.engine.model_loader import build_model, load_config, load_weights
    from corral.kernels.triton_attention import TritonAttentionBackend

    config = load_config(path, None, None)
    model = build_model(config, TritonAttentionBackend(), 512, dtype, device)
    load_weights(model, path)
    shape = (16, 8, config.num_key_value_heads, config.head_dim)
    caches = [(torch.zeros(shape, device=device, dtype=dtype),
               torch.zeros(shape, device=device, dtype=dtype)) for _ in model.layers]
    return model, caches


def test_triton_kernels_give_transformers_logits(tmp_path, monkeypatch):
    """The GPU path's kernels (sink/window attention, the grouped clamped-SwiGLU experts)
    through Triton's CPU interpreter: logits equal transformers' (float32)."""
    from corral.kernels import clamped_swiglu_moe as moe
    from corral.kernels.triton_attention import TritonAttentionBackend

    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(moe, "use_triton", lambda tensor: True)
    reference = make_checkpoint(tmp_path, vocab_size=256)
    model, caches = _triton_model(tmp_path, torch.device("cuda" if torch.cuda.is_available()
                                                         else "cpu"))
    assert all(isinstance(layer.self_attn.backend, TritonAttentionBackend)
               for layer in model.layers)
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (26,))
    with torch.inference_mode():
        expected = reference(ids.unsqueeze(0)).logits[0]
    torch.testing.assert_close(_chunked_logits(model, caches, ids), expected, rtol=1e-4,
                               atol=1e-4)


def test_gpt_oss_20b_shape_is_the_real_config(model_families_dir):
    """The named shape for dummy-weight benchmarks has the real gpt-oss-20b config's
    fields (and so its rotary frequencies)."""
    import transformers

    from corral.engine.model_loader import SHAPES, load_config
    from corral.engine.models.rotary import inverse_frequencies

    real = transformers.AutoConfig.from_pretrained(model_families_dir / "gpt-oss")
    shape = load_config(None, "gpt-oss-20b", real.vocab_size)
    for field in SHAPES["gpt-oss-20b"]:
        assert getattr(shape, field) == getattr(real, field), field
    ours, theirs = inverse_frequencies(shape, 64), inverse_frequencies(real, 64)
    assert torch.equal(ours[0], theirs[0]) and ours[1] == theirs[1]


def test_the_real_gpt_oss_20b_config_builds_and_maps_every_checkpoint_tensor(
        model_families_dir):
    """At gpt-oss-20b's own config (24 layers, 32 experts, 64 heads): every tensor of
    transformers' model lands in one of Corral's parameters with the right size (both
    built on the meta device: no memory)."""
    import transformers

    from corral.engine.attention import TorchAttentionBackend
    from corral.engine.model_loader import _target_of
    from corral.engine.models.gpt_oss import GptOssForCausalLM

    config = transformers.AutoConfig.from_pretrained(model_families_dir / "gpt-oss")
    with torch.device("meta"):
        ours = GptOssForCausalLM(config, TorchAttentionBackend(), 4096)
        theirs = transformers.GptOssForCausalLM(config)
    params = dict(ours.named_parameters())
    filled: dict[str, int] = {}
    for name, tensor in theirs.state_dict().items():
        target, offset, shard = _target_of(ours, name)
        assert target in params, name
        rows = tensor.shape[0] if shard is None or shard[0] != 0 else shard[2]
        expected = params[target].shape
        assert tuple(tensor.shape[1:]) == tuple(expected[1:]) or shard is not None, name
        filled[target] = filled.get(target, 0) + rows
    assert {n: p.shape[0] for n, p in params.items()} == filled
    windows = [layer.self_attn.window for layer in ours.layers]
    assert windows == [128, None] * 12


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_logits_match_transformers(tmp_path, dtype):
    """On a GPU: the Triton kernels' logits against transformers' float32 ones on the CPU
    (float32: equal to 1e-3; bfloat16: within its rounding)."""
    reference = make_checkpoint(tmp_path, vocab_size=256)
    model, caches = _triton_model(tmp_path, torch.device("cuda"), dtype)
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (40,))
    with torch.inference_mode():
        expected = reference(ids.unsqueeze(0)).logits[0]
    got = _chunked_logits(model, caches, ids)
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    else:
        error = float((got.double() - expected.double()).norm() / expected.double().norm())
        assert error < 3e-2, error


@pytest.mark.gpu
def test_gpu_greedy_tokens_match_the_cpu_path(tmp_path, request):
    """`LLM` on a GPU (Triton kernels, CUDA-graph decodes) against `LLM` on the CPU (torch
    path), greedy, float32, on prompts shorter and longer than the window: equal tokens."""
    import os

    import transformers

    # The tokenizer: a model folder's ($CORRAL_GPU_TEST_MODEL), or the embedded model's.
    model_dir = os.environ.get("CORRAL_GPU_TEST_MODEL") or request.getfixturevalue("model_dir")

    vocab_size = len(transformers.AutoTokenizer.from_pretrained(model_dir))
    make_checkpoint(tmp_path, vocab_size, std=0.2)
    prompts = [[1, 2, 3, 4, 5], list(range(100, 140)), [7] * 21, list(range(300, 500))]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    got = {}
    for device in ("cuda", "cpu"):
        with LLM(str(tmp_path), tokenizer=str(model_dir), dtype="float32", device=device,
                 num_blocks=128, max_model_len=512, max_num_seqs=8) as llm:
            if device == "cuda":
                assert llm.engine.runner.graphs is not None  # decodes replay CUDA graphs
            got[device] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert got["cuda"] == got["cpu"]
