"""Script prefix for subprocess tests that must run without `wmtp_hf` (as a Hub user with only transformers)."""

BLOCK_WMTP_HF = """\
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "wmtp_hf" or name.startswith("wmtp_hf."):
            raise ImportError("wmtp_hf is blocked in this test")
sys.meta_path.insert(0, Block())
"""
