"""Checkpoints as a crash, a kill or a damaged disk leave them: fsync, recovery at start, fallback
to the previous checkpoint, missing pieces, refusing to start over another run, GRPO's data
fingerprint and reference snapshots."""

import json
import os
import shutil
import signal

import pytest
import torch

import r1lab.files
from r1lab.training.checkpoint import (CheckpointError, checkpoint_dir, latest_checkpoint, list_checkpoints,
                                       load_checkpoint, prune_checkpoints, read_state, resume_latest, save_checkpoint,
                                       start_run)
from r1lab.cli import main as cli_main
from r1lab.errors import R1labError
from r1lab.files import atomic_dir, recover, remove_dir
from r1lab.micro.sizes import build_model


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model("micro", tokenizer, seed=0)


def trained(model, seed: int):
    """`model` with its weights moved by one AdamW step (seeded), and that optimizer."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randint(0, 100, (1, 5))).logits.sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    return optimizer


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def two_checkpoints(model, out):
    """Checkpoints at steps 1 and 2 of `model`; returns the weights saved in each."""
    saved = []
    for step in (1, 2):
        optimizer = trained(model, step)
        save_checkpoint(checkpoint_dir(out, step), model, None, optimizer, trainer_state={"step": step})
        saved.append(weights(model))
    return saved


# ---------------------------------------------------------------------------- fsync and recovery


def test_atomic_dir_fsyncs_every_file_the_folder_and_its_parent(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    target = tmp_path / "runs" / "ckpt"
    with atomic_dir(target) as tmp:
        (tmp / "a.bin").write_bytes(b"a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"b")
    names = [os.path.basename(p) for p in synced]
    assert {"a.bin", "b.bin", "sub"} <= set(names)  # the files and folders, before the rename
    assert str(tmp_path / "runs") in synced[names.index("b.bin"):]  # the parent, after the rename
    assert str(tmp_path) in synced  # the new parent's own entry
    assert (target / "sub" / "b.bin").read_bytes() == b"b"


def test_recover_restores_old_removes_stale_temporaries_and_nothing_else(tmp_path):
    (tmp_path / ".cut.old").mkdir()  # killed between the two renames: "cut" is gone, its old copy aside
    (tmp_path / ".cut.old" / "x").write_text("old")
    (tmp_path / "done").mkdir()  # killed after them: the old copy is stale
    (tmp_path / ".done.old").mkdir()
    (tmp_path / ".done.abc123.tmp").mkdir()  # killed while writing
    (tmp_path / ".metrics.jsonl.q1w2.tmp").write_text("half")
    (tmp_path / ".hidden").write_text("a user's file")
    assert len(recover(tmp_path)) == 4
    assert (tmp_path / "cut" / "x").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "cut", "done"]
    assert recover(tmp_path) == []


def test_ctrl_c_between_the_two_renames_puts_the_old_copy_back(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as tmp:
        (tmp / "f").write_text("first")
    calls = []
    real = os.replace

    def interrupted(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new copy's rename
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "f").write_text("second")
    monkeypatch.undo()
    assert (target / "f").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_kill_between_the_two_renames_is_recovered_at_start(model, tmp_path, capsys):
    two_checkpoints(model, tmp_path)
    newest = checkpoint_dir(tmp_path, 2)
    os.replace(newest, newest.with_name(".step-000002.old"))  # what the first rename of a re-save leaves
    (newest.parent / ".step-000002.x7.tmp").mkdir()  # and the unfinished new copy
    assert latest_checkpoint(tmp_path).name == "step-000001"
    start_run(tmp_path, resume=True, overwrite=False)
    assert "restored step-000002 from .step-000002.old" in capsys.readouterr().err
    assert latest_checkpoint(tmp_path) == newest
    assert sorted(p.name for p in newest.parent.iterdir()) == ["step-000001", "step-000002"]


def test_a_kill_mid_prune_leaves_no_half_deleted_checkpoint(model, tmp_path, monkeypatch):
    two_checkpoints(model, tmp_path)

    def killed(path, *args, **kwargs):
        raise SystemExit("killed")  # after the rename, during the deletion

    monkeypatch.setattr(r1lab.files.shutil, "rmtree", killed)
    with pytest.raises(SystemExit):
        prune_checkpoints(tmp_path, keep=1)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002"]
    assert recover(tmp_path / "checkpoints") == ["removed .step-000001.del.tmp"]


# ---------------------------------------------------------------------------- damaged checkpoints


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "optimizer.pt truncated": lambda ckpt: _truncate(ckpt / "optimizer.pt"),
    "model.safetensors truncated": lambda ckpt: _truncate(ckpt / "model.safetensors"),
    "model.safetensors garbled": lambda ckpt: (ckpt / "model.safetensors").write_bytes(os.urandom(4096)),
    "rng_state.pt missing": lambda ckpt: (ckpt / "rng_state.pt").unlink(),
    "rng_state.pt empty": lambda ckpt: (ckpt / "rng_state.pt").write_bytes(b""),
    "trainer_state.json torn": lambda ckpt: (ckpt / "trainer_state.json").write_text('{"step": '),
    "trainer_state.json a list": lambda ckpt: (ckpt / "trainer_state.json").write_text("[2]"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(model, tmp_path, capsys, damage):
    first, _ = two_checkpoints(model, tmp_path)
    DAMAGE[damage](checkpoint_dir(tmp_path, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    path, state = resume_latest(tmp_path, model, optimizer)
    assert path.name == "step-000001" and state == {"step": 1}
    assert same(first, model.state_dict())
    warning = capsys.readouterr().err
    assert "warning:" in warning and "step-000002" in warning and "trying the checkpoint before it" in warning


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_only_checkpoint_is_an_error_naming_it_and_changes_nothing(model, tmp_path, damage):
    optimizer = trained(model, 1)
    ckpt = save_checkpoint(checkpoint_dir(tmp_path, 1), model, None, optimizer, trainer_state={"step": 1})
    DAMAGE[damage](ckpt)
    before = weights(model)
    with pytest.raises(R1labError, match="no checkpoint loads .*step-000001") as e:
        resume_latest(tmp_path, model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    assert "\n" not in str(e.value)
    assert same(before, model.state_dict())  # every file is read before any is applied


def test_missing_pieces_are_errors_not_skipped(model, tmp_path):
    optimizer = trained(model, 1)
    ckpt = save_checkpoint(checkpoint_dir(tmp_path, 1), model, None, optimizer, trainer_state={"step": 1})
    (ckpt / "rng_state.pt").unlink()
    with pytest.raises(CheckpointError, match=r"rng_state.pt: missing from checkpoint"):
        load_checkpoint(ckpt, model, optimizer)
    with pytest.raises(CheckpointError, match=r"scheduler.pt: missing"):  # asked for, never saved
        load_checkpoint(ckpt, model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), rng=False)


def test_prune_after_a_fallback_removes_the_damaged_later_checkpoints(model, tmp_path):
    two_checkpoints(model, tmp_path)
    save_checkpoint(checkpoint_dir(tmp_path, 3), model, None, trainer_state={"step": 3})
    # re-saved after falling back to 1
    save_checkpoint(checkpoint_dir(tmp_path, 2), model, None, trainer_state={"step": 2})
    prune_checkpoints(tmp_path, keep=1, step=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002"]


# ---------------------------------------------------------------------------- starting a run


def test_fresh_run_over_checkpoints_is_refused_unless_resume_or_overwrite(model, tmp_path):
    two_checkpoints(model, tmp_path)
    (tmp_path / "reference").mkdir()
    with pytest.raises(R1labError, match=r"already has checkpoints \(newest: step-000002\).*overwrite=true"):
        start_run(tmp_path, resume=False, overwrite=False)
    start_run(tmp_path, resume=True, overwrite=False)
    assert len(list_checkpoints(tmp_path)) == 2
    start_run(tmp_path, resume=False, overwrite=True, extra=("reference",))
    assert list_checkpoints(tmp_path) == [] and not (tmp_path / "reference").exists()


# ---------------------------------------------------------------------------- GRPO


def rows_file(path, pairs):
    path.write_text("".join(json.dumps({"prompt": f"Compute {a} + {b}.", "answer": str(a + b)}) + "\n"
                            for a, b in pairs))
    return path


def grpo(model_dir, data, out, *extra):
    return cli_main(["grpo", f"model={model_dir}", f"data.train={data}", f"output_dir={out}", "template=micro",
                     "num_generations=2", "prompts_per_step=2", "max_new_tokens=6", "beta=0.04", "eval_every=0",
                     "sample_every=0", "progress=false", "threads=1", *extra])


def test_grpo_refuses_a_fresh_run_over_checkpoints_and_a_resume_on_other_data(tiny_model_dir, tmp_path, capsys):
    data = rows_file(tmp_path / "a.jsonl", [(1, 2), (3, 4), (5, 6)])
    out = tmp_path / "run"
    assert grpo(tiny_model_dir, data, out, "max_steps=1") == 0
    capsys.readouterr()
    assert grpo(tiny_model_dir, data, out, "max_steps=2") == 2  # would start over and prune the old run
    assert "already has checkpoints (newest: step-000001)" in capsys.readouterr().err
    assert [p.name for p in list_checkpoints(out)] == ["step-000001"]

    other = rows_file(tmp_path / "b.jsonl", [(1, 2), (3, 4), (5, 7)])  # same size, one answer differs
    assert grpo(tiny_model_dir, other, out, "max_steps=2", "resume=true") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "a.jsonl (sha256" in err and "now given" in err and "b.jsonl (sha256" in err
    assert grpo(tiny_model_dir, data, out, "max_steps=2", "resume=true", "seed=1") == 2  # another order
    assert "seed 0), now given" in capsys.readouterr().err

    assert grpo(tiny_model_dir, other, out, "max_steps=1", "overwrite=true") == 0
    assert read_state(latest_checkpoint(out))["data"]["source"] == str(other)
    assert grpo(tiny_model_dir, other, out, "max_steps=1", "overwrite=true", "resume=true") == 2
    assert "resume and overwrite" in capsys.readouterr().err


def test_grpo_save_every_0_saves_at_the_end_and_reference_snapshots_are_pruned(tiny_model_dir, tmp_path):
    data = rows_file(tmp_path / "a.jsonl", [(1, 2), (3, 4)])
    out = tmp_path / "run"
    assert grpo(tiny_model_dir, data, out, "max_steps=5", "save_every=0", "ref_update_every=1") == 0
    assert [p.name for p in list_checkpoints(out)] == ["step-000005"]
    assert sorted(p.name for p in (out / "reference").iterdir()) == ["step-000005"]  # the others: unneeded

    out = tmp_path / "kept"
    assert grpo(tiny_model_dir, data, out, "max_steps=5", "save_every=1", "keep_checkpoints=2",
                "ref_update_every=2") == 0
    kept = [read_state(p)["ref_step"] for p in list_checkpoints(out)]
    assert kept == [4, 4]
    assert sorted(p.name for p in (out / "reference").iterdir()) == ["step-000004"]


def test_sft_refuses_a_fresh_run_over_checkpoints_or_other_data_and_falls_back(tokenizer, tmp_path):
    from r1lab.training.sft_data import Example
    from r1lab.training.loop import TrainSettings, train

    examples = [Example(tuple(range(5, 5 + n)), (0,) + (1,) * (n - 1)) for n in (4, 5, 6)]
    settings = TrainSettings(max_steps=2, save_every=1, max_tokens_per_batch=16, warmup_steps=0)
    out = tmp_path / "sft"
    train(build_model("micro", tokenizer), tokenizer, examples, [], settings, out)
    with pytest.raises(R1labError, match="already has checkpoints.*overwrite=true"):
        train(build_model("micro", tokenizer), tokenizer, examples, [], settings, out)
    changed = examples[:2] + [Example(tuple(range(6, 12)), (0,) + (1,) * 5)]  # as many examples, one other
    with pytest.raises(R1labError, match=r"was trained on 3 examples \(sha256 \w+\), now given 3 \(sha256"):
        train(build_model("micro", tokenizer), tokenizer, changed, [], settings, out, resume=True)
    (list_checkpoints(out)[-1] / "optimizer.pt").write_bytes(b"")  # damaged newest: resumes from step 1
    assert train(build_model("micro", tokenizer), tokenizer, examples, [], settings, out, resume=True)["steps"] == 2
    assert [p.name for p in list_checkpoints(out)] == ["step-000001", "step-000002"]
    last = list_checkpoints(out)[-1]
    assert read_state(last)["step"] == 2 and (last / "optimizer.pt").stat().st_size
    (out / "checkpoints" / "old-run.txt").write_text("")
    train(build_model("micro", tokenizer), tokenizer, examples, [], settings, out, overwrite=True)
    assert [p.name for p in list_checkpoints(out)] == ["step-000001", "step-000002"]
    assert not (out / "checkpoints" / "old-run.txt").exists()  # the old checkpoints folder went first


def test_ctrl_c_during_a_deletion_waits_for_it_to_finish_then_stops(tmp_path, monkeypatch):
    doomed = tmp_path / "step-000001"
    doomed.mkdir()
    (doomed / "model.safetensors").write_text("x")
    real_rmtree = shutil.rmtree

    def rmtree_hit_by_ctrl_c(path, *args, **kwargs):  # Ctrl-C lands between the rename and the delete
        os.kill(os.getpid(), signal.SIGINT)
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree_hit_by_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        remove_dir(doomed)
    assert list(tmp_path.iterdir()) == []  # gone whole: no .step-000001.del.tmp left behind
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
