"""A copy of the session's tiny model whose chat template has no tool format.

The template is written as SmolLM2-135M-Instruct's (the default model) is:
every turn is its role marker and its content, nothing else; ``tools``,
``tool_calls`` and ``tool_call_id`` are ignored, and a turn whose content is
``None`` makes it fail (as a string concatenation with ``None`` does in
SmolLM2's). So a request only works on it if the generic tool format wrote
tools and tool history into the turns' text.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

PLAIN_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def plain_model(model_dir: Path, dest: Path) -> Path:
    """``model_dir`` copied to ``dest`` with :data:`PLAIN_TEMPLATE` and no tool parser."""
    shutil.copytree(model_dir, dest)
    path = dest / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["chat_template"] = PLAIN_TEMPLATE
    config.pop("tool_parser_type", None)
    path.write_text(json.dumps(config, indent=2))
    return dest
