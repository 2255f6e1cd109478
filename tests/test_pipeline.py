"""common.pipeline: stages run in dependency order, each timed, the machine recorded, and a failing stage stops
the run with its name."""
import json
import shlex
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
    assert list(cmds) == ["ex1", "ex2", "ex3", "ex4", "ex5", "selftrain", "lab_dbvae", "lab_cam", "bench", "report"]
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
    m = saved["machine"]
    assert m["simd"] == torch.backends.cpu.get_cpu_capability() and m["torch"] == torch.__version__
    assert m["threads"] == torch.get_num_threads() and m["cpu"] and saved["matmul_peak"] == {"best_gflops": 50.0}
    monkeypatch.setattr(pipeline, "STAGES", {"quick": "-c exit(2)"})
    with pytest.raises(UserError, match="stage quick failed"):
        pipeline.main(["--out-dir", str(tmp_path / "failed")])
    assert not (tmp_path / "failed" / "results" / "pipeline.json").exists()
