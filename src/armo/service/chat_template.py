"""Templated text → (conversation, response), for OpenRLHF's `/get_reward` and tools that send rendered chats.

An RL policy renders its conversation with *its own* chat template, which need not be the reward backbone's: the
text is split back into turns with the markers of the template family it was written in (ChatML/Qwen/SmolLM,
Llama-3, Mistral, Gemma, Phi-3, or the served backbone's own template, learned by rendering sentinel turns), and
the turns are then scored exactly like `/v1/score` scores them, re-rendered with the backbone's template.

What RL clients send and how it is read:
- the response is whatever follows the last assistant header (or follows `prompts[i]`, when the client sends the
  templated prompt: then nothing is guessed). It may be empty (the policy wrote nothing) — that is scored;
- it may end with the end-of-turn marker, EOS and padding tokens (OpenRLHF 0.6–0.9 decode with special tokens),
  or with nothing (vLLM drops the stop token; a generation cut at the length limit has none either). Trailing
  markers are removed; `unterminated` says the text carried neither an end-of-turn marker nor an EOS — so with a
  client that strips the stop token every response reads as unterminated;
- a leading BOS is ignored. Only a text with no turn of any known family is refused (InputError).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from armo.model_store.encoding import render
from armo.model_store.errors import InputError

_S, _U, _A, _U2 = "Zq9SYSTEMzq9", "Zq9USERzq9", "Zq9ASSISTANTzq9", "Zq9USER2zq9"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Family:
    """How one chat-template family writes turns: text before and after each role's content."""

    name: str
    starts: dict[str, str]  # role → header written before its content
    end: dict[str, str]  # role → end-of-turn marker written after its content
    bos: tuple[str, ...] = ()  # may open the text
    eos: tuple[str, ...] = ()  # may follow the last turn: the generation stopped by itself
    pad: tuple[str, ...] = ()  # may follow the last turn: padding, which says nothing about how it stopped
    trim: bool = False  # the template strips surrounding whitespace from contents


FAMILIES: tuple[Family, ...] = (
    Family(
        "chatml",  # Qwen, SmolLM, many others
        {r: f"<|im_start|>{r}\n" for r in ROLES},
        dict.fromkeys(ROLES, "<|im_end|>"),
        eos=("<|endoftext|>", "<|im_end|>"),
    ),
    Family(
        "llama3",
        {r: f"<|start_header_id|>{r}<|end_header_id|>\n\n" for r in ROLES},
        dict.fromkeys(ROLES, "<|eot_id|>"),
        bos=("<|begin_of_text|>",),
        eos=("<|end_of_text|>", "<|eot_id|>"),
        pad=("<|finetune_right_pad_id|>",),
        trim=True,
    ),
    Family(
        "gemma",  # no system role: Gemma's template writes a system prompt into the first user turn
        {"user": "<start_of_turn>user\n", "assistant": "<start_of_turn>model\n"},
        dict.fromkeys(ROLES, "<end_of_turn>"),
        bos=("<bos>",),
        eos=("<eos>", "<end_of_turn>"),
        pad=("<pad>",),
        trim=True,
    ),
    Family(
        "phi3",
        {r: f"<|{r}|>\n" for r in ROLES},
        dict.fromkeys(ROLES, "<|end|>"),
        bos=("<s>",),
        eos=("<|endoftext|>", "<|end|>"),
    ),
    Family(
        "mistral",  # [INST] user [/INST] assistant</s>; newer templates wrap a system prompt in [SYSTEM_PROMPT]
        {"system": "[SYSTEM_PROMPT]", "user": "[INST]", "assistant": "[/INST]"},
        {"system": "[/SYSTEM_PROMPT]", "user": "", "assistant": "</s>"},
        bos=("<s>",),
        eos=("</s>",),
        trim=True,
    ),
)


@dataclass(frozen=True)
class Parsed:
    messages: list[dict[str, str]]
    response: str
    unterminated: bool  # no end-of-turn marker after the response
    family: str


@dataclass
class _Turn:
    role: str
    content: str
    closed: bool = False


def _after(text: str, sentinel: str) -> str:
    return text[text.index(sentinel) + len(sentinel) :]


def learn_family(tokenizer: PreTrainedTokenizerBase) -> Family:
    """The served backbone's own template as a family (rendering sentinel turns). ValueError if it is not
    turn-structured in a way the parser can follow."""
    user = {"role": "user", "content": _U}
    assistant = {"role": "assistant", "content": _A}
    end_user = _after(render(tokenizer, [user]), _U)
    t_ua = render(tokenizer, [user, assistant])
    between = t_ua[t_ua.index(_U) + len(_U) : t_ua.index(_A)]
    if not between.startswith(end_user):
        raise ValueError("the template does not close a user turn the same way before an assistant turn")
    start_asst = between[len(end_user) :]
    end_asst = _after(t_ua, _A)
    t_uau = render(tokenizer, [user, assistant, {"role": "user", "content": _U2}])
    between = t_uau[t_uau.index(_A) + len(_A) : t_uau.index(_U2)]
    if not between.startswith(end_asst):
        raise ValueError("the template does not close an assistant turn the same way before a user turn")
    start_user = between[len(end_asst) :]
    t_sys = render(tokenizer, [{"role": "system", "content": _S}, user])
    between = t_sys[t_sys.index(_S) + len(_S) : t_sys.index(_U)]
    if not between.endswith(start_user):
        raise ValueError("cannot locate the end of the system turn")
    end_sys = between[: len(between) - len(start_user)]
    # The system turn is always first, so its start cannot be measured against a previous turn; templates
    # name the role inside the header, so derive it from the user header and check it is really there.
    start_sys = start_user.replace("user", "system")
    if not t_sys[: t_sys.index(_S)].endswith(start_sys):
        raise ValueError("cannot locate the start of the system turn")
    if not (start_user.strip() and start_asst.strip() and start_sys.strip()):
        raise ValueError("the template has empty role headers")
    ends = {"system": end_sys, "user": end_user, "assistant": end_asst}
    eos, pad = tokenizer.eos_token, tokenizer.pad_token
    return Family(
        "backbone",
        {"system": start_sys, "user": start_user, "assistant": start_asst},
        {r: e.rstrip() or e for r, e in ends.items()},  # the newline after a marker is not part of it
        eos=(eos,) if isinstance(eos, str) and eos else (),
        pad=(pad,) if isinstance(pad, str) and pad and pad != eos else (),
    )


def _turns(family: Family, text: str) -> list[_Turn]:
    """Turns in order; the last may be open (no end marker: the generation, or a generation prompt)."""
    headers = sorted(
        ((m.start(), m.end(), role) for role, h in family.starts.items() for m in re.finditer(re.escape(h), text)),
        key=lambda t: (t[0], -(t[1] - t[0])),
    )
    turns: list[_Turn] = []
    pos = 0
    for start, end, role in headers:
        if start < pos:  # a header found inside the previous one (a shorter marker)
            continue
        if turns:
            _close(family, turns[-1], text[pos:start])
        turns.append(_Turn(role, ""))
        pos = end
    if turns:
        _close(family, turns[-1], text[pos:])
    return turns


def _close(family: Family, turn: _Turn, body: str) -> None:
    """Set the turn's content from the text after its header, without its end marker and any EOS or padding."""
    end = family.end.get(turn.role, "")
    tail, turn.closed = body.rstrip(), not end  # Mistral's user turn ends where the next header starts
    for _ in range(16):  # the end marker, EOS and padding, possibly repeated, in any order
        marker = next((m for m in (end, *family.eos, *family.pad) if m and tail.endswith(m)), None)
        if marker is None:
            break
        turn.closed = turn.closed or marker not in family.pad
        tail = tail[: -len(marker)].rstrip()
    turn.content = tail.strip() if family.trim else tail


def _family_of(text: str, families: Sequence[Family]) -> Family | None:
    for family in families:
        if any(h in text for r, h in family.starts.items() if r != "assistant") and family.starts["assistant"] in text:
            return family
    return None


def parse(text: str, families: Sequence[Family], *, field: str, prompt: str | None = None) -> Parsed:
    """Split a templated conversation + response. With `prompt` (the templated prompt the response was generated
    after), the response is exactly what follows it; otherwise it is the last assistant turn's content."""
    use_prompt = prompt is not None and prompt.strip() != "" and text.startswith(prompt)
    head = prompt if use_prompt and prompt is not None else text
    family = _family_of(head if use_prompt else text, families)
    if family is None:
        raise InputError(
            f"no chat turns found: the text is in none of the known template families "
            f"({', '.join(f.name for f in families)})",
            field=field,
        )
    turns = _turns(family, head)
    if use_prompt:
        # The prompt ends with the generation header: an open, empty assistant turn that the response fills.
        if turns and turns[-1].role == "assistant" and not turns[-1].closed and not turns[-1].content.strip():
            turns.pop()
        response_turn = _Turn("assistant", "")
        _close(family, response_turn, text[len(head) :])
    else:
        if not turns or turns[-1].role != "assistant":
            raise InputError("the templated text must end with an assistant response", field=field)
        response_turn = turns.pop()
    messages = [{"role": t.role, "content": t.content} for t in turns]
    if not messages or messages[-1]["role"] != "user":
        raise InputError("the conversation before the response must end with a user turn", field=field)
    return Parsed(messages, response_turn.content, not response_turn.closed, family.name)
