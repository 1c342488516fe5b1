"""``python -m rl4lmt.grading``: release, parallel grading with a class report, honest validation."""
import sys

from rl4lmt.grading.cli import main

sys.exit(main())
