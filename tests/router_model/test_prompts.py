from __future__ import annotations

import json

import pytest

from router_model.conversation import Turn
from router_model.prompts import ArchRouterProfile, PlanoOrchestratorProfile, PromptBuilder, get_profile
from router_model.routes import RouteSet
from router_model.tokenizer import QWEN_CHATML_TEMPLATE, RouterTokenizer

# The model card's strings, typed out again here so a drift in either copy fails the test.
CARD_TASK_INSTRUCTION = """
You are a helpful assistant designed to find the best suited route.
You are provided with route description within <routes></routes> XML tags:
<routes>

{routes}

</routes>

<conversation>

{conversation}

</conversation>
"""
CARD_FORMAT_PROMPT = """
Your task is to decide which route is best suit with user intent on the conversation in <conversation></conversation> XML tags.  Follow the instruction:
1. If the latest intent from user is irrelevant or user intent is full filled, response with other route {"route": "other"}.
2. You must analyze the route descriptions and find the best match route for user latest intent. \n3. You only response the name of the route that best matches the user's request, use the exact name in the <routes></routes>.

Based on your analysis, provide your response in the following JSON formats if you decide to match any route:
{"route": "route_name"} \n"""

ROUTES = RouteSet.of([{"name": "code", "description": "write code"}, {"name": "math", "description": "solve {x}"}])


def test_arch_router_user_message_is_byte_exact() -> None:
    turns = [Turn("user", "héllo \"there\""), Turn("assistant", "hi"), Turn("user", "sum 2+2")]
    conversation = [{"role": t.role, "content": t.content} for t in turns]
    routes = [{"name": "code", "description": "write code"}, {"name": "math", "description": "solve {x}"}]
    expected = (
        CARD_TASK_INSTRUCTION.format(routes=json.dumps(routes), conversation=json.dumps(conversation))
        + CARD_FORMAT_PROMPT
    )
    assert ArchRouterProfile().user_message(ROUTES, turns) == expected
    assert "\\u00e9" in expected  # json.dumps default: ASCII escapes, as in the model card


def test_arch_router_prompt_through_chat_template(router) -> None:  # type: ignore[no-untyped-def]
    rendered = router.render([{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}])
    assert rendered.text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{rendered.user_message}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert '[{"role": "user", "content": "hi"}]' in rendered.user_message
    assert "be nice" not in rendered.text


def test_fallback_template_is_qwen_chatml(tiny_onnx_dir) -> None:  # type: ignore[no-untyped-def]
    tok = RouterTokenizer.from_dir(tiny_onnx_dir)
    fallback = RouterTokenizer(tok._tokenizer, None, tok.info)
    assert fallback.chat_template_source == QWEN_CHATML_TEMPLATE
    assert fallback.apply_chat_template([{"role": "user", "content": "x"}]) == tok.apply_chat_template(
        [{"role": "user", "content": "x"}]
    )


@pytest.mark.parametrize(
    ("answer", "route"),
    [
        ('{"route": "code"}', "code"),
        ('```json\n{"route": "math"}\n```', "math"),
        ("{'route': 'code'}", "code"),
        ('{"route": "other"}', None),
        ('{"route": ""}', None),
        ('{"route": "unknown"}', None),
        ('{"route": ', None),
        ("code", None),
        ("", None),
        ('{"route": 3}', None),
        ('["code"]', None),
    ],
)
def test_arch_router_parse(answer: str, route: str | None) -> None:
    assert ArchRouterProfile().parse(answer, ROUTES) == route


def test_plano_orchestrator_format_and_parse() -> None:
    profile = get_profile("plano-orchestrator")
    assert isinstance(profile, PlanoOrchestratorProfile)
    text = profile.user_message(ROUTES, [Turn("user", "add a test")])
    assert '<routes>\n{"name": "code", "description": "write code"}\n{"name": "math", "description": "solve {x}"}\n</routes>' in text
    assert '<conversation>\n[\n    {\n        "role": "user",\n        "content": "add a test"\n    }\n]\n</conversation>' in text
    assert profile.parse('{"route": ["math", "code"]}', ROUTES) == "math"
    assert profile.parse('{"route": ["nope", "code"]}', ROUTES) == "code"
    assert profile.parse('{"route": []}', ROUTES) is None
    assert profile.parse("not json", ROUTES) is None
    assert profile.continuation("other") == "]}"


def test_unknown_profile() -> None:
    with pytest.raises(ValueError, match="arch-router"):
        get_profile("gpt")


CONVERSATIONS = [
    [{"role": "user", "content": "Write a JavaScript debounce function."}],
    [{"role": "user", "content": "  leading spaces and trailing  "}],
    [{"role": "user", "content": "\n\nnewlines first"}],
    [{"role": "user", "content": "[brackets] {braces} \"quotes\" \\ back"}],
    [{"role": "user", "content": "数字 123 émoji 🚀"}],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"}],
    [],
]


@pytest.mark.parametrize("profile", ["arch-router", "plano-orchestrator"])
def test_prefix_split_never_changes_tokenization(router, routes, dev_examples, profile) -> None:  # type: ignore[no-untyped-def]
    builder = PromptBuilder(get_profile(profile), router.tokenizer)
    forced = builder.profile.answer_prefix
    for messages in CONVERSATIONS + [ex["messages"] for ex in dev_examples]:
        rendered = builder.render(messages, routes)
        whole = router.tokenizer.encode(rendered.text + forced)
        split = list(rendered.prefix.ids) + router.tokenizer.encode(rendered.remainder + forced)
        assert split == whole, messages
        assert rendered.text.startswith(rendered.prefix.text)
        # Everything static is in the prefix: the remainder starts within a few characters of the conversation.
        assert not any(r.description in rendered.remainder for r in routes)
        assert rendered.remainder.index("[") <= len(">\n\n")
    assert all(name in builder.prefix(routes).text for name in routes.names)
    assert builder.prefix(routes).routes_key == routes.key
