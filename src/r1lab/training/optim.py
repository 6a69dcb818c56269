"""AdamW for each `precision` (r1lab.models.precision); for bf16 weights, `BF16AdamW`: bf16 state,
float32 maths, stochastic rounding back to bf16.

    optimizer = build_adamw(groups, precision, lr=1e-6)  # torch's AdamW, or BF16AdamW for bf16 weights
    optimizer = BF16AdamW(model.parameters(), lr=1e-6)   # model in bf16: 8 bytes per parameter in all

A bf16 weight has 8 significant bits: near 1.0 the next value is 2^-8 away, so an update of
1e-6 rounded to nearest is lost and a plain AdamW on bf16 weights stops learning at small
learning rates. Here each step reads the bf16 weight, moments and gradient as float32, does
AdamW's maths, and writes the three back rounding *stochastically*: up with probability equal to
the dropped remainder's share of the spacing, so the expected stored value is the exact one and
small updates accumulate over steps (as in torchao's `bf16_stochastic_round`; Zamirai et al.,
"Revisiting BFloat16 Training", 2020). The moments need it as much as the weights: 0.999 * v
rounded to nearest is v again.

The random bits are a hash of (seed, step, parameter, element), not a generator's draws: a step
is the same function of the state whatever ran before it, so a resumed run continues exactly.
FSDP2-sharded parameters (DTensors, r1lab.training.fsdp) are stepped shard by shard in place,
their elements numbered as in the whole parameter, so the bits don't depend on the world size.

Large models run the step as one compiled kernel (torch.compile, when it works here: it needs a C
compiler on CPU); small ones (tests, micro models) in eager chunks, where compiling would cost
more than it saves.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor, Replicate, Shard

CHUNK = 1 << 22  # elements per eager piece: bounds the float32 temporaries to ~100 MB
COMPILE_MIN = 1 << 24  # parameters from which the compiled step pays for its compilation
_MASK32 = 0xFFFFFFFF


def build_adamw(groups, precision: str, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW for `precision`: torch's (fused where the device has it) for float32 weights,
    `BF16AdamW` (bf16 state, stochastic rounding) for bf16 weights. `groups`: parameters or
    parameter groups, as torch.optim takes them."""
    groups = list(groups)
    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    # bf16 weights; LoRA adapters that PEFT keeps in float32 over a bf16 base take torch's AdamW
    if precision == "bf16" and all(p.dtype == torch.bfloat16 for p in params):
        return BF16AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)
    # One fused kernel per step where torch has it: clip + step took 4.7 ms against 9.9 ms for the
    # default on 4.3M weights (one CPU thread; benchmarks/README.md).
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused)


def random_bits(index: Tensor, seed: Tensor) -> Tensor:
    """16 pseudo-random bits per element of int64 `index`, a pure function of (index, seed):
    a 32-bit integer hash (multiply-xorshift rounds). [n] int64 -> [n] int32 in [0, 2^16)."""
    h = (index * 0x9E3779B1 + seed * 0x85EBCA6B) & _MASK32
    h = h ^ (h >> 15)
    h = (h * 0x2C1B3C6D) & _MASK32
    h = h ^ (h >> 12)
    h = (h * 0x297A2D39) & _MASK32
    h = h ^ (h >> 15)
    return (h & 0xFFFF).to(torch.int32)


def round_stochastic(x: Tensor, bits: Tensor) -> Tensor:
    """float32 x -> bf16, rounded up with probability (dropped low 16 bits) / 2^16 given uniform
    `bits` in [0, 2^16): adding them to the low half of x's bits carries into the kept half
    exactly that often. [n] float32, [n] int32 -> [n] bf16 (exact: the low bits are zero)."""
    kept = (x.view(torch.int32) + bits) & -65536
    return kept.view(torch.float32).to(torch.bfloat16)


def adamw_chunk(p: Tensor, g: Tensor, m: Tensor, v: Tensor, offset: Tensor, seed: Tensor, lr: Tensor,
                beta1: Tensor, beta2: Tensor, eps: Tensor, weight_decay: Tensor, bc1: Tensor, bc2: Tensor) -> None:
    """One AdamW step on flat bf16 pieces p, g, m, v [n] in place; elements are numbered from
    `offset` for the random bits. bc1, bc2: the bias corrections 1 - beta^t. Scalars are 0-d
    tensors, so a compiled version serves every step."""
    P, G, M, V = p.float(), g.float(), m.float(), v.float()
    M = M + (G - M) * (1 - beta1)
    V = V * beta2 + G * G * (1 - beta2)
    P = P * (1 - lr * weight_decay) - (lr / bc1) * M / ((V / bc2).sqrt() + eps)
    index = torch.arange(p.numel(), device=p.device) + offset
    p.copy_(round_stochastic(P, random_bits(index, seed * 3)))
    m.copy_(round_stochastic(M, random_bits(index, seed * 3 + 1)))
    v.copy_(round_stochastic(V, random_bits(index, seed * 3 + 2)))


class BF16AdamW(torch.optim.Optimizer):
    """AdamW over bf16 parameters with bf16 moments and stochastic rounding (see module doc).
    The usual AdamW arguments; `seed` makes a run's rounding differ from another run's."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, seed: int = 0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.seed = seed
        total = sum(p.numel() for g in self.param_groups for p in g["params"])
        self._kernel = _compiled() if total >= COMPILE_MIN else adamw_chunk

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        number = 0  # the parameter's place in the optimizer: part of its random bits' seed
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                number += 1
                if p.grad is None:
                    continue
                if p.dtype != torch.bfloat16 or p.grad.dtype != torch.bfloat16:
                    raise TypeError(f"BF16AdamW takes bf16 parameters and gradients, got {p.dtype}/{p.grad.dtype}")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = int(state["step"])
                seed = torch.tensor((self.seed * 1_000_003 + t) * 4099 + number, device=p.device)
                scalars = [torch.tensor(x, dtype=torch.float32, device=p.device)
                           for x in (group["lr"], beta1, beta2, group["eps"], group["weight_decay"],
                                     1 - beta1 ** t, 1 - beta2 ** t)]
                self._step_param(p, state, seed, scalars)
        return loss

    def _step_param(self, p: Tensor, state: dict, seed: Tensor, scalars: list[Tensor]) -> None:
        # a sharded parameter's moments are sharded alike (zeros_like): each process steps its shards
        weights, grad, m, v = map(_local, (p, p.grad, state["exp_avg"], state["exp_avg_sq"]))
        flat = [weights.view(-1), grad.reshape(-1), m.view(-1), v.view(-1)]  # the gradient is only read
        first = global_offset(p)
        for start in range(0, flat[0].numel(), CHUNK):
            offset = torch.tensor(first + start, device=flat[0].device)
            self._kernel(*(x[start:start + CHUNK] for x in flat), offset, seed, *scalars)


def _local(x: Tensor) -> Tensor:
    """A DTensor's shard on this process (sharing its storage: writes go to the parameter), or x."""
    return x.to_local() if isinstance(x, DTensor) else x


def global_offset(p: Tensor) -> int:
    """Where this process's part of `p` starts in the whole flattened parameter: 0 for a plain
    tensor or a replicated DTensor; for one sharded on dim 0 over a 1-D mesh (FSDP2), its rows'
    start (`shard_start`) times the elements per row."""
    if not isinstance(p, DTensor) or all(isinstance(x, Replicate) for x in p.placements):
        return 0
    if len(p.placements) != 1 or p.placements[0] != Shard(0):
        raise NotImplementedError(f"BF16AdamW: parameters sharded as {p.placements} (it knows FSDP2's Shard(0))")
    rows = p.shape[0]
    start = shard_start(rows, p.device_mesh.get_local_rank(), p.device_mesh.size())
    return start * (p.numel() // rows) if rows else 0


def shard_start(rows: int, rank: int, world: int) -> int:
    """The first of `rows` that process `rank` of `world` holds when they are split as torch.chunk
    splits them (FSDP2's dim-0 sharding): pieces of ceil(rows / world), the last ones short or
    empty. 10 rows over 4: 0, 3, 6, 9."""
    return min(rank * -(-rows // world), rows)


def _compiled():
    """adamw_chunk compiled once for every length (dynamic shapes), or the eager function where
    torch.compile can't run (no C compiler, an unsupported platform): tried on a small piece."""
    try:
        kernel = torch.compile(adamw_chunk, dynamic=True)
        x = torch.zeros(CHUNK // 64 + 1, dtype=torch.bfloat16)
        scalars = [torch.tensor(v) for v in (0.0, 0.9, 0.999, 1e-8, 0.0, 0.1, 0.001)]
        kernel(x, x.clone(), x.clone(), x.clone(), torch.tensor(0), torch.tensor(1), *scalars)
        return kernel
    except Exception:  # noqa: BLE001 - any failure of the compiler stack: the eager step is exact too
        return adamw_chunk
