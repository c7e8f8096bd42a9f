"""NeRF target caches made by fit_dataroot (what distillnerf-fit-scene runs) on a tiny synthetic dataroot, then
spoiled: every read is checked and names the file and key; a rerun refits a scene that does not verify."""

import json
import logging
import shutil

import numpy as np
import pytest
from train_helpers import VERSION, make_tiny_dataroot

from distillnerf_core.checked_files import DataFileError
from distillnerf_core.cli import fit_scene as fit_cli
from distillnerf_core.data.datasets import NuScenesDataset
from distillnerf_core.data.nerf_targets import entry_path
from distillnerf_core.scene_fit.field import FieldConfig
from distillnerf_core.scene_fit.fit import FitConfig, fit_dataroot

CFG = FitConfig(field=FieldConfig(resolutions=[8, 16], features=4, hidden=8, coarse_samples=8, fine_samples=4),
                image_hw=[16, 32], render_hw=[8, 16], steps=3, rays=64, holdout_every=2)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = make_tiny_dataroot(tmp_path_factory.mktemp("nerf_files") / "root", frames=2)
    fit_dataroot(root, VERSION, root / "nerf" / "default", CFG, progress=False)
    return root


@pytest.fixture
def root(made, tmp_path):
    return shutil.copytree(made, tmp_path / "root")


def _dataset(root):
    return NuScenesDataset(root, VERSION, image_size=(32, 64), render_size=(16, 32), load_next=False,
                           nerf_targets="default")


def _first_entry(root):
    ds = NuScenesDataset(root, VERSION, image_size=(32, 64), load_next=False)
    sample = ds.nusc.get("sample", ds.sample_tokens[0])
    return entry_path(root / "nerf" / "default", "CAM_FRONT", sample["data"]["CAM_FRONT"])


def _edit_manifest(case):
    def edit(data):
        if case == "missing_scenes":
            del data["scenes"]
        elif case == "offsets_missing":
            del data["settings"]["offsets"]
        elif case == "scene_record_a_string":
            data["scenes"] = {name: "done" for name in data["scenes"]}
        return data
    return edit


@pytest.mark.parametrize("case", ["a_list", "truncated", "missing_scenes", "offsets_missing",
                                  "scene_record_a_string"])
def test_a_malformed_nerf_manifest_is_an_error_naming_the_file_and_key(root, capsys, case):
    manifest = root / "nerf" / "default" / "manifest.json"
    text = manifest.read_text()
    if case == "a_list":
        manifest.write_text(json.dumps([json.loads(text)]))
    elif case == "truncated":
        manifest.write_text(text[: len(text) // 2])
    else:
        manifest.write_text(json.dumps(_edit_manifest(case)(json.loads(text))))
    key = {"missing_scenes": "'scenes'", "offsets_missing": "'settings.offsets'",
           "scene_record_a_string": "'scenes."}.get(case, "")
    with pytest.raises(DataFileError, match="manifest.json") as raised:
        _dataset(root)
    assert key in str(raised.value), raised.value
    code = fit_cli.main(["--dataroot", str(root), "--version", VERSION, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("distillnerf-fit-scene: error: ") and "manifest.json" in err, err


def _save(path, **arrays):
    with np.load(path) as z:
        base = {k: z[k] for k in z.files}
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})


ENTRY_SPOILS = {  # case: (spoil, what the error names)
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:300]), "not a readable .npz"),
    "offsets_missing": (lambda p: _save(p, offsets=None), "key 'offsets' missing"),
    "object_array": (lambda p: _save(p, depth=np.array([[object()]], dtype=object)), "object array"),
    "wrong_number_of_views": (lambda p: _save(p, offsets=np.zeros((2, 3), np.float32)),
                              "key 'virtual_rgb' has shape"),
    "nan_depth": (lambda p: _save(p, depth=np.full((8, 16), np.nan, np.float32)), "key 'depth' holds non-finite"),
    "float_rgb": (lambda p: _save(p, virtual_rgb=np.zeros((3, 8, 16, 3), np.float32)), "key 'virtual_rgb' is float32"),
    "flat_depth": (lambda p: _save(p, depth=np.zeros(128, np.float32)), "key 'depth' is float32 with shape"),
}


@pytest.mark.parametrize("case", sorted(ENTRY_SPOILS))
def test_a_malformed_nerf_entry_is_an_error_naming_the_file_and_key(root, case):
    victim = _first_entry(root)
    spoil, message = ENTRY_SPOILS[case]
    spoil(victim)
    with pytest.raises(DataFileError, match=message) as raised:
        _dataset(root)[0]
    assert victim.name in str(raised.value)


def test_the_entries_must_have_as_many_views_as_the_manifest_says(root):
    victim = _first_entry(root)
    _save(victim, offsets=np.zeros((2, 3), np.float32), virtual_rgb=np.zeros((2, 8, 16, 3), np.uint8),
          virtual_depth=np.zeros((2, 8, 16), np.float32))
    with pytest.raises(DataFileError, match=rf"{victim.name}: key 'offsets' names 2 virtual cameras, the manifest"):
        _dataset(root)[0]


@pytest.mark.parametrize("spoil", ["truncated_entry", "altered_entry", "corrupt_scene_record",
                                   "scene_record_a_list"])
def test_a_rerun_refits_a_scene_whose_record_or_entries_do_not_verify(root, caplog, spoil):
    out = root / "nerf" / "default"
    scene_file = next((out / "scenes").glob("*.json"))
    victim = _first_entry(root)
    if spoil == "truncated_entry":
        victim.write_bytes(victim.read_bytes()[:300])
    elif spoil == "altered_entry":
        _save(victim, depth=np.zeros((8, 16), np.float32))
    elif spoil == "corrupt_scene_record":
        scene_file.write_text(scene_file.read_text()[:40])
    else:
        scene_file.write_text("[]")
    with caplog.at_level(logging.WARNING, logger="distillnerf_core.scene_fit.fit"):
        manifest = fit_dataroot(root, VERSION, out, CFG, progress=False)
    assert "fitted again" in caplog.text and (victim.name in caplog.text or scene_file.name in caplog.text), \
        caplog.text
    assert manifest["complete"]
    assert json.loads(scene_file.read_text())["files"], "the scene's record is whole again"
    _dataset(root)[0]  # and its entries read
