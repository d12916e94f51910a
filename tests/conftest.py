"""Test-wide settings: never touch the network or the user's torch cache."""
import os
import sys
from pathlib import Path

os.environ["VIDFEAT_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).parent))
