"""fast_cpu_inference: prepacked linears, in-place SwiGLU and the decode-attention kernel,
numerically the plain model."""

import pytest
import torch
from tiny_models import embedded_tokenizer, tiny_llama

from llmauction_sim.lm import cpu_kernels

pytestmark = pytest.mark.skipif(not cpu_kernels.prepack_supported(torch.nn.Linear(2, 2)),
                                reason="this torch build has no oneDNN weight prepacking")


@pytest.fixture(scope="module")
def model():
    return tiny_llama(embedded_tokenizer())


def patched(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if "forward" in m.__dict__ or "decode_kernel" in m.__dict__]


def reference_attention(query, key, value, mask, scale):
    """Softmax attention per query head, with its log-sum-exp (the definition)."""
    scores = torch.einsum("bhgd,bhld->bhgl", query, key) * scale + mask[:, None, None, :]
    lse = torch.logsumexp(scores, dim=-1)
    return torch.einsum("bhgl,bhld->bhgd", torch.softmax(scores, dim=-1), value), lse


@pytest.mark.parametrize(("group", "head_dim"), [(1, 64), (3, 64), (4, 32), (6, 128)])
def test_decode_attention_matches_definition(group, head_dim) -> None:
    rows, kv_heads, capacity, length = 5, 2, 40, 29
    gen = torch.Generator().manual_seed(group)
    k_buf = torch.randn(rows, kv_heads, capacity, head_dim, generator=gen)
    v_buf = torch.randn(rows, kv_heads, capacity, head_dim, generator=gen)
    query = 3 * torch.randn(rows, kv_heads, group, head_dim, generator=gen)
    mask = torch.zeros(rows, length)
    mask[1, :7] = float("-inf")  # a left-padded row
    key, value = k_buf[:, :, :length], v_buf[:, :, :length]
    out, lse = cpu_kernels.decode_attention(query, key, value, mask, 0.3)
    ref_out, ref_lse = reference_attention(query, key, value, mask, 0.3)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)
    out, _ = cpu_kernels.decode_attention(query, key, value, None, None)
    torch.testing.assert_close(out, reference_attention(query, key, value, torch.zeros(
        rows, length), head_dim ** -0.5)[0], rtol=1e-5, atol=1e-5)


def test_decode_attention_declines_other_layouts() -> None:
    query = torch.randn(2, 1, 3, 8)
    key = torch.randn(2, 1, 16, 8)
    assert cpu_kernels.decode_attention(query, key.transpose(2, 3).transpose(2, 3)[:, :, ::2],
                                        key[:, :, ::2], None, None) is None
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        assert cpu_kernels.decode_attention(query.to(dtype), key.to(dtype), key.to(dtype), None,
                                            None) is None
    late = key[:, :, 4:12]  # buffer layout, but starting 4 positions in: capacity runs past the end
    assert cpu_kernels.decode_attention(query, late, late, None, None) is None


@torch.inference_mode()
def test_logits_equal_plain_model(model) -> None:
    ids = torch.randint(0, model.config.vocab_size, (3, 100))  # 300 rows: plain sgemm path
    plain = model(input_ids=ids).logits
    with cpu_kernels.fast_cpu_inference(model):
        assert patched(model), "linears and MLPs are swapped inside the block"
        fast = model(input_ids=ids).logits
        decode = model(input_ids=ids[:, :1]).logits  # few rows: the prepacked path
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(decode, plain[:, :1], rtol=1e-4, atol=1e-4)
    assert not patched(model), "the model is restored on exit"


def test_weight_edited_in_place_is_repacked() -> None:
    linear = torch.nn.Linear(8, 4, bias=True)
    x = torch.randn(5, 8)
    for _ in range(2):
        with torch.inference_mode(), cpu_kernels.fast_cpu_inference(linear):
            fast = linear(x)
        torch.testing.assert_close(fast, torch.nn.functional.linear(x, linear.weight,
                                                                    linear.bias).detach())
        with torch.no_grad():
            linear.weight.mul_(2.0)  # what an optimizer step does between generations


def test_off_for_other_dtypes_and_when_disabled(model) -> None:
    half = torch.nn.Sequential(torch.nn.Linear(4, 4).to(torch.bfloat16))
    with cpu_kernels.fast_cpu_inference(half):
        assert not patched(half)
    with cpu_kernels.fast_cpu_inference(model, enabled=False):
        assert not patched(model)


def test_exception_inside_restores_model(model) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with cpu_kernels.fast_cpu_inference(model):
            raise RuntimeError("boom")
    assert not patched(model)
