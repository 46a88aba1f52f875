"""fast_cpu_inference: prepacked linears and in-place SwiGLU, numerically the plain model."""

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
    return [m for m in model.modules() if "forward" in m.__dict__]


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
