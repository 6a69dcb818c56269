"""Reward models for general prompts (R1 stage 4): ``r1lab reward-model [kind=pairwise|pointwise] ...``

    r1lab reward-model kind=pairwise  model=runs/micro/base/final output_dir=runs/micro/rm_helpful
    r1lab reward-model kind=pointwise model=runs/micro/base/final output_dir=runs/micro/rm_harmless
    r1lab reward-model kind=pairwise  model=Qwen2.5-0.5B-local train_data=prefs.jsonl template=chat

R1 scores general prompts with two reward models (v1 section 2.3.4; Nature Methods):
- helpfulness, trained on preference pairs with the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected),
  sees only the final summary (`helpfulness_text`), so the reward can't reach into the reasoning;
- harmlessness, trained pointwise (safe 1 / harmful 0) with binary cross-entropy on the logit, sees
  the whole response, reasoning included: harm written in the thinking counts.

Data rows: pairwise ``{"prompt", "chosen", "rejected"}``; pointwise ``{"prompt", "response", "label"}``.
With no ``train_data`` the micro world's synthetic data is made (`r1lab.micro.general`) and written
to ``output_dir/train_data.jsonl``. Any Hugging Face causal LM folder loads as a model with a
fresh scalar head (``AutoModelForSequenceClassification``, ``num_labels=1``); the score is the head's
output at the last token of ``rendered prompt + " " + view of the response``, truncated from the left.

Outputs under ``output_dir``: ``config.yaml``, ``metrics.jsonl`` (step, loss, accuracy, lr, grad_norm;
eval_loss and eval_accuracy at evaluations) and ``final/``, a Hugging Face folder that loads with
``AutoModelForSequenceClassification.from_pretrained``; its config records ``r1lab_reward_kind``.
Departures: no checkpoints or resume (reward models train in minutes here); R1 says little of
how its reward models were trained beyond the data sizes and the two kinds.

Under ``torchrun --nproc_per_node N -m r1lab.cli reward-model ...`` each step's batch is split
over the processes (DistributedDataParallel, as `r1lab sft`): the update is the 1-process update
(tests/test_distributed.py), evaluation is split too, and rank 0 alone writes files.

Use as a GRPO reward: ``make_reward_model_reward("runs/micro/rm_helpful/final")``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from r1lab.micro import general as micro_general
from r1lab.training import distributed
from r1lab.training.distributed import DEFAULT_TIMEOUT_S
from r1lab.training.checkpoint import save_final
from r1lab.recipe import check_choices, check_range, save_config
from r1lab.training.sft_data import bos_to_add, split_examples  # bos_to_add: Llama-style tokenizers get their BOS
from r1lab.errors import R1labError
from r1lab.files import append_jsonl, read_rows, require_columns, write_jsonl
from r1lab.models.loading import DTYPES, load_tokenizer
from r1lab.models.precision import PRECISIONS, autocast, check_supported, weights_dtype
from r1lab.rewards.columns import completion_text
from r1lab.training.loop import TrainSettings, build_optimizer, lr_multiplier
from r1lab.templates import TEMPLATES, render_prompt

Kind = Literal["pairwise", "pointwise"]
COLUMNS = {"pairwise": ("prompt", "chosen", "rejected"), "pointwise": ("prompt", "response", "label")}


# --- the losses: pure tensor functions -------------------------------------------------------

def bradley_terry_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """-log sigmoid(chosen - rejected), averaged over pairs. [B], [B] -> scalar.

    Equal scores cost log 2; the loss falls towards 0 as chosen pulls ahead of rejected.
    """
    return -F.logsigmoid(chosen.float() - rejected.float()).mean()


def pointwise_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy of sigmoid(score) against labels in [0, 1]. [B], [B] -> scalar."""
    return F.binary_cross_entropy_with_logits(scores.float(), labels.float())


def pairwise_accuracy(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Share of pairs where chosen scores strictly higher. [B], [B] -> scalar."""
    return (chosen > rejected).float().mean()


def pointwise_accuracy(scores: Tensor, labels: Tensor) -> Tensor:
    """Share of examples where score > 0 agrees with label > 0.5. [B], [B] -> scalar."""
    return ((scores > 0) == (labels > 0.5)).float().mean()


# scores [B, k] (k = 2 texts per pair, 1 per pointwise example), labels [B] -> (loss, accuracy)
OBJECTIVES = {
    "pairwise": lambda s, y: (bradley_terry_loss(s[:, 0], s[:, 1]), pairwise_accuracy(s[:, 0], s[:, 1])),
    "pointwise": lambda s, y: (pointwise_loss(s[:, 0], y), pointwise_accuracy(s[:, 0], y)),
}


# --- what each reward model sees -------------------------------------------------------------

def helpfulness_text(response: str) -> str:
    """The final summary only: the <summary> part, else the text after </think>, else all of it.

    >>> helpfulness_text("<think> long </think> <summary> It is 4. </summary> <answer>4</answer>")
    'It is 4.'
    """
    start = response.find("<summary>")
    end = response.find("</summary>", start + 1)
    if start >= 0 and end >= 0:
        return response[start + len("<summary>"):end].strip()
    think_end = response.rfind("</think>")
    return response[think_end + len("</think>"):].strip() if think_end >= 0 else response.strip()


def harmlessness_text(response: str) -> str:
    """The whole response, reasoning included."""
    return response.strip()


VIEWS = {"pairwise": helpfulness_text, "pointwise": harmlessness_text}


@dataclass(frozen=True)
class RMExample:
    texts: tuple[tuple[int, ...], ...]  # token ids: (chosen, rejected) or (response,)
    label: float  # pointwise: 1 safe, 0 harmful; pairwise: unused (1.0)


def encode(tokenizer, template: str, prompt: str, response: str, max_length: int,
           bos: int | None = None) -> tuple[tuple[int, ...], bool]:
    """Token ids of ``[bos] + rendered prompt + " " + response``, cut from the left to `max_length`,
    and whether it was cut: the score is read at the last token, so the end must survive."""
    text = f"{render_prompt(template, prompt, tokenizer)} {response}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if bos is not None and ids[:1] == [bos]:
        ids = ids[1:]
    room = max_length - (bos is not None)
    head = () if bos is None else (bos,)
    return head + tuple(ids[max(0, len(ids) - room):]), len(ids) > room


def build_examples(rows: Sequence[dict], kind: str, tokenizer, template: str, max_length: int,
                   source: str) -> list[RMExample]:
    """Rows -> examples, checking columns; a bad label is an R1labError naming `source` and the row."""
    require_columns(rows, COLUMNS[kind], source)
    view, examples, cut, bos = VIEWS[kind], [], 0, bos_to_add(tokenizer)
    for i, row in enumerate(rows, 1):
        label = 1.0 if kind == "pairwise" else _label(row["label"], f"{source}: row {i}")
        responses = (row["chosen"], row["rejected"]) if kind == "pairwise" else (row["response"],)
        encoded = [encode(tokenizer, template, str(row["prompt"]), view(str(r)), max_length, bos) for r in responses]
        cut += any(c for _, c in encoded)
        examples.append(RMExample(tuple(ids for ids, _ in encoded), label))
    if cut:
        print(f"{source}: {cut} of {len(rows)} examples cut to their last max_length={max_length} tokens")
    return examples


def _label(value, where: str) -> float:
    if isinstance(value, bool) or (isinstance(value, (int, float)) and 0 <= value <= 1):
        return float(value)
    raise R1labError(f"{where}: 'label' must be 0 or 1 (1 = safe), got {value!r}")


# --- the model -------------------------------------------------------------------------------

def load_reward_model(path: str, tokenizer, dtype: str = "float32", device: str = "cpu"):
    """Any HF causal LM (or a trained reward model) folder as a model with a scalar head."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    if not Path(path, "config.json").is_file():
        raise R1labError(f"{path}: not a model folder (no config.json)")
    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "score.weight newly initialised" report is expected
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=DTYPES[dtype])
    except (OSError, ValueError, KeyError) as e:
        raise R1labError(f"{path}: cannot load as a reward model ({str(e).splitlines()[0]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    return model.to(device)


def forward_scores(model, sequences: Sequence[Sequence[int]], pad_id: int) -> Tensor:
    """Scalar scores of right-padded sequences: [N] float32 (gradients flow)."""
    width = max(len(s) for s in sequences)
    device = next(model.parameters()).device
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    return out.logits[:, 0].float()


def batch_loss(model, batch: Sequence[RMExample], kind: str, pad_id: int) -> tuple[Tensor, Tensor]:
    """(loss, accuracy) of a batch: every text of every example scored in one forward."""
    k = len(batch[0].texts)
    scores = forward_scores(model, [t for e in batch for t in e.texts], pad_id).view(len(batch), k)  # [B, k]
    labels = torch.tensor([e.label for e in batch], device=scores.device)
    return OBJECTIVES[kind](scores, labels)


@torch.no_grad()
def evaluate(model, examples: Sequence[RMExample], kind: str, pad_id: int, batch_size: int) -> dict[str, float]:
    """Mean loss and accuracy over `examples` (weighted by batch size); under torchrun each
    process scores its share and the sums are all-reduced."""
    was_training = model.training
    model.eval()
    mine = distributed.shard(examples, distributed.rank(), distributed.world_size())
    loss = accuracy = 0.0
    for start in range(0, len(mine), batch_size):
        batch = mine[start:start + batch_size]
        batch_l, batch_a = batch_loss(model, batch, kind, pad_id)
        loss, accuracy = loss + batch_l.item() * len(batch), accuracy + batch_a.item() * len(batch)
    model.train(was_training)
    if distributed.world_size() > 1:
        sums = torch.tensor([loss, accuracy], dtype=torch.float64, device=next(model.parameters()).device)
        loss, accuracy = distributed.all_reduce_sum(sums).tolist()
    return {"loss": loss / max(len(examples), 1), "accuracy": accuracy / max(len(examples), 1)}


@torch.no_grad()
def score_texts(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], template: str = "micro",
                max_length: int = 1024, batch_size: int = 16) -> list[float]:
    """Raw scores of (prompt, response) pairs; pass responses already in the model's view."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    was_training = model.training
    model.eval()
    bos = bos_to_add(tokenizer)
    ids = [encode(tokenizer, template, p, r, max_length, bos)[0] for p, r in zip(prompts, responses)]
    scores: list[float] = []
    for start in range(0, len(ids), batch_size):
        scores += forward_scores(model, ids[start:start + batch_size], tokenizer.pad_token_id).tolist()
    model.train(was_training)
    return scores


def make_reward_model_reward(path: str, kind: str | None = None, template: str = "micro",
                             tasks: Sequence[str] = (micro_general.GENERAL_TASK,), device: str = "cpu",
                             max_length: int = 1024, batch_size: int = 16):
    """A TRL-signature reward ``fn(completions, prompt=[...], task=[...]) -> list[float | None]``.

    Pairwise (helpfulness): the raw score of the summary. Pointwise (harmlessness): sigmoid of the
    score of the whole response, the probability it is safe. `kind` defaults to the one recorded
    at training. Rows whose ``task`` is not in `tasks` score None (R1 gives reasoning prompts
    rule rewards and general prompts reward models); `tasks=()` scores every row.
    """
    tokenizer = load_tokenizer(path)
    model = load_reward_model(path, tokenizer, device=device).eval()
    kind = kind or getattr(model.config, "r1lab_reward_kind", None)
    if kind not in VIEWS:
        raise R1labError(f"{path}: reward kind must be 'pairwise' or 'pointwise', got {kind!r}")
    view = VIEWS[kind]

    def reward(completions: list, prompt: list | None = None, task: list | None = None,
               **columns) -> list[float | None]:
        n = len(completions)
        prompts = prompt if isinstance(prompt, (list, tuple)) and len(prompt) == n else [""] * n
        tasks_of = task if isinstance(task, (list, tuple)) and len(task) == n else [None] * n
        chosen = [i for i in range(n) if not tasks or tasks_of[i] is None or tasks_of[i] in tasks]
        texts = [view(completion_text(c)) for c in completions]
        raw = score_texts(model, tokenizer, [str(prompts[i]) for i in chosen], [texts[i] for i in chosen],
                          template, max_length, batch_size)
        out: list[float | None] = [None] * n
        for i, s in zip(chosen, raw):
            out[i] = s if kind == "pairwise" else float(torch.sigmoid(torch.tensor(s)))
        return out

    reward.__name__ = "helpfulness_reward" if kind == "pairwise" else "harmlessness_reward"
    return reward


# --- the stage -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RewardModelConfig:
    model: str = "runs/micro/base/final"  # any HF causal LM folder; its tokenizer too
    kind: Kind = "pairwise"  # pairwise = helpfulness (summary only); pointwise = harmlessness (whole response)
    train_data: str = ""  # JSONL/Parquet/datasets folder; empty: synthesize micro-world data
    eval_data: str = ""  # empty: hold out eval_fraction of the training rows
    eval_fraction: float = 0.1
    num_synthetic: int = 2000  # micro rows made when train_data is empty
    template: str = "micro"
    max_length: int = 512  # tokens per scored text, cut from the left
    batch_size: int = 16  # pairs (or pointwise examples) per optimizer step
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    epochs: int = 1
    max_steps: int = 0  # > 0 overrides epochs
    max_grad_norm: float = 1.0
    eval_every: int = 100  # steps; <= 0: only at the end
    log_every: int = 10
    seed: int = 0
    output_dir: str = "runs/micro/reward_model"
    dtype: str = "float32"
    device: str = "auto"
    threads: int = 0
    distributed_timeout_s: float = DEFAULT_TIMEOUT_S  # under torchrun: a collective waiting longer ends the run
    precision: str = "fp32"  # fp32 | bf16-mixed | bf16 (r1lab.models.precision)

    def __post_init__(self) -> None:
        check_range(self, 0, None, "learning_rate", "distributed_timeout_s", open_low=True)
        check_range(self, 0, None, "weight_decay", "warmup_steps", "max_grad_norm", "threads")
        check_range(self, 0, 1, "min_lr_ratio")
        check_choices("template", self.template, TEMPLATES)
        check_choices("dtype", self.dtype, DTYPES)
        check_choices("precision", self.precision, PRECISIONS)
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        for name in ("batch_size", "log_every", "num_synthetic"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.max_steps <= 0 and self.epochs < 1:
            raise ValueError("set max_steps > 0 or epochs >= 1")

    def optimizer_settings(self) -> TrainSettings:
        return TrainSettings(learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                             warmup_steps=self.warmup_steps, min_lr_ratio=self.min_lr_ratio, seed=self.seed,
                             precision=self.precision)


@distributed.launched  # under torchrun: one process of N (a no-op otherwise)
def main(config: RewardModelConfig) -> dict:
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    out = Path(config.output_dir)
    train_rows, train_source = load_rows(config, out)  # before the model: a wrong path fails fast
    eval_rows = read_rows(config.eval_data) if config.eval_data else None
    tokenizer = load_tokenizer(config.model)
    torch.manual_seed(config.seed)  # the fresh scalar head: the same on every process, and run to run
    device = distributed.device(config.device)
    check_supported(config.precision, device)
    dtype = weights_dtype(config.precision) if config.dtype == "float32" else config.dtype
    model = load_reward_model(config.model, tokenizer, dtype, device)

    def examples(rows, source):
        return build_examples(rows, config.kind, tokenizer, config.template, config.max_length, source)

    train_set = examples(train_rows, train_source)
    eval_set = examples(eval_rows, config.eval_data) if eval_rows is not None else []
    if eval_rows is None:
        train_set, eval_set = split_examples(train_set, config.eval_fraction, config.seed)
    if distributed.is_main():
        save_config(config, out / "config.yaml")
    summary = train_reward_model(model, tokenizer, train_set, eval_set, config, out)
    model.config.r1lab_reward_kind = config.kind  # so make_reward_model_reward knows the view
    if distributed.is_main():
        save_final(out / "final", model, tokenizer)
    distributed.barrier()  # every process returns once the files are there
    if not distributed.is_main():
        return summary
    eval_text = f", eval accuracy {summary['eval_accuracy']:.3f}" if eval_set else ""
    print(f"reward-model ({config.kind}): {summary['steps']} steps, train accuracy "
          f"{summary['train_accuracy']:.3f}{eval_text}; saved to {out / 'final'}")
    return summary


def load_rows(config: RewardModelConfig, out: Path) -> tuple[list[dict], str]:
    """The training rows and their source name; synthetic micro rows are written out first."""
    if config.train_data:
        return read_rows(config.train_data), config.train_data
    make = micro_general.helpfulness_pairs if config.kind == "pairwise" else micro_general.harmlessness_rows
    rows = make(config.num_synthetic, config.seed)  # the same rows on every process
    if distributed.is_main():
        write_jsonl(out / "train_data.jsonl", rows)
    return rows, str(out / "train_data.jsonl")


def train_reward_model(model, tokenizer, train_set: list[RMExample], eval_set: list[RMExample],
                       config: RewardModelConfig, out: Path) -> dict:
    """AdamW with warmup and cosine decay over shuffled batches; logs to ``out/metrics.jsonl``."""
    if not train_set:
        raise R1labError("no training examples")
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    is_main = distributed.is_main()
    if is_main:
        metrics.unlink(missing_ok=True)
    pad_id, settings, started = tokenizer.pad_token_id, config.optimizer_settings(), time.perf_counter()
    per_epoch = -(-len(train_set) // config.batch_size)
    total = config.max_steps if config.max_steps > 0 else config.epochs * per_epoch
    torch.manual_seed(config.seed)
    optimizer = build_optimizer(model, settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(
        s, settings.warmup_steps, total, settings.min_lr_ratio))
    model.train()
    trainee = distributed.data_parallel(model)  # `model` itself in a single process
    window: list[tuple[float, float]] = []
    last_eval: dict[str, float] = {}
    for step, batch in enumerate(_batches(train_set, config.batch_size, config.seed, total), start=1):
        lr = scheduler.get_last_lr()[0]
        with autocast(config.precision, next(model.parameters()).device):
            loss, accuracy = _step_loss(trainee, batch, config.kind, pad_id)
        limit = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), limit)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.append((loss.item(), accuracy.item()))
        evaluated = bool(eval_set) and (step == total or (config.eval_every > 0 and step % config.eval_every == 0))
        if evaluated or step == total or step % config.log_every == 0:
            row = {"step": step, "loss": _mean(loss for loss, _ in window), "accuracy": _mean(a for _, a in window),
                   "lr": lr, "grad_norm": float(grad_norm)}
            if evaluated:
                last_eval = evaluate(model, eval_set, config.kind, pad_id, config.batch_size)
                row.update(eval_loss=last_eval["loss"], eval_accuracy=last_eval["accuracy"])
            if is_main:
                append_jsonl(metrics, row)
            window = []
    # accuracy of the final model on (at most 1024 of) the training examples, not the running mean
    final_train = evaluate(model, train_set[:1024], config.kind, pad_id, config.batch_size)
    return {"steps": total, "train_loss": final_train["loss"], "train_accuracy": final_train["accuracy"],
            "eval_loss": last_eval.get("loss"), "eval_accuracy": last_eval.get("accuracy"),
            "seconds": round(time.perf_counter() - started, 2)}


def _step_loss(model, batch: list[RMExample], kind: str, pad_id: int) -> tuple[Tensor, Tensor]:
    """Backward of one batch's mean loss; returns the batch's (loss, accuracy).

    Under torchrun (`model` in DDP) each process takes every N-th example; its mean, weighted by
    its share of the batch and by N (DDP averages the processes' gradients), sums to the batch
    mean's gradient. A process with no examples runs one at weight 0: DDP needs every process in
    every backward.
    """
    world = distributed.world_size()
    if world == 1:
        loss, accuracy = batch_loss(model, batch, kind, pad_id)
        loss.backward()
        return loss.detach(), accuracy
    mine = distributed.shard(batch, distributed.rank(), world)
    share = len(mine) / len(batch)
    loss, accuracy = batch_loss(model, mine or batch[:1], kind, pad_id)
    (loss * share * world).backward()
    return tuple(distributed.all_reduce_sum(torch.stack([loss.detach(), accuracy.float()]) * share))


def _batches(examples: list[RMExample], batch_size: int, seed: int, steps: int):
    """`steps` batches: a fresh seeded shuffle each epoch, the last short batch of an epoch kept."""
    epoch = 0
    while True:
        order = list(range(len(examples)))
        random.Random(seed * 1000003 + epoch).shuffle(order)
        for start in range(0, len(order), batch_size):
            if steps <= 0:
                return
            steps -= 1
            yield [examples[i] for i in order[start:start + batch_size]]
        epoch += 1


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0
