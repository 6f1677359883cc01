"""What identifies a backbone: a local checkpoint's revision and the hash of how its tokenizer renders a conversation.

Kept apart from loading (`backbone.py`) so that importing a published checkpoint (`armorm_import.py`) needs neither
the loader nor the engines the loader starts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from transformers import PreTrainedTokenizerBase


def template_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 over everything that decides how a conversation becomes token ids."""
    payload = {
        "chat_template": tokenizer.chat_template,
        "bos": tokenizer.bos_token,
        "eos": tokenizer.eos_token,
        "vocab_size": len(tokenizer),
        "class": type(tokenizer).__name__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def local_revision(directory: Path) -> str:
    """A cheap content identity of a local checkpoint: hash of config.json plus weight file names and sizes.

    Hashing 16 GB of 8B weights on every start would cost minutes; names+sizes+config catch the usual mix-ups.
    """
    h = hashlib.sha256()
    config = directory / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    for f in sorted(directory.iterdir()):
        if f.suffix in {".safetensors", ".bin", ".gguf"}:
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()
