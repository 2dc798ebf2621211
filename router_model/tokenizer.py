"""The router model's own tokenizer and chat template, loaded from a Hugging Face style model directory."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
from tokenizers import Tokenizer

# Used when a model directory carries no chat template: Qwen2.5's ChatML with its default system prompt,
# which is what Arch-Router (a Qwen2.5 fine-tune) was trained under.
QWEN_CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


class TokenizerFilesError(FileNotFoundError):
    """The model directory lacks the files a router tokenizer needs."""


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)


def _compile_template(source: str) -> jinja2.Template:
    # Same environment options as transformers' apply_chat_template, so templates render identically.
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(source)


@dataclass(frozen=True)
class TokenizerInfo:
    """What the engine needs to know about special tokens."""

    eos_ids: frozenset[int]
    pad_id: int


class RouterTokenizer:
    """A `tokenizers` tokenizer plus the model's chat template; no transformers dependency."""

    def __init__(self, tokenizer: Tokenizer, chat_template: str | None, info: TokenizerInfo) -> None:
        self._tokenizer = tokenizer
        self.chat_template_source = chat_template or QWEN_CHATML_TEMPLATE
        self.info = info

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> RouterTokenizer:
        model_dir = Path(model_dir)
        tok_path = model_dir / "tokenizer.json"
        if not tok_path.is_file():
            raise TokenizerFilesError(f"{tok_path} not found: the router model directory needs tokenizer.json")
        tokenizer = Tokenizer.from_file(str(tok_path))
        config: dict[str, Any] = {}
        cfg_path = model_dir / "tokenizer_config.json"
        if cfg_path.is_file():
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        template = config.get("chat_template")
        if isinstance(template, list):  # newer configs store named templates
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if template is None and (model_dir / "chat_template.jinja").is_file():
            template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
        return cls(tokenizer, template, _special_ids(tokenizer, config, model_dir))

    @cached_property
    def _template(self) -> jinja2.Template:
        return _compile_template(self.chat_template_source)

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
        return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=False))

    def pretoken_starts(self, text: str) -> list[int]:
        """Character offsets where the pre-tokenizer starts a new piece; BPE merges never cross these."""
        pre = self._tokenizer.pre_tokenizer
        starts: list[int] = []
        # Added (special) tokens are split out before pre-tokenization, so they are boundaries on both sides.
        for piece, (start, _end) in _split_added(self._tokenizer, text):
            if piece is None or pre is None:
                starts.append(start)
            else:
                starts.extend(start + s for _, (s, _e) in pre.pre_tokenize_str(piece))
        return starts

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))


def _split_added(tokenizer: Tokenizer, text: str) -> list[tuple[str | None, tuple[int, int]]]:
    """Splits text at added tokens: (None, span) for an added token, (text, span) for ordinary text."""
    specials = sorted((t.content for t in tokenizer.get_added_tokens_decoder().values()), key=len, reverse=True)
    out: list[tuple[str | None, tuple[int, int]]] = []
    i = start = 0
    while i < len(text):
        hit = next((s for s in specials if s and text.startswith(s, i)), None)
        if hit is None:
            i += 1
            continue
        if i > start:
            out.append((text[start:i], (start, i)))
        out.append((None, (i, i + len(hit))))
        i = start = i + len(hit)
    if start < len(text):
        out.append((text[start:], (start, len(text))))
    return out


def _special_ids(tokenizer: Tokenizer, config: Mapping[str, Any], model_dir: Path) -> TokenizerInfo:
    def token_text(value: Any) -> str | None:
        if isinstance(value, dict):
            return str(value.get("content"))
        return value if isinstance(value, str) else None

    eos: set[int] = set()
    for name in (token_text(config.get("eos_token")), "<|im_end|>", "<|endoftext|>"):
        if name is not None and (tid := tokenizer.token_to_id(name)) is not None:
            eos.add(tid)
    gen_cfg = model_dir / "generation_config.json"
    if gen_cfg.is_file():
        eos_cfg = json.loads(gen_cfg.read_text(encoding="utf-8")).get("eos_token_id")
        eos.update(eos_cfg if isinstance(eos_cfg, list) else [eos_cfg] if isinstance(eos_cfg, int) else [])
    pad_name = token_text(config.get("pad_token")) or "<|endoftext|>"
    pad = tokenizer.token_to_id(pad_name)
    if pad is None:
        pad = min(eos) if eos else 0
    return TokenizerInfo(eos_ids=frozenset(eos), pad_id=int(pad))
