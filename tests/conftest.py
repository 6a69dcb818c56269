"""Shared fixtures: a tiny tokenizer and random micro model, built locally (no hub, no network)."""

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
