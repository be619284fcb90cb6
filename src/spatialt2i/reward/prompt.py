"""The reward model's text: instruction + prompt in the chat template, then the ``<reward>`` token."""

from __future__ import annotations

from typing import Any

from .backbone import QWEN_SPECIALS, REWARD_TOKEN

DEFAULT_INSTRUCTION = ("Judge how well the image matches the spatial layout described by the prompt: "
                       "objects, colours, sizes and where each one is.\nPrompt: ")


def check_prompt(prompt: Any, index: int, reward_token: str = REWARD_TOKEN) -> str:
    """``prompt`` if it is usable text; ``ValueError`` naming ``prompts[index]`` otherwise."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompts[{index}]: missing or empty prompt ({prompt!r})")
    for tok in (*QWEN_SPECIALS, reward_token):
        if tok in prompt:
            raise ValueError(f"prompts[{index}]: contains the special token {tok!r}")
    return prompt


def reward_messages(prompt: str, instruction: str = DEFAULT_INSTRUCTION) -> list[dict[str, Any]]:
    """One user turn: the image, then the instruction followed by the prompt."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction + prompt}]}]


def reward_text(tokenizer: Any, prompt: str, instruction: str = DEFAULT_INSTRUCTION,
                reward_token: str = REWARD_TOKEN) -> str:
    """The chat-formatted text with the assistant turn opened and ``reward_token`` as its first token."""
    chat = tokenizer.apply_chat_template(reward_messages(prompt, instruction), tokenize=False,
                                         add_generation_prompt=True)
    return chat + reward_token
