"""common.pipeline: stages run in order, each timed, and a failing stage stops the run with its name."""
import sys

import pytest

from common import pipeline
from common.utils import UserError


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.5  # every reading 1.5 s after the previous one: each stage takes 1.5 s
        return self.t


def test_stages_run_in_order_and_are_timed(tmp_path):
    log = tmp_path / "order.txt"
    cmds = [(name, [sys.executable, "-c", f"open({str(log)!r}, 'a').write({name!r})"]) for name in ("a", "b", "c")]
    rows = pipeline.run_stages(cmds, cwd=tmp_path, clock=FakeClock())
    assert log.read_text() == "abc"
    assert [r["name"] for r in rows] == ["a", "b", "c"] and all(r["seconds"] == 1.5 for r in rows)


def test_a_failing_stage_stops_the_pipeline(tmp_path):
    log = tmp_path / "order.txt"
    cmds = [("bad", [sys.executable, "-c", "raise SystemExit(3)"]),
            ("never", [sys.executable, "-c", f"open({str(log)!r}, 'w')"])]
    with pytest.raises(UserError, match="stage bad failed \\(exit status 3\\)"):
        pipeline.run_stages(cmds, cwd=tmp_path)
    assert not log.exists()


def test_commands_follow_the_dependency_order_and_pass_the_data_dir(tmp_path):
    cmds = pipeline.commands(list(pipeline.STAGES), tmp_path)
    assert [n for n, _ in cmds] == ["ex1", "ex2", "ex3", "ex4", "ex5", "report"]
    assert all(("--data-dir" in c) == (n != "report") for n, c in cmds)
    assert all((pipeline.ROOT / c[1]).exists() for _, c in cmds)  # every stage's script exists
