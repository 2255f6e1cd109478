"""common.pipeline: stages run in dependency order, each timed, the machine recorded, and a failing stage stops
the run with its name; a stage's files are found from its imports, and a results JSON is checked against them in git."""
import json
import shlex
import subprocess
import sys

import pytest
import torch

from common import pipeline
from common.utils import REPO_ROOT, UserError


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.5  # every reading 1.5 s after the previous one: each stage takes 1.5 s
        return self.t


def test_stages_run_in_order_and_are_timed(tmp_path):
    log = tmp_path / "order.txt"
    cmds = [(name, [sys.executable, "-c", f"open({str(log)!r}, 'a').write({name!r})"]) for name in ("a", "b", "c")]
    rows = list(pipeline.run_stages(cmds, cwd=tmp_path, clock=FakeClock()))
    assert log.read_text() == "abc"
    assert [r["name"] for r in rows] == ["a", "b", "c"] and all(r["seconds"] == 1.5 for r in rows)


def test_a_failing_stage_stops_the_pipeline(tmp_path):
    log = tmp_path / "order.txt"
    cmds = [("bad", [sys.executable, "-c", "raise SystemExit(3)"]),
            ("never", [sys.executable, "-c", f"open({str(log)!r}, 'w')"])]
    with pytest.raises(UserError, match="stage bad failed \\(exit status 3\\)"):
        list(pipeline.run_stages(cmds, cwd=tmp_path))
    assert not log.exists()


def dry_run(*argv) -> dict[str, list[str]]:
    """stage -> its command line (python's arguments), as --dry-run lists them."""
    return {s["name"]: shlex.split(s["command"])[1:] for s in pipeline.main(["--dry-run", *argv])["stages"]}


def test_commands_follow_the_dependency_order_and_pass_the_data_dir(tmp_path):
    cmds = dry_run("--stages", "report", "ex3", *pipeline.STAGES, "--data-dir", str(tmp_path / "data"),
                   "--out-dir", str(tmp_path / "out"))
    assert list(cmds) == ["bench", "stacking", "ex1", "ex2", "ex3", "ex4", "ex5", "selftrain", "lab_dbvae", "lab_cam",
                          "report"]
    assert all((["--data-dir", str(tmp_path / "data")] == c[-4:-2]) == (n != "report")
               and c[-2:] == ["--out-dir", str(tmp_path / "out")] for n, c in cmds.items())
    assert cmds["selftrain"][:4] == ["ex5_finetune.py", "--variants", "scratch", "selftrain"]
    assert cmds["bench"][:2] == ["-m", "common.bench"]
    scripts = [c[0] if c[0] != "-m" else c[1].replace(".", "/") + ".py" for c in cmds.values()]
    assert all((REPO_ROOT / s).is_file() for s in scripts)  # every stage's script exists
    assert "--out-dir" not in dry_run("--stages", "ex1")["ex1"]  # no --out-dir: each script's own default


def test_dry_run_prints_the_commands_and_runs_nothing(tmp_path, capsys):
    assert list(dry_run("--stages", "ex4", "report", "--out-dir", str(tmp_path))) == ["ex4", "report"]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == ["ex4:", "report:"] and "ex4_few_shot.py" in lines[0]
    assert not (tmp_path / "results").exists()


def test_the_json_holds_each_stage_and_the_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "STAGES", {"quick": "-c pass", "report": "-c print('report')"})
    monkeypatch.setattr(pipeline, "matmul_peak", lambda: 50.0)
    r = pipeline.main(["--out-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "results" / "pipeline.json").read_text())
    assert [s["name"] for s in saved["stages"]] == [s["name"] for s in r["stages"]] == ["quick", "report"]
    assert saved["total_s"] == pytest.approx(sum(s["seconds"] for s in saved["stages"]), abs=1e-5)
    m = saved["provenance"]
    assert m["simd"] == torch.backends.cpu.get_cpu_capability() and m["torch"] == torch.__version__
    assert m["threads"] == torch.get_num_threads() and m["cpu"] and saved["matmul_peak"] == {"best_gflops": 50.0}
    monkeypatch.setattr(pipeline, "STAGES", {"ok": "-c pass", "quick": "-c exit(2)", "later": "-c pass"})
    with pytest.raises(UserError, match="stage quick failed"):
        pipeline.main(["--out-dir", str(tmp_path / "failed")])
    kept = json.loads((tmp_path / "failed" / "results" / "pipeline.json").read_text())["stages"]
    assert [s["name"] for s in kept] == ["ok"]  # the stages before the failure keep their timings; none after it ran


def test_resume_skips_the_stages_whose_results_the_current_code_made(tmp_path, monkeypatch):
    """--resume asks outdated() about each stage's results JSON against the working tree (ref None); the report,
    which writes none, always runs."""
    (tmp_path / "results").mkdir()
    for name, fresh in (("ex1", True), ("ex2", False), ("ex5_selftrain", True)):
        (tmp_path / "results" / f"{name}.json").write_text(json.dumps({"fresh": fresh}))
    asked = []

    def fake_outdated(result, files, ref="HEAD"):
        asked.append(ref)
        return "" if result and result["fresh"] else "stale"
    monkeypatch.setattr(pipeline, "outdated", fake_outdated)
    r = pipeline.main(["--dry-run", "--resume", "--out-dir", str(tmp_path)])
    assert r["skipped"] == ["ex1", "selftrain"] and set(asked) == {None}
    assert [s["name"] for s in r["stages"]] == [s for s in pipeline.STAGES if s not in ("ex1", "selftrain")]
    assert [s["name"] for s in pipeline.main(["--dry-run", "--out-dir", str(tmp_path)])["stages"]] == \
        list(pipeline.STAGES)  # without --resume: every stage


def test_stage_files_follow_the_imports(tmp_path, monkeypatch):
    """The script, and every module under the root it imports, transitively: absolute, relative (. and ..), package
    __init__ files, imports inside functions; not the standard library, not an unimported module."""
    files = {"main.py": "import os\nfrom pkg import helper\nfrom pkg.sub import deep\n",
             "pkg/__init__.py": "", "pkg/helper.py": "from . import util\nfrom .other import thing\n",
             "pkg/util.py": "def f():\n    import pkg.lazy\n", "pkg/lazy.py": "", "pkg/other.py": "thing = 1\n",
             "pkg/sub/__init__.py": "", "pkg/sub/deep.py": "from .. import util\n", "unused.py": "import pkg\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    ex1 = pipeline.stage_files("ex1")  # the real ones
    assert {"ex1_autoencoder.py", "common/train.py", "common/models.py"} <= set(ex1) and "common/cam.py" not in ex1
    assert "common/bench.py" in pipeline.stage_files("bench")
    assert {"report/build.py", "common/pipeline.py", "common/bench.py"} <= set(pipeline.stage_files("report"))
    monkeypatch.setattr(pipeline, "STAGES", {"a": "main.py", "b": "-m pkg.sub.deep"})
    assert pipeline.stage_files("a", tmp_path) == sorted(set(files) - {"unused.py"})
    assert pipeline.stage_files("b", tmp_path) == ["pkg/__init__.py", "pkg/lazy.py", "pkg/sub/deep.py", "pkg/util.py"]


def git(repo, *args) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def commit(repo, name: str, text: str) -> str:
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", name)
    return git(repo, "rev-parse", "HEAD")


def test_a_result_is_outdated_once_a_file_of_its_stage_changes(tmp_path):
    """On a throw-away repository: a result made at a commit matches HEAD until one of its files changes there (an
    unrelated file does not count); a dirty tree, an unknown commit or no provenance never match."""
    git(tmp_path, "init", "-q")
    commit(tmp_path, "b.py", "x = 1\n")
    made = commit(tmp_path, "a.py", "import b\n")
    result, files = {"provenance": {"commit": made, "dirty": False}}, ["a.py", "b.py"]
    assert pipeline.outdated(result, files, root=tmp_path) == ""
    commit(tmp_path, "c.py", "y = 2\n")  # not one of the stage's files
    assert pipeline.outdated(result, files, root=tmp_path) == ""
    (tmp_path / "b.py").write_text("x = 3\n")  # changed, not committed: HEAD still matches, the working tree does not
    assert pipeline.outdated(result, files, root=tmp_path) == ""
    assert pipeline.outdated(result, files, ref=None, root=tmp_path) == f"b.py changed since {made[:7]}"
    head = commit(tmp_path, "b.py", "x = 3\n")
    assert pipeline.outdated(result, files, root=tmp_path) == f"b.py changed since {made[:7]}"
    assert pipeline.outdated({"provenance": {"commit": head, "dirty": False}}, files, root=tmp_path) == ""
    assert "dirty" in pipeline.outdated({"provenance": {"commit": head, "dirty": True}}, files, root=tmp_path)
    assert "not in this repository" in pipeline.outdated({"provenance": {"commit": "0" * 40, "dirty": False}}, files,
                                                         root=tmp_path)
    for no_commit in ({}, {"provenance": None}, None, [1]):
        assert pipeline.outdated(no_commit, files, root=tmp_path) == "no provenance commit"


def test_committed_results_match_head():
    """FAILS UNTIL THE FULL REGENERATION (python -m common.pipeline on a clean tree at HEAD): every results JSON that a
    stage writes was made by HEAD's code of that stage's files (the check of --resume and report/build.py)."""
    results = REPO_ROOT / "report" / "results"
    stale = {name: why for name, stage in pipeline.STAGE_OF.items()
             if (why := pipeline.outdated(pipeline.read_json(results / f"{name}.json"), pipeline.stage_files(stage)))}
    assert not stale, stale
