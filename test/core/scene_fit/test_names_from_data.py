"""Names from a dataroot's tables never become paths: a scene named ../../../escaped_scene, a sample_data or
sample token that is a path. The dataroot is a real tiny synthetic one, its tables edited; the tools are the
real commands (distillnerf-fit-scene, distillnerf-cache-features, distillnerf-eval)."""

import json

import pytest
from train_helpers import VERSION, make_tiny_dataroot

from distillnerf_core.checked_files import file_name
from distillnerf_core.cli import cache_features as cache_cli
from distillnerf_core.cli import eval as eval_cli
from distillnerf_core.cli import fit_scene as fit_cli

FIT = ["--steps", "2", "--rays", "32", "--image-hw", "16", "32", "--render-hw", "8", "16", "--holdout-every", "0",
       "--quiet"]


def rename_everywhere(root, old, new):
    """Replace the string `old` by `new` in every table (a token and every reference to it)."""
    def swap(value):
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return new if value == old else value
    for table in (root / VERSION).glob("*.json"):
        table.write_text(json.dumps(swap(json.loads(table.read_text()))))


def escaped(tmp_path, out):
    """Files named escaped* anywhere under tmp_path but outside `out`."""
    return [p for p in tmp_path.rglob("*escaped*") if out not in p.parents and p != out and "root" not in p.parts]


@pytest.fixture
def deep(tmp_path):
    """(dataroot, an output folder three levels down, so ../../../ from its subfolders stays under tmp_path)."""
    root = make_tiny_dataroot(tmp_path / "root", frames=2)
    return root, tmp_path / "a" / "b" / "c" / "out"


@pytest.mark.slow
def test_a_scene_named_like_a_path_is_fitted_and_written_inside_out(deep, tmp_path, capsys):
    root, out = deep
    name = "../../../escaped_scene"
    scenes = json.loads((root / VERSION / "scene.json").read_text())
    scenes[0]["name"] = name
    (root / VERSION / "scene.json").write_text(json.dumps(scenes))
    code = fit_cli.main(["--dataroot", str(root), "--version", VERSION, "--out", str(out), *FIT])
    assert code == 0, capsys.readouterr().err
    assert escaped(tmp_path, out) == [], f"written outside --out: {escaped(tmp_path, out)}"
    record = out / "scenes" / f"{file_name(name)}.json"
    assert record.is_file() and record.parent == out / "scenes"
    assert list(json.loads((out / "manifest.json").read_text())["scenes"]) == [name], "the name is kept as data"
    before = record.stat().st_mtime_ns
    assert fit_cli.main(["--dataroot", str(root), "--version", VERSION, "--out", str(out), *FIT]) == 0
    assert record.stat().st_mtime_ns == before, "the rerun finds the scene's record under its file name: skipped"
    assert escaped(tmp_path, out) == []


def test_a_sample_data_token_that_is_a_path_is_refused_before_anything_is_written(deep, tmp_path, capsys):
    root, out = deep
    sample_data = json.loads((root / VERSION / "sample_data.json").read_text())
    victim = next(sd for sd in sample_data if sd["filename"].startswith("samples/CAM_FRONT/"))
    rename_everywhere(root, victim["token"], "../../../../escaped_token")
    code = fit_cli.main(["--dataroot", str(root), "--version", VERSION, "--out", str(out), *FIT])
    err = capsys.readouterr().err
    assert code == 2 and "distillnerf-fit-scene: error: " in err and "sample_data token" in err, err
    assert not out.exists() and escaped(tmp_path, out) == []
    cache = tmp_path / "a" / "b" / "c" / "cache"
    code = cache_cli.main(["--dataroot", str(root), "--version", VERSION, "--teacher", "oracle", "--out", str(cache),
                           "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "distillnerf-cache-features: error: " in err and "sample_data token" in err, err
    assert escaped(tmp_path, cache) == []


def test_eval_images_of_a_sample_token_that_is_a_path_stay_in_the_images_folder(deep, tmp_path, tiny_checkpoint):
    root, images = deep
    samples = json.loads((root / VERSION / "sample.json").read_text())
    rename_everywhere(root, samples[0]["token"], "../../../../escaped_sample")
    code = eval_cli.main(["--checkpoint", str(tiny_checkpoint), "--dataroot", str(root), "--version", VERSION,
                          "--json", str(tmp_path / "metrics.json"), "--images", str(images), "--num-images", "2",
                          "--cameras", "CAM_FRONT,CAM_FRONT_RIGHT,CAM_FRONT_LEFT,CAM_BACK,CAM_BACK_LEFT,CAM_BACK_RIGHT",
                          "--no-progress"])
    assert code == 0
    assert len(list(images.glob("*.png"))) == 2 and escaped(tmp_path, images) == [], escaped(tmp_path, images)
