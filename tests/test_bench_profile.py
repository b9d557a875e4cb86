"""bench/text.py's op profile: per-step device time by op from a jax.profiler trace (the GPU diagnosis)."""
import importlib.util
import os

from jax.profiler import ProfileData

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A device plane with an "XLA Ops" line (2 steps: scatter-add 3 + 2 ms, fusion 1 ms), a stream line that must
# not be counted twice, and a host plane that must be ignored.
XSPACE = '''
planes { id: 1 name: "/device:GPU:0"
  lines { id: 1 name: "XLA Ops"
    events { metadata_id: 1 offset_ps: 0 duration_ps: 3000000000 }
    events { metadata_id: 2 offset_ps: 3000000000 duration_ps: 1000000000 }
    events { metadata_id: 1 offset_ps: 5000000000 duration_ps: 2000000000 } }
  lines { id: 2 name: "Stream #1" events { metadata_id: 3 offset_ps: 0 duration_ps: 9000000000 } }
  event_metadata { key: 1 value { id: 1 name: "scatter-add.1" } }
  event_metadata { key: 2 value { id: 2 name: "fusion.2" } }
  event_metadata { key: 3 value { id: 3 name: "kernel_x" } }
}
planes { id: 2 name: "/host:CPU" lines { id: 1 name: "python" events { metadata_id: 1 duration_ps: 50000000000 } }
  event_metadata { key: 1 value { id: 1 name: "step" } } }
'''


def load_text_bench():
  spec = importlib.util.spec_from_file_location("bench_text", os.path.join(ROOT, "bench", "text.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_op_profile_ranks_device_ops_per_step(tmp_path, capsys):
  trace = tmp_path / "plugins" / "profile" / "run"
  trace.mkdir(parents=True)
  (trace / "host.xplane.pb").write_bytes(ProfileData.text_proto_to_serialized_xspace(XSPACE))
  load_text_bench().print_op_profile(str(tmp_path), steps=2)
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "op profile over 2 steps: 3.00 ms of device ops per step; top 20:"
  assert lines[1].split() == ["2.500", "ms", "83.3%", "scatter-add.1"]
  assert lines[2].split() == ["0.500", "ms", "16.7%", "fusion.2"]
  assert len(lines) == 3


def test_op_profile_says_when_there_are_no_device_ops(tmp_path, capsys):
  load_text_bench().print_op_profile(str(tmp_path), steps=2)
  assert "no device ops" in capsys.readouterr().out
