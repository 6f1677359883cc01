"""The configuration of stage 0 (`armo train backbone`), a section of `TrainConfig` (`stage0`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class BackboneTuneConfig:
    """Stage 0 (`armo train backbone`): Bradley-Terry tuning of the backbone's top layers on the training pairs."""

    delta: str = field(
        default="",
        metadata={
            "help": "A stage-0 delta (backbone_delta.safetensors from `armo train backbone`) the run's backbone gets "
            "before featurising; empty: the frozen backbone as published."
        },
    )
    layers: int = field(
        default=4,
        metadata={
            "help": "K, the top layers tuned. The inputs of layer L−K are cached once, so an epoch costs K/L of a "
            "forward pass plus its backward; on a GPU (`device`) raise it (up to every layer)."
        },
    )
    cache_layers: int = field(
        default=4,
        metadata={
            "help": "The layer cache holds the inputs of layer L−cache_layers (≥ layers): candidates with fewer "
            "layers share it (the frozen ones in between run without gradients). Every layer (the backbone's L): "
            "the whole backbone is tuned, from its embeddings."
        },
    )
    store_cache: bool = field(
        default=True,
        metadata={
            "help": "Keep the layer cache on disk (fp32, d floats per token). Off: each pass's layer input is "
            "computed when it is read (free when cache_layers is every layer: the embeddings), which whole-backbone "
            "runs over every training pair need, as their cache would not fit on disk."
        },
    )
    method: Literal["lora", "full"] = field(
        default="lora",
        metadata={
            "help": "'lora': low-rank adapters on every Linear of the tuned layers (a delta of a few MB, merged into "
            "the weights at load); 'full': the layers' whole weights (tens of MB per layer on an 8B backbone)."
        },
    )
    rank: int = field(default=16, metadata={"help": "LoRA rank."})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha (the update is scaled by alpha / rank)."})
    lr: float = field(default=2e-4, metadata={"help": "AdamW learning rate (linear warm-up over the first 5 %)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    epochs: int = field(
        default=2, metadata={"help": "Passes over the training pairs; the epoch kept is the best on validation pairs."}
    )
    pairs_per_step: int = field(
        default=32, metadata={"help": "Pairs per optimiser step (gradients accumulated over packed passes)."}
    )
    max_pairs: int = field(
        default=0, metadata={"help": "Train on at most this many training pairs (0: all); a seeded sample."}
    )
    head_warmup: bool = field(
        default=True,
        metadata={
            "help": "Start from the frozen backbone's Bradley-Terry model, as ArmoRM starts from a trained RM: the "
            "scalar head is first fit on the frozen features of the training pairs (the probes' logistic regression, "
            "L2 from probes.weight_decays on validation pairs) and that start is validated as epoch 0, so a run "
            "whose epochs do not beat it exports a zero delta. Off: a random head, trained with the layers."
        },
    )
    warmup_pairs: int = field(
        default=0,
        metadata={
            "help": "head_warmup fits the start on at most this many training pairs (a seeded sample; 0: all): a "
            "linear model of d weights is fixed by a few thousand pairs, and each costs a forward pass."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the adapters' initialisation and of the pair order."})
    checkpoint_minutes: float = field(
        default=5.0,
        metadata={
            "help": "Minutes between checkpoints within an epoch (and one at each epoch's end): `--resume` "
            "loses at most that much work."
        },
    )
    out_dir: str = field(
        default="runs/backbone", metadata={"help": "Checkpoints, the delta and stage0.json per run name."}
    )
