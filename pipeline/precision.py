"""The floating-point precision an image model runs in, chosen once for VGG, BUTD and the attribute predictor.

`auto` takes reduced precision only where the device computes it natively: fp16 on CUDA; on CPU bf16 where
torch reports bf16 instructions (AVX512-BF16 or AMX), fp32 everywhere else, because without them oneDNN
emulates bf16 by converting around every op and a convolution net runs several times slower than in fp32.
The choice and why it was made go into the shard provenance (`Precision.provenance()`).

torch is imported inside functions (Luigi task modules import this file before forking their workers).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Precision:
    name: str          # fp32 | bf16 | fp16: what the model runs in
    requested: str     # what was asked for (auto or one of the above)
    reason: str        # why `name` was chosen, for the provenance and the benchmarks' output

    @property
    def dtype(self):
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    def autocast(self, device_type: str):
        """A context running the ops autocast covers in this precision (nothing changes for fp32)."""
        import torch

        return nullcontext() if self.name == "fp32" else torch.autocast(device_type, dtype=self.dtype)

    def provenance(self) -> dict:
        return {"precision": self.name, "precision_requested": self.requested, "precision_reason": self.reason}


def cpu_bf16_instructions() -> list[str]:
    """The native bf16 instruction sets torch reports on this CPU ([] where bf16 would be emulated)."""
    import torch

    found = {"AMX": torch.cpu._is_amx_tile_supported(), "AVX512-BF16": torch.cpu._is_avx512_bf16_supported()}
    return [name for name, present in found.items() if present]


def resolve_precision(requested: str, device) -> Precision:
    """`requested` (auto, fp32, bf16, fp16) on a torch device -> the Precision to run in."""
    import torch

    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if requested != "auto":
        return Precision(requested, requested, "requested")
    if device.type == "cuda":
        return Precision("fp16", requested, "CUDA device: native fp16")
    native = cpu_bf16_instructions()
    if native:
        return Precision("bf16", requested, f"CPU with native bf16 ({' and '.join(native)})")
    capability = torch.backends.cpu.get_cpu_capability()
    return Precision("fp32", requested, f"CPU without native bf16 (torch reports {capability}, no AVX512-BF16 or "
                                        f"AMX): bf16 would be emulated")
