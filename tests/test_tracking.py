"""report_to: tensorboard event files written and read back, wandb's offline run folder, trackio's
local database; each mirrors metrics.jsonl."""

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from r1lab.cli import main as cli_main
from r1lab.errors import R1labError
from r1lab.files import read_jsonl
from r1lab.training.tracking import Tracker, check_trackers


def _grpo(model, data, out, *extra):
    return cli_main(["grpo", f"model={model}", f"data.train={data}", f"output_dir={out}", "template=micro",
                     "num_generations=4", "prompts_per_step=2", "max_new_tokens=8", "beta=0", "learning_rate=1e-3",
                     "warmup_steps=1", "eval_every=0", "progress=false", "threads=1", "max_steps=2", *extra])


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Compute {a} + 1.", "answer": str(a + 1)}) + "\n" for a in range(4)))
    return path


def test_grpo_tensorboard_events_read_back(tiny_model_dir, prompts, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert _grpo(tiny_model_dir, prompts, out, "report_to=[tensorboard]") == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    rows = read_jsonl(out / "metrics.jsonl")
    for key in ("loss", "reward/mean", "completion_length/mean", "step_time"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in rows], rel=1e-6, abs=1e-7)
    # r1lab report RUN_DIR works on a single run
    assert cli_main(["report", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["steps"] == 2 and result["metrics"]["loss"] == {"first": rows[0]["loss"], "last": rows[1]["loss"]}
    assert (out / "report.html").is_file() and (out / "curves.png").is_file()


def test_sft_wandb_offline_writes_its_run_folder(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a}+1=", "completion": str(a + 1)}) + "\n" for a in range(6)))
    out = tmp_path / "sft"
    assert cli_main(["sft", f"model={tiny_model_dir}", f"train_data={data}", f"output_dir={out}", "max_steps=3",
                     "log_every=1", "template=micro", "report_to=[wandb,tensorboard]"]) == 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb")), list((out / "wandb").iterdir())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    logged = [r["step"] for r in read_jsonl(out / "metrics.jsonl")]
    assert [s.step for s in events.Scalars("loss")] == logged == [1, 2, 3]
    assert cli_main(["report", str(out)]) == 0
    assert "| loss |" in (out / "results.md").read_text()


def test_trackio_logs_to_its_local_database(tmp_path):
    pytest.importorskip("trackio")
    code = ("from r1lab.training.tracking import Tracker\n"
            f"t = Tracker(['trackio'], {str(tmp_path / 'myrun')!r}, {{'lr': 0.1}})\n"
            "t.log({'step': 1, 'loss': 0.5, 'ok': True}); t.log({'step': 2, 'loss': 0.25}); t.close()\n")
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "db"), "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=120)
    with sqlite3.connect(tmp_path / "db" / "r1lab.db") as db:
        rows = db.execute("select run_name, step, metrics from metrics order by step").fetchall()
    assert [(r[0], r[1], json.loads(r[2])) for r in rows] == [("myrun", 1, {"loss": 0.5}), ("myrun", 2, {"loss": 0.25})]


def test_unknown_or_missing_tracker_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(R1labError, match="unknown report_to 'mlflow'"):
        check_trackers(["mlflow"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(R1labError, match=r"report_to: wandb needs the wandb package"):
        Tracker(["wandb"], tmp_path, {})
    Tracker([], tmp_path, {}).log({"step": 1, "loss": 1.0})  # no tracker: nothing happens, nothing written
    assert not list(tmp_path.iterdir())
