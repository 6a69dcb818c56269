"""Shared fixtures: a tiny tokenizer and random micro model, built locally (no hub, no network)."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny models gain nothing from 2; 1 stays fast on a busy machine


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip, saying why, where CUDA is absent (benchmarks/gpu_check.sh runs them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    """A child process a test left running fails the session and is killed: Python's exit would
    otherwise wait for it forever (multiprocessing joins its children at exit), and CI would time out."""
    import multiprocessing

    left = multiprocessing.active_children()
    for proc in left:
        proc.kill()
        proc.join()
    if left:
        print(f"\nerror: tests left {len(left)} child process(es) running: {[p.name for p in left]}; killed them")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def tokenizer():
    from r1lab.micro.tokenizer import build_tokenizer, micro_corpus_sample

    return build_tokenizer(micro_corpus_sample(400))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A saved random micro model with its tokenizer: an ordinary HF checkpoint folder."""
    from r1lab.micro.sizes import build_model

    path = tmp_path_factory.mktemp("tiny_model")
    model = build_model("micro", tokenizer, max_positions=512, seed=0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def policy(tokenizer):
    """A random micro model with peaked distributions (log-probs over a real range) and many EOS
    ids (ragged lengths): the sampler's and the GRPO passes' test subject."""
    from r1lab.micro.sizes import build_model

    model = build_model("micro", tokenizer, seed=0)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(2.0)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, *range(60, 200)]
    return model


@pytest.fixture
def prompts_jsonl(tmp_path):
    """Five addition prompts with answers: a user's GRPO training file."""
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"Compute {a} + {b}.", "answer": str(a + b)}
            for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 1)]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def packed_rollout(policy, tokenizer):
    """`policy`'s completions of three prompts (4 each, up to 16 tokens: ragged), scored by their
    length and packed with group advantages: a GRPO update's input."""
    from r1lab.grpo.advantages import ADVANTAGES
    from r1lab.grpo.rollout import RolloutSettings, pack, sample_and_score
    from r1lab.sampling.generate import SamplingParams

    prompts = ["Compute 12 + 34.", "Hi", "Compute 7 * 8 and show each step"]
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    settings = RolloutSettings(params=SamplingParams(max_new_tokens=16, n=4, seed=3),
                               reward_fns=[("len", lambda completions, **_: [float(len(c)) for c in completions])],
                               reward_weights=[1.0])
    scored = sample_and_score(policy, tokenizer, [{"prompt": p} for p in prompts], prompt_ids, settings)
    return pack(scored, prompt_ids, ADVANTAGES["group"](scored.rewards), tokenizer.pad_token_id)
