"""The hotels agent: finds (made-up) hotels in the city a request names, then lets the model word the answer."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import partial

from examples.agents.agent import Agent, Message, last_user_text, serve
from examples.agents.flights import destination

_NAMES = ("Casa do Rio", "Hotel Aurora", "The Old Mill", "Pension Lumen", "Harbour Rooms")


async def find_hotels(messages: Sequence[Message]) -> str:
    """Two hotels in the city, the same ones every time for the same city (a stand-in for a real API)."""
    city = destination(last_user_text(messages))
    if city is None:
        return "no city named, so no hotels searched"
    seed = zlib.crc32(city.encode()[::-1])
    options = [f"{_NAMES[(seed + n) % len(_NAMES)]} in {city}, EUR {70 + (seed >> (5 * n)) % 180} a night"
               for n in range(2)]
    return "; ".join(options)


#: ``agent(model_url, model)``: the hotels agent calling that model.
agent = partial(Agent, "hotels", "You are a travel agent for hotels. Recommend one of the hotels found, briefly.",
                find_hotels)


if __name__ == "__main__":
    serve(agent, __doc__ or "", 9002)
