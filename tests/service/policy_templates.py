"""Chat templates of common RL policy families, written out as their tokenizer_config.json ships them (tool and
multimodal branches left out), with the special tokens each family's tokenizer substitutes. Rendered with jinja2 the
way transformers renders them, so /get_reward is tested on the exact texts those policies produce."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jinja2


@dataclass(frozen=True)
class Policy:
    name: str
    template: str
    bos: str
    eos: str
    system: bool  # the template has a system role


QWEN25 = Policy(
    "qwen2.5",
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if (message.role == 'user') or (message.role == 'system' and not loop.first)"
    " or (message.role == 'assistant') %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>'"
    " + '\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
    bos="",
    eos="<|im_end|>",
    system=True,
)
LLAMA3 = Policy(
    "llama-3",
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    bos="<|begin_of_text|>",
    eos="<|eot_id|>",
    system=True,
)
MISTRAL = Policy(
    "mistral-7b-instruct-v0.2",
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}",
    bos="<s>",
    eos="</s>",
    system=False,
)
GEMMA = Policy(
    "gemma-2-it",
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}",
    bos="<bos>",
    eos="<end_of_turn>",
    system=False,
)
PHI3 = Policy(
    "phi-3-mini",
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + "
    "'<|end|>\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}",
    bos="",
    eos="<|endoftext|>",
    system=True,
)
POLICIES = (QWEN25, LLAMA3, MISTRAL, GEMMA, PHI3)


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


def render(policy: Policy, messages: list[dict[str, Any]], *, add_generation_prompt: bool = False) -> str:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # transformers' settings
    env.globals["raise_exception"] = _raise
    return env.from_string(policy.template).render(
        messages=messages, bos_token=policy.bos, eos_token=policy.eos, add_generation_prompt=add_generation_prompt
    )
