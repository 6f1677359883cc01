"""Conversation → token ids with the prompt boundary, and the one truncation policy. Training and serving both
encode through this module, so the same item gets the same ids in both (tests/model_store/test_parity.py).

The prompt boundary is measured from the chat template itself: the conversation rendered without the response
is a prefix of the one rendered with it, and the prompt feature is read at the last non-whitespace token of that
prefix — the end-of-turn token of the last user turn (`<|eot_id|>` for Llama-3, `<|im_end|>` for ChatML).
No token pattern is searched for, so there is no "pattern not found".

Truncation (`Truncation`, `fit`): when prompt + longest response exceeds `max_length`, the prompt loses tokens
from its start (a leading BOS is kept; never past the prompt boundary, never below `min_prompt_tokens`). A
response that still does not fit is an error on `response` (`long_response="error"`, the service's default), or
keeps its first tokens and its end-of-turn token, the one the feature is read from (`"cut"`, what training uses:
a long rated response still carries its label).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

from armo.model_store.errors import InputError, InputTooLongError

Message = Mapping[str, str]
ROLES = ("system", "user", "assistant")
LongResponse = Literal["error", "cut"]


@dataclass(frozen=True)
class Truncation:
    """How a sequence is fitted into `max_length` tokens."""

    max_length: int
    min_prompt_tokens: int = 0  # keep at least this much prompt, cutting the response instead ("cut" only)
    long_response: LongResponse = "error"
    enabled: bool = True  # False: anything over max_length is an error on `messages`


@dataclass(frozen=True)
class Encoded:
    """One templated (conversation, response), ready for the backbone."""

    input_ids: tuple[int, ...]
    prompt_index: int  # position of the end-of-turn token of the last user turn
    response_tokens: int  # untruncated tokens after the prompt boundary (response + its end-of-turn token)
    truncated: bool  # tokens were dropped (from the start of the conversation, or the response was cut)
    # Length of the prompt rendering every response to this prompt starts with (0 when truncated: then the
    # kept prefix depends on the response length and cannot be shared).
    prefix_length: int = 0

    @property
    def length(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class EncodedGroup:
    """A prompt and the suffixes (response + end-of-turn) of every response to it, after truncation."""

    prompt_ids: tuple[int, ...]
    prompt_index: int
    suffixes: tuple[tuple[int, ...], ...]
    response_tokens: tuple[int, ...]  # untruncated
    truncated: tuple[bool, ...]

    @property
    def tokens(self) -> int:
        return len(self.prompt_ids) + sum(map(len, self.suffixes))


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
    # An empty response is valid: in RL a policy that wrote nothing still gets a reward (its end-of-turn token).
    if not isinstance(response, str):
        raise InputError("response must be a string", field="response")


def render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> str:
    """The chat template's text of a conversation (no generation prompt)."""
    text = tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False, add_generation_prompt=False)
    assert isinstance(text, str)
    return text


def _tokenize(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    # The template already wrote any BOS it wants into the text; never let the tokenizer add another one.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _last_nonblank(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> int:
    i = len(ids) - 1
    while i > 0 and str(tokenizer.decode([ids[i]])).strip() == "":
        i -= 1
    return i


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> tuple[str, list[int], int]:
    """(prompt text, prompt ids, index of the prompt boundary token). Shared by every response to the prompt."""
    prompt_text = render(tokenizer, messages)
    prompt_ids = _tokenize(tokenizer, prompt_text)
    if not prompt_ids:
        raise InputError("the chat template rendered an empty prompt", field="messages")
    return prompt_text, prompt_ids, _last_nonblank(tokenizer, prompt_ids)


def _suffix(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    prompt_text: str,
    prompt_ids: Sequence[int],
    response: str,
) -> tuple[int, ...]:
    """The ids after the prompt for one response: the response and its end-of-turn token (trailing newline dropped)."""
    full_text = render(tokenizer, [*messages, {"role": "assistant", "content": response}])
    if not full_text.startswith(prompt_text):
        raise InputError(
            "the chat template does not render the prompt as a prefix of the conversation", field="messages"
        )
    # Tokenising the two segments separately keeps the prompt ids identical to the prompt-only rendering
    # (templates end the prompt on a special token, so no BPE merge crosses the boundary anyway).
    ids = [*prompt_ids, *_tokenize(tokenizer, full_text[len(prompt_text) :])]
    ids = ids[: _last_nonblank(tokenizer, ids) + 1]  # end on the end-of-turn token, drop the trailing newline
    return tuple(ids[len(prompt_ids) :])


def fit(
    prompt_ids: Sequence[int],
    prompt_index: int,
    suffixes: Sequence[Sequence[int]],
    policy: Truncation,
    bos_token_id: int | None,
) -> EncodedGroup:
    """The truncation policy (module docstring) applied to one prompt and the responses that continue it."""
    prompt = list(prompt_ids)
    tail = list(map(list, suffixes))
    response_tokens = tuple(len(s) + len(prompt) - 1 - prompt_index for s in tail)
    truncated = [False] * len(tail)
    longest = max(map(len, tail))
    if len(prompt) + longest > policy.max_length:
        if not policy.enabled:
            raise InputTooLongError(
                f"conversation + response is {len(prompt) + longest} tokens, over the limit of {policy.max_length} "
                "(truncate=false)",
                field="messages",
            )
        head = prompt[:1] if bos_token_id is not None and prompt[0] == bos_token_id else []
        boundary_tail = len(prompt) - prompt_index  # the prompt boundary token and what follows it in the prompt
        if policy.long_response == "error" and boundary_tail + longest > policy.max_length - len(head):
            raise InputTooLongError(
                f"the response alone is {max(response_tokens)} tokens; with the prompt boundary it exceeds the limit "
                f"of {policy.max_length} tokens",
                field="response",
            )
        keep = max(policy.min_prompt_tokens, boundary_tail + len(head), policy.max_length - longest)
        if keep < len(prompt):
            dropped = len(prompt) - keep
            prompt = head + prompt[dropped + len(head) :]
            prompt_index -= dropped
            truncated = [True] * len(tail)
        budget = policy.max_length - len(prompt)
        for i, s in enumerate(tail):
            if len(s) > budget:
                tail[i] = s[: budget - 1] + s[-1:]  # keep the end-of-turn token the feature is read from
                truncated[i] = True
    return EncodedGroup(tuple(prompt), prompt_index, tuple(map(tuple, tail)), response_tokens, tuple(truncated))


def encode_group(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], responses: Sequence[str], policy: Truncation
) -> EncodedGroup:
    """Template and tokenize a prompt once and every response to it; then truncate the group as one."""
    for response in responses:
        validate_conversation(messages, response)
    prompt_text, prompt_ids, prompt_index = encode_prompt(tokenizer, messages)
    suffixes = [_suffix(tokenizer, messages, prompt_text, prompt_ids, r) for r in responses]
    return fit(prompt_ids, prompt_index, suffixes, policy, tokenizer.bos_token_id)


def encode(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], response: str, policy: Truncation
) -> Encoded:
    """Template, tokenize and (if needed) truncate one conversation + response."""
    validate_conversation(messages, response)
    prompt_text, prompt_ids, prompt_index = encode_prompt(tokenizer, messages)
    suffix = _suffix(tokenizer, messages, prompt_text, prompt_ids, response)
    g = fit(prompt_ids, prompt_index, [suffix], policy, tokenizer.bos_token_id)
    [truncated] = g.truncated
    return Encoded(
        g.prompt_ids + g.suffixes[0],
        g.prompt_index,
        g.response_tokens[0],
        truncated,
        0 if truncated else len(g.prompt_ids),
    )
