"""What identifies a backbone: a local checkpoint's revision and the hash of how its tokenizer renders a conversation.

Kept apart from loading (`backbone.py`) so that importing a published checkpoint (`armorm_import.py`) needs neither
the loader nor the engines the loader starts.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotation alone: the store imports this module and never needs transformers
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


def store_relative_id(directory: Path, store_root: Path) -> str:
    """How a manifest names a local backbone: its path relative to the root of the store the manifest is published
    in, always starting with `./` or `../` (a hub id such as `org/name` never does), never an absolute path.

    An absolute path pins the checkpoint to one machine's layout (a pod would have to mount it at the importer's
    path); a store-relative one still holds when the store and the checkpoint move together (one volume mounted
    anywhere). A checkpoint mounted elsewhere is named at start instead (`armo serve CHECKPOINT_DIR`, or
    ARMO_BACKBONE): the manifest's revision identifies it either way (armo.model_store.loader.backbone_spec).
    """
    rel = Path(os.path.relpath(directory.resolve(), store_root.resolve())).as_posix()
    return rel if rel == ".." or rel.startswith("../") else f"./{rel}"


def is_store_relative(backbone_id: str) -> bool:
    """Whether a manifest's backbone id is a path relative to its store's root (see store_relative_id)."""
    return backbone_id.startswith(("./", "../")) or backbone_id == ".."
