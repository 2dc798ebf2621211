"""The guardrails rule set: text normalisation, PII and secret detectors, prompt-injection rules, deny lists."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

# Letters from other scripts that render like ASCII ones (after casefolding). Not the full Unicode
# confusables table: the Cyrillic and Greek look-alikes that homoglyph evasion uses in practice.
CONFUSABLES: dict[str, str] = {
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "һ": "h", "ӏ": "l",
    "ԛ": "q", "ԝ": "w", "ɡ": "g", "ı": "i", "ℓ": "l",
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "ϲ": "c", "ϳ": "j", "ω": "w",
}
# Combining marks and format characters (zero-width space/joiners, BOM, soft hyphen, bidi controls) are
# dropped, so "i\u200bgnore" and "ïgnore" read as "ignore".
_DROPPED_CATEGORIES = frozenset({"Mn", "Me", "Cf"})


@lru_cache(maxsize=16384)
def _fold_char(ch: str) -> str:
    out = []
    for part in unicodedata.normalize("NFKD", ch).casefold():
        if unicodedata.category(part) in _DROPPED_CATEGORIES:
            continue
        part = unicodedata.normalize("NFKC", part)
        out.append(CONFUSABLES.get(part, part))
    return "".join(out)


def normalize(text: str) -> tuple[str, list[int] | None]:
    """Text for matching (compatibility-folded, casefolded, zero-width stripped, confusables mapped to
    ASCII) and, when lengths differ from the original, the original index of each normalised character."""
    if text.isascii():
        return text.lower(), None
    chars: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        folded = ch if ch.isascii() else _fold_char(ch)
        for out in folded.lower() if ch.isascii() else folded:
            chars.append(out)
            index.append(i)
    return "".join(chars), index


def to_original(index: list[int] | None, start: int, end: int, original_length: int) -> tuple[int, int]:
    """Map a span of the normalised text back to the original text."""
    if index is None:
        return start, end
    if start >= len(index):
        return original_length, original_length
    return index[start], (index[end - 1] + 1 if end > start else index[start])


# --- validators -------------------------------------------------------------------------------------------

def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def luhn_valid(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _credit_card(match: str) -> bool:
    digits = _digits(match)
    return 13 <= len(digits) <= 19 and digits[0] in "3456" and luhn_valid(digits)


def iban_valid(candidate: str) -> bool:
    """ISO 13616 mod-97 check (letters count as 10..35)."""
    code = candidate.replace(" ", "").upper()
    if not 15 <= len(code) <= 34:
        return False
    rearranged = code[4:] + code[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def ssn_valid(match: str) -> bool:
    """US SSNs never use area 000, 666 or 900-999, group 00 or serial 0000."""
    digits = _digits(match)
    area, group, serial = int(digits[:3]), digits[3:5], digits[5:]
    return area != 0 and area != 666 and area < 900 and group != "00" and serial != "0000"


def _phone(match: str) -> bool:
    return 10 <= len(_digits(match)) <= 15


def _ipv6(match: str) -> bool:
    if sum(1 for group in match.split(":") if group) < 3:
        return False
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Rule:
    """One detector: a regex over normalised text, an optional validator, and its redaction placeholder."""

    name: str
    pattern: str
    placeholder: str
    validate: Callable[[str], bool] | None = None
    #: True when a match may contain whitespace; streaming then holds a fixed tail for it (see stream).
    spaced: bool = False
    #: Cheap regexes (literal or character-class first, so the engine skips ahead in C); the rule runs
    #: only when one of them is found. Patterns themselves start with a character, lookbehinds after it.
    hints: tuple[str, ...] = ()


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_ANY = r"[\s\S]"

# Patterns see casefolded text. Order matters where shapes overlap: at one position the first rule wins.
PII_RULES: tuple[Rule, ...] = (
    Rule("private_key", r"-----begin [a-z0-9 ]{0,40}private key-----"
                        r"(?:[\s\S]{0,16384}?-----end [a-z0-9 ]{0,40}private key-----)?", "[PRIVATE_KEY]",
         spaced=True, hints=("-----begin",)),
    Rule("jwt", rf"e(?<![\w-]{_ANY})yj[a-z0-9_-]{{5,4096}}\.eyj[a-z0-9_-]{{5,8192}}\.[a-z0-9_-]{{10,4096}}", "[JWT]",
         hints=("eyj",)),
    Rule("aws_access_key", rf"a(?<![a-z0-9]{_ANY})(?:kia|sia|bia|cca)[a-z0-9]{{16}}(?![a-z0-9])",
         "[AWS_ACCESS_KEY]", hints=("akia|asia|abia|acca",)),
    Rule("github_token", rf"g(?<![a-z0-9_]{_ANY})(?:h[pousr]_[a-z0-9]{{36,251}}|ithub_pat_[a-z0-9_]{{22,255}})"
                         r"(?![a-z0-9_])", "[GITHUB_TOKEN]", hints=("gh[pousr]_|github_pat_",)),
    Rule("api_key", rf"s(?<![a-z0-9_-]{_ANY})k-(?:ant-[a-z0-9]+-|proj-|svcacct-|admin-)?[a-z0-9_-]{{20,256}}"
                    r"(?![a-z0-9_-])", "[API_KEY]", hints=("sk-",)),
    Rule("slack_token", rf"x(?<![a-z0-9-]{_ANY})(?:ox[abposr]|app)-[a-z0-9-]{{10,250}}(?![a-z0-9-])",
         "[SLACK_TOKEN]", hints=("xox|xapp-",)),
    Rule("email", r"(?<![a-z0-9._%+-])[a-z0-9._%+-]{1,64}@(?:[a-z0-9-]{1,63}\.){1,8}[a-z]{2,24}(?![a-z0-9-])",
         "[EMAIL]", hints=("@",)),
    Rule("iban", r"(?<![a-z0-9])[a-z]{2}\d{2}(?: ?[a-z0-9]{4}){2,7}(?: ?[a-z0-9]{1,4})?(?![a-z0-9])", "[IBAN]",
         iban_valid, spaced=True, hints=(r"\d\d(?: ?[a-z0-9]{4}){2}",)),
    Rule("ssn", rf"\d(?<![\d-]{_ANY})\d{{2}}([- ])\d{{2}}\1\d{{4}}(?![\d-])", "[SSN]", ssn_valid, spaced=True),
    Rule("credit_card", rf"\d(?<![\d-]{_ANY})(?:[ -]?\d){{12,18}}(?![\d-])", "[CREDIT_CARD]", _credit_card,
         spaced=True),
    Rule("phone", r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
                  r"|\(\d{3}\)[ .-]?\d{3}[ .-]?\d{4}|\d{3}[ .-]\d{3}[ .-]\d{4})(?![\w-])", "[PHONE]", _phone,
         spaced=True, hints=(r"\+\d", r"\d{3}[ .)-]{1,2}\d{3}")),
    Rule("ipv4", rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)", "[IP_ADDRESS]", hints=(r"\d\.\d",)),
    Rule("ipv6", r"(?<![:\w])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?![:\w])", "[IP_ADDRESS]", _ipv6,
         hints=(":[0-9a-f]{1,4}:",)),
)
PII_ENTITIES: tuple[str, ...] = tuple(rule.name for rule in PII_RULES)
#: Longest text a whitespace-containing PII match can span (card/IBAN/phone with separators, key header).
SPACED_PII_CHARS = 64

# Prompt-injection and jailbreak phrasings. Each rule is documented in docs/filters/guardrails.md.
_W = r"(?:\s+\w+){0,3}?\s+"  # up to three filler words ("all of the", "your")
_IGNORE = "ignore|disregard|forget|skip|override|bypass"
INJECTION_RULES: tuple[Rule, ...] = (
    Rule("ignore_instructions",
         rf"\b(?:{_IGNORE})(?:{_W}|\s+)(?:previous|prior|above|earlier|preceding|former|system|original|initial|"
         r"all)(?:\s+\w+){0,2}?\s+(?:instructions?|prompts?|rules|directions|guidelines|context|messages?)\b",
         "[PROMPT_INJECTION]", spaced=True, hints=(_IGNORE,)),
    Rule("reveal_system_prompt",
         rf"\b(?:reveal|show|print|repeat|output|display|leak|tell me|what (?:is|are))(?:{_W}|\s+)"
         r"(?:system prompt|initial prompt|hidden (?:prompt|instructions)|(?:system|developer) (?:message|instructions))\b",
         "[PROMPT_INJECTION]", spaced=True, hints=("system|initial prompt|hidden|developer",)),
    Rule("role_override",
         r"\b(?:you are now|from now on,? you are|pretend (?:to be|you are)|act as (?:an? )?(?:unrestricted|unfiltered|"
         r"jailbroken|evil)|roleplay as an? (?:unrestricted|unfiltered))\b", "[PROMPT_INJECTION]", spaced=True,
         hints=("you are now|from now on|pretend|act as|roleplay",)),
    Rule("jailbreak_persona",
         r"\b(?:dan mode|do anything now|developer mode (?:enabled|on)|jailbreak(?:ed)? mode|god mode enabled|"
         r"stan mode|aim mode)\b", "[PROMPT_INJECTION]", spaced=True, hints=("mode|do anything now",)),
    Rule("no_restrictions",
         r"\b(?:without|no|free of|ignore (?:all|any|your))\s+(?:any\s+)?(?:restrictions|limitations|filters|"
         r"censorship|guardrails|safety (?:rules|guidelines))\b", "[PROMPT_INJECTION]", spaced=True,
         hints=("restrictions|limitations|filters|censorship|guardrails|safety",)),
    Rule("fake_delimiter",
         r"(?:<\|im_start\|>|<\|im_end\|>|<\|system\|>|<\|endoftext\|>|\[/?inst\]|<</?sys>>|###\s*(?:system|"
         r"instruction)s?\s*:)", "[PROMPT_INJECTION]", spaced=True),
)


@dataclass(frozen=True, slots=True)
class Hit:
    """A rule match, as a span of the normalised text."""

    rule: Rule
    start: int
    end: int


class Detector:
    """Rules run one by one, each only where its hint is present; overlapping hits keep the earliest."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self._compiled = [
            (rule, re.compile(rule.pattern, re.MULTILINE), [re.compile(h).search for h in rule.hints])
            for rule in self.rules
        ]

    def scan(self, text: str) -> list[Hit]:
        hits: list[Hit] = []
        for rule, pattern, hints in self._compiled:
            if hints and not any(hint(text) for hint in hints):
                continue
            validate = rule.validate
            for m in pattern.finditer(text):
                if validate is None or validate(m.group()):
                    hits.append(Hit(rule, m.start(), m.end()))
        if len(hits) < 2:
            return hits
        # Rule order breaks ties: a Luhn-valid card is not also reported as a phone number.
        order = {rule.name: i for i, rule in enumerate(self.rules)}
        hits.sort(key=lambda h: (h.start, order[h.rule.name]))
        kept: list[Hit] = []
        for hit in hits:
            if not kept or hit.start >= kept[-1].end:
                kept.append(hit)
        return kept


class CombinedDetector:
    """Many rules without validators (deny lists) in one alternation: one pass whatever the list length."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        combined = "|".join(f"(?P<r{i}>{_renumber(rule.pattern, i)})" for i, rule in enumerate(self.rules))
        self._combined = re.compile(combined, re.MULTILINE) if self.rules else None

    def scan(self, text: str) -> list[Hit]:
        if self._combined is None:
            return []
        hits = []
        for m in self._combined.finditer(text):
            if m.end() > m.start():
                hits.append(Hit(self.rules[int(str(m.lastgroup)[1:])], m.start(), m.end()))
        return hits


def _renumber(pattern: str, index: int) -> str:
    """Numbered groups and backreferences inside one alternative would clash: name them per rule."""
    if "(" not in pattern.replace("(?", ""):
        return pattern
    names: list[str] = []

    def name_group(m: re.Match[str]) -> str:
        names.append(f"g{index}_{len(names) + 1}")
        return f"(?P<{names[-1]}>"

    named = re.sub(r"(?<!\\)\((?!\?)", name_group, pattern)
    return re.sub(r"\\(\d)", lambda m: f"(?P={names[int(m.group(1)) - 1]})", named)


def term_rule(term: str, index: int) -> Rule:
    """A deny-list term as a whole-word rule over normalised text (any run of whitespace between words)."""
    words = normalize(term)[0].split()
    pattern = r"\s+".join(re.escape(word) for word in words)
    # The first character is consumed before the word-boundary lookbehind, so the alternation of all
    # terms starts with literals and the engine can skip ahead to candidate positions.
    cut = 2 if pattern.startswith("\\") else 1
    first, rest = pattern[:cut], pattern[cut:]
    return Rule(f"term[{index}]", rf"{first}(?<!\w{_ANY}){rest}(?!\w)", "[REDACTED]", spaced=len(words) > 1)


def pattern_rule(pattern: str, index: int) -> Rule:
    re.compile(pattern)  # fail early with the regex error
    # Patterns see casefolded text; case-insensitive so that "ACME" written in config still matches.
    return Rule(f"pattern[{index}]", f"(?i:{pattern})", "[REDACTED]", spaced=True)


def deny_rules(terms: Iterable[str], patterns: Iterable[str]) -> list[Rule]:
    rules = [term_rule(term, i) for i, term in enumerate(terms) if normalize(term)[0].strip()]
    return rules + [pattern_rule(p, i) for i, p in enumerate(patterns)]


def redact(text: str, spans: Sequence[tuple[int, int, str]]) -> str:
    """Replace (start, end, placeholder) spans of ``text``; overlapping spans merge into the first one."""
    out: list[str] = []
    last = 0
    for start, end, placeholder in sorted(spans):
        if end <= last:
            continue
        if start >= last:
            out.append(text[last:start])
            out.append(placeholder)
        last = end
    out.append(text[last:])
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Finding:
    """A match with its check, rule and action, as a span of the original text. Never holds the text."""

    check: str
    rule: str
    action: str
    start: int
    end: int
    placeholder: str


class Checks:
    """Detectors paired with the check they belong to and the action each rule takes."""

    def __init__(self, entries: Sequence[tuple[str, Detector | CombinedDetector, dict[str, str]]]) -> None:
        #: (check name, detector, action per rule name)
        self.entries = [entry for entry in entries if entry[1].rules]

    def __bool__(self) -> bool:
        return bool(self.entries)

    def find_normalized(self, norm: str) -> list[tuple[Hit, str, str]]:
        """(hit, check, action) over normalised text, sorted by position."""
        found: list[tuple[Hit, str, str]] = []
        for check, detector, actions in self.entries:
            for hit in detector.scan(norm):
                found.append((hit, check, actions[hit.rule.name]))
        found.sort(key=lambda item: item[0].start)
        return found

    def find(self, text: str) -> list[Finding]:
        norm, index = normalize(text)
        out = []
        for hit, check, action in self.find_normalized(norm):
            start, end = to_original(index, hit.start, _span_end(hit, norm), len(text))
            out.append(Finding(check, hit.rule.name, action, start, end, hit.rule.placeholder))
        return out


def open_block(hit: Hit, norm: str) -> bool:
    """A private key header whose END line has not been seen: the key material runs to the end of the text."""
    return hit.rule.name == "private_key" and "-----end" not in norm[hit.start:hit.end]


def _span_end(hit: Hit, norm: str) -> int:
    return len(norm) if open_block(hit, norm) else hit.end
