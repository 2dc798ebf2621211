"""The flights agent: finds (made-up) flights to the city a request names, then lets the model word the answer."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from functools import partial

from examples.agents.agent import Agent, Message, last_user_text, serve

_CITY = re.compile(r"\b(?:to|for|in|into|at)\s+([A-Z][a-zA-Z]+(?:\s[A-Z][a-zA-Z]+)?)")
_AIRLINES = ("TAP", "Lufthansa", "KLM", "Iberia", "easyJet")


def destination(text: str) -> str | None:
    """The first capitalised place after "to", "for", "in" or "at": enough for an example."""
    match = _CITY.search(text)
    return match.group(1) if match else None


async def find_flights(messages: Sequence[Message]) -> str:
    """Two flights to the destination, the same ones every time for the same city (a stand-in for a real API)."""
    city = destination(last_user_text(messages))
    if city is None:
        return "no destination named, so no flights searched"
    seed = zlib.crc32(city.encode())
    options = []
    for n in range(2):
        airline = _AIRLINES[(seed + n) % len(_AIRLINES)]
        hour, fare = 6 + (seed >> (4 * n)) % 14, 89 + (seed >> (3 * n)) % 240
        options.append(f"{airline} {hour:02d}:{(seed >> n) % 6}0 to {city}, EUR {fare}")
    return "; ".join(options)


#: ``agent(model_url, model)``: the flights agent calling that model.
agent = partial(Agent, "flights", "You are a travel agent for flights. Recommend one of the flights found, briefly.",
                find_flights)


if __name__ == "__main__":
    serve(agent, __doc__ or "", 9001)
