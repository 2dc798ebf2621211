"""The OpenAI Responses API (``POST /v1/responses``) translated to and from Chat Completions: pure functions."""

from __future__ import annotations

from core.providers.anthropic import TranslationError
from core.responses_api.request import (
    CHAT_FIELDS_FOR_RESPONSES,
    ChatForm,
    chat_to_responses_request,
    input_items,
    to_chat,
)
from core.responses_api.validation import validate_responses
from core.responses_api.response import chat_to_response, response_items, response_to_chat
from core.responses_api.stream import ChatToResponsesStream, ResponsesToChatStream

__all__ = [
    "CHAT_FIELDS_FOR_RESPONSES",
    "ChatForm",
    "ChatToResponsesStream",
    "ResponsesToChatStream",
    "TranslationError",
    "chat_to_response",
    "chat_to_responses_request",
    "input_items",
    "response_items",
    "response_to_chat",
    "to_chat",
    "validate_responses",
]
