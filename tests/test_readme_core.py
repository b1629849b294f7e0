"""The README's in-memory walk through the core ("The core in five questions") runs as written, on the default
model: base answers -> SSR targets -> a few training steps -> generation, with no run folder and no harness."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def core_block() -> str:
    section = README.read_text().split("## The core in five questions", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    return block


def test_the_readme_core_example_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may be written, anywhere
    namespace = {}
    exec(compile(core_block(), "README.md (core example)", "exec"), namespace)
    assert "ssr.harness" not in core_block() and list(tmp_path.iterdir()) == []
    sources = [t.source for t in namespace["targets"]]
    assert set(sources) <= {"self", "gold"} and len(sources) == 6
    # the targets are what SSR's rule says: the model's own answer only where the judge accepted it, trained as
    # the generated ids + stop token; gold, as text, elsewhere
    judge, tok = namespace["judge"], namespace["tok"]
    for p, t in zip(namespace["problems"], namespace["targets"]):
        if t.source == "self":
            assert judge(p, "predict", t.response) is None and t.ids[-1] in tok.stop_ids
            assert tok.decode(t.ids[:-1]) == t.response
        else:
            assert t.response == p.gold and t.ids is None
    history = namespace["history"]
    assert len(history) == 6 and all(r["loss"] == r["loss"] for r in history)  # 3 steps an epoch, 2 epochs
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[") and out[1].startswith("loss ") and len(out) >= 3
