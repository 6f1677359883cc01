"""Conversation → token ids with the prompt boundary → (response feature, prompt feature) in one forward pass.

The prompt boundary is measured from the chat template itself: the conversation rendered without the response
is a prefix of the one rendered with it, and the prompt feature is read at the last non-whitespace token of that
prefix — the end-of-turn token of the last user turn (`<|eot_id|>` for Llama-3, `<|im_end|>` for ChatML).
No token pattern is searched for, so there is no "pattern not found".

Two response features come out of every pass (`Pooling`, chosen per artifact in its manifest): the hidden state at
the response's end-of-turn token ("last", ArmoRM's choice for an 8B backbone) and the mean of the hidden states
over the response span — every token after the prompt boundary through that end-of-turn token ("mean"; on the
135M backbone it carries more preference signal, docs/RESULTS.md). The mean costs one small matmul per pass.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from armo.model_store import packing
from armo.model_store.backbone import Backbone
from armo.model_store.errors import InputError, InputTooLongError
from armo.model_store.manifest import Pooling

Message = Mapping[str, str]
ROLES = ("system", "user", "assistant")
PaddingSide = Literal["left", "right"]


@dataclass(frozen=True)
class Encoded:
    """One templated (conversation, response), ready for the backbone."""

    input_ids: tuple[int, ...]
    prompt_index: int  # position of the end-of-turn token of the last user turn
    response_tokens: int  # tokens after the prompt boundary (response + its end-of-turn token)
    truncated: bool  # tokens were dropped from the start of the conversation
    # Length of the prompt rendering every response to this prompt starts with (0 when truncated: then the
    # kept prefix depends on the response length and cannot be shared).
    prefix_length: int = 0

    @property
    def length(self) -> int:
        return len(self.input_ids)


@dataclass
class Features:
    response: Tensor  # [B, d] hidden state at the last real token (end-of-turn after the response)
    prompt: Tensor  # [B, d] hidden state at the end-of-turn token of the last user turn
    response_mean: Tensor  # [B, d] mean hidden state over the response span (after the boundary, through the end)

    def pooled(self, pooling: Pooling) -> Tensor:
        """The response feature an artifact's heads read."""
        return self.response if pooling == "last" else self.response_mean


def validate_conversation(messages: Sequence[Message], response: str) -> None:
    """Raise InputError naming the field for anything the template cannot faithfully render."""
    if not messages:
        raise InputError("messages must contain at least one user turn", field="messages")
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InputError(f"role must be one of {', '.join(ROLES)}, got {role!r}", field=f"messages[{i}].role")
        if role == "system" and i != 0:
            raise InputError("a system message is only allowed first", field=f"messages[{i}].role")
        if not isinstance(content, str) or not content.strip():
            raise InputError("content must be a non-empty string", field=f"messages[{i}].content")
    if messages[-1].get("role") != "user":
        raise InputError("the conversation must end with a user turn", field=f"messages[{len(messages) - 1}].role")
    if not isinstance(response, str) or not response.strip():
        raise InputError("response must be a non-empty string", field="response")


def _is_blank(tokenizer: PreTrainedTokenizerBase, token_id: int) -> bool:
    return str(tokenizer.decode([token_id])).strip() == ""


def _last_nonblank(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> int:
    i = len(ids) - 1
    while i > 0 and _is_blank(tokenizer, ids[i]):
        i -= 1
    return i


def _render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> str:
    conversation = [dict(m) for m in messages]
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=False)
    assert isinstance(text, str)
    return text


def _tokenize(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    # The template already wrote any BOS it wants into the text; never let the tokenizer add another one.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> tuple[str, list[int], int]:
    """(prompt text, prompt ids, index of the prompt boundary token). Shared by every response to the prompt."""
    prompt_text = _render(tokenizer, messages)
    prompt_ids = _tokenize(tokenizer, prompt_text)
    if not prompt_ids:
        raise InputError("the chat template rendered an empty prompt", field="messages")
    return prompt_text, prompt_ids, _last_nonblank(tokenizer, prompt_ids)


def encode(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    response: str,
    *,
    max_length: int,
    truncate: bool = True,
) -> Encoded:
    """Template, tokenize and (if needed) left-truncate one conversation + response.

    Truncation drops tokens from the start of the conversation (keeping a leading BOS), never the prompt
    boundary or the response; a response that alone does not fit is an InputTooLongError on `response`.
    """
    validate_conversation(messages, response)
    prompt_text, prompt_ids, prompt_index = encode_prompt(tokenizer, messages)
    full_text = _render(tokenizer, [*messages, {"role": "assistant", "content": response}])
    if not full_text.startswith(prompt_text):
        raise InputError(
            "the chat template does not render the prompt as a prefix of the conversation", field="messages"
        )
    # Tokenising the two segments separately keeps the prompt ids identical to the prompt-only rendering
    # (templates end the prompt on a special token, so no BPE merge crosses the boundary anyway).
    ids = prompt_ids + _tokenize(tokenizer, full_text[len(prompt_text) :])
    ids = ids[: _last_nonblank(tokenizer, ids) + 1]  # end on the end-of-turn token, drop the trailing newline
    response_tokens = len(ids) - 1 - prompt_index
    truncated = False
    if len(ids) > max_length:
        if not truncate:
            raise InputTooLongError(
                f"conversation + response is {len(ids)} tokens, over the limit of {max_length} (truncate=false)",
                field="messages",
            )
        bos = tokenizer.bos_token_id
        head = ids[:1] if bos is not None and ids[0] == bos else []
        keep = max_length - len(head)
        if len(ids) - prompt_index > keep:
            raise InputTooLongError(
                f"the response alone is {response_tokens} tokens; with the prompt boundary it exceeds the limit "
                f"of {max_length} tokens",
                field="response",
            )
        dropped = len(ids) - len(head) - keep
        ids = head + ids[len(ids) - keep :]
        prompt_index -= dropped
        truncated = True
    return Encoded(tuple(ids), prompt_index, response_tokens, truncated, 0 if truncated else len(prompt_ids))


def _pad_token_id(backbone: Backbone) -> int:
    """Any id the embedding can look up: padded positions are masked out, so the value never matters —
    but e.g. ArmoRM's pad id 128256 may lie outside the embedding table of a backbone loaded without it."""
    vocab = backbone.model.get_input_embeddings().num_embeddings
    for candidate in (backbone.tokenizer.pad_token_id, backbone.tokenizer.eos_token_id):
        if candidate is not None and 0 <= candidate < vocab:
            return int(candidate)
    return 0


@torch.inference_mode()
def extract(backbone: Backbone, batch: Sequence[Encoded], padding_side: PaddingSide = "right") -> Features:
    """One forward pass over a padded batch; features are gathered with the attention mask, not 'last position'.

    Position ids are derived from the mask so that left and right padding give the same features.
    """
    width = max(e.length for e in batch)
    pad = _pad_token_id(backbone)
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    last = torch.empty(len(batch), dtype=torch.long)
    boundary = torch.empty(len(batch), dtype=torch.long)
    for row, e in enumerate(batch):
        start = width - e.length if padding_side == "left" else 0
        input_ids[row, start : start + e.length] = torch.tensor(e.input_ids)
        mask[row, start : start + e.length] = 1
        last[row] = start + e.length - 1
        boundary[row] = start + e.prompt_index
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    device = backbone.device
    out = backbone.model(
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=False,
    )
    hidden = out.last_hidden_state.float()  # [B, T, d]
    rows = torch.arange(len(batch), device=device)
    t = torch.arange(width)
    span = (t > boundary[:, None]) & (t <= last[:, None])  # [B, T] the response span of each row
    return Features(
        response=hidden[rows, last.to(device)],
        prompt=hidden[rows, boundary.to(device)],
        response_mean=_masked_mean(hidden, span.to(device)),
    )


def _masked_sum(hidden: Tensor, mask: Tensor) -> Tensor:
    """[B, T, d], [B, T] 0/1 -> [B, d] sum of the masked positions (as one matmul, not a gather)."""
    return torch.einsum("bt,btd->bd", mask.to(hidden.dtype), hidden)


def _masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    return _masked_sum(hidden, mask) / mask.sum(dim=1, keepdim=True).clamp(min=1).to(hidden.dtype)


# Padding a chunk may carry, as a share of its real tokens. Sorted neighbours can still differ a lot in length (a
# pair's chosen and rejected answers do), and padded rows cost full compute: with no cap, RewardBench-like pairs
# carried 28 % padding, which ate the whole 17 % saved by sharing the prompt. With none allowed at all, most rows
# run alone and lose what batching gives on this CPU. 5-15 % measured best (docs/BENCHMARKS.md, lesson 10).
MAX_PADDING = 0.1


def _chunks(
    lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int, max_padding: float = MAX_PADDING
) -> list[list[int]]:
    """Indices sorted by length, cut into batches whose padded size (rows × longest) fits the token budget and
    whose padding stays within `max_padding` × their real tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks: list[list[int]] = []
    i = 0
    while i < len(order):
        j, real = i + 1, lengths[order[i]]
        # Sorted ascending, so the padded cost of [i, j] is (j - i + 1) * the length of the last one.
        while j < len(order) and j - i < max_batch_size:
            padded, grown = (j - i + 1) * lengths[order[j]], real + lengths[order[j]]
            if padded > max_batch_tokens or padded - grown > max_padding * grown:
                break
            j, real = j + 1, grown
        chunks.append(order[i:j])
        i = j
    return chunks


class PrefixGroup(Protocol):
    """A prompt and the continuations (response + end-of-turn) of every response to it."""

    @property
    def prompt_ids(self) -> Sequence[int]: ...

    @property
    def prompt_index(self) -> int: ...

    @property
    def suffixes(self) -> Sequence[Sequence[int]]: ...


@dataclass(frozen=True)
class SharedPrompt:
    prompt_ids: tuple[int, ...]
    prompt_index: int
    suffixes: tuple[tuple[int, ...], ...]


@torch.inference_mode()
def extract_prefixed(
    backbone: Backbone,
    groups: Sequence[PrefixGroup],
    *,
    max_batch_tokens: int = 1024,
    max_batch_size: int = 64,
    max_padding: float = MAX_PADDING,
) -> Features:
    """Responses to several prompts: all prompts run once, in one right-padded pass; then every response runs on
    its own prompt's key/value cache (length-sorted chunks under the token budget). Rows: the groups' responses
    in order.

    Exact up to float reordering: attention over the cached prefix computes what the full pass computes, and the
    padded prompt positions are masked out (each response continues at its own prompt's length).
    """
    device = backbone.device
    pad = _pad_token_id(backbone)
    lp = max(len(g.prompt_ids) for g in groups)
    ids = torch.full((len(groups), lp), pad, dtype=torch.long)
    mask = torch.zeros((len(groups), lp), dtype=torch.long)
    for i, g in enumerate(groups):
        ids[i, : len(g.prompt_ids)] = torch.tensor(g.prompt_ids)
        mask[i, : len(g.prompt_ids)] = 1
    out = backbone.model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=torch.arange(lp).expand(len(groups), lp).to(device),
        use_cache=True,
    )
    boundary = torch.tensor([g.prompt_index for g in groups])
    prompt_hidden = out.last_hidden_state.float()  # [G, lp, d]
    prompt = prompt_hidden[torch.arange(len(groups), device=device), boundary.to(device)].cpu()  # [G, d]
    # The prompt's tail after the boundary (the template's trailing whitespace) opens every response's span.
    tail = (torch.arange(lp) > boundary[:, None]) & mask.bool()  # [G, lp]
    tail_sum, tail_n = _masked_sum(prompt_hidden, tail.to(device)).cpu(), tail.sum(dim=1)  # [G, d], [G]

    owner = torch.tensor([i for i, g in enumerate(groups) for _ in g.suffixes])  # [N] group of each response
    suffixes = [s for g in groups for s in g.suffixes]
    prompt_len = mask.sum(dim=1)  # [G]
    response = torch.empty((len(suffixes), backbone.hidden_size))
    response_mean = torch.empty_like(response)
    chunks = _chunks([len(s) for s in suffixes], max_batch_tokens, max_batch_size, max_padding)
    for n, idx in enumerate(chunks):
        width = max(len(suffixes[k]) for k in idx)
        rids = torch.full((len(idx), width), pad, dtype=torch.long)
        rmask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, k in enumerate(idx):
            rids[row, : len(suffixes[k])] = torch.tensor(suffixes[k])
            rmask[row, : len(suffixes[k])] = 1
        own = owner[idx]
        # The forward appends to the cache and reorder_cache gathers in place: keep the prompts' cache pristine
        # for the chunks after this one.
        cache = out.past_key_values if n == len(chunks) - 1 else copy.deepcopy(out.past_key_values)
        cache.reorder_cache(own.to(device))  # [G, …] -> [n, …]: each response gets its prompt's keys/values
        hidden = backbone.model(
            input_ids=rids.to(device),
            attention_mask=torch.cat([mask[own], rmask], dim=1).to(device),
            position_ids=(prompt_len[own][:, None] + torch.arange(width)).to(device),
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state.float()  # [n, width, d]
        last = torch.tensor([len(suffixes[k]) - 1 for k in idx], device=device)
        response[idx] = hidden[torch.arange(len(idx), device=device), last].cpu()
        total = _masked_sum(hidden, rmask.to(device)).cpu() + tail_sum[own]
        response_mean[idx] = total / (rmask.sum(dim=1) + tail_n[own])[:, None].to(total.dtype)
    return Features(response=response, prompt=prompt[owner], response_mean=response_mean)


@torch.inference_mode()
def extract_packed(
    backbone: Backbone, groups: Sequence[PrefixGroup], *, max_batch_tokens: int = 1024, max_batch_size: int = 64
) -> Features:
    """Packed passes (`armo.model_store.packing`; the backbone must have `packed` set): each group's prompt runs
    once, its responses continue it in the same row, and nothing is padded. A group without suffixes is one whole
    sequence. Rows: each group's responses in order (one row for a group without suffixes).

    Exact up to float reordering: every segment attends to exactly the keys its own full sequence has.
    """
    units = [packing.Unit(g.prompt_ids, g.suffixes) for g in groups]
    response = torch.empty((sum(max(1, len(g.suffixes)) for g in groups), backbone.hidden_size))
    prompt = torch.empty_like(response)
    response_mean = torch.empty_like(response)
    first = 0
    for idx in packing.passes(units, max_batch_tokens, max_batch_size):
        hidden, placed = packing.forward(backbone.model, [units[i] for i in idx])
        hidden = hidden.float()  # [N, d]
        last: list[int] = []
        boundary: list[int] = []
        spans: list[tuple[range, ...]] = []
        for i, u in zip(idx, placed, strict=True):
            ends = u.last()
            last += ends
            boundary += [u.start + groups[i].prompt_index] * len(ends)
            spans += u.spans(groups[i].prompt_index)
        rows = slice(first, first + len(last))
        response[rows] = hidden[last].cpu()
        prompt[rows] = hidden[boundary].cpu()
        pool = torch.zeros((len(spans), hidden.shape[0]))  # [outputs, N]: 1/n over each output's span
        for row, ranges in enumerate(spans):
            n = sum(len(r) for r in ranges)
            for r in ranges:
                pool[row, r.start : r.stop] = 1.0 / n
        response_mean[rows] = (pool.to(hidden.device) @ hidden).cpu()
        first += len(last)
    return Features(response=response, prompt=prompt, response_mean=response_mean)


def extract_groups(
    backbone: Backbone, groups: Sequence[PrefixGroup], *, max_batch_tokens: int, max_batch_size: int
) -> Features:
    """Responses to shared prompts, packed where the backbone allows it, else on a key/value cache."""
    if backbone.packed:
        return extract_packed(backbone, groups, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size)
    return extract_prefixed(backbone, groups, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size)


def extract_many(
    backbone: Backbone,
    encoded: Sequence[Encoded],
    *,
    max_batch_tokens: int = 1024,
    max_batch_size: int = 64,
    padding_side: PaddingSide = "right",
    share_prompts: bool = True,
    max_padding: float = MAX_PADDING,
) -> Features:
    """Features for any list of sequences, returned in input order.

    Responses that share a prompt (and were not truncated) reuse one prompt computation. A packed backbone runs
    everything in unpadded packed passes of `max_batch_tokens` real tokens (`extract_packed`). Otherwise shared
    prompts go through `extract_prefixed` (several prompts per pass, responses on their key/value cache) and the
    rest run in length-sorted padded batches under the token budget and a padding cap (`max_padding`).
    """
    response = torch.empty((len(encoded), backbone.hidden_size))
    prompt = torch.empty_like(response)
    response_mean = torch.empty_like(response)
    singles = list(range(len(encoded)))
    groups: list[SharedPrompt] = []
    shared: list[list[int]] = []
    if share_prompts:
        by_prefix: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, e in enumerate(encoded):
            if e.prefix_length:
                by_prefix[e.input_ids[: e.prefix_length]].append(i)
        shared = [idx for idx in by_prefix.values() if len(idx) > 1]
        in_shared = {i for idx in shared for i in idx}
        singles = [i for i in singles if i not in in_shared]
        groups = [
            SharedPrompt(
                encoded[idx[0]].input_ids[: encoded[idx[0]].prefix_length],
                encoded[idx[0]].prompt_index,
                tuple(encoded[k].input_ids[encoded[k].prefix_length :] for k in idx),
            )
            for idx in shared
        ]
    if backbone.packed:
        whole = [SharedPrompt(encoded[i].input_ids, encoded[i].prompt_index, ()) for i in singles]
        feats = extract_packed(
            backbone, groups + whole, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size
        )
        rows = [i for idx in shared for i in idx] + singles
        response[rows], prompt[rows], response_mean[rows] = feats.response, feats.prompt, feats.response_mean
        return Features(response=response, prompt=prompt, response_mean=response_mean)
    # prompts sorted by length and packed so each padded prompt pass fits the budget
    for pack in _chunks([len(g.prompt_ids) for g in groups], max_batch_tokens, max_batch_size, max_padding):
        feats = extract_prefixed(
            backbone,
            [groups[g] for g in pack],
            max_batch_tokens=max_batch_tokens,
            max_batch_size=max_batch_size,
            max_padding=max_padding,
        )
        rows = [i for g in pack for i in shared[g]]
        response[rows], prompt[rows], response_mean[rows] = feats.response, feats.prompt, feats.response_mean
    for chunk in _chunks([encoded[i].length for i in singles], max_batch_tokens, max_batch_size, max_padding):
        idx = [singles[k] for k in chunk]
        feats = extract(backbone, [encoded[k] for k in idx], padding_side)
        response[idx] = feats.response.cpu()
        prompt[idx] = feats.prompt.cpu()
        response_mean[idx] = feats.response_mean.cpu()
    return Features(response=response, prompt=prompt, response_mean=response_mean)
