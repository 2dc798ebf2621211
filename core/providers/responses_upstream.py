"""Chat-completions clients on upstreams that speak only the OpenAI Responses API (`interface: responses`)."""

from __future__ import annotations

from typing import Any

from core.flow import Flow
from core.providers.anthropic_upstream import _StreamTranslator, _TranslatingAdapter
from core.providers.openai import openai_headers
from core.responses_api.request import CHAT_FIELDS_FOR_RESPONSES, chat_to_responses_request
from core.responses_api.response import response_to_chat
from core.responses_api.stream import ResponsesToChatStream
from core.target import Target


class ChatClientResponsesUpstream(_TranslatingAdapter):
    """Chat completions in, the Responses API upstream (`store: false`), chat completions back."""

    path = "/responses"
    carried = CHAT_FIELDS_FOR_RESPONSES

    def headers(self, flow: Flow, target: Target, body: dict[str, Any]) -> list[tuple[str, str]]:
        return openai_headers(flow, target)

    def translate_request(self, body: dict[str, Any], model_id: str, dropped: list[str]) -> dict[str, Any]:
        return chat_to_responses_request(body, model_id)

    def stream_translator(self, flow: Flow, model: str) -> _StreamTranslator:
        return ResponsesToChatStream(model, include_usage=flow.wants_stream_usage)

    def translate_response(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        return response_to_chat(body, model)
