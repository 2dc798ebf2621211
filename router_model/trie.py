"""A token trie over the answer continuations a constrained decoder may choose between."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(eq=False)
class TrieNode:
    token: int
    depth: int
    parent: TrieNode | None
    children: dict[int, TrieNode] = field(default_factory=dict)
    # The candidate whose token sequence ends here, if any.
    candidate: str | None = None

    def path(self) -> Iterator[TrieNode]:
        """This node and its ancestors, deepest first (the root excluded)."""
        node: TrieNode | None = self
        while node is not None and node.depth > 0:
            yield node
            node = node.parent


class TokenTrie:
    """Candidates keyed by their token sequences; sequences may share prefixes."""

    def __init__(self, candidates: Mapping[str, Sequence[int]]) -> None:
        self.root = TrieNode(token=-1, depth=0, parent=None)
        self.candidates = {name: tuple(ids) for name, ids in candidates.items()}
        seen: dict[tuple[int, ...], str] = {}
        for name, ids in self.candidates.items():
            if not ids:
                raise ValueError(f"candidate {name!r} has no tokens")
            if tuple(ids) in seen:
                raise ValueError(f"candidates {seen[tuple(ids)]!r} and {name!r} tokenize identically")
            seen[tuple(ids)] = name
            node = self.root
            for tok in ids:
                child = node.children.get(tok)
                if child is None:
                    child = node.children[tok] = TrieNode(token=tok, depth=node.depth + 1, parent=node)
                node = child
            node.candidate = name
        #: Nodes with children, parents first: what a tree forward feeds after the prompt (decoder.tree_score).
        self.inner: tuple[TrieNode, ...] = tuple(n for n in self._breadth_first() if n.depth > 0 and n.children)

    def _breadth_first(self) -> Iterator[TrieNode]:
        level = [self.root]
        while level:
            yield from level
            level = [child for node in level for child in node.children.values()]

    @property
    def max_depth(self) -> int:
        return max(len(ids) for ids in self.candidates.values())
