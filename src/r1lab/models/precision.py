"""Training precision: `precision: fp32 | bf16-mixed | bf16` for every stage that runs a model.

    check_supported("bf16-mixed", device)      # R1labError where bf16 would be emulated (slow)
    model = load_model(path, weights_dtype(precision))
    optimizer = build_adamw(groups, precision, lr=1e-5)   # r1lab.training.optim
    with autocast("bf16-mixed", device):       # nullcontext for "fp32"
        logp = sequence_logprobs(policy, ...)   # matmuls in bf16, log-probs float32

- fp32: float32 weights, gradients, AdamW state and compute (4 + 4 + 8 bytes per parameter).
- bf16-mixed: float32 weights and AdamW state, bf16 matrix multiplies under autocast; the
  residual stream and norms stay float32. The default choice on a bf16 GPU.
- bf16: bf16 weights, gradients and AdamW state (2 + 2 + 4 bytes per parameter), for memory.
  A bf16 weight near 1 has a spacing of 2^-8, so a plain AdamW update of 1e-6 rounds back to
  the old weight and training stalls; `BF16AdamW` rounds its float32 result stochastically
  (up with probability equal to the remainder's share of the spacing), so every update moves
  the weights in expectation (tests/test_bf16.py: lr 1e-6 moves them, torch's AdamW not).
- The frozen GRPO reference takes no gradient: `reference_dtype` holds it in bf16 unless the
  run is fp32.

r1lab.sampling.generate and r1lab.models.fast_decoder follow the caller's autocast
state: the sampler packs bf16 copies of the weights once per rollout (after every update), and the
output projection always runs in float32, so log-probs come from float32 logits.

Measured (1 thread of a 2-core EPYC with avx512_bf16, torch 2.13; benchmarks/README.md): bf16
matmuls of this project's shapes ran 1.7-2.5x the fp32 rate, and a GRPO forward+backward of 16
rows of the micro `small` model took 232 ms under autocast against 461 ms in fp32.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from r1lab.errors import R1labError

PRECISIONS = ("fp32", "bf16-mixed", "bf16")
# CPU flags of native bf16 dot products: without them oneDNN emulates bf16 with float32
# instructions plus conversions, so it can't beat fp32.
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def autocast(precision: str, device: torch.device | str):
    """The context that runs `precision`'s matmuls on `device`: bf16 autocast, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision in ("bf16-mixed", "bf16"):  # bf16 weights too: softmax and norms run in float32
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"unknown precision '{precision}' (precisions: {', '.join(PRECISIONS)})")


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The dtype the caller's autocast gives matmuls on `device`, or None outside autocast."""
    kind = torch.device(device).type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


def check_supported(precision: str, device: torch.device | str) -> None:
    """R1labError if `precision` has no native support on `device` (bf16 would then be slower)."""
    device = torch.device(device)
    if precision == "fp32":
        return
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        ok = _cpu_has_bf16()
    else:
        ok = True  # other accelerators: trust torch.autocast to say if it can't
    if not ok:
        raise R1labError(f"precision: {precision} is not supported natively on this {device.type} (no bf16 "
                         f"instructions); use precision=fp32")


def _cpu_has_bf16() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = {f for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for f in line.split()}
        return any(f in flags for f in _BF16_CPU_FLAGS)
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def weights_dtype(precision: str) -> str:
    """The dtype name (r1lab.models.loading.DTYPES) the trained model's weights are held in."""
    return "bfloat16" if precision == "bf16" else "float32"


def reference_dtype(precision: str) -> str:
    """The dtype name of a frozen model that only runs forwards (the GRPO reference): float32
    for fp32 runs, else bf16 (half the bytes; under autocast its matmuls read bf16 anyway)."""
    return "float32" if precision == "fp32" else "bfloat16"


def float32_head(head, features: Tensor) -> Tensor:
    """head(features) in float32, outside any autocast: bf16 keeps 8 significant bits, so a logit
    of 10 would be off by up to ~0.02, and the output projection is a small share of the FLOPs
    at these vocab sizes (~3% for the micro models)."""
    if not torch.is_autocast_enabled(features.device.type):
        return head(features)
    with torch.autocast(features.device.type, enabled=False):
        return head(features.to(head.weight.dtype)).float()  # float32 unless the model itself is bf16
