"""A user's data as it comes: GSM8K / MATH / chat / other-column files, BOS, hub names; and the
checks GRPO makes before loading a model."""

import json
import shutil

import pytest

from r1lab.cli import main as cli_main
from r1lab.errors import R1labError
from r1lab.files import read_jsonl
from r1lab.training.sft_data import bos_to_add
from r1lab.problem_formats import (ProblemFormat, tokenize_prompts, gsm8k_answer, math_answer, prepare_rows,
                                   read_problem_rows, render_problem)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_and_math_answers():
    assert gsm8k_answer("She pays 3 * 400 = <<3*400=1200>>1200.\n#### 1,200") == "1200"
    assert gsm8k_answer("#### -3.5 ") == "-3.5" and gsm8k_answer("72") is None and gsm8k_answer(None) is None
    assert math_answer(r"Thus $x=\boxed{\frac{1}{2}}$.") == r"\frac{1}{2}"
    assert math_answer(r"Both \boxed{2} and \boxed{3}.") is None  # no single answer
    assert math_answer(r"\boxed{(1,2)}") == "(1,2)" and math_answer("x = 2") is None


def test_prepare_rows_maps_columns_and_keeps_the_rest(caplog):
    rows = [{"q": "Compute 2+2.", "gold": 4, "id": 7}, {"q": "Compute 1+1.", "gold": "", "id": 8}]
    out = prepare_rows(rows, ProblemFormat("plain", "q", "gold"), "f.jsonl")
    assert out == [{"q": "Compute 2+2.", "gold": 4, "id": 7, "prompt": "Compute 2+2.", "answer": "4"}]
    assert "1 of 2 rows left out" in caplog.text
    with pytest.raises(R1labError, match=r"f.jsonl: row 1 has no column 'answer' for the answer .*data.answer_column"):
        prepare_rows(rows, ProblemFormat("plain", "q"), "f.jsonl")
    with pytest.raises(R1labError, match="f.jsonl: row 1 column 'q': a conversation must be"):
        prepare_rows([{"q": [{"role": "user"}], "gold": 1}], ProblemFormat("plain", "q", "gold"), "f.jsonl")
    with pytest.raises(R1labError, match="no row has an answer that data.format=gsm8k"):
        prepare_rows([{"question": "x", "answer": "no marker"}], ProblemFormat("gsm8k"), "g.jsonl")
    with pytest.raises(ValueError, match="unknown data.format"):
        ProblemFormat("csv")


def test_one_loader_one_error_for_every_stage(tmp_path):
    from r1lab.evaluation.evaluate import EvalConfig, eval_problems
    from r1lab.grpo.config import GRPOData
    from r1lab.problems import load_train_rows
    from r1lab.stages.rejection_sample import load_prompts

    def loaders(path):  # GRPO, evaluation, rejection sampling (and cold start, which shares it)
        return [lambda: load_train_rows(GRPOData(train=str(path)), seed=0),
                lambda: eval_problems(EvalConfig(data=str(path))),
                lambda: load_prompts(str(path), (), 0, {}, 0)]

    empty_prompt = _write(tmp_path / "p.jsonl", [{"prompt": "1+1?", "answer": "2"}, {"prompt": " ", "answer": "3"}])
    for load in loaders(empty_prompt):
        with pytest.raises(R1labError, match=r"^.*p.jsonl: row 2 column 'prompt': empty prompt$"):
            load()
    no_answer = _write(tmp_path / "a.jsonl", [{"prompt": "1+1?", "answer": "2"}, {"prompt": "2+2?", "answer": ""}])
    grpo, evaluation, rejection = loaders(no_answer)
    assert [r["prompt"] for r in grpo()] == ["1+1?"]  # GRPO leaves it out (logged)
    for load in (evaluation, rejection):  # stages that score every row name it
        with pytest.raises(R1labError, match=r"^.*a.jsonl: row 2 column 'answer': no answer$"):
            load()


def test_load_problems_tasks_first_rows_and_conversations(tmp_path):
    from r1lab import task_registry
    from r1lab.problems import load_problems

    expected = [p.to_row() for p in task_registry.generate("addition", "test", 3, 5, (2,))]
    assert load_problems("", "test", ("addition",), 3, 5, {"addition": [2]}) == expected
    path = _write(tmp_path / "c.jsonl", [{"prompt": [{"role": "user", "content": f"{i}+1?"}], "answer": i + 1}
                                         for i in range(3)])
    rows = load_problems(str(path), "train", num=2)
    assert [r["answer"] for r in rows] == ["1", "2"] and rows[0]["prompt"] == [{"role": "user", "content": "0+1?"}]
    assert len(load_problems(str(path), "train", num=2, first=False)) == 3
    with pytest.raises(R1labError, match=r"c.jsonl: row 1 column 'prompt': this stage takes prompts as text"):
        load_problems(str(path), "train", conversations=False)


def test_render_conversations_system_prompt_and_bos(tokenizer):
    chat = [{"role": "user", "content": "2+2?"}]
    assert render_problem(chat, "micro", tokenizer, "Think first.") == (
        "<|im_start|>system\nThink first.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert render_problem("2+2?", "micro", tokenizer) == "User: 2+2? Assistant:"
    with pytest.raises(R1labError, match="system_prompt needs template=chat"):
        render_problem("2+2?", "micro", tokenizer, "Think first.")
    # the micro tokenizer (like Qwen2.5's) has no BOS: the prompt ids are the text's own
    assert bos_to_add(tokenizer) is None
    assert tokenize_prompts(tokenizer, ["User: 1"]) == [tokenizer("User: 1", add_special_tokens=False)["input_ids"]]


def test_bos_added_exactly_when_the_tokenizer_adds_one(tokenizer):
    from tokenizers.processors import TemplateProcessing

    tok = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer.__class__.from_str(
        tokenizer.backend_tokenizer.to_str()), eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token)
    tok.add_special_tokens({"bos_token": "<s>"})
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    assert bos_to_add(tok) == tok.bos_token_id
    plain = tok("2+2", add_special_tokens=False)["input_ids"]
    # once in front, and not twice when the text (a Llama-style chat template's output) has it
    assert tokenize_prompts(tok, ["2+2", "<s>2+2"]) == [[bos, *plain], [bos, *plain]]


def test_hub_names_offline_and_local_first(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(R1labError, match=r"^openai/gsm8k: no such local file or folder, and the hub is offline"):
        read_problem_rows("openai/gsm8k")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    _write(tmp_path / "data" / "p.jsonl", [{"prompt": "x", "answer": "1"}])
    assert read_problem_rows("data/p.jsonl") == [{"prompt": "x", "answer": "1"}]


def _args(model, out, *extra):
    return [f"model={model}", f"output_dir={out}", "template=micro", "num_generations=4", "prompts_per_step=2",
            "max_new_tokens=8", "beta=0", "learning_rate=1e-3", "warmup_steps=1", "eval_every=0", "sample_every=1",
            "progress=false", "threads=1", "max_steps=2", *extra]


SEEN_REWARD = '''
import json

def seen(prompts, completions, completion_ids, trainer_state, answer, **kwargs):
    """A reward written for TRL's GRPOTrainer, used unchanged."""
    with open({log!r}, "a") as f:
        f.write(json.dumps({{"step": trainer_state.global_step, "max_steps": trainer_state.max_steps,
                            "epoch": trainer_state.epoch, "prompts": prompts, "answers": answer,
                            "completions": completions, "ids": completion_ids}}) + "\\n")
    return [float(len(ids) > 3) for ids in completion_ids]
'''


CASES = {
    "gsm8k": ([{"question": f"Compute {a} + {b}.", "answer": f"{a} + {b} = {a + b}.\n#### {a + b:,}"}
               for a, b in [(1, 2), (600, 700), (5, 6)]], ["data.format=gsm8k"], {"3", "1300", "11"}),
    "math": ([{"problem": f"Compute {a} / {b}.", "solution": f"It is $\\boxed{{\\frac{{{a}}}{{{b}}}}}$.", "level": 1}
              for a, b in [(1, 2), (3, 4)]], ["data.format=math"], {"\\frac{1}{2}", "\\frac{3}{4}"}),
    "chat": ([{"prompt": [{"role": "user", "content": f"Compute {a} + {b}."}], "answer": str(a + b)}
              for a, b in [(1, 2), (3, 4)]], ["data.system_prompt=Think, then answer."], {"3", "7"}),
    "columns": ([{"input": f"Compute {a} + {b}.", "target": a + b} for a, b in [(1, 2), (3, 4)]],
                ["data.prompt_column=input", "data.answer_column=target"], {"3", "7"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_format_trains_unedited_with_a_trl_reward(case, tiny_model_dir, tmp_path):
    rows, keys, answers = CASES[case]
    data = _write(tmp_path / "data.jsonl", rows)
    log = tmp_path / "seen.jsonl"
    reward = tmp_path / "trl_reward.py"
    reward.write_text(SEEN_REWARD.format(log=str(log)))
    out = tmp_path / "run"
    assert cli_main(["grpo", *_args(tiny_model_dir, out, f"data.train={data}", f"rewards=[accuracy,{reward}:seen]",
                                    *keys)]) == 0
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    calls = read_jsonl(log)
    assert [c["step"] for c in calls] == [0, 1] and {c["max_steps"] for c in calls} == {2}
    assert calls[1]["epoch"] > 0
    assert {a for c in calls for a in c["answers"]} <= answers
    for c in calls:
        assert len(c["prompts"]) == len(c["completions"]) == len(c["ids"]) == 2 * 4
        if case == "chat":  # conversational prompts: TRL's message completions
            assert c["prompts"][0][0]["role"] == "user" and c["completions"][0][0]["role"] == "assistant"
        else:
            assert isinstance(c["prompts"][0], str) and isinstance(c["completions"][0], str)
    if case == "chat":
        sample = read_jsonl(out / "completions.jsonl")[0]
        assert sample["prompt"][0]["content"].startswith("Compute")


def test_a_raising_reward_stops_the_run_with_its_traceback(tiny_model_dir, tmp_path):
    data = _write(tmp_path / "d.jsonl", [{"prompt": "Compute 1 + 2.", "answer": "3"}])
    reward = tmp_path / "bad_reward.py"
    reward.write_text("def boom(completions, **kwargs):\n    raise KeyError('no such column: solution')\n")
    with pytest.raises(KeyError, match="no such column") as excinfo:
        cli_main(["grpo", *_args(tiny_model_dir, tmp_path / "r", f"data.train={data}", f"rewards=[{reward}:boom]")])
    assert "reward" in excinfo.value.__notes__[0] and "boom" in excinfo.value.__notes__[0]
    assert excinfo.traceback[-1].path.name == "bad_reward.py"  # the user's own line, not a wrapper's
    # skip: two batches fail in a row, then the run stops
    with pytest.raises(KeyError) as excinfo:
        cli_main(["grpo", *_args(tiny_model_dir, tmp_path / "s", f"data.train={data}",
                                 f"rewards=[format,{reward}:boom]", "reward_failures=skip", "max_reward_failures=2",
                                 "max_steps=5")])
    assert "2 failed calls in a row" in excinfo.value.__notes__[0]
    assert [r["step"] for r in read_jsonl(tmp_path / "s" / "metrics.jsonl")] == [1]


def test_checks_before_the_model_loads(tiny_model_dir, tmp_path, capsys):
    """A folder with a tokenizer and no weights: every input error is found before the model loads."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "model.safetensors").unlink()
    data = _write(tmp_path / "d.jsonl", [{"q": "Compute 1 + 2.", "a": "3"}])
    for extra, message in [
        ([f"data.train={data}"], "no column 'prompt' for the prompt"),
        ([f"data.train={data}", "data.prompt_column=q", "data.answer_column=a", "rewards=[nosuch]"], "nosuch"),
        ([f"data.train={data}", "data.prompt_column=q", "data.answer_column=a", "template=chat",
          "data.system_prompt=x", "rewards=[no/file.py:f]"], "no such file"),
        ([f"data.train={data}", "data.prompt_column=q", "data.answer_column=a", "data.system_prompt=x"],
         "system_prompt needs template=chat"),
    ]:
        assert cli_main(["grpo", *_args(model, tmp_path / "r", *extra)]) == 2
        assert message in capsys.readouterr().err
    # all inputs fine: now the model loads, and its error shows
    assert cli_main(["grpo", *_args(model, tmp_path / "r", f"data.train={data}", "data.prompt_column=q",
                                    "data.answer_column=a")]) == 2
    assert "cannot load model" in capsys.readouterr().err


def test_no_data_with_a_real_model_is_an_error(tmp_path, capsys, monkeypatch):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel()
    backend.train_from_iterator(["some text for a tokenizer"],
                                trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"]))
    real = tmp_path / "real"
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>").save_pretrained(real)
    assert cli_main(["grpo", *_args(real, tmp_path / "r")]) == 2
    assert "is not a micro model, and data.train is not set" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli_main(["grpo", *_args("Qwen/Qwen2.5-0.5B-Instruct", tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: Qwen/Qwen2.5-0.5B-Instruct: no such local folder, and the hub is offline "
                   "(HF_HUB_OFFLINE=1): give the path of a downloaded model folder")


def test_a_local_path_with_one_slash_is_a_folder(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / "runs" / "final")
    data = _write(tmp_path / "d.jsonl", [{"prompt": "Compute 1 + 2.", "answer": "3"}])
    assert cli_main(["grpo", *_args("runs/final", tmp_path / "r", f"data.train={data}", "max_steps=1")]) == 0


def test_llama_style_prompts_get_one_bos_qwen_style_none():
    from r1lab.stages.init_model import build_tokenizer_for

    llama = build_tokenizer_for("llama-3.2-1b")
    bos = llama.bos_token_id
    chat = render_problem([{"role": "user", "content": "2+2?"}], "r1_zero", llama, "Think.")
    text = render_problem("2+2?", "r1_zero", llama)
    for ids in tokenize_prompts(llama, [chat, text]):
        assert ids[0] == bos and ids.count(bos) == 1
    qwen = build_tokenizer_for("qwen2.5-0.5b")
    assert qwen.bos_token_id is None and bos_to_add(qwen) is None


def test_parquet_and_datasets_folders_read_like_jsonl(tmp_path):
    import datasets

    rows = CASES["gsm8k"][0]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "g.parquet"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "folder"))
    fmt = ProblemFormat("gsm8k")
    for source in (tmp_path / "g.parquet", tmp_path / "folder"):
        problems = prepare_rows(read_problem_rows(str(source)), fmt, str(source))
        assert [p["answer"] for p in problems] == ["3", "1300", "11"]
