"""evaluate.py: results files, resume, and the --compare drop table."""
import json

import evaluate


def write(path, results):
    path.write_text(json.dumps({"settings": {}, "results": results}))
    return str(path)


def test_compare_prints_drops_and_their_average(tmp_path, capsys):
    base = write(tmp_path / "base.json", {"gsm8k": {"acc": 0.30, "n": 10}, "mmlu": {"acc": 0.50, "n": 10},
                                          "arc_challenge": {"acc": 0.2, "acc_norm": 0.40, "n": 10}})
    sft = write(tmp_path / "sft.json", {"gsm8k": {"acc": 0.45, "n": 10}, "mmlu": {"acc": 0.42, "n": 10},
                                        "arc_challenge": {"acc": 0.1, "acc_norm": 0.36, "n": 10}})
    ssr = write(tmp_path / "ssr.json", {"gsm8k": {"acc": 0.44, "n": 10}, "mmlu": {"acc": 0.49, "n": 10},
                                        "arc_challenge": {"acc": 0.3, "acc_norm": 0.41, "n": 10}})
    assert evaluate.main(["--compare", base, sft, ssr, "--exclude", "gsm8k"]) == 0
    out = capsys.readouterr().out
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in out.splitlines()
             if line.startswith("| ")}
    assert lines["mmlu"] == ["50.0", "42.0 (+8.0)", "49.0 (+1.0)"]
    assert lines["arc_challenge"] == ["40.0", "36.0 (+4.0)", "41.0 (-1.0)"]  # acc_norm is ARC's score
    assert lines["gsm8k"] == ["30.0", "45.0 (-15.0)", "44.0 (-14.0)"]
    assert lines["average drop (2)"] == ["", "+6.0", "+0.0"]  # gsm8k excluded from the average


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
