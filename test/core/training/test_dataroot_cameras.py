"""distillnerf-eval and distillnerf-train on a DGP dataroot (data/ddad_scene02 through write_dataroot) without
--cameras: the rig comes from the dataroot's sensor table, in the model's order where it records one; when no
order can be told, the error says what to pass."""

import json
import shutil

import pytest
from conftest import REPO

from distillnerf_core.cli import eval as eval_cli
from distillnerf_core.cli import train as train_cli
from distillnerf_core.data.dgp import DDAD_CAMERAS, VERSION, write_dataroot


@pytest.fixture(scope="module")
def ddad(tmp_path_factory):
    return write_dataroot(REPO / "data" / "ddad_scene02", tmp_path_factory.mktemp("ddad") / "root", masks=False)


def run_eval(checkpoint, root, tmp_path, capsys, *extra):
    out = tmp_path / "metrics.json"
    code = eval_cli.main(["--checkpoint", str(checkpoint), "--dataroot", str(root), "--version", VERSION,
                          "--json", str(out), "--no-progress", *extra])
    return code, capsys.readouterr(), out


@pytest.mark.slow
def test_eval_on_a_dgp_dataroot_without_cameras_takes_the_rig_from_the_sensor_table(ddad, tiny_checkpoint,
                                                                                     tmp_path, capsys):
    code, output, metrics = run_eval(tiny_checkpoint, ddad, tmp_path, capsys)
    assert code == 0, output.err
    assert f"cameras (model order): {','.join(DDAD_CAMERAS)}" in output.out, output.out
    assert json.loads(metrics.read_text())["num_samples"] == 3


def test_eval_takes_the_camera_order_the_run_recorded(ddad, tiny_checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(tiny_checkpoint.with_suffix(suffix), run / f"model{suffix}")
    order = ["CAMERA_05", "CAMERA_01", "CAMERA_06"]
    (run / "train_config.json").write_text(json.dumps({"data": {"cameras": order}}))
    code, output, _ = run_eval(run, ddad, tmp_path, capsys)
    assert code == 0 and f"cameras (model order): {','.join(order)}" in output.out, output


def test_a_camera_the_dataroot_lacks_is_an_error_saying_what_to_pass(ddad, tiny_checkpoint, tmp_path, capsys):
    code, output, _ = run_eval(tiny_checkpoint, ddad, tmp_path, capsys, "--cameras", "CAM_FRONT,CAMERA_01")
    assert code == 2, output.err
    assert output.err.startswith("distillnerf-eval: error: ") and "CAM_FRONT" in output.err, output.err
    assert "CAMERA_09" in output.err and "--cameras" in output.err and "Traceback" not in output.err


def test_a_rig_of_unknown_order_without_cameras_says_what_to_pass(ddad, tiny_checkpoint, tmp_path, capsys):
    root = shutil.copytree(ddad, tmp_path / "renamed")
    sensors = json.loads((root / VERSION / "sensor.json").read_text())
    for sensor in sensors:
        sensor["channel"] = sensor["channel"].replace("CAMERA_", "CAM_")
    (root / VERSION / "sensor.json").write_text(json.dumps(sensors))
    code, output, _ = run_eval(tiny_checkpoint, root, tmp_path, capsys)
    assert code == 2, output.err
    assert output.err.startswith("distillnerf-eval: error: ") and "sensor.json" in output.err, output.err
    assert "pass --cameras" in output.err and "CAM_01" in output.err, output.err


@pytest.mark.slow
def test_train_on_a_dgp_dataroot_without_cameras_records_the_rig_order(ddad, tmp_path, capsys):
    run = tmp_path / "run"
    code = train_cli.main(["--config", "train_tiny", "--dataroot", str(ddad), "--version", VERSION, "--out", str(run),
                           "--max-steps", "1", "--threads", "1", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((run / "train_config.json").read_text())["data"]["cameras"] == list(DDAD_CAMERAS)
