"""Would ONNX Runtime's CPU kernels run the backbone faster than PyTorch's? (issue 5: "ONNX Runtime or better
kernels may give more"). A study, not a product path: it changes nothing in the service.

The backbone (without LM head) is exported once to ONNX (`torch.onnx.export`, dynamic sequence length) and run
by ONNX Runtime with every graph optimisation on, fp32 and — opt-in like ours — int8 dynamic quantisation
(`onnxruntime.quantization.quantize_dynamic`). Each runtime scores the same RewardBench-like sequences one at a
time (batch 1, no padding: the shape where both see exactly the same work), interleaved in a palindrome per round
(this VM's speed drifts), against PyTorch fp32 and PyTorch int8 (`armo.model_store.quant`). It prints tokens/s per
path, the ratios, and the largest difference of the end-of-turn feature from PyTorch fp32.

    .venv/bin/pip install onnxruntime onnx onnxscript   # not needed by the service
    .venv/bin/python -m research.onnx_study --pairs 40 --rounds 3
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from armo.model_store.backbone import load_backbone
from armo.model_store.encoding import Encoded, encode
from benchmarks.run import palindrome_seconds, rewardbench_pairs


class _LastHidden(torch.nn.Module):
    """input_ids [1, T] -> last hidden state [1, T, d]; one sequence, so causal attention needs no mask."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).last_hidden_state


def export(model: torch.nn.Module, path: Path, example: torch.Tensor) -> None:
    seq = torch.export.Dim("seq", min=2, max=4096)
    torch.onnx.export(
        _LastHidden(model).eval(),
        (example,),
        str(path),
        input_names=["input_ids"],
        output_names=["hidden"],
        dynamic_shapes={"input_ids": {1: seq}},
        dynamo=True,
    )


def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main(
    pairs: Annotated[int, typer.Option(help="RewardBench pairs (2 sequences each)")] = 40,
    rounds: Annotated[int, typer.Option(help="palindrome rounds")] = 3,
    max_length: Annotated[int, typer.Option(help="longest sequence kept")] = 1024,
    out: Annotated[Path | None, typer.Option(help="write the figures as JSON")] = None,
) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    threads = torch.get_num_threads()
    backbone = load_backbone("embedded", packed=False)
    int8 = load_backbone("embedded", packed=False, quantize="int8")
    seqs: list[Encoded] = []
    for msgs, chosen, rejected in rewardbench_pairs(backbone, pairs, max_length):
        seqs += [encode(backbone.tokenizer, msgs, y, max_length=max_length) for y in (chosen, rejected)]
    ids = [np.array([e.input_ids], dtype=np.int64) for e in seqs]
    tokens = sum(e.length for e in seqs)
    print(f"{len(seqs)} sequences, {tokens} tokens, {threads} threads")

    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, int8_path = Path(tmp) / "backbone.onnx", Path(tmp) / "backbone.int8.onnx"
        export(backbone.model, fp32_path, torch.tensor(ids[0]))
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
        sessions = {"ort fp32": ort_session(fp32_path, threads), "ort int8": ort_session(int8_path, threads)}

        def torch_path(model: torch.nn.Module) -> Callable[[Sequence[np.ndarray]], list[np.ndarray]]:
            def run(work: Sequence[np.ndarray]) -> list[np.ndarray]:
                with torch.inference_mode():
                    return [
                        model(input_ids=torch.from_numpy(x), use_cache=False).last_hidden_state[0, -1].numpy()
                        for x in work
                    ]

            return run

        def ort_path(session: Any) -> Callable[[Sequence[np.ndarray]], list[np.ndarray]]:
            return lambda work: [session.run(None, {"input_ids": x})[0][0, -1] for x in work]

        paths = {
            "torch fp32": torch_path(backbone.model),
            "torch int8": torch_path(int8.model),
            **{name: ort_path(s) for name, s in sessions.items()},
        }
        reference = paths["torch fp32"](ids)
        scale = max(float(np.abs(r).max()) for r in reference)
        diffs = {
            name: max(float(np.abs(a - b).max()) for a, b in zip(fn(ids), reference, strict=True)) / scale
            for name, fn in paths.items()
        }
        slices = [ids[i : i + 8] for i in range(0, len(ids), 8)]
        per_round = palindrome_seconds(paths, slices, rounds)

    results: dict[str, Any] = {"sequences": len(seqs), "tokens": tokens, "threads": threads, "paths": {}}
    base = per_round["torch fp32"]
    for name, secs in per_round.items():
        ratios = [b / s for b, s in zip(base, secs, strict=True)]
        results["paths"][name] = {
            "tokens_per_s": tokens * len(secs) / sum(secs),
            "vs_torch_fp32": sum(base) / sum(secs),
            "vs_torch_fp32_runs": ratios,
            "max_feature_diff_rel": diffs[name],
        }
        print(
            f"{name:11s} {tokens * len(secs) / sum(secs):7.0f} tok/s   × torch fp32 {sum(base) / sum(secs):.2f} "
            f"(runs {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f})   "
            f"max |Δ feature| / scale {diffs[name]:.1e}"
        )
    if out is not None:
        out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    typer.run(main)
