"""TensorBoard: who decides that a run writes event files, and what a real run writes, read back with
tensorboard's own reader (its EventAccumulator) and checked against the run's metrics.json and log."""

from __future__ import annotations

import json
import os

import pytest

from mtld.config.jobspec import JobSpec
from mtld.train.board import Board, NoBoard, hparams_of, open_board, wanted
from tests.conftest import capturing_log, events, job_file, run_cli, take

SPEC = {"name": "job", "model": "/models/bert", "tasks": [{"name": "t", "type": "classification", "train": "/t.jsonl"}]}


def spec(tensorboard: bool | None = None, **train) -> JobSpec:
    return JobSpec.model_validate({**SPEC, "train": train, "logging": {"tensorboard": tensorboard}})


@pytest.mark.parametrize(("job", "setting", "expected"), [
    (None, False, False), (None, True, True),  # the setting decides
    (True, False, True), (False, True, False),  # the job's own [logging] wins
])
def test_the_jobs_own_logging_table_wins_over_the_setting(job, setting, expected):
    assert wanted(spec(job), setting) is expected


def test_the_job_file_takes_a_logging_table_and_refuses_what_it_does_not_know():
    from mtld.config.jobspec import JobFileError, spec_from_dict

    with pytest.raises(JobFileError, match=r"job.toml: logging.tensorbord - unknown key"):
        spec_from_dict({**SPEC, "logging": {"tensorbord": True}}, base_dir=__import__("pathlib").Path("/"),
                       shown_as="job.toml", check_data=False)
    with pytest.raises(JobFileError, match=r"job.toml: logging.tensorboard - Input should be a valid boolean"):
        spec_from_dict({**SPEC, "logging": {"tensorboard": "perhaps"}}, base_dir=__import__("pathlib").Path("/"),
                       shown_as="job.toml", check_data=False)


def test_hparams_are_the_jobs_settings_in_types_tensorboard_takes():
    params = hparams_of(spec(epochs=5, learning_rate=1e-4, batch_size=4), micro_batch=4)
    assert {k: params[k] for k in ("epochs", "learning_rate", "batch_size", "micro_batch_start", "model", "tasks")} == \
        {"epochs": 5, "learning_rate": 1e-4, "batch_size": 4, "micro_batch_start": 4, "model": "bert",
         "tasks": "t:classification"}
    assert all(isinstance(v, (int, float, str, bool)) for v in params.values())


def test_off_writes_nothing_and_on_writes_into_the_folder(tmp_path):
    log, capture = capturing_log()
    off = open_board(tmp_path / "off", spec(False), setting=True, micro_batch=4, resumed_from=None, log=log)
    assert isinstance(off, NoBoard) and not isinstance(off, Board) and not (tmp_path / "off").exists()
    on = open_board(tmp_path / "on", spec(), setting=True, micro_batch=4, resumed_from=None, log=log)
    on.close()
    assert isinstance(on, Board) and list((tmp_path / "on").glob("events.out.tfevents.*"))
    assert take(capture) == []


def test_without_the_tensorboard_package_the_run_goes_on_and_says_why(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("TensorBoard logging requires TensorBoard version 1.15 or above")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    log, capture = capturing_log()
    board = open_board(tmp_path / "tb", spec(True), setting=False, micro_batch=4, resumed_from=None, log=log)
    assert type(board) is NoBoard
    [warning] = take(capture)
    assert (warning["event"], warning["advice"]) == ("tensorboard.unavailable", "pip install 'mtld[tensorboard]'")


def test_an_attempt_a_newer_one_fenced_out_queues_no_more_points(tmp_path):
    """One writer per run folder, tb/ included: once a newer attempt owns the folder, the older one's next
    moment raises Superseded (which ends it, exit 73) and never reaches the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mtld.runs.rundir import Fence, RunDir, Superseded

    rd = RunDir(tmp_path / "run")
    rd.claim({"job_id": 1, "store": "tests"})
    fence = Fence(rd, rd.next_generation())
    log, _ = capturing_log()
    board = open_board(rd.path / "tb", spec(True), setting=False, micro_batch=4, resumed_from=None, log=log,
                       fence=fence.check)
    board.progress(1, {"loss": 0.5})
    rd.next_generation()  # a newer attempt takes the folder
    with pytest.raises(Superseded, match=r"did not write tb/ \(step 2\)"):
        board.progress(2, {"loss": 0.4})
    with pytest.raises(Superseded):
        board.eval(2, {"score": 0.9})
    board.close()
    events = EventAccumulator(str(rd.path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1] and "eval/score" not in events.Tags()["scalars"]
    with pytest.raises(Superseded):  # and a later attempt of the old generation opens no board at all
        open_board(rd.path / "tb", spec(True), setting=False, micro_batch=4, resumed_from=None, log=log,
                   fence=fence.check)


@pytest.mark.slow  # a whole (tiny) training run
def test_a_runs_event_files_hold_its_metrics_and_progress(data_dir, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    for name in [n for n in os.environ if n.startswith("MTLD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MTLD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MTLD_TRAIN__DEVICE", "cpu")
    monkeypatch.setenv("MTLD_TRAIN__PROGRESS_EVERY_S", "0")  # a progress event (and so a point) every step
    monkeypatch.setenv("MTLD_LOGGING__TENSORBOARD", "true")
    monkeypatch.setenv("MTLD_MEMORY__PROBE", "simulated")
    (tmp_path / "pressure").write_text("normal\n")
    monkeypatch.setenv("MTLD_MEMORY__SIMULATED_FILE", str(tmp_path / "pressure"))
    job = job_file(data_dir, name="tb", epochs=3)
    out = tmp_path / "run"
    code, _, err = run_cli("train", str(job), "--out", str(out))
    assert code == 0, err

    board = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})  # 0: keep every point
    board.Reload()
    scalars = {tag: {e.step: e.value for e in board.Scalars(tag)} for tag in board.Tags()["scalars"]}
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["evals"]) == 3
    for record in metrics["evals"]:
        assert scalars["eval/score"][record["step"]] == pytest.approx(record["score"], rel=1e-6)
        for task, values in record["tasks"].items():
            for metric, value in values.items():
                if value is not None:
                    assert scalars[f"eval/{task}/{metric}"][record["step"]] == pytest.approx(value, rel=1e-6)
    progress = events(out, "step.progress")
    assert {e["step"]: e["loss"] for e in progress} == pytest.approx(scalars["train/loss"], rel=1e-6)
    assert {e["step"]: e["micro_batch"] for e in progress} == scalars["train/micro_batch"]
    assert set(scalars["train/samples_per_s"]) == set(scalars["memory/peak_bytes"]) == {e["step"] for e in progress}
    assert all(v > 0 for v in scalars["memory/peak_bytes"].values())

    start = board.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    given = HParamsPluginData.FromString(start).session_start_info.hparams
    assert (given["epochs"].number_value, given["tasks"].string_value) == (3, "sentiment:classification,entities:token_classification")
