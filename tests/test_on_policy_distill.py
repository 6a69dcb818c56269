"""On-policy distillation: GRPO with a teacher as the reference, advantage=zero, kl_estimator=k2."""

import json

import pytest
import torch

from r1lab import cli
from r1lab.errors import R1labError
from r1lab.grpo.advantages import ADVANTAGES
from r1lab.grpo.config import GRPOConfig
from r1lab.grpo.losses import KL_ESTIMATORS, grpo_loss
from r1lab.recipe import load_config


def _policy_gradient_of(estimator: str, theta: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """E_{y ~ pi}[grad of the estimator used as a loss on y], exactly: each outcome's loss gradient
    weighted by its (detached) probability, as sampling y from the policy does on average."""
    theta = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, 0)
    weights = logp.exp().detach()
    (weights * KL_ESTIMATORS[estimator](logp, teacher_logp)).sum().backward()
    return theta.grad


def test_k2_on_the_policys_samples_has_the_reverse_kl_gradient_and_k3_the_forward():
    torch.manual_seed(0)
    theta, teacher_logp = torch.randn(6), torch.log_softmax(torch.randn(6) * 2, 0)

    def kl_gradient(reverse: bool) -> torch.Tensor:
        t = theta.clone().requires_grad_(True)
        logp = torch.log_softmax(t, 0)
        if reverse:
            kl = (logp.exp() * (logp - teacher_logp)).sum()
        else:
            kl = (teacher_logp.exp() * (teacher_logp - logp)).sum()
        kl.backward()
        return t.grad

    reverse, forward = kl_gradient(True), kl_gradient(False)
    assert not torch.allclose(reverse, forward, atol=1e-3)  # the two differ here: the test tells them apart
    assert torch.allclose(_policy_gradient_of("k2", theta, teacher_logp), reverse, atol=1e-6)
    assert torch.allclose(_policy_gradient_of("k3", theta, teacher_logp), forward, atol=1e-6)


def test_zero_advantage_leaves_the_kl_term_alone():
    rewards = torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.2, 0.9]])
    assert torch.equal(ADVANTAGES["zero"](rewards), torch.zeros_like(rewards))
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -2.0], [-0.5, -1.0]])
    mask = torch.ones(2, 2)
    loss, _ = grpo_loss(logp, logp.detach(), ref, torch.zeros(2), mask, eps_low=0.2, eps_high=0.2, beta=0.5,
                        aggregation="seq_mean", kl_estimator="k2")
    # k2 = (logp - ref)^2 / 2 per token: [[0.5, 0], [0, 2]]; seq_mean: (0.25 + 1) / 2; times beta 0.5
    assert loss.item() == pytest.approx(0.3125)


@pytest.mark.parametrize("keys, message", [
    ({"advantage": "zero", "beta": 0.0}, "advantage=zero with beta=0 trains nothing"),
    ({"reference_model": "t", "beta": 0.0}, "needs beta > 0"),
    ({"reference_model": "t", "ref_update_every": 10, "max_steps": 20}, "set ref_update_every=0"),
    ({"reference_model": "t", "ref_update_every": 0, "lora_r": 8}, "with LoRA"),
])
def test_teacher_settings_are_checked(keys, message):
    with pytest.raises(R1labError, match=message):
        load_config(GRPOConfig, None, [f"{k}={v}" for k, v in {"data.tasks": "[addition]", **keys}.items()])


def test_a_teacher_with_another_vocabulary_is_one_line(tiny_model_dir, prompts_jsonl, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher = tmp_path / "teacher"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.save_pretrained(teacher)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_tokens(["<teacher-only>"])
    tok.save_pretrained(teacher)
    with pytest.raises(R1labError, match="teacher and policy need one vocabulary"):
        from r1lab.grpo.reference import check_reference_tokenizer

        config = load_config(GRPOConfig, None, [f"model={tiny_model_dir}", f"reference_model={teacher}",
                                                "ref_update_every=0", "data.tasks=[addition]"])
        check_reference_tokenizer(config, AutoTokenizer.from_pretrained(tiny_model_dir))
    code = cli.main(["grpo", f"model={tiny_model_dir}", f"data.train={prompts_jsonl}", f"reference_model={teacher}",
                     "ref_update_every=0", f"output_dir={tmp_path / 'run'}", "max_steps=1", "progress=false"])
    assert code == 2
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _teacher_of(student_dir, out, token: str):
    """The student taught (cross-entropy, 10 steps) to put far more mass on `token` after any
    prefix: a teacher the student can only match by learning from it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForCausalLM.from_pretrained(student_dir)
    target = tok.convert_tokens_to_ids(token)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        logits = model(torch.randint(5, len(tok), (8, 24), generator=generator)).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.full((8 * 24,), target))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _on_policy_kl(student_dir, teacher_dir, prompts: list[str]) -> float:
    """Exact reverse KL(student || teacher), summed over the vocabulary, averaged over the positions
    of the student's own samples (the quantity on-policy distillation minimises)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student_dir)
    student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    torch.manual_seed(0)
    batch = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        seqs = student.generate(**batch, do_sample=True, top_k=0, max_new_tokens=8, num_return_sequences=4,
                                pad_token_id=tok.pad_token_id)
        logp = torch.log_softmax(student(seqs).logits[:, -9:-1].float(), -1)
        logq = torch.log_softmax(teacher(seqs).logits[:, -9:-1].float(), -1)
    return (logp.exp() * (logp - logq)).sum(-1).mean().item()


@pytest.mark.slow
def test_on_policy_distillation_brings_the_student_to_its_teacher(tiny_model_dir, tmp_path):
    teacher = _teacher_of(tiny_model_dir, tmp_path / "teacher", "7")
    rows = [{"prompt": f"Compute {a} + {b}.", "answer": str(a + b)} for a in range(1, 9) for b in range(1, 9)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert cli.main(["grpo", f"model={tiny_model_dir}", f"data.train={tmp_path / 'p.jsonl'}", f"output_dir={out}",
                     "template=micro", f"reference_model={teacher}", "advantage=zero", "kl_estimator=k2", "beta=1.0",
                     "ref_update_every=0", "num_generations=4", "prompts_per_step=4", "max_new_tokens=8",
                     "learning_rate=1e-3", "warmup_steps=0", "eval_every=0", "sample_every=0", "progress=false",
                     "threads=1", "max_steps=20", "save_every=0"]) == 0
    prompts = [f"Compute {a} + {b}." for a in range(1, 9) for b in (2, 5)]
    before, after = _on_policy_kl(tiny_model_dir, teacher, prompts), _on_policy_kl(out / "final", teacher, prompts)
    assert before > 0.1 and after < before / 5, (before, after)  # measured: 0.154 -> 0.0074
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "kl" in r] == list(range(1, 21))
