"""pipeline.demo: every Luigi task's wall and CPU seconds recorded from its own process; a failing step shows
the end of the log."""
import json
import time

import luigi
import pytest

from pipeline import demo


class Spin(luigi.Task):
    """Burns about `seconds` of CPU, then writes its output."""

    path = luigi.Parameter()
    seconds = luigi.FloatParameter()

    def output(self):
        return luigi.LocalTarget(self.path)

    def run(self):
        end = time.process_time() + self.seconds
        while time.process_time() < end:
            pass
        with self.output().open("w") as f:
            f.write("done\n")


class Both(luigi.WrapperTask):
    directory = luigi.Parameter()

    def requires(self):
        return [Spin(path=f"{self.directory}/a", seconds=0.3), Spin(path=f"{self.directory}/b", seconds=0.6)]


def test_luigi_tasks_are_timed_in_their_own_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(luigi.Task, "_event_callbacks", {})      # the handlers go away with the test
    timings = tmp_path / "timings.jsonl"
    demo.time_luigi_tasks(timings)
    assert luigi.build([Both(directory=str(tmp_path))], workers=2, local_scheduler=True, log_level="WARNING")
    entries = [json.loads(line) for line in timings.read_text().splitlines()]
    spins = sorted((e for e in entries if e["task"] == "Spin"), key=lambda e: e["cpu_s"])
    assert [e["task"] for e in entries].count("Both") == 1 and len(spins) == 2
    assert spins[0]["cpu_s"] == pytest.approx(0.3, abs=0.1) and spins[1]["cpu_s"] == pytest.approx(0.6, abs=0.1)
    assert all(e["wall_s"] >= e["cpu_s"] - 0.05 and e["step"] == "pipeline" for e in spins)


def test_a_failing_step_is_recorded_and_raised(tmp_path, capsys):
    runner = demo.Demo(demo.DemoConfig(out=tmp_path))
    with pytest.raises(demo.StepFailed, match="step broken failed"):
        runner.subprocess_step("broken", ["false"])
    entry = json.loads((tmp_path / "demo-timings.jsonl").read_text())
    assert entry["step"] == "broken" and entry["wall_s"] >= 0
    assert "==== broken: false" in capsys.readouterr().out


def test_log_tail_is_the_last_lines(tmp_path):
    log = tmp_path / "demo.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert demo.log_tail(log, 3) == "line 97\nline 98\nline 99"


def test_console_scripts_are_found_beside_python_or_on_path(tmp_path, monkeypatch):
    script = tmp_path / "cmkp-example"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert demo.console_script("cmkp-example") == str(script)
    with pytest.raises(FileNotFoundError, match="cmkp-missing is not installed beside .* nor on PATH"):
        demo.console_script("cmkp-missing")
