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
- every epoch is a checkpoint (adapters, head, optimiser, scheduler, RNG): a killed run resumes at the next epoch.
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
from armo.training.bradley_terry import balanced_mean, bt_loss, wins
from armo.training.config import BackboneTuneConfig, TrainConfig
from armo.training.prepare import Dataset, build_training_set, pair_group
from armo.training.stage0.batches import Batch, PassRef, make_batch, pair_diffs, pass_index
from armo.training.stage0.layer_cache import LayerCache, decoder_layers, layer_caches, top_view

log = logging.getLogger(__name__)

PEFT_MISSING = "stage 0 needs peft: pip install -e '.[train]' (or .[dev])"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class RewardTuner(nn.Module):
    """The top layers (the cached start layer through the last; LoRA on the tuned ones), the final norm and a
    scalar BT head on the pooled response feature."""

    def __init__(self, backbone: Backbone, start: int, cfg: BackboneTuneConfig, pooling: Pooling) -> None:
        super().__init__()
        import copy

        model = backbone.model
        layers = decoder_layers(model)
        self.first_tuned = len(layers) - cfg.layers
        if not start <= self.first_tuned < len(layers):
            raise ValueError(f"stage0.layers={cfg.layers} must be between 1 and stage0.cache_layers")
        self.start, self.method, self.pooling = start, cfg.method, pooling
        frozen = [copy.deepcopy(layer) for layer in layers[start : self.first_tuned]]
        self.tuned = nn.ModuleList(copy.deepcopy(layer) for layer in layers[self.first_tuned :])
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
        self.top = top_view(model, nn.ModuleList([*frozen, *self.tuned]))
        self.head = nn.Linear(backbone.hidden_size, 1)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(backbone.hidden_size))
        nn.init.zeros_(self.head.bias)
        self.head.to(backbone.device)  # the layers are copies of the backbone's, on its device already

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def rewards(self, batch: Batch) -> Tensor:
        """[outputs] rewards of a unit's responses, rows in pass and group order."""
        return self.head(batch.pooled(self.top, self.pooling)).squeeze(-1)

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


def _validate(tuner: RewardTuner, ids: list[int], diffs: Tensor, ds: Dataset) -> dict[str, Any]:
    with torch.inference_mode():
        margin = (diffs @ tuner.head.weight[0].cpu()).numpy()  # [P]
    win = wins(margin)
    by_group, balanced, se = balanced_mean(win, [pair_group(ds.pairs[p]) for p in ids])
    return {"pairs": len(ids), "balanced": balanced, "balanced_se": se, "all": float(win.mean()), "groups": by_group}


def _warm_head(
    tuner: RewardTuner, train: tuple[list[int], Tensor], val: tuple[list[int], Tensor], cfg: TrainConfig
) -> tuple[float, float]:
    """Fit the scalar head as the frozen backbone's linear BT model (the adapters start at zero, so the tuner's
    features are the frozen ones): the probes' logistic regression, L2 picked on the validation pairs. Returns the
    training pairs' mean BT loss at that start and the L2 chosen."""
    from armo.training.objective_fits import fit_bt_probe

    probe = fit_bt_probe("stage0-head", train[1].double().numpy(), val[1].double().numpy(), cfg.probes, "stage 0")
    with torch.no_grad():
        tuner.head.weight.copy_(torch.as_tensor(probe.w, dtype=torch.float32)[None])
        tuner.head.bias.zero_()
        margin = train[1] @ tuner.head.weight[0].cpu()
    return float(bt_loss(margin)), probe.metrics["l2"]


def _epoch_zero(
    tuner: RewardTuner,
    caches: list[LayerCache],
    refs: tuple[list[PassRef], list[PassRef]],
    ds: Dataset,
    cfg: TrainConfig,
    fingerprint: dict[str, Any],
    progress: bool,
) -> dict[str, Any]:
    """Fit the head on the frozen features (`_warm_head`) and validate it: the history's epoch 0. The frozen
    features do not depend on lr, rank, method or steps, so the fit is saved beside the runs (keyed by what it
    does depend on) and every `--try` variant of one search reuses it instead of another forward over the pairs."""
    import hashlib

    s0 = cfg.stage0
    key = {
        **fingerprint,
        "stage0": {k: fingerprint["stage0"][k] for k in ("layers", "cache_layers", "max_pairs", "seed")},
        "l2": cfg.probes.weight_decays,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(s0.out_dir) / f"epoch0-{digest}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=False)
        tuner.head.load_state_dict(saved["head"])
        return dict(saved["entry"])
    tuner.eval()
    bar = "stage 0 epoch 0: frozen features of the {} pairs" if progress else None
    val_diffs = pair_diffs(tuner.top, tuner.pooling, caches, refs[1], ds, bar and bar.format("validation"))
    train_diffs = pair_diffs(tuner.top, tuner.pooling, caches, refs[0], ds, bar and bar.format("training"))
    warm_loss, l2 = _warm_head(tuner, train_diffs, val_diffs, cfg)
    entry = {"epoch": 0, "train_loss": warm_loss, "l2": l2, "val": _validate(tuner, *val_diffs, ds)}
    _save_checkpoint(path, {"head": tuner.head.state_dict(), "entry": entry})
    return entry


def _fingerprint(cfg: TrainConfig, ds: Dataset, start: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the stage-0 settings (but not the epoch count, so a finished
    run can be continued), the cache's layer and the data."""
    s0 = {k: v for k, v in asdict(cfg.stage0).items() if k not in {"epochs", "out_dir", "delta"}}
    return {
        "stage0": s0,
        "units": "pairs across parts",  # checkpoints from before two-pass units trained on fewer pairs
        "start": start,
        "pooling": cfg.pooling,
        "data": ds.data_hashes,
        "pairs": len(ds.pairs),
        "split_by": cfg.data.split_by,
        "max_length": cfg.extract.max_length,
    }


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic.write_file(path, lambda tmp: torch.save(state, tmp))


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
    backbone = get_backbone(cfg.backbone, device=cfg.device)
    ds = build_training_set(cfg.data)
    caches = layer_caches(cfg, ds, backbone)
    for cache in caches:
        cache.build(progress)
    cache_seconds = time.perf_counter() - started
    train = [p for p, v in enumerate(ds.pair_val) if not v]
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
    tuner = RewardTuner(backbone, caches[0].start, s0, cfg.pooling)
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
        tuner.load_state_dict(saved["tuner"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        log.info("stage 0: resuming %s at epoch %d, pass %d", run_name, state["epoch"], state["position"])

    def checkpoint() -> None:
        _save_checkpoint(
            ckpt_path,
            {
                "fingerprint": fingerprint,
                "tuner": tuner.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": state,
            },
        )

    if s0.head_warmup and not state["history"]:  # epoch 0: the frozen backbone's BT model, the start to beat
        t_warm = time.perf_counter()
        entry = _epoch_zero(tuner, caches, (train_refs, val_refs), ds, cfg, fingerprint, progress)
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
        epoch_loss, epoch_pairs = state.get("epoch_loss", 0.0), state.get("epoch_pairs", 0)
        optimizer.zero_grad()
        for position in range(state["position"], len(order)):
            if max_passes is not None and done_passes >= max_passes:
                state["seconds"] += time.perf_counter() - t_epoch
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
                if state["position"] % 100 < 4:
                    state["seconds"] += time.perf_counter() - t_epoch
                    t_epoch = time.perf_counter()
                    checkpoint()
            done_passes += 1
            bar.update(1)
        bar.close()
        tuner.eval()
        val = _validate(tuner, *pair_diffs(tuner.top, tuner.pooling, caches, val_refs, ds), ds)
        state["seconds"] += time.perf_counter() - t_epoch
        train_loss = epoch_loss / max(epoch_pairs, 1)  # mean BT loss over the epoch's pairs, as they were trained
        state["history"].append(
            {"epoch": epoch + 1, "train_loss": train_loss, "val": val, "seconds": round(state["seconds"], 1)}
        )
        log.info("stage 0 epoch %d: validation balanced %.3f ± %.3f", epoch + 1, val["balanced"], val["balanced_se"])
        if state["best"] is None or val["balanced"] > state["best"]["val"]["balanced"]:
            state["best"] = state["history"][-1]
            _export(tuner, out, backbone)
        state.update(epoch=epoch + 1, position=0, epoch_loss=0.0, epoch_pairs=0)
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
