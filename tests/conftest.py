"""Test-wide settings: never touch the network or the user's torch cache."""
import os
import sys
from pathlib import Path

os.environ["VIDFEAT_OFFLINE"] = "1"
# Before torch is imported: the suite is dominated by small temporal heads (see pipelines/cli.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).parent))
