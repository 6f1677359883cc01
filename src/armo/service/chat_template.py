"""Split an already chat-templated text back into (messages, response), for the OpenRLHF `/get_reward` route.

OpenRLHF / verl remote-RM clients send `apply_chat_template(conversation + [response], tokenize=False)`. To score
it exactly like `/v1/score` scores the same conversation, the text is split back into turns using markers learned
from the model's own template (rendering sentinel conversations and reading what surrounds each sentinel), then
re-rendered and compared: a text the template would not have produced is refused rather than mis-scored.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from armo.model_store.encoding import render
from armo.model_store.errors import InputError

_S, _U, _A, _U2 = "Zq9SYSTEMzq9", "Zq9USERzq9", "Zq9ASSISTANTzq9", "Zq9USER2zq9"


@dataclass(frozen=True)
class TemplateMarkers:
    starts: dict[str, str]  # role → text right before its content
    ends: dict[str, str]  # role → text right after its content


def _after(text: str, sentinel: str) -> str:
    return text[text.index(sentinel) + len(sentinel) :]


def learn_markers(tokenizer: PreTrainedTokenizerBase) -> TemplateMarkers:
    """Role markers of `tokenizer`'s chat template. Raises ValueError if the template is not turn-structured."""
    user = {"role": "user", "content": _U}
    assistant = {"role": "assistant", "content": _A}
    end_user = _after(render(tokenizer, [user]), _U)
    t_ua = render(tokenizer, [user, assistant])
    end_asst = _after(t_ua, _A)
    between = t_ua[t_ua.index(_U) + len(_U) : t_ua.index(_A)]
    if not between.startswith(end_user):
        raise ValueError("the template does not close a user turn the same way before an assistant turn")
    start_asst = between[len(end_user) :]
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
    if not (start_user and start_asst and start_sys):
        raise ValueError("the template has empty role headers")
    return TemplateMarkers(
        starts={"system": start_sys, "user": start_user, "assistant": start_asst},
        ends={"system": end_sys, "user": end_user, "assistant": end_asst},
    )


def _strip_end(content: str, end: str, last: bool) -> str:
    if content.endswith(end):
        return content[: len(content) - len(end)]
    # Clients often strip the trailing newline (or send no end-of-turn at all) after the final response.
    if last and end.rstrip() and content.rstrip().endswith(end.rstrip()):
        stripped = content.rstrip()
        return stripped[: len(stripped) - len(end.rstrip())]
    if last:
        return content
    raise ValueError("a turn is not closed by the template's end-of-turn marker")


def split(
    tokenizer: PreTrainedTokenizerBase, markers: TemplateMarkers, text: str, *, field: str
) -> tuple[list[dict[str, str]], str]:
    """(conversation, response) such that the template renders them back to `text`; InputError otherwise."""
    found: list[tuple[int, int, str]] = []  # (start, end of marker, role)
    pos = 0
    while True:
        hits = [(text.find(m, pos), -len(m), role) for role, m in markers.starts.items() if text.find(m, pos) >= 0]
        if not hits:
            break
        start, neg_len, role = min(hits)
        found.append((start, start - neg_len, role))
        pos = start - neg_len
    if not found:
        raise InputError("no chat turns found: the text is not rendered with this model's chat template", field=field)
    turns: list[dict[str, str]] = []
    try:
        for i, (_, content_start, role) in enumerate(found):
            last = i == len(found) - 1
            content_end = len(text) if last else found[i + 1][0]
            content = _strip_end(text[content_start:content_end], markers.ends[role], last)
            turns.append({"role": role, "content": content})
    except ValueError as e:
        raise InputError(f"{e}: the text is not rendered with this model's chat template", field=field) from e
    if turns[-1]["role"] != "assistant":
        raise InputError("the templated text must end with an assistant response", field=field)
    messages, response = turns[:-1], turns[-1]["content"]
    if render(tokenizer, [*messages, turns[-1]]).rstrip() != text.rstrip():
        raise InputError(
            "the text does not round-trip through this model's chat template (another template, or a missing "
            "or extra system prompt / special token)",
            field=field,
        )
    return messages, response
