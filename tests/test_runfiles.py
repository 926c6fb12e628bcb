"""The run files' rule (mtld.runs.files): strict where written, tolerant of a newer minor where read,
a newer major refused in one line, and a schema per version so that a change cannot slip in unversioned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from mtld.runs import files
from mtld.runs.figures import Figures, SizeTiming
from mtld.runs.files import MINOR, VERSION, Launch, RunFileError, RunResult, load, parse, to_json
from mtld.runs.rundir import RunDir

SCHEMAS = Path(__file__).parent / "data" / "runfiles"


def test_a_writer_fails_on_a_field_the_file_does_not_have():
    with pytest.raises(ValidationError, match="disk_byte"):
        RunResult(outcome="succeeded", exit_code=0, disk_byte=10)  # a typo of disk_bytes
    with pytest.raises(ValidationError, match="micro_batchs"):
        Launch(micro_batch=4, micro_batchs=8)
    with pytest.raises(ValidationError, match="warmup_s"):
        RunResult(outcome="succeeded", exit_code=0, timing={4: {"steps": 3, "warmup_s": 1.0}})  # nested too


def test_a_reader_takes_a_newer_minors_extra_fields_and_reads_the_rest():
    written = json.loads(to_json(Launch(micro_batch=4, history=[Figures(step=3, timing={4: SizeTiming(steps=3)})])))
    newer = {**written, "minor": MINOR + 1, "compile_cache": "/tmp/x",  # fields a newer mtld added
             "memory": {"probe": "auto", "swap_weight": 0.5},
             "history": [{**written["history"][0], "energy_j": 12.5,
                          "timing": {"4": {"steps": 3, "power_w": 30.0}}}]}
    launch = parse(Launch, newer, shown_as="launch.json")
    assert launch.micro_batch == 4 and launch.memory.probe == "auto"
    assert launch.history[0].step == 3 and launch.history[0].timing[4].steps == 3


def test_the_same_minor_with_an_unknown_field_is_refused_as_damaged():
    data = {**json.loads(to_json(Launch(micro_batch=4))), "compile_cache": "/tmp/x"}
    with pytest.raises(RunFileError) as e:
        parse(Launch, data, shown_as="launch.json")
    assert str(e.value) == "launch.json: compile_cache - unknown field"


def test_a_newer_major_is_refused_in_one_line_and_files_from_before_versions_read_as_1_0(tmp_path):
    rd = RunDir(tmp_path)
    rd.result_file.write_text(json.dumps({"version": VERSION + 1, "minor": 0, "outcome": "succeeded", "exit_code": 0}))
    with pytest.raises(RunFileError) as e:
        rd.read_result()
    assert str(e.value) == (f"{rd.result_file}: written by a newer mtld (format {VERSION + 1}.0; this one reads "
                            f"{VERSION}.x): upgrade mtld")
    rd.result_file.write_text(json.dumps({"outcome": "interrupted", "exit_code": 75, "step": 40}))  # no version
    assert rd.read_result().step == 40


def test_figures_kept_in_the_store_by_another_mtld_read_without_its_unknown_fields():
    stored = {"step": 10, "peak_memory_bytes": 5, "gpu_temp_c": 71, "timing": {"2": {"steps": 10, "new": 1}}}
    figures = Figures.read(stored)
    assert (figures.step, figures.peak_memory_bytes, figures.timing[2].steps) == (10, 5, 10)


@pytest.mark.parametrize("model", [Launch, RunResult])
def test_the_files_are_what_their_version_says(model):
    """Adding a field is a new MINOR, changing or removing one a new VERSION; each version's schema is kept in
    tests/data/runfiles/. After a deliberate change, bump the number in mtld/runs/files.py and save the new
    schema: python -m tests.test_runfiles"""
    saved = SCHEMAS / f"{model.__name__}-{VERSION}.{MINOR}.json"
    assert saved.is_file(), f"no schema saved for {model.__name__} {VERSION}.{MINOR}: python -m tests.test_runfiles"
    assert json.loads(saved.read_text()) == model.model_json_schema(), (
        f"{model.__name__} changed without a new version in mtld/runs/files.py")


def test_one_function_writes_each_file_and_one_reads_it(tmp_path):
    rd = RunDir(tmp_path)
    rd.write_launch(Launch(micro_batch=8, job_id=3, run_id=4))
    assert load(Launch, rd.launch_file) == rd.read_launch() == Launch(micro_batch=8, job_id=3, run_id=4)
    assert json.loads(rd.launch_file.read_text())["version"] == VERSION == files.VERSION


if __name__ == "__main__":
    SCHEMAS.mkdir(parents=True, exist_ok=True)
    for m in (Launch, RunResult):
        (SCHEMAS / f"{m.__name__}-{VERSION}.{MINOR}.json").write_text(json.dumps(m.model_json_schema(), indent=1) + "\n")
