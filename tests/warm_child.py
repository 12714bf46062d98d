"""A child process for supervisor tests that can be prestarted: its warm-up appends "warmed <pid>" to the file
$WARM_LOG (set when it is started), then it appends "ran <pid> <argv> <$JOB_VALUE>" and exits with $EXIT_CODE."""

import json
import os
import sys

from common.processes import warm_started


def _log(line: str) -> None:
  with open(os.environ["WARM_LOG"], "a") as handle:
    handle.write(line + "\n")


argv = warm_started(sys.argv[1:], lambda: _log(f"warmed {os.getpid()}"))
if argv is None:
  _log(f"not needed {os.getpid()}")
  sys.exit(0)
_log(f"ran {os.getpid()} {json.dumps(argv)} {os.environ.get('JOB_VALUE')}")
sys.exit(int(os.environ.get("EXIT_CODE", "1")))
