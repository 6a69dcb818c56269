"""Data parallel under torchrun on CPU (gloo): SFT, GRPO and reward-model training with 2 processes
make the same updates as with 1, and resume with another number of processes.

``pytest tests/test_distributed.py``; ~100 s on 2 busy cores (three torchrun launches of 2
processes, one spawn of 2).
"""

import json
import os
import shutil
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from r1lab import cli
from r1lab.training import distributed
from r1lab.grpo.parallel import group_seed, share
from r1lab.grpo.rollout import Rollout
from r1lab.grpo.update import UpdateSettings, update_policy
from r1lab.models.logprobs import sequence_logprobs
from r1lab.sampling.generate import SamplingParams, generate
from r1lab.training.checkpoint import checkpoint_dir
from r1lab.files import write_jsonl

# 14 rows of 3 lengths: a 96-token budget packs micro-batches of 3-7 examples, some of odd size
# (ranks get unequal shares); grad_accum=2 checks no_sync; eval_fraction checks the sharded eval.
ROWS = [{"prompt": f"{a}*{b}=", "completion": str(a * b) * (1 + a % 3)} for a in range(7) for b in range(2)]
RUN = ["max_steps=3", "grad_accum=2", "max_tokens_per_batch=96", "max_length=32", "learning_rate=1e-3",
       "warmup_steps=1", "save_every=2", "keep_checkpoints=0", "log_every=1", "eval_every=1",
       "eval_fraction=0.15", "template=micro", "threads=1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    """root/model (conftest's tiny random model, copied) and root/train.jsonl (ROWS)."""
    root = tmp_path_factory.mktemp("ddp")
    shutil.copytree(tiny_model_dir, root / "model")
    write_jsonl(root / "train.jsonl", ROWS)
    return root


def sft_args(root, out):
    return ["sft", f"model={root / 'model'}", f"train_data={root / 'train.jsonl'}", f"output_dir={out}", *RUN]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(folder):
    return load_file(folder / "model.safetensors")


def assert_close_weights(a, b, atol=1e-5):
    # Adam's first steps are ~lr * sign(g): float noise in near-zero gradients (the ranks sum in
    # another order) moves a weight by up to ~1% of lr per step, so weights agree to 1e-5 absolute
    # after SFT's 3 steps at lr 1e-3. GRPO makes 12 optimiser steps: a rare element drifts up to
    # ~1e-4 (measured 8.6e-5), still 100x below what a wrong gradient does (~lr per step), and the
    # metrics (loss, grad_norm, kl at 1e-4 relative) check the gradients more sharply.
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=atol, msg=key)


def test_shard_is_strided_and_covers_everything():
    items = list(range(7))
    shares = [distributed.shard(items, r, 3) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert distributed.shard([0], 1, 2) == []
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.all_reduce_sum(torch.tensor([2.0])).item() == 2.0  # single process: unchanged


def test_two_processes_match_one_and_resume_with_one(setup, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    assert cli.main(sft_args(setup, single)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "r1lab.cli", *sft_args(setup, double)]
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = metrics(single), metrics(double)
    assert [m["step"] for m in two] == [1, 2, 3]  # rank 0 alone writes
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert_close_weights(weights(single / "final"), weights(double / "final"))

    # The world-size-2 checkpoint of step 2 resumes in one process and lands where the 1-process run did.
    resumed = tmp_path / "resumed"
    shutil.copytree(double, resumed)
    shutil.rmtree(checkpoint_dir(resumed, 3))
    assert cli.main(sft_args(setup, resumed) + ["resume=true"]) == 0
    assert metrics(resumed)[-1]["loss"] == pytest.approx(one[-1]["loss"], rel=1e-5)
    assert_close_weights(weights(single / "final"), weights(resumed / "final"))


# ---------------------------------------------------------------------------------------------
# GRPO under torchrun: 2 processes (gloo) against 1 with the same global batch of 4 prompts.
# ---------------------------------------------------------------------------------------------

# A random model writes no right answers; this reward gives the groups of 2 of the 12 prompts a
# spread (longer is better) and the others all zeros, so dynamic sampling refills and runs out of
# informative groups: a step may train on fewer groups than processes (one gets an empty share).
REWARD = '''
def some_length(completions, prompt, **columns):
    return [len(c) / 10 if p in ("1+2=", "3+1=") else 0.0 for c, p in zip(completions, prompt)]
'''
GRPO_RUN = ["template=micro", "num_generations=3", "prompts_per_step=4", "max_new_tokens=10", "beta=0.04",
            "learning_rate=1e-3", "warmup_steps=1", "advantage=batch", "aggregation=token_mean",
            "dynamic_sampling=true", "max_refills=1", "num_iterations=2", "minibatches=2", "micro_batch_size=2",
            "max_steps=3", "save_every=2", "keep_checkpoints=0", "eval_every=2", "data.num_eval=3", "eval_k=2",
            "sample_every=1", "progress=false", "threads=1"]
TIMING = {"step_time", "rollout_s", "train_s", "tokens_per_s", "eval/addition/seconds", "peak_memory_mb"}


@pytest.fixture(scope="module")
def grpo_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo_ddp")
    write_jsonl(root / "train.jsonl", [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(6) for b in (1, 2)])
    write_jsonl(root / "eval.jsonl", [{"prompt": f"{a}+3=", "answer": str(a + 3)} for a in range(3)])
    (root / "reward.py").write_text(REWARD)
    return root


def grpo_args(model, data, out):
    return ["grpo", f"model={model}", f"data.train={data / 'train.jsonl'}", f"data.eval={data / 'eval.jsonl'}",
            f"rewards=[accuracy,{data / 'reward.py'}:some_length]", f"output_dir={out}", *GRPO_RUN]


def torchrun(args, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
              "-m", "r1lab.cli", *args]
    return subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_grpo_two_processes_match_one_and_resume_with_one(tiny_model_dir, grpo_data, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    assert cli.main(grpo_args(tiny_model_dir, grpo_data, single)) == 0
    done = torchrun(grpo_args(tiny_model_dir, grpo_data, double))
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = comparable(metrics(single)), comparable(metrics(double))
    assert [m["step"] for m in two] == [0, 1, 2, 3]  # rank 0 alone writes
    assert one[1]["zero_variance_groups"] > 0  # the refill path ran
    # seed 0 draws steps trained on 1 group (process 1's share is empty) and on 2 (one each)
    assert {m["groups"] for m in one[1:]} == {1, 2}
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for key in a:  # rewards, lengths, eval and refills equal; losses and norms up to float rounding
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert (single / "completions.jsonl").read_text() == (double / "completions.jsonl").read_text()
    assert_close_weights(weights(single / "final"), weights(double / "final"), atol=2e-4)

    # the 2-process checkpoint of step 2 resumes in one process and lands where the 1-process run did
    resumed = tmp_path / "resumed"
    shutil.copytree(double, resumed)
    shutil.rmtree(checkpoint_dir(resumed, 3))
    assert cli.main(grpo_args(tiny_model_dir, grpo_data, resumed) + ["resume=true"]) == 0
    assert comparable(metrics(resumed))[-1] == pytest.approx(one[-1], rel=1e-4, abs=1e-6)
    assert_close_weights(weights(single / "final"), weights(resumed / "final"), atol=2e-4)


def test_grpo_under_torchrun_refuses_what_it_cannot_split(tiny_model_dir, grpo_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)  # as under torchrun, without launching it
    assert cli.main(grpo_args(tiny_model_dir, grpo_data, tmp_path / "odd") + ["prompts_per_step=3"]) == 2
    assert "prompts_per_step (3) must be divisible by the number of processes (2)" in capsys.readouterr().err
    assert cli.main(grpo_args(tiny_model_dir, grpo_data, tmp_path / "v")
                    + ["rollout_backend=vllm", "vllm_tensor_parallel_size=2"]) == 2
    assert "vllm_tensor_parallel_size=2 under torchrun" in capsys.readouterr().err


def test_share_is_contiguous_and_seeds_depend_on_the_position_only():
    assert [share(5, r, 2) for r in range(2)] == [range(0, 3), range(3, 5)]
    assert [list(share(1, r, 2)) for r in range(2)] == [[0], []]
    assert group_seed(0, 3, 0, 7) == group_seed(0, 3, 0, 7)
    assert len({group_seed(0, 3, 0, 7), group_seed(0, 3, 1, 7), group_seed(0, 4, 0, 7), group_seed(1, 3, 0, 7)}) == 4


def test_seeded_samples_do_not_depend_on_the_batch(tiny_model_dir, tokenizer):
    """With per-prompt seeds a prompt samples the same completions alone, in a batch, or in
    chunks of any size: what lets N processes sample what 1 process would."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = ["1+2=", "30+4=", "5+60=", "7+8="]
    params = SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=0)
    seeds = [11, 12, 13, 14]
    together = generate(model, tokenizer, prompts, params, seeds=seeds)
    chunked = generate(model, tokenizer, prompts, params, seeds=seeds, batch_size=3)  # one prompt per chunk
    alone = generate(model, tokenizer, prompts[2:3], params, seeds=seeds[2:3])
    for a, b in zip(together, chunked):
        assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert [c.token_ids for c in alone[0]] == [c.token_ids for c in together[2]]
    for c, d in zip(alone[0], together[2]):
        assert c.logprobs == pytest.approx(d.logprobs, abs=1e-5)
    assert len({c.token_ids for g in together for c in g}) > 4  # the streams differ between and within groups
    other = generate(model, tokenizer, prompts[2:3], params, seeds=[99])
    assert [c.token_ids for c in other[0]] != [c.token_ids for c in alone[0]]


# A rollout of 4 groups of 3 rows with ragged completions; SGD (not Adam, which hides the scale
# of the gradient) makes the weights after the update a direct check of the summed gradients.
GROUPS, G, PROMPT, COMPLETION = 4, 3, 5, 6
LR = 0.01  # small enough that 12 SGD steps stay near the start (no float noise blown up)


def _rollout(model) -> Rollout:
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, 200, (GROUPS, PROMPT), generator=gen).repeat_interleave(G, dim=0)
    completions = torch.randint(3, 200, (GROUPS * G, COMPLETION), generator=gen)
    ids = torch.cat([prompts, completions], dim=1)
    attention = torch.ones_like(ids)
    lengths = torch.randint(1, COMPLETION + 1, (GROUPS * G,), generator=gen)
    for row, k in enumerate(lengths.tolist()):
        attention[row, PROMPT + k:] = 0
    completion_mask = attention[:, 1:].clone().float()
    completion_mask[:, :PROMPT - 1] = 0
    with torch.no_grad():
        old = sequence_logprobs(model, ids, attention, prompt_len=PROMPT) * completion_mask
    return Rollout(ids, attention, completion_mask, old - 0.05 * completion_mask,  # ratios != 1: clipping
                   torch.randn(GROUPS * G, generator=gen), ref_logp=old, prompt_len=PROMPT)


def _update(model_dir, aggregation: str, rank: int = 0, world: int = 1):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rollout = _rollout(model)
    mine = share(GROUPS, rank, world)
    part = rollout.rows(torch.arange(mine.start * G, mine.stop * G))
    settings = UpdateSettings(num_iterations=2, minibatches=3, micro_batch_size=2, temperature=1.0, eps_low=0.2,
                              eps_high=0.2, beta=0.1, kl_estimator="k3", aggregation=aggregation, max_len=8,
                              max_grad_norm=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    stats = update_policy(model, optimizer, part, settings, seed=3, first_row=mine.start * G,
                          total_rows=GROUPS * G)
    return stats, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _update_worker(rank: int, world: int, init: str, model_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        results = {a: _update(model_dir, a, rank, world) for a in ("seq_mean", "token_mean", "constant")}
    finally:
        torch.distributed.destroy_process_group()
    torch.save(results, f"{out}/rank{rank}.pt")


def test_update_over_two_processes_is_the_one_process_update(tiny_model_dir, tmp_path):
    """Each aggregation's normaliser (sequences, tokens, sequences x max_len) summed over
    processes, minibatches drawn from the global rows (3 minibatches of 4 rows: the processes'
    shares are unequal), gradients summed: the same SGD steps and statistics as one process."""
    torch.multiprocessing.spawn(_update_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tiny_model_dir),
                                                      str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for aggregation in ("seq_mean", "token_mean", "constant"):
        stats, weights_one = _update(tiny_model_dir, aggregation)
        for stats_r, weights_r in (r[aggregation] for r in ranks):
            assert stats_r == pytest.approx(stats, rel=1e-5, abs=1e-7), aggregation
            for key in weights_one:
                torch.testing.assert_close(weights_r[key], weights_one[key], rtol=1e-5, atol=1e-6, msg=key)


def test_reward_model_two_processes_match_one(tiny_model_dir, tmp_path):
    """Pairwise reward model, 7 steps of 3 pairs (2 + 1 per process) with evaluation."""
    run = ["reward-model", "kind=pairwise", f"model={tiny_model_dir}", "num_synthetic=24", "batch_size=3",
           "max_steps=7", "eval_every=3", "log_every=1", "learning_rate=1e-3", "warmup_steps=1", "threads=1",
           "max_length=64"]
    single, double = tmp_path / "single", tmp_path / "double"
    assert cli.main(run + [f"output_dir={single}"]) == 0
    done = torchrun(run + [f"output_dir={double}"])
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = metrics(single), metrics(double)
    assert [m["step"] for m in two] == list(range(1, 8)) and "eval_accuracy" in two[-1]
    for a, b in zip(one, two):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6)
    assert_close_weights(weights(single / "final"), weights(double / "final"), atol=1e-4)
    assert (double / "train_data.jsonl").read_text() == (single / "train_data.jsonl").read_text()
