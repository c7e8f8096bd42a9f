"""`make demo`'s plumbing run on the real nuScenes keyframe, as a user runs it (two processes over DDS)."""

import subprocess
import sys

from conftest import REPO


def test_real_keyframe_goes_through_dds_sync_tf_and_converters():
    result = subprocess.run([sys.executable, "-m", "distillnerf_ros.tools.demo_plumbing", "--dataroot",
                             str(REPO / "data/nuscenes_sample"), "--timeout", "60"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"demo failed:\n{output}"
    assert "6 cameras synced (ego-motion compensated: yes)" in output, output
    assert "CAM_FRONT        1600x900  fx= 1266.42 fy= 1266.42 cx= 816.27 cy= 491.51" in output, output
    assert "OK: 6 cameras received" in output, output
