"""One table across studies of different |D| (study/across.py, jobs/across.py), on constructed scores:
each cell is its own study's number and verdict, and studies that cannot share a table are refused."""

from __future__ import annotations

import json

import pytest
from test_experiment import TINY

from dakter_scale.config import ConfigError, load_config, to_dict
from dakter_scale.study.across import markdown, read_study
from dakter_scale.study.plan import Plan

from conftest import job_in_process

CLASSES = ["sea", "oil", "look-alike", "ship", "land"]
ARMS = TINY + [
    "experiment.methods=[none,copy_paste,dakter_target,instance_paste]",
    "experiment.bank_sizes=[1000,10000]",
    "experiment.seeds=[0,1,2]",
    "synthesis.target.spec=oil:3x,ship:3x",
]
TEST = {"spec": "synthetic:100?size=32&test=500&seed=43", "scenes": 500, "fingerprint": "f43"}


def write_study(folder, n_train: int, lead: list[float], test: dict = TEST) -> None:
    """A results.json of |D| = n_train in which dakter_target leads copy_paste by lead[seed]."""
    cfg = load_config(None, ARMS)
    plan = Plan(cfg, n_train=n_train)
    runs = {}
    for r in plan.main_runs():
        base = {
            "none": 0.40,
            "copy_paste": 0.50,
            "dakter_target": 0.50 + lead[r.seed],
            "instance_paste_1000": 0.45,
            "instance_paste_10000": 0.45 + 0.01 * r.seed,  # +0, +1, +2 points over the smaller bank
        }[r.method]
        runs[r.name] = {"miou": base, "iou": [0.9, base, 0.3, 0.1 * r.seed, 0.8]}
    folder.mkdir(parents=True)
    payload = {"config": to_dict(cfg), "n_train": n_train, "runs": runs, "classes": CLASSES, "splits": {"test": test}}
    timings = {"model_b_cfg": 60.0 * n_train, "generate_b_cfg": 9.0, "student_not-in-the-table": 1e6}
    timings.update({f"student_{name}": 60.0 * (i + 1) for i, name in enumerate(runs)})
    payload["timings_s"] = timings
    payload["generated"] = {
        "b_cfg": {"pairs_per_second": 4.0},
        "b_cfg_target": {"target": {"cost": {"sampling_seconds_per_kept_pair": 0.5}}},
    }
    (folder / "results.json").write_text(json.dumps(payload))


def test_each_cell_is_its_studys_own_number_and_verdict(tmp_path):
    write_study(tmp_path / "d10", 10, [0.01, 0.011, 0.012])
    write_study(tmp_path / "d20", 20, [0.01, -0.01, 0.0])
    text = markdown([read_study(tmp_path / "d20"), read_study(tmp_path / "d10")])
    assert "| student | arm | \\|D\\| = 10 | \\|D\\| = 20 |" in text, "columns in |D| order, the bars escaped"
    assert f"Students scored on the test split `{TEST['spec']}`" in text

    def rows(section: str) -> dict[str, str]:
        lines = text.split(f"## {section}")[1].split("\n## ")[0].splitlines()
        return {line.split("|")[2].strip(): line for line in lines if line.startswith("| unet |")}

    cells = [c.strip() for c in rows("Against copy_paste")["dakter_target − copy_paste"].split("|")[3:-1]]
    assert cells[0].startswith("+1.10 [+0.85, +1.35] (3/3) ahead")
    assert cells[1] == "+0.00 [-2.48, +2.48] (1/3) tie"
    assert "none − copy_paste" not in text, "only arms against copy-paste, not the baselines"
    where = rows("Where an arm beats copy_paste")["dakter_target − copy_paste"]
    assert [c.strip() for c in where.split("|")[3:-1]] == ["10", "20", "–"], "ahead at |D| 10, a tie at 20"
    banks = rows("The bank's size")["instance_paste_10000 − instance_paste_1000"]
    assert [c.strip() for c in banks.split("|")[3:-1]] == ["+1.00 [-1.48, +3.48] (2/3) tie"] * 2, (
        "the larger bank against the smaller"
    )
    assert "instance_paste_1000 − instance_paste_10000" not in text
    route = rows("The generator's routes")["dakter_target − instance_paste_10000"]
    assert [c.strip() for c in route.split("|")[3:-1]][1] == "+4.00 [-0.30, +8.30] (3/3) tie", (
        "targeted pairs against the largest bank: 6, 3, 3 points at |D| = 20, t(2) interval"
    )
    against_none = [c.strip() for c in rows("Against none")["copy_paste − none"].split("|")[3:-1]]
    assert against_none == ["+10.00 [+10.00, +10.00] (3/3) ahead"] * 2, "every arm is held against none too"
    assert "dakter_target − none" in rows("Against none") and "none − none" not in text
    assert [c.strip() for c in rows("mIoU")["copy-paste (real only)"].split("|")[3:-1]] == ["50.00 ± 0.00"] * 2
    # oil / look-alike / ship, the seeds' mean (ship IoU 0, 10 and 20 % over seeds 0-2)
    assert [c.strip() for c in rows("Per-class IoU")["no augmentation"].split("|")[3:-1]] == ["40.0 / 30.0 / 10.0"] * 2
    cost = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in text.split("## What")[1].splitlines()
        if line.startswith("| ") and "---" not in line
    }
    assert cost["generator training (2 steps), min"] == ["10.0", "20.0"], "the study's own timings, in |D| order"
    assert cost["a generated pair, s (set b_cfg)"] == ["0.25", "0.25"]
    assert cost["a targeted pair, sampling s per kept pair"] == ["0.50", "0.50"]
    # the median over the table's 15 students (1 ... 15 min), not the stray timing outside the table
    assert cost["a table student, median min"] == ["8.0", "8.0"] and cost[
        "instance bank, min (s per 1,000 instances)"
    ] == ["–", "–"]


def test_studies_that_cannot_share_a_table_are_refused(tmp_path):
    write_study(tmp_path / "d10", 10, [0.0, 0.0, 0.0])
    write_study(tmp_path / "other", 20, [0.0, 0.0, 0.0], dict(TEST, fingerprint="f31"))
    write_study(tmp_path / "again", 10, [0.0, 0.0, 0.0])
    with pytest.raises(ConfigError, match=r"other/results.json: its test split .* is not .*d10/results.json's"):
        markdown([read_study(tmp_path / "d10"), read_study(tmp_path / "other")])
    with pytest.raises(ConfigError, match=r"the same \|D\|"):
        markdown([read_study(tmp_path / "d10"), read_study(tmp_path / "again")])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{")
    with pytest.raises(ConfigError, match=r"broken/results.json: not JSON"):
        read_study(tmp_path / "broken")


def test_the_job_writes_the_table_and_names_a_missing_study(tmp_path, capsys, monkeypatch):
    write_study(tmp_path / "d10", 10, [0.01, 0.011, 0.012])
    write_study(tmp_path / "d20", 20, [0.01, -0.01, 0.0])
    out = tmp_path / "scarcity.md"
    code, captured = job_in_process(
        "across.py", [str(tmp_path / "d10"), str(tmp_path / "d20"), "--out", str(out)], capsys, monkeypatch
    )
    assert code == 0, captured.err[-2000:]
    assert out.read_text() == markdown([read_study(tmp_path / "d10"), read_study(tmp_path / "d20")])
    code, captured = job_in_process("across.py", [str(tmp_path / "d40")], capsys, monkeypatch)
    assert code == 2 and "d40/results.json: no results.json" in captured.err
    assert len(captured.err.strip().splitlines()) == 1, captured.err
