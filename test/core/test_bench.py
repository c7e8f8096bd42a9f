"""`distillnerf-bench`: infer and train modes, precisions, per-stage floors, JSON."""

import json

import pytest

from distillnerf_core.cli.bench import main, run_benchmark
from distillnerf_core.model.distillnerf import STAGES


@pytest.mark.parametrize(("mode", "precision"), [("infer", "fp32"),
                                                  pytest.param("train", "bf16", marks=pytest.mark.slow)])
def test_bench_reports_stages_with_floors(mode, precision):
    r = run_benchmark("tiny", iters=1, warmup=0, mode=mode, precision=precision)
    assert (r["mode"], r["precision"], r["batch"]) == (mode, precision, 1)
    assert r["latency_ms_median"] > 0 and r["images_per_s"] > 0
    assert set(r["floors"]) == set(STAGES)
    for stage in ("encoder", "lift", "decode"):  # convolution stages: FLOPs counted, a positive floor
        f = r["floors"][stage]
        assert f["gflop"] > 0 and f["mbytes"] > 0 and f["floor_ms"] > 0 and f["measured_over_floor"] > 0
    assert r["floors"]["voxelize"]["gflop"] == 0 and r["floors"]["voxelize"]["mbytes"] > 0
    assert r["total"]["floor_ms"] > 0 and r["peaks"]["matmul_tflops"] > 0 and r["peaks"]["copy_gbs"] > 0
    if mode == "train":  # forward + backward: more FLOPs than the forward's stages together
        assert r["total"]["gflop"] > sum(f["gflop"] for f in r["floors"].values())


def test_bench_cli_writes_json_and_refuses_fp16_on_cpu(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["--config", "tiny", "--iters", "1", "--warmup", "0", "--no-floors", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["mode"] == "infer" and "floors" not in data
    assert "latency median" in capsys.readouterr().out
    assert main(["--config", "tiny", "--precision", "fp16"]) == 2
    assert "fp16 needs CUDA" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_compile_times_the_compiled_training_step(monkeypatch):
    """--compile: the static stages run compiled through the timed training steps (traced with aot_eager
    here: inductor's CPU compile of the backward takes minutes; test_compile.py runs inductor)."""
    from distillnerf_core.model.distillnerf import DistillNeRFModel

    compiled_models = []
    compile_stages = DistillNeRFModel.compile_stages

    def traced(model, backend="inductor"):
        compiled_models.append(model)
        compile_stages(model, backend="aot_eager")

    monkeypatch.setattr(DistillNeRFModel, "compile_stages", traced)
    r = run_benchmark("tiny", iters=1, warmup=1, mode="train", compile=True)
    assert r["compiled"] and r["compile_errors"] == {} and r["first_call_ms"] > 0
    assert "floors" not in r, "no floors with --compile"
    (model,) = compiled_models
    assert len(model._compiled) == 3, "a stage fell back to eager during the training steps"


def test_bench_realistic_scene_runs_on_the_keyframe_with_trained_weights():
    """--scene realistic: the bundled keyframe's 6 cameras; the bundled model where its config is asked for,
    else the random init fitted on the keyframe first; a checkpoint of another config is refused."""
    from distillnerf_core.cli.bench import BUNDLED_MODEL, realistic_model

    model, label = realistic_model("small", None, 0, "cpu")
    assert label.startswith("the bundled model") and model.config.name == "small"
    with pytest.raises(ValueError, match="'small' model, not 'tiny'"):
        realistic_model("tiny", BUNDLED_MODEL, 0, "cpu")
    r = run_benchmark("tiny", iters=1, warmup=0, floors=False, scene="realistic", fit_steps=1)
    random = run_benchmark("tiny", iters=1, warmup=0, floors=False)
    assert (r["scene"], r["cameras"], random["weights"]) == ("realistic", 6, "random")
    assert r["weights"].startswith("random init + 1 Adam steps")
    assert r["voxels_occupied"] != random["voxels_occupied"], "the keyframe must be another load than the ring"
    assert r["process_cpu_ms_median"] > 0
    with pytest.raises(ValueError, match="6 cameras"):
        run_benchmark("tiny", cameras=5, scene="realistic")
