"""Random-weight Qwen2 router models with an in-process trained tokenizer, for tests and benchmarks offline."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from router_model.prompts import ARCH_FORMAT_PROMPT, ARCH_TASK_INSTRUCTION, PLANO_ORCHESTRATOR_PROMPT

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Qwen2's pre-tokenizer split pattern, so trained tokenizers split text (and the prefix boundary) like Qwen's.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2.5's chat template without the tool branches (the router never sends tools).
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'system' and loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

SAMPLE_ROUTES = (
    ("code_generation", "writing new code, functions, scripts, queries or boilerplate from a description"),
    ("code_review", "explaining, reviewing or debugging existing code, finding the cause of an error"),
    ("complex_reasoning", "multi-step reasoning, math word problems, proofs, logic puzzles and planning"),
    ("summarization", "condensing a given text, article, meeting transcript or thread into a summary"),
    ("translation", "translating text from one human language into another"),
    ("creative_writing", "stories, poems, song lyrics, jokes, slogans and other imaginative writing"),
)

SAMPLE_SENTENCES = (
    "Write a JavaScript debounce function.",
    "Give me a Python script that downloads a CSV and prints the row count.",
    "Why does this loop never terminate? while i < 10: print(i)",
    "If 3 workers build a wall in 12 days, how long do 4 workers take?",
    "Summarize this meeting transcript in three bullet points.",
    "Translate this into German: The package was delivered to the wrong address.",
    "Write a short poem about a city at night.",
    "Hello there! What's the tallest mountain in Africa?",
    "ok thanks bye. Can you suggest a board game for four people?",
    "This line throws ZeroDivisionError: rate = hits / total",
    "add an overdraft limit and shorter please, and to Portuguese?",
)


@dataclass(frozen=True)
class ModelSize:
    """A Qwen2 shape. `vocab_size` None means the trained tokenizer's size."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab_size: int | None = None
    tokenizer_vocab: int = 2000


SIZES = {
    "tiny": ModelSize(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128),
    # Benchmark size for a CPU: a small body under Qwen's real 151936-token vocabulary, so the LM head weighs
    # on every decode step as it does in Arch-Router (tied embedding: 233M of its 1.5B parameters).
    "mid": ModelSize(hidden=384, layers=6, heads=6, kv_heads=2, ffn=1024, vocab_size=151936, tokenizer_vocab=4000),
    # Arch-Router-1.5B's shape (Qwen2.5-1.5B): head dim 128, vocab padded to 151936 like Qwen's.
    "arch-router": ModelSize(hidden=1536, layers=28, heads=12, kv_heads=2, ffn=8960, vocab_size=151936),
}


def corpus() -> list[str]:
    """Text the tokenizer is trained on: both prompt formats, route JSON and user-like sentences."""
    routes = [{"name": n, "description": d} for n, d in SAMPLE_ROUTES]
    lines = [ARCH_TASK_INSTRUCTION, ARCH_FORMAT_PROMPT, PLANO_ORCHESTRATOR_PROMPT, json.dumps(routes)]
    lines += [json.dumps([{"role": "user", "content": s}]) for s in SAMPLE_SENTENCES]
    lines += [f'{{"route": "{n}"}}' for n, _ in SAMPLE_ROUTES] + ['{"route": "other"}']
    return lines * 3


def train_tokenizer(vocab_size: int = 2000) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    return tokenizer


def write_tokenizer(tokenizer: Tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    added = {
        str(tokenizer.token_to_id(t)): {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True
        }
        for t in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 32768,
        "chat_template": QWEN_CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def build(
    out: str | Path,
    size: str | ModelSize = "tiny",
    seed: int = 0,
    dtype: str = "fp32",
    logit_scale: float = 1.0,
    init_std: float = 0.2,
) -> Path:
    """Writes a Hugging Face style Qwen2 model directory (random weights, trained tokenizer) and returns it.

    `init_std` is the weight init's standard deviation: 0.2, ten times the usual, makes even a 2-layer
    model's logits input-dependent, which makes decoding tests discriminating; a deep model in fp16 needs the
    usual 0.02 (at 0.2 the Arch-Router shape's residual stream reaches 17.5k, near fp16's 65504 limit). `logit_scale` multiplies the final norm weight, which scales
    every logit (the embedding is tied, so inputs are untouched): above 1 the next-token distributions become
    as peaked as a trained router's (top-1 probability near 1) instead of a random init's spread-out ones.
    Needs the `export` extra.
    """
    try:
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("building a model needs the export extra: pip install 'outerloop[export]'") from exc

    spec = SIZES[size] if isinstance(size, str) else size
    out = Path(out)
    tokenizer = train_tokenizer(spec.tokenizer_vocab)
    write_tokenizer(tokenizer, out)
    im_end, eot = tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")
    config = Qwen2Config(  # type: ignore[no-untyped-call]
        vocab_size=spec.vocab_size or tokenizer.get_vocab_size(),
        hidden_size=spec.hidden,
        intermediate_size=spec.ffn,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=im_end,
        pad_token_id=eot,
        rope_theta=1000000.0,
    )
    torch.manual_seed(seed)
    config.initializer_range = init_std
    model = Qwen2ForCausalLM(config).eval()  # type: ignore[no-untyped-call]
    if logit_scale != 1.0:
        with torch.no_grad():
            model.model.norm.weight.mul_(logit_scale)
    if dtype == "fp16":
        model = model.half()
    model.save_pretrained(out)
    (out / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [im_end, eot], "pad_token_id": eot}), encoding="utf-8"
    )
    return out
