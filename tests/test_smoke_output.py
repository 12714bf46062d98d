"""The first command's output: progress lines and real warnings, no library log noise (common/log_filter.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

from common.log_filter import is_noise
from tests.conftest import ROOT

# What the libraries print when nothing filters them, as seen in a smoke run (stderr of train.py, its actors and
# its probe worker). Written independently of common/log_filter.py's patterns, so the test checks the output.
NOISE_SEEN = {
    "Reverb C++ log line": re.compile(r"^\[reverb/cc/"),
    "absl warning": re.compile(r"^WARNING:absl:|^W\d{4} \d\d:\d\d:\d\d"),
    "Orbax warning": re.compile(r"StandardCheckpointHandler|orbax", re.IGNORECASE),
    "TensorFlow / XLA C++ log line": re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] |^[IWE]\d{4} "),
    "JAX platform warning": re.compile(r"Platform '\w+' is experimental|Unable to initialize backend|"
                                       r"An NVIDIA GPU may be present"),
}
PROGRESS = re.compile(r"^\[\s*\d+\.\d%\] [\d,]+/[\d,]+ env steps \| .* steps/s \| .* upd/s \| replay [\d,]+ \| return")

REVERB_LINES = [  # dm-reverb 0.14, a real smoke run
    "[reverb/cc/platform/tfrecord_checkpointer.cc:162]  Initializing TFRecordCheckpointer in /tmp/smoke-x/replay.",
    "[reverb/cc/platform/tfrecord_checkpointer.cc:565] Loading latest checkpoint from /tmp/smoke-x/replay",
    "[reverb/cc/platform/default/server.cc:71] Started replay server on port 43157",
    "[reverb/cc/client.cc:165] Sampler and server are owned by the same process (3712) so Table replay is accessed "
    "directly without gRPC.",
    "[reverb/cc/reverb_service_impl.cc:168] Stored checkpoint to /tmp/smoke-x/replay/2026-12-01T22:09:43.663717112+00:00",
    "[reverb/cc/platform/default/server.cc:84] Shutting down replay server",
]
ORBAX_LINE = ("WARNING:absl:`StandardCheckpointHandler` expects a target tree to be provided for restore. Not doing so "
              "is generally UNSAFE unless you know the present topology to be the same one as the checkpoint was saved "
              "under.")
KEPT_LINES = [
    "[ 76.8%] 2,304/3,000 env steps | 280 steps/s | 29.0 upd/s | replay 2,388 | return(last 8) 1.0 | eps 0.914",
    "[reverb/cc/client.cc:188] Unable to validate shapes and dtypes of new sampler for 'replay' as server could not be "
    "reached in time (1s).",  # a Reverb WARNING: it stays
    "WARNING:common.checkpoints:skipping checkpoint /run/checkpoints/300: it does not load (ValueError: truncated)",
    "/work/main/train.py:12: UserWarning: something the user should know",
    "Traceback (most recent call last):",
    "supervisor: {'event': 'died', 'process': 'actor-0', 'returncode': 1, 'lived_s': 3.2, 'restart_in_s': 1.0}",
]


def test_the_filter_drops_reverb_info_lines_and_the_orbax_restore_warning_and_keeps_the_rest():
  for line in [*REVERB_LINES, ORBAX_LINE]:
    assert is_noise(line), line
  for line in KEPT_LINES:
    assert not is_noise(line), line


def test_the_filter_covers_child_processes_and_lines_written_in_pieces():
  # A parent in the filter starts a child that writes like Reverb's C++ logging (one line in several writes
  # to fd 2) and like Python; the parent's own fd 2 and sys.stderr go through the filter too.
  script = textwrap.dedent(f"""
      import os, subprocess, sys, time
      from common.log_filter import filtered_stderr
      child = '''
      import os, sys, time
      for piece in (b"[reverb/cc/client.cc", b":165] ", b"Sampler and server are owned by the same process (1)", b"\\\\n"):
        os.write(2, piece); time.sleep(0.05)
      os.write(2, {ORBAX_LINE.encode()!r} + b"\\\\n")
      print("child warning: kept", file=sys.stderr, flush=True)
      os.write(2, b"partial line without a newline")
      '''
      with filtered_stderr():
        os.write(2, {REVERB_LINES[2].encode()!r} + b"\\n")
        print("parent line: kept", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-c", child], check=True)
      print("after the block: kept", file=sys.stderr, flush=True)
      """)
  done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert done.returncode == 0, done.stderr
  assert done.stderr.splitlines() == [
      "parent line: kept", "child warning: kept", "partial line without a newline" + "after the block: kept"]


def test_the_first_command_prints_progress_and_no_library_noise(smoke_run):
  # A smoke run as a user starts it: training, replay checkpoints, the probe worker's probes, the final checkpoint.
  output = smoke_run.stdout + smoke_run.stderr
  lines = output.splitlines()
  noise = [f"{kind}: {line}" for line in lines for kind, pattern in NOISE_SEEN.items() if pattern.search(line)]
  assert not noise, "\n".join(noise)
  assert sum(bool(PROGRESS.match(line)) for line in smoke_run.stdout.splitlines()) >= 2, smoke_run.stdout
  assert any(line.startswith("actor 0: joined") for line in lines), output
  assert any(line.startswith("finished at update") for line in lines), output
  assert any(line.startswith("probe worker: step") for line in lines), output  # it restored the probe inputs
  # The worker's own environment, as train.py gave it: a small share of a GPU, allocated as needed.
  assert any(line.startswith("probe worker: probing on cpu with ") and
             line.endswith("; 15% of a GPU's memory, at most, taken as needed") for line in lines), output
  assert os.listdir(os.path.join(smoke_run.run_dir, "replay"))  # Reverb checkpointed (and would have said so)
