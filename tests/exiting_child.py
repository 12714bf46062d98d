"""A child process for supervisor tests: exits at once with the code in $EXIT_CODE."""

import os
import sys

sys.exit(int(os.environ.get("EXIT_CODE", "1")))
