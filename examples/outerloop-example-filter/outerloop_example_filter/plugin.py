"""The `example_tag` filter: adds a system note to every request and answers a keyword itself."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.filter import Filter, FilterContext, LocalReply
from core.flow import Flow
from core.hookspecs import RegisterFilter, hookimpl


class ExampleTagConfig(BaseModel):
    """What users may write under `config:`; unknown keys and wrong types are config errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    system_note: str = Field(min_length=1, description="a system message prepended to every request")
    block_word: str | None = Field(default=None, description="requests containing this word are refused")
    header: str = "x-example-tag"


class ExampleTagFilter(Filter):
    def __init__(self, config: ExampleTagConfig) -> None:
        self.config = config

    @classmethod
    def from_config(cls, config: ExampleTagConfig, context: FilterContext) -> ExampleTagFilter:
        return cls(config)

    async def on_request(self, flow: Flow) -> LocalReply | None:
        word = self.config.block_word
        if word and word.casefold() in flow.last_user_text().casefold():
            return LocalReply(403, f"requests mentioning {word!r} are refused by policy", "example_tag.blocked")
        messages: list[Any] = flow.json["messages"]
        messages.insert(0, {"role": "system", "content": self.config.system_note})
        flow.json_changed()
        flow.extra_headers[self.config.header] = "tagged"
        return None


@hookimpl
def outerloop_register_filters(register: RegisterFilter) -> None:
    register("example_tag", ExampleTagFilter.from_config, ExampleTagConfig)
