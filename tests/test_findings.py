"""The paper's findings (a)-(d) over seeds, the seed offset, and `r1lab paper` on hand-made runs."""

import json
import math

import pytest

from r1lab import cli
from r1lab.pipeline import findings
from r1lab.pipeline.graph import PipelineConfig
from r1lab.pipeline.seeds import offset_seeds


def seed(base=0.10, r1_zero=0.35, r1=0.40, distilled=0.30, rl_only=0.20, stage3=0.40, readable=0.95,
         first_reflection=0.1, last_reflection=0.4, refused=(0.2, 0.6), helpful=(0.3, 0.5)):
    return {"base": {"pass@1": base}, "r1_zero": {"pass@1": r1_zero, "first_reflection": first_reflection,
                                                 "last_reflection": last_reflection},
            "stage3_sft": {"pass@1": stage3, "refused": refused[0], "helpful": helpful[0]},
            "stage4_rl": {"pass@1": r1, "readable": readable, "refused": refused[1], "helpful": helpful[1]},
            "distilled": {"pass@1": distilled}, "rl_only": {"pass@1": rl_only}}


def test_one_seed_margins_by_hand():
    c = findings.comparisons([seed()])
    # (a) 35 - 10 - 20 = 5; (b) 40 - 35 - 3 = 2; (c) 30 - 20 - 5 = 5; (d) min(60 - 20, 50 - 30) = 20
    assert [round(c[k]["margin"], 6) for k in "abcd"] == [5.0, 2.0, 5.0, 20.0]
    assert all(c[k]["spread"] == 0 and c[k]["shown"] for k in "abcd")


def test_side_conditions_and_shortfalls_are_not_shown():
    c = findings.comparisons([seed(last_reflection=0.25, readable=0.5, rl_only=0.26, stage3=0.43)])
    assert not c["a"]["shown"]  # reflection 0.25 < 3 x 0.1
    assert not c["b"]["shown"]  # 50% readable
    assert c["c"]["margin"] == pytest.approx(-1.0) and not c["c"]["shown"]
    assert not c["d"]["shown"]  # pass@1 3 points from stage 3's
    assert not findings.comparisons([seed(last_reflection=0.0, first_reflection=0.0)])["a"]["shown"]


def test_the_margin_must_exceed_the_spread_of_both_arms():
    # (c) over two seeds: distilled 30 and 40 (sd 7.07 points), rl_only 20 both: margin 15 - 5 = 10 > 7.07
    c = findings.comparisons([seed(distilled=0.30), seed(distilled=0.40)])["c"]
    assert c["margin"] == pytest.approx(10.0) and c["spread"] == pytest.approx(math.sqrt(50)) and c["shown"]
    # rl_only 10 and 40 (sd 21.2): the same mean margin no longer clears the spread
    c = findings.comparisons([seed(distilled=0.40, rl_only=0.10), seed(distilled=0.50, rl_only=0.40)])["c"]
    assert c["margin"] == pytest.approx(15.0) and c["spread"] == pytest.approx(math.sqrt(450)) and not c["shown"]


def test_seed_offset_reaches_every_stage_but_the_evaluation():
    config = PipelineConfig()
    shifted = offset_seeds(config, 7, keep=("eval", "seed"))
    assert shifted.r1_zero.seed == config.r1_zero.seed + 7
    assert shifted.distill.traces.seed == config.distill.traces.seed + 7  # nested sections too
    assert shifted.pretrain.seed == config.pretrain.seed + 7 and shifted.rm_helpful.seed == config.rm_helpful.seed + 7
    assert shifted.eval == config.eval and shifted.seed == config.seed
    assert offset_seeds(config, 0) is config


def _fake_run(run, pass1, tokens):
    """A finished pipeline's files as `paper` reads them: results.json, R1-Zero's metrics and config."""
    rows = ["base", "r1_zero", "stage3_sft", "stage4_rl", "distilled", "rl_only"]
    table = {row: {"addition": {"pass@1": p, "readable": 1.0}} for row, p in zip(rows, pass1)}
    general = {"stage3_sft": {"unsafe refused": 0.1, "helpful": 0.2},
               "stage4_rl": {"unsafe refused": 0.5, "helpful": 0.4}}
    (run / "r1_zero").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"rows": rows, "table": table, "general": general}))
    metrics = [{"step": 0, "eval/addition/reflection": 0.1}, {"step": 1, "groups": 2, "completion_length/mean": tokens},
               {"step": 2, "eval/addition/reflection": 0.5}]
    (run / "r1_zero" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    (run / "r1_zero" / "config.yaml").write_text("num_generations: 4\nnum_iterations: 2\ndata: {tasks: [addition]}\n")


def test_paper_reads_every_seed_and_writes_the_findings(tmp_path):
    _fake_run(tmp_path / "seed-0", [0.1, 0.4, 0.45, 0.45, 0.3, 0.2], tokens=10)
    _fake_run(tmp_path / "seed-1", [0.1, 0.5, 0.55, 0.55, 0.3, 0.2], tokens=20)
    assert cli.main(["paper", f"run_dir={tmp_path}"]) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["seeds"] == ["0", "1"]
    assert saved["per_seed"]["r1_zero"]["1"]["student_tokens"] == 2 * 4 * 20 * 2  # groups x G x length x passes
    assert saved["mean"]["r1_zero"]["pass@1"] == pytest.approx(0.45)
    assert saved["sd"]["r1_zero"]["pass@1"] == pytest.approx(math.sqrt(0.005))
    assert saved["per_seed"]["r1_zero"]["0"]["first_reflection"] == 0.1
    # (a) 45 - 10 - 20 = 15 > spread 7.07; (b) 50 - 45 - 3 = 2 < 7.07; (d) min(40, 20) = 20, pass@1 = stage 3's
    shown = {key: c["shown"] for key, c in saved["comparisons"].items()}
    assert shown == {"a": True, "b": False, "c": True, "d": True}
    markdown = (tmp_path / "results.md").read_text()
    assert "45.0% +- 7.1" in markdown
    assert "| (b) R1 >= R1-Zero + 3 points pass@1, readable | +2.0 | 7.1 | no |" in markdown


def test_paper_without_runs_is_one_line(tmp_path, capsys):
    assert cli.main(["paper", f"run_dir={tmp_path}"]) == 2
    assert "no finished pipeline under seed-*/" in capsys.readouterr().err

