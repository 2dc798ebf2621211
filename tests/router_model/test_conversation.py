from __future__ import annotations

from router_model.conversation import TRIM_MARKER, Turn, message_text, select_turns, trim_middle


def words(text: str) -> int:
    return len(text.split())


def test_drops_system_developer_and_tool_messages() -> None:
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "developer", "content": "dev"},
        {"role": "user", "content": "question"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        {"role": "tool", "content": "tool output"},
        {"role": "assistant", "content": "answer"},
    ]
    assert select_turns(messages, 100, words) == [Turn("user", "question"), Turn("assistant", "answer")]


def test_content_parts_are_joined() -> None:
    parts = [{"type": "text", "text": "look at"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "this"}]
    assert message_text(parts) == "look at\nthis"
    assert select_turns([{"role": "user", "content": parts}], 10, words) == [Turn("user", "look at\nthis")]


def test_keeps_most_recent_turns_within_budget() -> None:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "w " * 3} for i in range(6)]
    turns = select_turns(messages, 12, words)
    # Each turn is 5 words: the last two fit, the third-newest (an assistant turn) is dropped, not trimmed.
    assert [t.content.split()[1] for t in turns] == ["4", "5"]
    # An overflowing user turn is trimmed to fill the rest of the budget.
    turns = select_turns(messages[:5], 12, words)
    assert [t.role for t in turns] == ["user", "assistant", "user"]
    assert TRIM_MARKER in turns[0].content and sum(words(t.content) for t in turns) <= 12


def test_oversized_last_user_message_is_trimmed_in_the_middle() -> None:
    text = "HEAD " + "filler " * 200 + "TAIL?"
    turns = select_turns([{"role": "user", "content": text}], 20, words)
    assert len(turns) == 1
    kept = turns[0].content
    assert kept.startswith("HEAD") and kept.endswith("TAIL?") and TRIM_MARKER in kept
    assert words(kept) <= 20


def test_trim_middle_leaves_short_text_alone() -> None:
    assert trim_middle("short text", 5, words) == "short text"
    assert words(trim_middle("a " * 50, 7, words)) <= 7


def test_turn_limit() -> None:
    messages = [{"role": "user", "content": str(i)} for i in range(40)]
    assert [t.content for t in select_turns(messages, 1000, words, max_turns=3)] == ["37", "38", "39"]
