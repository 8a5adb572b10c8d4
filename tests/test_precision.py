"""The one precision choice of the image models: `auto` takes bf16 on a CPU only where torch reports native bf16."""
import pytest
import torch

from pipeline.precision import cpu_bf16_instructions, resolve_precision

CPU = torch.device("cpu")


@pytest.fixture
def cpu_features(monkeypatch):
    """Make torch report the given bf16 instruction sets on this CPU."""
    def report(amx=False, avx512_bf16=False):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    return report


def test_auto_is_fp32_on_a_cpu_without_native_bf16(cpu_features):
    cpu_features()
    chosen = resolve_precision("auto", CPU)
    assert chosen.name == "fp32" and chosen.dtype == torch.float32
    assert chosen.provenance() == {"precision": "fp32", "precision_requested": "auto", "precision_reason":
                                   chosen.reason}
    assert "without native bf16" in chosen.reason and torch.backends.cpu.get_cpu_capability() in chosen.reason


@pytest.mark.parametrize("amx, avx512_bf16, named", [(True, False, "AMX"), (False, True, "AVX512-BF16"),
                                                     (True, True, "AMX and AVX512-BF16")])
def test_auto_is_bf16_where_torch_reports_native_bf16(cpu_features, amx, avx512_bf16, named):
    cpu_features(amx=amx, avx512_bf16=avx512_bf16)
    chosen = resolve_precision("auto", CPU)
    assert chosen.name == "bf16" and chosen.dtype == torch.bfloat16
    assert chosen.reason == f"CPU with native bf16 ({named})"


def test_auto_follows_what_this_machine_reports():
    chosen = resolve_precision("auto", CPU)
    assert chosen.name == ("bf16" if cpu_bf16_instructions() else "fp32")


def test_auto_on_cuda_is_fp16_and_a_requested_precision_is_kept(cpu_features):
    cpu_features()
    assert resolve_precision("auto", torch.device("cuda")).name == "fp16"
    forced = resolve_precision("bf16", CPU)
    assert (forced.name, forced.requested, forced.reason) == ("bf16", "bf16", "requested")


def test_autocast_is_a_no_op_in_fp32_and_casts_in_bf16():
    x = torch.ones(2, 3)
    with resolve_precision("fp32", CPU).autocast("cpu"):
        assert torch.mm(x, x.T).dtype == torch.float32
    with resolve_precision("bf16", CPU).autocast("cpu"):
        assert torch.mm(x, x.T).dtype == torch.bfloat16


def test_bad_requests_are_clear_errors():
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16"):
        resolve_precision("int8", CPU)
