"""The training loop on plain PyTorch that SFT, pretraining and the reward model share, and whose
optimizer and learning-rate schedule GRPO uses: AdamW, linear warmup then cosine decay, gradient
accumulation over micro-batches of at most `max_tokens_per_batch` padded tokens, clipping,
periodic evaluation, atomic checkpoints that resume exactly, and data parallelism under torchrun
(`sharding`: ddp, or fsdp to shard weights, gradients and AdamW state: docs/distributed.md).

    summary = train(model, tokenizer, train_examples, eval_examples, TrainSettings(...), output_dir)

`train` knows nothing about where its examples come from (`r1lab.training.sft_data` tokenises
prompt/completion and chat rows; ``r1lab pretrain`` passes its own corpus).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from r1lab.errors import R1labError
from r1lab.files import append_jsonl, read_jsonl, write_jsonl
from r1lab.models.precision import PRECISIONS, autocast, check_supported
from r1lab.recipe import check_choices, check_range
from r1lab.training import distributed, fsdp
from r1lab.training.checkpoint import (CheckpointError, checkpoint_dir, prune_checkpoints, resume_latest,
                                       save_checkpoint, save_final, start_run)
from r1lab.training.sft_data import IGNORE_INDEX, Example, batches, collate
from r1lab.training.tracking import TRACKERS, Tracker
from r1lab.training.optim import build_adamw


@dataclass(frozen=True)
class TrainSettings:
    """The training loop's knobs (shared by sft and pretrain)."""

    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # cosine decays to this share of the peak learning rate
    max_steps: int = 0  # optimizer steps; <= 0 means run `epochs` epochs
    epochs: int = 1
    max_tokens_per_batch: int = 8192  # padded tokens per micro-batch (len(batch) * longest)
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0  # <= 0: no clipping
    eval_every: int = 100  # steps; <= 0: only at the end
    save_every: int = 500  # steps; <= 0: only at the end
    keep_checkpoints: int = 2  # <= 0: keep all
    log_every: int = 10
    seed: int = 0
    # ddp: every process holds the whole model | fsdp: weights, gradients and AdamW state sharded
    # over processes (FSDP2, r1lab.training.fsdp; also in one process); fsdp_cpu_offload: shards in
    # CPU memory (GPU runs)
    sharding: str = "ddp"
    fsdp_cpu_offload: bool = False
    report_to: tuple[str, ...] = ()  # tensorboard | wandb | trackio, beside metrics.jsonl (r1lab.training.tracking)
    # fp32 | bf16-mixed (bf16 autocast, float32 weights and AdamW) | bf16 (the model cast to bf16,
    # BF16AdamW: bf16 state with stochastic rounding); see r1lab.models.precision
    precision: str = "fp32"

    def __post_init__(self):
        check_range(self, 0, None, "learning_rate", open_low=True)
        check_range(self, 0, 1, "adam_beta1", "adam_beta2", open_high=True)
        check_range(self, 0, 1, "min_lr_ratio")
        check_range(self, 0, None, "warmup_steps", "weight_decay", "epochs")
        check_range(self, 1, None, "grad_accum", "log_every", "max_tokens_per_batch")
        if self.max_steps <= 0 and self.epochs < 1:
            raise ValueError("set max_steps > 0 or epochs >= 1")
        check_choices("sharding", self.sharding, fsdp.SHARDINGS)
        if self.fsdp_cpu_offload and self.sharding != "fsdp":
            raise ValueError("fsdp_cpu_offload=true needs sharding=fsdp")
        check_choices("report_to", self.report_to, TRACKERS)
        check_choices("precision", self.precision, PRECISIONS)


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Share of the peak learning rate for optimizer step `step` (0-based).

    Linear warmup reaches the peak at step warmup_steps - 1, then a cosine falls to `min_ratio`
    at the last step (total_steps - 1).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW; matrices decay, norms and biases (1-D parameters) don't, as usual for transformers."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": settings.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if settings.precision == "bf16":
        return build_adamw(groups, "bf16", lr=settings.learning_rate, betas=(settings.adam_beta1, settings.adam_beta2))
    return torch.optim.AdamW(groups, lr=settings.learning_rate, betas=(settings.adam_beta1, settings.adam_beta2))


def token_loss_sum(model, input_ids, attention_mask, labels) -> torch.Tensor:
    """Summed next-token cross entropy over target tokens. Inputs [B, L]; returns a scalar."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logits = logits[:, :-1].float()  # position t predicts token t + 1
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def target_count(example: Example) -> int:
    """Tokens that carry loss (the first token is never predicted)."""
    return sum(example.labels_mask[1:])


@torch.no_grad()
def eval_loss(model, examples: Sequence[Example], max_tokens: int, pad_id: int, precision: str = "fp32") -> float:
    """Mean per-token loss over `examples` (every target token weighs the same).

    Under torchrun each process takes a share of the batches and the sums are added up.
    """
    was_training, device = model.training, _device_of(model)
    model.eval()
    total, count = 0.0, 0
    plan = batches(examples, max_tokens, seed=0, epoch=0)
    mine = distributed.shard(plan, distributed.rank(), distributed.world_size())
    idle = fsdp.pad_calls(len(mine), device) if fsdp.is_sharded(model) else 0  # before any forward
    for batch in mine:
        tensors = [t.to(device) for t in collate([examples[i] for i in batch], pad_id)]
        with autocast(precision, device):
            total += token_loss_sum(model, *tensors).item()
        count += sum(target_count(examples[i]) for i in batch)
    for _ in range(idle):  # a sharded forward gathers weights with every process: join the busier ones'
        fsdp.idle_forward(model, device)
    model.train(was_training)
    total, count = distributed.all_reduce_sum(torch.tensor([total, count], dtype=torch.float64)).tolist()
    return total / max(count, 1)


def train_step(model, optimizer, scheduler, micro_batches: list[list[Example]], pad_id: int,
               max_grad_norm: float, precision: str = "fp32") -> dict[str, float]:
    """One optimizer step over `micro_batches` (gradient accumulation).

    Each micro-batch's summed loss is divided by the target tokens of the whole step, so the
    gradient is the per-token mean over the step however it is split into micro-batches.

    Under torchrun `model` is wrapped in DistributedDataParallel and `micro_batches` is still the
    whole (global) step: each process runs its `distributed.shard` of every micro-batch. The
    target count is the global one (every process knows the whole step, so it needs no
    all-reduce), and DDP's gradient mean over processes is undone by scaling the loss by the world
    size: the summed gradient, hence the update, is the one a single process would make. A
    sharded model (sharding=fsdp) sums the gradients itself (r1lab.training.fsdp), in every backward.
    """
    device, sharded = _device_of(model), fsdp.is_sharded(model)
    rank, world = distributed.rank(), distributed.world_size()
    n_targets = sum(target_count(e) for batch in micro_batches for e in batch)
    lr = scheduler.get_last_lr()[0]
    total = 0.0
    for i, batch in enumerate(micro_batches):
        # An empty share still runs a (zero-loss) pass: DDP needs every process in every backward.
        mine = distributed.shard(batch, rank, world) or [Example((pad_id, pad_id), (0, 0))]
        tensors = [t.to(device) for t in collate(mine, pad_id)]
        with _no_sync(model, last=i == len(micro_batches) - 1), autocast(precision, device):
            loss = token_loss_sum(model, *tensors) / max(n_targets, 1)
            (loss * world if world > 1 and not sharded else loss).backward()
        total += loss.item()
    if world > 1:
        total = distributed.all_reduce_sum(torch.tensor(total, dtype=torch.float64)).item()
    norm_limit = max_grad_norm if max_grad_norm > 0 else float("inf")
    if sharded:
        grad_norm = fsdp.clip_grad_norm(model, norm_limit)
    else:
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], norm_limit)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    tokens = sum(len(e) for batch in micro_batches for e in batch)  # the whole step's, all processes
    return {"loss": total, "lr": lr, "grad_norm": float(grad_norm), "tokens": tokens}


def train(model, tokenizer, train_examples: Sequence[Example], eval_examples: Sequence[Example],
          settings: TrainSettings, output_dir: str | Path, resume: bool = False, desc: str = "sft",
          overwrite: bool = False) -> dict:
    """Train `model` on `train_examples`; checkpoints, metrics and ``final/`` go to `output_dir`.

    Returns {"train_loss", "eval_loss", "steps", "seconds"} (eval_loss None without eval data).
    Under torchrun (`distributed.init_from_env` called) every process calls it with the same
    arguments; the model is wrapped in DDP here and only rank 0 writes files.
    """
    if not train_examples:
        raise R1labError("no training examples")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started, pad_id = time.perf_counter(), _pad_id(tokenizer)
    total_steps = _total_steps(train_examples, settings)
    torch.manual_seed(settings.seed)
    _place(model, settings)  # before the optimizer: it holds the (bf16, sharded) parameters
    optimizer = build_optimizer(model, settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(
        s, settings.warmup_steps, total_steps, settings.min_lr_ratio))
    data = _examples_digest(train_examples)
    state = _start_state(output_dir, model, optimizer, scheduler, (resume, overwrite), data)
    trainee = model if fsdp.is_sharded(model) else distributed.data_parallel(model)  # DDP under torchrun
    stream = _batch_stream(train_examples, settings, state["epoch"], state["position"])
    main = distributed.is_main()
    log = _MetricsLog(output_dir / "metrics.jsonl", Tracker(settings.report_to, output_dir,
                                                            dataclasses.asdict(settings))) if main else None
    bar = tqdm(total=total_steps, initial=state["step"], desc=desc, dynamic_ncols=True, disable=not main)
    trainee.train()
    while state["step"] < total_steps:
        group = [next(stream) for _ in range(settings.grad_accum)]
        result = train_step(trainee, optimizer, scheduler, [[train_examples[i] for i in g.indices] for g in group],
                            pad_id, settings.max_grad_norm, settings.precision)
        step = state["step"] + 1
        last = step == total_steps
        state.update(step=step, epoch=group[-1].epoch, position=group[-1].position, loss=result["loss"])
        evaluated = bool(eval_examples) and (last or _every(step, settings.eval_every))
        if evaluated:
            state["eval_loss"] = eval_loss(model, eval_examples, settings.max_tokens_per_batch, pad_id,
                                            settings.precision)
        if main:
            log.add(result["tokens"])
        if main and (evaluated or last or _every(step, settings.log_every)):
            log.write({"step": step, "epoch": round(group[-1].progress, 4), "loss": result["loss"], "lr": result["lr"],
                       "grad_norm": result["grad_norm"], **({"eval_loss": state["eval_loss"]} if evaluated else {})})
        bar.update(1)
        bar.set_postfix(loss=f"{result['loss']:.4f}")
        if last or _every(step, settings.save_every):
            _save_checkpoint(output_dir, step, (model, tokenizer, optimizer, scheduler), state, settings)
    bar.close()
    if main:
        log.tracker.close()
    if fsdp.is_sharded(model):  # gathered on rank 0
        fsdp.save_model(output_dir / "final", model, tokenizer)
    elif main:
        save_final(output_dir / "final", model, tokenizer)
    distributed.barrier()  # every process returns only once the files are there
    return {"train_loss": state.get("loss"), "eval_loss": state.get("eval_loss"), "steps": state["step"],
            "seconds": round(time.perf_counter() - started, 2)}


def _place(model, settings: TrainSettings) -> None:
    """`model` in the dtype and sharding of `settings`, in place: bf16 weights (so gradients and
    AdamW state too; r1lab.models.precision) for precision bf16, FSDP2 shards for sharding fsdp."""
    check_supported(settings.precision, _device_of(model))
    if settings.precision == "bf16":
        model.to(torch.bfloat16)
    if settings.sharding == "fsdp":
        fsdp.shard(model, settings.precision, settings.fsdp_cpu_offload)


def _save_checkpoint(output_dir: Path, step: int, trainer: tuple, state: dict, settings: TrainSettings) -> None:
    """Every process calls it: a sharded model's processes each write their shards, rank 0 the rest."""
    model, tokenizer, optimizer, scheduler = trainer
    shards = None
    if fsdp.is_sharded(model):
        shards = output_dir / "checkpoints" / f".step-{step:06d}.sharded"
        fsdp.save_sharded(shards, model, optimizer)
        model, optimizer = None, None  # in the shards
    if distributed.is_main():
        save_checkpoint(checkpoint_dir(output_dir, step), model, tokenizer, optimizer, scheduler, state, shards=shards)
        prune_checkpoints(output_dir, settings.keep_checkpoints, step)


class _MetricsLog:
    """Appends rows to metrics.jsonl, adding the tokens trained on since the previous row and their rate."""

    def __init__(self, path: Path, tracker: Tracker):
        self.path, self.clock, self.tokens, self.tracker = path, time.perf_counter(), 0, tracker

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def write(self, row: dict) -> None:
        now = time.perf_counter()
        row["tokens"] = self.tokens
        row["tokens_per_s"] = round(self.tokens / max(now - self.clock, 1e-9), 1)
        row["peak_memory_mb"] = distributed.peak_memory_mb()
        append_jsonl(self.path, row)
        self.tracker.log(row)
        self.clock, self.tokens = now, 0


@dataclass(frozen=True)
class _Batch:
    indices: list[int]
    epoch: int  # the data position after this batch: (epoch, position) is where the next starts
    position: int
    progress: float  # epochs done, fractional, for the logs


def _no_sync(model, last: bool):
    """DDP's no_sync for all but the last micro-batch of a step: one gradient all-reduce per step."""
    if isinstance(model, DistributedDataParallel) and not last:
        return model.no_sync()
    return contextlib.nullcontext()


def _batch_stream(examples: Sequence[Example], settings: TrainSettings, epoch: int, position: int) -> Iterator[_Batch]:
    """Micro-batches forever, epoch after epoch, starting at batch `position` of `epoch`."""
    while True:
        plan = batches(examples, settings.max_tokens_per_batch, settings.seed, epoch)
        for pos in range(position, len(plan)):
            yield _Batch(plan[pos], epoch, pos + 1, epoch + (pos + 1) / len(plan))
        epoch, position = epoch + 1, 0


def _total_steps(examples: Sequence[Example], settings: TrainSettings) -> int:
    if settings.max_steps > 0:
        return settings.max_steps
    per_epoch = len(batches(examples, settings.max_tokens_per_batch, settings.seed, 0))
    return math.ceil(settings.epochs * per_epoch / settings.grad_accum)


def _examples_digest(examples: Sequence[Example]) -> dict:
    """What a resumed run must share with the run it continues: the number of examples and the
    SHA-256 of their tokens and loss masks, in order."""
    digest = hashlib.sha256()
    for e in examples:
        digest.update(array("i", e.input_ids).tobytes() + b"|" + bytes(e.labels_mask) + b";")
    return {"num_examples": len(examples), "data_sha256": digest.hexdigest()}


def _start_state(output_dir: Path, model, optimizer, scheduler, mode: tuple[bool, bool], data: dict) -> dict:
    """Fresh state, or the newest loadable checkpoint's (weights, optimizer, scheduler, RNG restored).

    `mode` is (resume, overwrite), see `checkpoint.start_run`. Every process loads the checkpoint;
    only rank 0 touches files. The data position is global, so the world size may differ from the
    run that wrote the checkpoint.
    """
    resume, overwrite = mode
    main = distributed.is_main()
    if main:
        start_run(output_dir, resume, overwrite)
    distributed.barrier()
    metrics = output_dir / "metrics.jsonl"
    sharded = fsdp.is_sharded(model)  # its weights and optimizer: fsdp.load_sharded below
    found = resume_latest(output_dir, None if sharded else model, None if sharded else optimizer,
                          scheduler) if resume else None
    if found is None:
        if resume and main:
            print(f"{output_dir}: no checkpoint to resume from, starting fresh")
        if main:
            metrics.unlink(missing_ok=True)  # left by a run that died before its first checkpoint
        return {"step": 0, "epoch": 0, "position": 0, **data}
    path, state = found
    if fsdp.is_sharded(model):
        fsdp.load_sharded(path, model, optimizer)
    missing = [key for key in ("step", "epoch", "position", "num_examples") if key not in state]
    if missing:
        raise CheckpointError(f"{path / 'trainer_state.json'}: lacks {missing}")
    if state["num_examples"] != data["num_examples"] or state.get("data_sha256", data["data_sha256"]) != data["data_sha256"]:
        raise R1labError(f"{path}: was trained on {state['num_examples']} examples (sha256 "
                         f"{str(state.get('data_sha256'))[:12]}), now given {data['num_examples']} (sha256 "
                         f"{data['data_sha256'][:12]}); resuming needs the same data, or pass overwrite=true")
    if main and metrics.exists():  # drop rows logged after the checkpoint: they will be logged again
        write_jsonl(metrics, [r for r in read_jsonl(metrics, tolerant=True) if r.get("step", 0) <= state["step"]])
    if main:
        print(f"resuming from {path} (step {state['step']})")
    return state


def enable_gradient_checkpointing(model) -> None:
    """Recompute each layer's activations in the backward (non-reentrant: works with DDP and LoRA)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name; the old one warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _every(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0


def _pad_id(tokenizer) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return value
    return 0  # any valid id: padded positions are masked out of attention and loss


def _device_of(model) -> torch.device:
    return next(model.parameters()).device
