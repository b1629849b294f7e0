"""evaluate.py: results files, resume, and the --compare drop table."""
import json

import pytest

import evaluate


def write(path, results, limit=None):
    path.write_text(json.dumps({"settings": {"limit": limit}, "results": results}))
    return str(path)


def table(out):
    return {line.split("|")[1].strip().split(" (")[0]: [c.strip() for c in line.split("|")[2:-1]]
            for line in out.splitlines() if line.startswith("| ")}


BASE = {"gsm8k": {"acc": 0.30, "n": 10, "kind": "target"}, "mmlu": {"acc": 0.50, "n": 10, "kind": "retention"},
        "arc_challenge": {"acc": 0.2, "acc_norm": 0.40, "n": 10, "kind": "retention"}}
SFT = {"gsm8k": {"acc": 0.45, "n": 10, "kind": "target"}, "mmlu": {"acc": 0.42, "n": 10, "kind": "retention"},
       "arc_challenge": {"acc": 0.1, "acc_norm": 0.36, "n": 10, "kind": "retention"}}
SSR = {"gsm8k": {"acc": 0.44, "n": 10, "kind": "target"}, "mmlu": {"acc": 0.49, "n": 10, "kind": "retention"},
       "arc_challenge": {"acc": 0.3, "acc_norm": 0.41, "n": 10, "kind": "retention"}}


def test_compare_prints_changes_and_their_average_over_retention(tmp_path, capsys):
    files = [write(tmp_path / f"{name}.json", r) for name, r in (("base", BASE), ("sft", SFT), ("ssr", SSR))]
    assert evaluate.main(["--compare", *files]) == 0
    lines = table(capsys.readouterr().out)
    assert lines["mmlu"] == ["50.0", "42.0 (-8.0)", "49.0 (-1.0)"]  # change = run - base: forgetting is negative
    assert lines["arc_challenge"] == ["40.0", "36.0 (-4.0)", "41.0 (+1.0)"]  # acc_norm is ARC's score
    assert lines["gsm8k"] == ["30.0", "45.0 (+15.0)", "44.0 (+14.0)"]
    assert lines["average change, retention"] == ["", "-6.0", "+0.0"]  # the target task is not averaged
    assert evaluate.main(["--compare", *files, "--exclude", "arc_challenge"]) == 0
    assert table(capsys.readouterr().out)["average change, retention"] == ["", "-8.0", "-1.0"]


def test_compare_names_missing_benchmarks_and_refuses_what_does_not_compare(tmp_path, capsys):
    base = write(tmp_path / "base.json", BASE)
    partial = write(tmp_path / "partial.json", {k: v for k, v in SFT.items() if k != "arc_challenge"})
    ssr = write(tmp_path / "ssr.json", SSR)
    assert evaluate.main(["--compare", base, partial, ssr]) == 0
    out = capsys.readouterr().out
    lines = table(out)
    assert lines["arc_challenge"] == ["40.0", "missing", "41.0 (+1.0)"]
    assert lines["average change, retention"] == ["", "-8.0", "-1.0"]  # every run averages mmlu alone
    assert "missing: arc_challenge (not in partial)" in out
    capsys.readouterr()
    assert evaluate.main(["--compare", base, write(tmp_path / "limited.json", SFT, limit=5)]) == 1
    assert "different --limit" in capsys.readouterr().err
    assert evaluate.main(["--compare", base, ssr, "--exclude", "mmmlu"]) == 1
    assert "--exclude names mmmlu" in capsys.readouterr().err


def test_multiple_choice_run_writes_and_resumes(shared, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["--model", str(shared / "models" / "stories260K" / "hf"), "--tasks", "arc_easy,mmlu",
            "--data-dir", str(shared / "data"), "--limit", "6", "--out", str(out)]
    assert evaluate.main(argv) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"arc_easy", "mmlu"} and results["mmlu"]["n"] == 6
    assert 0.0 <= results["arc_easy"]["acc_norm"] <= 1.0
    out.write_text(out.read_text().replace('"n": 6', '"n": 6, "marker": true', 1))
    assert evaluate.main(argv) == 0  # a rerun keeps what is there instead of scoring again
    assert json.loads(out.read_text())["results"]["arc_easy"].get("marker") is True
    assert "| arc_easy" in capsys.readouterr().out
