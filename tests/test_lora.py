"""LoRA (PEFT) and gradient checkpointing in SFT, on a tiny random model (``pytest tests/test_lora.py``)."""

import json
import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from safetensors.torch import load_file

import r1lab.training.loop
from r1lab import cli
from r1lab.files import write_jsonl
from r1lab.models.lora import apply_lora, disabled_adapters, is_lora
from r1lab.micro.sizes import build_model
from r1lab.micro.tokenizer import build_tokenizer, micro_corpus_sample

ROWS = [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a in range(4) for b in range(3)]
RUN = ["max_tokens_per_batch=128", "max_length=32", "warmup_steps=0", "log_every=1", "eval_every=0",
       "save_every=0", "template=micro", "threads=1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    """root/model (conftest's tiny random model, copied) and root/train.jsonl (ROWS)."""
    root = tmp_path_factory.mktemp("lora")
    shutil.copytree(tiny_model_dir, root / "model")
    write_jsonl(root / "train.jsonl", ROWS)
    return root


def sft(root, out, *extra):
    args = ["sft", f"model={root / 'model'}", f"train_data={root / 'train.jsonl'}", f"output_dir={out}", *RUN, *extra]
    assert cli.main(args) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_gradient_checkpointing_gives_the_same_losses(setup, tmp_path):
    plain = sft(setup, tmp_path / "plain", "max_steps=3")
    checkpointed = sft(setup, tmp_path / "gc", "max_steps=3", "gradient_checkpointing=true")
    for a, b in zip(plain, checkpointed):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    model = build_model("micro", build_tokenizer(micro_corpus_sample(50)))
    r1lab.training.loop.enable_gradient_checkpointing(model)  # what gradient_checkpointing=true calls
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing


def test_lora_sft_trains_only_adapters_and_saves_both_forms(setup, tmp_path):
    peft = pytest.importorskip("peft", reason="LoRA needs peft (pip install 'r1lab[peft]')")
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    # One batch of all 12 rows, so the first and last losses are on the same data. With frozen
    # embeddings (random, std 0.02, tied to the head) and a frozen final norm, logits stay within
    # about +-2.6: the loss can only fall from ln(vocab) ~ 6.2 to ~5.56 (measured), not to ~0.
    rows = sft(setup, out, "max_steps=10", "learning_rate=3e-2", "lora_r=8", "lora_alpha=16",
               "max_tokens_per_batch=512")
    assert rows[-1]["loss"] < 0.92 * rows[0]["loss"]

    base = load_file(setup / "model" / "model.safetensors")
    assert not (out / "final" / "model.safetensors").exists()  # final/ holds the adapters alone
    adapters = load_file(out / "final" / "adapter_model.safetensors")
    assert adapters and all("lora_" in key for key in adapters)
    merged = load_file(out / "final-merged" / "model.safetensors")
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(k.endswith(("proj.weight",)) for k in changed)  # only adapted layers moved

    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(setup / "model"), out / "final").eval()
    plain = AutoModelForCausalLM.from_pretrained(out / "final-merged").eval()
    base_model = AutoModelForCausalLM.from_pretrained(setup / "model").eval()
    ids = torch.tensor([[5, 17, 42, 8, 3, 11]])
    with torch.no_grad():
        adapted = model(ids).logits
        torch.testing.assert_close(plain(ids).logits, adapted, rtol=0, atol=1e-5)
        with disabled_adapters(model):
            torch.testing.assert_close(model(ids).logits, base_model(ids).logits, rtol=0, atol=1e-6)
        assert not torch.allclose(adapted, base_model(ids).logits, atol=1e-3)


def test_apply_lora_freezes_the_base(setup):
    pytest.importorskip("peft", reason="LoRA needs peft (pip install 'r1lab[peft]')")
    from transformers import AutoModelForCausalLM

    model = apply_lora(AutoModelForCausalLM.from_pretrained(setup / "model"), r=4, alpha=8, target_modules="all-linear")
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert is_lora(model) and trainable and all("lora_" in name for name in trainable)
    with disabled_adapters(torch.nn.Linear(2, 2)):
        pass  # a plain model passes through



def test_lora_sft_checkpoints_do_not_change_training(setup, tmp_path):
    """Issue #7: saving every 2 steps logged a different step-2 loss. The cause was the adapters'
    init (A) drawn from the global RNG before the run's seed was set: a second run in one process
    started from another A (B = 0 made step 1 equal). Now the init depends on `seed` alone."""
    pytest.importorskip("peft", reason="LoRA needs peft (pip install 'r1lab[peft]')")
    lora = ["max_steps=4", "learning_rate=3e-2", "lora_r=4", "lora_alpha=8", "lora_dropout=0.1"]
    torch.manual_seed(123)  # any global RNG state: the run must not depend on it
    plain = sft(setup, tmp_path / "plain", *lora)
    torch.rand(7)
    saved = sft(setup, tmp_path / "saved", *lora, "save_every=2", "keep_checkpoints=0")
    assert [r["loss"] for r in saved] == [r["loss"] for r in plain]
    assert len({r["loss"] for r in plain}) == 4  # the adapters do train

    # Killed after the step-2 checkpoint (step 3-4 work lost), then resumed: ends as if never stopped.
    shutil.rmtree(tmp_path / "saved" / "checkpoints" / "step-000004")
    shutil.rmtree(tmp_path / "saved" / "final")
    resumed = sft(setup, tmp_path / "saved", *lora, "save_every=2", "keep_checkpoints=0", "resume=true")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in plain]
    a = load_file(tmp_path / "plain" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "saved" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_apply_lora_init_depends_on_the_seed_alone(setup):
    pytest.importorskip("peft", reason="LoRA needs peft (pip install 'r1lab[peft]')")
    from transformers import AutoModelForCausalLM

    def adapters(seed):
        model = apply_lora(AutoModelForCausalLM.from_pretrained(setup / "model"), r=4, alpha=8, seed=seed)
        return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_A" in k}

    torch.manual_seed(1)
    first = adapters(0)
    state = torch.get_rng_state()
    again = adapters(0)
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is left as it was
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not any(torch.equal(first[k], v) for k, v in adapters(1).items())
