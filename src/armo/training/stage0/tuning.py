"""Stage 0, `armo train backbone`: reward-tune the backbone's top layers with a Bradley-Terry loss on the training
pairs, then hand the tuned backbone (as a delta) to the ArmoRM stages.

ArmoRM starts from a Bradley-Terry reward model of its backbone and freezes it for the regression and gating stages;
the heads read features that preference training already shaped. On two CPU cores we tune what is affordable:
- the inputs of layer L−K are cached once for every token of the training set (`stage0.layer_cache`);
- the scalar reward head on the pooled response feature the artifact reads starts as the frozen backbone's linear BT
  model (`stage0.head_warmup`), validated as epoch 0: tuning starts from a trained RM, as ArmoRM's does, and has to
  beat it to change the backbone;
- each epoch runs only the top K layers on the cache, with LoRA adapters (peft) on their Linear layers, the head
  trained with them, BT loss −log σ(r_chosen − r_rejected);
- validation pairs (the config's split, by prompt) never train; after each epoch their pair accuracy is measured
  and the best epoch is exported as the delta (`armo.model_store.delta`);
- checkpoints every `stage0.checkpoint_minutes` and at each epoch's end (adapters, head, optimiser, scheduler, RNG,
  the position in the epoch's pair order): the same command again resumes a killed run where it stopped;
- `dtype=bfloat16`: the layers run under autocast (their matmuls in bf16 on AMX or CUDA) while the adapters, the head
  and the optimiser keep fp32 master weights; the scalar head always reads the pooled features in fp32.
With `stage0.layers` = `cache_layers` = every layer and `store_cache` off, the whole backbone is tuned from its
embeddings (LoRA on every Linear of every layer).
The scalar head is thrown away, as ArmoRM throws away its BT head: the heads of stages 2-4 are fit on the tuned
features. On a GPU (`--set device=cuda`: the cache, the epochs and the features through the tuned layers run there, in
fp32, and agree with the CPU run up to float rounding) the same command tunes more layers (`stage0.layers`, up to
all of them, with `stage0.cache_layers` as many: the cache then holds the embeddings).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from armo.model_store import atomic
from armo.model_store.backbone import Backbone
from armo.model_store.delta import DELTA_FILE, LORA_A, LORA_B, RUN_DELTA_ENTRY
from armo.model_store.manifest import BackboneDelta, Pooling, sha256_file
from armo.training.bradley_terry import bt_loss
from armo.training.config import BackboneTuneConfig, TrainConfig
from armo.training.prepare import Dataset, build_training_set
from armo.training.stage0.batches import Batch, PassRef, make_batch, pair_diffs, pass_index
from armo.training.stage0.layer_cache import LayerCache, decoder_layers, layer_caches, top_view
from armo.training.stage0.start import epoch_zero, save_checkpoint, validate

log = logging.getLogger(__name__)

PEFT_MISSING = "stage 0 needs peft: pip install 'armo-rm[train]'"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class RewardTuner(nn.Module):
    """The top layers (the cached start layer through the last; LoRA on the tuned ones), the final norm and a
    scalar BT head on the pooled response feature."""

    def __init__(
        self, backbone: Backbone, start: int, cfg: BackboneTuneConfig, pooling: Pooling, dtype: str = "float32"
    ) -> None:
        super().__init__()
        import copy

        model = backbone.model
        layers = decoder_layers(model)
        self.first_tuned = len(layers) - cfg.layers
        if not start <= self.first_tuned < len(layers):
            raise ValueError(f"stage0.layers={cfg.layers} must be between 1 and stage0.cache_layers")
        self.start, self.method, self.pooling = start, cfg.method, pooling
        self.bf16, self.device_type = dtype == "bfloat16", backbone.device.type
        # fp32 copies (master weights) whatever the backbone's precision; a bf16 backbone's are bf16 values
        frozen = [copy.deepcopy(layer).float() for layer in layers[start : self.first_tuned]]
        self.tuned = nn.ModuleList(copy.deepcopy(layer).float() for layer in layers[self.first_tuned :])
        self.scale = cfg.alpha / cfg.rank
        if cfg.method == "lora":
            try:
                from peft import LoraConfig, inject_adapter_in_model
            except ImportError as e:
                raise ImportError(PEFT_MISSING) from e
            inject_adapter_in_model(
                LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=list(TARGETS)),
                self.tuned,
            )
        else:
            self.tuned.requires_grad_(True)
        if self.bf16:  # frozen weights once in bf16: what autocast casts them to on every pass, bit for bit
            for module in [*frozen, *self.tuned]:
                for linear in module.modules():
                    if type(linear) is nn.Linear and not linear.weight.requires_grad:
                        linear.weight.data = linear.weight.data.to(torch.bfloat16)
        self.top = top_view(model, nn.ModuleList([*frozen, *self.tuned]))
        self.head = nn.Linear(backbone.hidden_size, 1)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(backbone.hidden_size))
        nn.init.zeros_(self.head.bias)
        self.head.to(backbone.device)  # the layers are copies of the backbone's, on its device already

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trained_state(self) -> dict[str, Tensor]:
        """What training changes (adapters or tuned weights, and the head): a checkpoint's weights. The frozen
        layers are the backbone's and are not saved: for LoRA a few per cent of the whole."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trained_state(self, state: dict[str, Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        trained = {name for name, p in self.named_parameters() if p.requires_grad}
        if unexpected or trained.intersection(missing):
            raise ValueError(f"checkpoint does not fit the tuner: {sorted(trained.intersection(missing))[:3]}…")

    def precision(self) -> AbstractContextManager[Any]:
        """The layers' compute precision: bf16 autocast over fp32 weights, or plain fp32."""
        return torch.autocast(self.device_type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def rewards(self, batch: Batch) -> Tensor:
        """[outputs] rewards of a unit's responses, rows in pass and group order."""
        with self.precision():
            pooled = batch.pooled(self.top, self.pooling)  # [outputs, d]
        return self.head(pooled.float()).squeeze(-1)

    def diffs(
        self, caches: list[LayerCache], refs: list[PassRef], ds: Dataset, desc: str | None = None
    ) -> tuple[list[int], Tensor]:
        """`pair_diffs` through the tuned layers in the run's precision: (pair ids, [P, d] fp32 differences)."""
        with self.precision():
            ids, diffs = pair_diffs(self.top, self.pooling, caches, refs, ds, desc)
        return ids, diffs.float()

    def delta_tensors(self) -> dict[str, Tensor]:
        """The delta in the base model's parameter names (armo.model_store.delta)."""
        out: dict[str, Tensor] = {}
        for j, layer in enumerate(self.tuned):
            prefix = f"layers.{self.first_tuned + j}."
            for name, module in layer.named_modules():
                if self.method == "lora" and hasattr(module, "lora_A") and "default" in module.lora_A:
                    out[f"{prefix}{name}.weight{LORA_A}"] = module.lora_A["default"].weight.detach().clone()
                    out[f"{prefix}{name}.weight{LORA_B}"] = module.lora_B["default"].weight.detach().clone()
            if self.method == "full":
                out.update({f"{prefix}{n}": p.detach().clone() for n, p in layer.named_parameters()})
        return out


@dataclass
class Stage0Result:
    directory: Path
    delta: Path
    report: dict[str, Any]


def _fingerprint(cfg: TrainConfig, ds: Dataset, start: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the stage-0 settings (but not the epoch count, so a finished
    run can be continued), the cache's layer and the data."""
    s0 = {
        k: v
        for k, v in asdict(cfg.stage0).items()
        if k not in {"epochs", "out_dir", "delta", "store_cache", "checkpoint_minutes"}  # change no result
        and not (k == "warmup_pairs" and v == 0)  # checkpoints from before the option stay resumable
    }
    return {
        **({"dtype": cfg.dtype} if cfg.dtype != "float32" else {}),  # fp32 checkpoints from before stay resumable
        "stage0": s0,
        "units": "pairs across parts",  # checkpoints from before two-pass units trained on fewer pairs
        "start": start,
        "pooling": cfg.pooling,
        "data": ds.data_hashes,
        "pairs": len(ds.pairs),
        "split_by": cfg.data.split_by,
        "max_length": cfg.extract.max_length,
    }


def tune(cfg: TrainConfig, run_name: str, *, progress: bool = True, max_passes: int | None = None) -> Stage0Result:
    """Stage 0 end to end: cache (resumable) → BT epochs (checkpointed, resumable) → the best epoch's delta.

    `max_passes` stops after that many training passes (tests use it to simulate a kill); the checkpoint holds
    the position, and the next call continues from it."""
    from transformers import get_linear_schedule_with_warmup

    from armo.training.featurize import get_backbone

    s0 = cfg.stage0
    started = time.perf_counter()
    if cfg.extract.threads:
        torch.set_num_threads(cfg.extract.threads)
    # in the run's precision: the layer cache holds what the served backbone's lower layers compute
    backbone = get_backbone(cfg.backbone, device=cfg.device, dtype=cfg.dtype)
    ds = build_training_set(cfg.data)
    caches = layer_caches(cfg, ds, backbone)
    for cache in caches:
        cache.build(progress)
    cache_seconds = time.perf_counter() - started
    train = every_train = [p for p, v in enumerate(ds.pair_val) if not v]
    if s0.max_pairs and len(train) > s0.max_pairs:
        train = sorted(random.Random(s0.seed).sample(train, s0.max_pairs))
    train_set = set(train)
    train_refs = pass_index(caches, ds, train_set)
    val_pairs = {p for p, v in enumerate(ds.pair_val) if v}
    val_refs = pass_index(caches, ds, val_pairs)
    two_pass = {
        split: sum(len(r.pairs) for r in refs if len(r.passes) > 1)
        for split, refs in (("train", train_refs), ("val", val_refs))
    }

    torch.manual_seed(s0.seed)
    tuner = RewardTuner(backbone, caches[0].start, s0, cfg.pooling, cfg.dtype)
    optimizer = torch.optim.AdamW(tuner.trainable(), lr=s0.lr, weight_decay=s0.weight_decay)
    steps_per_epoch = math.ceil(len(train) / s0.pairs_per_step)
    total = steps_per_epoch * s0.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, max(1, total // 20), total)
    out = Path(s0.out_dir) / run_name
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    fingerprint = _fingerprint(cfg, ds, caches[0].start)
    state: dict[str, Any] = {"epoch": 0, "position": 0, "history": [], "best": None, "seconds": 0.0}
    if ckpt_path.is_file():
        saved = torch.load(ckpt_path, weights_only=False)
        if saved["fingerprint"] != fingerprint:
            raise ValueError(f"{ckpt_path} was made with other stage-0 settings or data; use another run name")
        tuner.load_trained_state(saved["tuner"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        if "rng" in saved:
            torch.set_rng_state(saved["rng"])
        log.info("stage 0: resuming %s at epoch %d, pass %d", run_name, state["epoch"], state["position"])

    def checkpoint() -> None:
        save_checkpoint(
            ckpt_path,
            {
                "fingerprint": fingerprint,
                "tuner": tuner.trained_state(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": state,
                "rng": torch.get_rng_state(),
            },
        )

    if s0.head_warmup and not state["history"]:  # epoch 0: the frozen backbone's BT model, the start to beat
        t_warm = time.perf_counter()
        warm_refs = train_refs
        if s0.warmup_pairs:  # drawn from every training pair: the start does not depend on max_pairs
            warm = every_train
            if len(warm) > s0.warmup_pairs:
                warm = random.Random(s0.seed + 1).sample(warm, s0.warmup_pairs)
            warm_refs = pass_index(caches, ds, set(warm))
        entry = epoch_zero(tuner, caches, (warm_refs, val_refs), ds, cfg, fingerprint, progress)
        state["seconds"] += time.perf_counter() - t_warm
        state["history"].append({**entry, "seconds": round(state["seconds"], 1)})
        state["best"] = state["history"][-1]
        log.info("stage 0 epoch 0 (frozen, fitted head): validation balanced %.3f", entry["val"]["balanced"])
        _export(tuner, out, backbone)
        checkpoint()

    done_passes = 0
    for epoch in range(state["epoch"], s0.epochs):
        order = list(train_refs)
        random.Random(s0.seed * 1000 + epoch).shuffle(order)
        bar = tqdm(
            total=len(order),
            initial=state["position"],
            desc=f"stage 0 epoch {epoch + 1}/{s0.epochs}",
            unit="pass",
            disable=not progress,
        )
        tuner.train()
        t_epoch, seen, loss_sum, tokens = time.perf_counter(), 0, 0.0, 0
        last_checkpoint = t_epoch
        epoch_loss, epoch_pairs = state.get("epoch_loss", 0.0), state.get("epoch_pairs", 0)
        optimizer.zero_grad()
        for position in range(state["position"], len(order)):
            if max_passes is not None and done_passes >= max_passes:
                state["seconds"] += time.perf_counter() - t_epoch
                state["epoch_seconds"] = state.get("epoch_seconds", 0.0) + time.perf_counter() - t_epoch
                state["epoch_tokens"] = state.get("epoch_tokens", 0) + tokens
                checkpoint()
                bar.close()
                raise RuntimeError(f"stage 0 stopped after {done_passes} pass(es) (max_passes)")
            ref = order[position]
            b = make_batch(caches, ref, ds, train_set)
            if b is not None:
                r = tuner.rewards(b)
                loss = bt_loss(r[b.chosen] - r[b.rejected], total=True)  # Σ −log σ(r_c − r_r)
                (loss / s0.pairs_per_step).backward()
                seen += len(b.pairs)
                loss_sum += loss.item()
                epoch_loss, epoch_pairs = epoch_loss + loss.item(), epoch_pairs + len(b.pairs)
                tokens += b.tokens
            last = position == len(order) - 1
            if seen >= s0.pairs_per_step or (last and seen):
                nn.utils.clip_grad_norm_(tuner.trainable(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                bar.set_postfix(
                    loss=f"{loss_sum / max(seen, 1):.3f}",
                    tok_s=f"{tokens / max(time.perf_counter() - t_epoch, 1e-9):.0f}",
                )
                seen, loss_sum = 0, 0.0
                state["position"] = position + 1
                state["epoch_loss"], state["epoch_pairs"] = epoch_loss, epoch_pairs
                if time.perf_counter() - last_checkpoint >= 60 * s0.checkpoint_minutes:
                    state["seconds"] += time.perf_counter() - t_epoch
                    state["epoch_seconds"] = state.get("epoch_seconds", 0.0) + time.perf_counter() - t_epoch
                    state["epoch_tokens"] = state.get("epoch_tokens", 0) + tokens
                    t_epoch = last_checkpoint = time.perf_counter()
                    tokens = 0
                    checkpoint()
            done_passes += 1
            bar.update(1)
        bar.close()
        tuner.eval()
        train_seconds = state.get("epoch_seconds", 0.0) + time.perf_counter() - t_epoch
        train_tokens = state.get("epoch_tokens", 0) + tokens
        val = validate(tuner, *tuner.diffs(caches, val_refs, ds), ds)
        state["seconds"] += time.perf_counter() - t_epoch
        train_loss = epoch_loss / max(epoch_pairs, 1)  # mean BT loss over the epoch's pairs, as they were trained
        state["history"].append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val": val,
                "seconds": round(state["seconds"], 1),  # cumulative, validation included
                "train_seconds": round(train_seconds, 1),  # this epoch's training passes alone
                "train_tokens_per_s": round(train_tokens / max(train_seconds, 1e-9)),
            }
        )
        log.info("stage 0 epoch %d: validation balanced %.3f ± %.3f", epoch + 1, val["balanced"], val["balanced_se"])
        if state["best"] is None or val["balanced"] > state["best"]["val"]["balanced"]:
            state["best"] = state["history"][-1]
            _export(tuner, out, backbone)
        state.update(epoch=epoch + 1, position=0, epoch_loss=0.0, epoch_pairs=0, epoch_seconds=0.0, epoch_tokens=0)
        checkpoint()

    report = {
        "run": run_name,
        "config": asdict(s0),
        "start_layer": caches[0].start,
        "train_pairs": len(train),
        "val_pairs": len(val_pairs),
        "two_pass_pairs": two_pass,  # sides in two extraction parts: run through both parts' passes
        "history": state["history"],
        "best_epoch": state["best"]["epoch"],
        "wall_seconds": {
            "cache": round(cache_seconds, 1),
            "train": round(state["seconds"], 1),
            "total": round(time.perf_counter() - started, 1),
        },
        "threads": torch.get_num_threads(),
        "dtype": cfg.dtype,
    }
    (out / "stage0.json").write_text(json.dumps(report, indent=2))
    return Stage0Result(out, out / DELTA_FILE, report)


def _export(tuner: RewardTuner, out: Path, backbone: Backbone) -> None:
    """Write the delta file and its manifest entry (delta.json) atomically."""
    tensors = {k: v.contiguous().cpu() for k, v in tuner.delta_tensors().items()}
    path = out / DELTA_FILE
    atomic.write_file(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    ref = BackboneDelta(
        sha256=sha256_file(path),
        base_revision=backbone.revision,
        method=tuner.method,  # type: ignore[arg-type]
        layers=tuple(range(tuner.first_tuned, tuner.first_tuned + len(tuner.tuned))),
        scale=tuner.scale if tuner.method == "lora" else 1.0,
        rank=int(next(iter(tensors.values())).shape[0]) if tuner.method == "lora" else 0,
    )
    atomic.write_bytes(out / RUN_DELTA_ENTRY, ref.model_dump_json(indent=2).encode())
