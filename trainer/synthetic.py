"""Synthetic labelled IT tickets: the training data for the triage adapter (`ticket-triage generate`).

A small model learns the labels only from what the text says, so every label here is derived from the text, and
the texts vary as much as real tickets do. A ticket is composed from parts: a scenario's core sentence (one of
several phrasings, with slots such as device models, apps, floors, error codes), then an impact sentence, an
urgency sentence, fillers, a greeting, a closing and a signature (trainer/phrases.py). It is written as an end
user's e-mail, a terse one-liner, a long rambling message, a forwarded e-mail, a reply quoting an earlier
message, or a monitoring alert; in English, Spanish or Spanglish ("mix"); with noise (typos, Spanish without
accents, SHOUTING, all lower case, no punctuation).

Labels:

- category, subcategory: the scenario's.
- request_type: the scenario's: something broken or degraded is an "Incident"; "I need / please install /
  can I get / access for a new starter" is a "Service Request". Many subcategories have both.
- priority: impact x urgency, as the text states them::

      impact \\ urgency    low       normal     high
      individual          Low       Medium     High
      team (or a VIP)     Medium    High       High
      many                High      Critical   Critical

  impact: nothing said or "just me" -> individual; "my whole team / everyone in Finance" -> team; a VIP (CEO,
  CFO, COO, Managing Director, General Counsel) -> team; "the whole office / company-wide / half the company /
  nobody at the site" -> many. urgency: "no rush / I have a workaround / whenever" -> low; "I can't work at all /
  client demo in an hour / deadline today / needed today" -> high; nothing said -> normal for an incident and
  low for a service request ("by the end of the week" makes a request normal). Some scenarios bound the result
  by what their text says: a clicked phishing link, a stolen laptop, personal data sent to the wrong person, a
  leaver's live account are at least High; a lost USB stick or an open secure door at least Medium; ransomware
  and a phishing campaign are Critical. Monitoring alerts take their severity: warning/average/minor -> Medium,
  major/high/error -> High, critical/disaster/fatal -> Critical.
- assignment_group: `ROUTING[(category, subcategory, request_type)]`, a fixed table (see `route`).
- summary: a short English line (the scenario's), even for Spanish tickets; never `"`, `\\` or a line break.

Any other taxonomy: the hand-written banks are used for whichever standard fields still fit (the default
categories and subcategories, or a subset of them; priority Low..Critical; request_type; a group list holding
every routed group). A field that does not fit, and every custom enum field, gets a value chosen uniformly and
a sentence naming it ("Please route this to {value}", "{field}: {value}"). When the categories themselves do
not fit, the whole ticket is built from generic templates around the values and their descriptions ("Problem
with {value} ({description})"), every enum value chosen uniformly. Other text fields get the summary.

Records: {"id": "syn-000123", "text", "language": "en" | "es" | "mix", "labels", "source": "synthetic",
"group"}; `group` names the scenario and core phrasing (or alert) the text was built from, so trainer.splits
keeps paraphrases of one phrasing in one split. Same seed, same records, byte for byte (one random.Random(seed),
no global random, no hash() of strings).
"""
from __future__ import annotations

import math
import random
import re
import sys
import unicodedata
from datetime import datetime
from typing import Any, Callable, Mapping, Sequence

from tqdm import tqdm

from triage_core.taxonomy import Field, Taxonomy

from . import phrases as P
from .records import Record
from .splits import normalize_text

LANGUAGES = ("en", "es", "mix")
DEFAULT_LANG_MIX: dict[str, float] = {"en": 0.6, "es": 0.25, "mix": 0.15}

#: System-instruction phrasings the trainer rotates through ("implicit training"): the adapter should follow the
#: task however it is asked, not only under the one inference prompt. They never go into the records.
INSTRUCTIONS: tuple[str, ...] = (
    "Classify this IT ticket and return JSON.",
    "Route the following service desk request to the right team and answer in JSON.",
    "Read the ticket below and fill in the triage fields as a JSON object.",
    "You are an IT service desk triage assistant. Label the ticket and reply with JSON only.",
    "Triage this support ticket: summarise it and pick the category, priority and team.",
    "Categorise the user's IT issue and output the result as JSON.",
    "Decide what this ticket is about, how urgent it is and who should handle it. Reply in JSON.",
    "Give this helpdesk ticket a short summary and its classification, formatted as JSON.",
    "Turn the ticket into a structured triage record (JSON).",
    "Analyse the incoming request and return the triage labels in JSON.",
    "Help the service desk: classify and prioritise this ticket. JSON output only.",
    "Here is a ticket from an employee. Work out the category, urgency and assignment and answer with JSON.",
    "Label this IT request for routing. Respond with a JSON object.",
    "Fill in the ticket fields for the following message and return them as JSON.",
    "Sort this ticket into the service desk taxonomy and give the answer as JSON.",
    "What kind of ticket is this and where should it go? Answer with the JSON triage fields.",
    "Process this service desk email into its triage fields: summary, category, priority, group and type, as JSON.",
    "Clasifica este ticket de soporte IT y devuelve el resultado en JSON.",
    "Triage the message below for the IT helpdesk queue; output one JSON object.",
)

PRIORITIES = ("Low", "Medium", "High", "Critical")
REQUEST_TYPES = (P.INC, P.REQ)
PRIORITY_MATRIX: dict[str, dict[str, str]] = {
    "individual": {"low": "Low", "normal": "Medium", "high": "High"},
    "team": {"low": "Medium", "normal": "High", "high": "High"},
    "many": {"low": "High", "normal": "Critical", "high": "Critical"},
}
_IMPACT_WEIGHTS = {"individual": 12, "team": 5, "many": 3, "vip": 2}
# A request is usually not urgent; an incident usually is "normal" (nothing said).
_URGENCY_WEIGHTS = {P.INC: {"low": 2, "normal": 5, "high": 3}, P.REQ: {"low": 6, "normal": 3, "high": 2}}

# Routing: the category's team, unless the subcategory (and request type) says otherwise.
_GROUP_BY_CATEGORY = {
    "Hardware": "Desktop Support",
    "Software": "End User Applications",
    "Access": "Security / Access",
    "Network": "Network Operations",
    "Email & Collaboration": "Email / Messaging",
    "Security": "Security / Access",
    "Data & Storage": "Infrastructure",
    "Workplace": "Facilities",
}
_GROUP_BY_SUBCATEGORY = {
    ("Hardware", "Printer / Scanner"): "Hardware Support",
    ("Hardware", "Mobile Device"): "Hardware Support",
    ("Hardware", "Other"): "Hardware Support",
    ("Software", "Installation / Upgrade"): "Desktop Support",  # installs on a PC
    ("Access", "Password Reset"): "Service Desk",
    ("Access", "Login Issues"): "Service Desk",
}
_GROUP_BY_REQUEST = {
    ("Security", "Physical Security", P.REQ): "Facilities",  # badge and door access is issued by Facilities
}
ROUTING: dict[tuple[str, str, str], str] = {
    (cat, sub, rt): _GROUP_BY_REQUEST.get((cat, sub, rt))
    or _GROUP_BY_SUBCATEGORY.get((cat, sub)) or _GROUP_BY_CATEGORY[cat]
    for (cat, sub) in P.SCENARIOS for rt in REQUEST_TYPES
}

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_FORBIDDEN_IN_SUMMARY = re.compile(r'["\\\x00-\x1f\x7f\u2028\u2029]')
_STYLES = (("enduser", 45), ("terse", 13), ("rambling", 12), ("forwarded", 13), ("reply", 17))
_ALERT_SHARE = 0.3
_DEFAULT_SEVERITIES = ("Medium", "High", "Critical")
_MONTHS = {"en": ["January", "February", "March", "April", "May", "June", "July", "August", "September",
                  "October", "November", "December"],
           "es": ["enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre",
                  "octubre", "noviembre", "diciembre"]}
_WEEKDAYS = {"en": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
             "es": ["lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"]}
_NEIGHBOURS = {"a": "qs", "b": "vn", "c": "xv", "d": "sf", "e": "wr", "f": "dg", "g": "fh", "h": "gj", "i": "uo",
               "j": "hk", "k": "jl", "l": "k", "m": "n", "n": "bm", "o": "ip", "p": "o", "q": "w", "r": "et",
               "s": "ad", "t": "ry", "u": "yi", "v": "cb", "w": "qe", "x": "zc", "y": "tu", "z": "x"}


def route(category: str, subcategory: str, request_type: str) -> str:
    """The assignment group for a ticket of the default taxonomy: a fixed table, so a model can learn it."""
    return ROUTING[(category, subcategory, request_type)]


def priority_for(impact: str, urgency: str, floor: str | None = None, fixed: str | None = None) -> str:
    """Priority from the impact and urgency a ticket states (the matrix in the module docstring)."""
    if fixed:
        return fixed
    chosen = PRIORITY_MATRIX["team" if impact == "vip" else impact][urgency]
    if floor and PRIORITIES.index(floor) > PRIORITIES.index(chosen):
        return floor
    return chosen


def parse_lang_mix(text: str) -> dict[str, float]:
    """Parse "en=0.6,es=0.25,mix=0.15" (shares, normalised later; unnamed languages get none)."""
    shares: dict[str, float] = {}
    if not text.strip():
        raise ValueError("empty; expected e.g. en=0.6,es=0.25,mix=0.15")
    for item in text.split(","):
        name, sep, number = item.partition("=")
        name = name.strip().lower()
        if not sep:
            raise ValueError(f"{item.strip()!r} is not LANGUAGE=SHARE")
        if name not in LANGUAGES:
            raise ValueError(f"unknown language {name!r} (expected {', '.join(LANGUAGES)})")
        if name in shares:
            raise ValueError(f"{name} given twice")
        try:
            shares[name] = float(number)
        except ValueError:
            raise ValueError(f"{name}: {number.strip()!r} is not a number") from None
    return _check_lang_mix(shares)


def _check_lang_mix(shares: Mapping[str, float]) -> dict[str, float]:
    for name, share in shares.items():
        if name not in LANGUAGES:
            raise ValueError(f"unknown language {name!r} (expected {', '.join(LANGUAGES)})")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share) or share < 0:
            raise ValueError(f"{name}: share must be a non-negative number")
    total = sum(shares.values())
    if total <= 0:
        raise ValueError("at least one language needs a share above 0")
    return {name: shares.get(name, 0.0) / total for name in LANGUAGES}


def generate(taxonomy: Taxonomy, n: int, seed: int = 13, lang_mix: Mapping[str, float] | None = None,
             progress: bool = False) -> list[Record]:
    """`n` distinct synthetic records labelled for `taxonomy` (fewer only if the banks cannot make n distinct).

    Texts are deduplicated on their normalized form; ids are "syn-000001"... in generation order.
    """
    if n < 0:
        raise ValueError("n must not be negative")
    shares = _check_lang_mix(DEFAULT_LANG_MIX if lang_mix is None else lang_mix)
    langs = [lang for lang in LANGUAGES if shares[lang] > 0]
    weights = [shares[lang] for lang in langs]
    plan = _Plan(taxonomy)
    rng = random.Random(seed)
    records: list[Record] = []
    seen: set[str] = set()
    attempts, max_attempts = 0, 50 * n + 100
    with tqdm(total=n, desc="generate", unit="ticket", disable=not progress, file=sys.stderr) as bar:
        while len(records) < n and attempts < max_attempts:
            attempts += 1
            lang = rng.choices(langs, weights)[0]
            text, labels, group = plan.ticket(rng, lang)
            norm = normalize_text(text)
            if not norm or norm in seen:
                continue
            seen.add(norm)
            record = {"id": f"syn-{len(records) + 1:06d}", "text": text, "language": lang, "labels": labels,
                      "source": "synthetic", "group": group}
            records.append(record)  # type: ignore[arg-type]
            bar.update(1)
    return records


# --- helpers ----------------------------------------------------------------------------------------------------

def _fill(template: str, lookup: Callable[[str], str]) -> str:
    """Replace {name} placeholders in one pass (inserted values are never re-scanned)."""
    return _PLACEHOLDER.sub(lambda m: lookup(m.group(1)), template)


def placeholders(template: str) -> set[str]:
    """The slot names a template uses."""
    return set(_PLACEHOLDER.findall(template))


def clean_summary(text: str, max_length: int = 120) -> str:
    """A summary the decoder can write: no quotes, backslashes or control characters, at most max_length."""
    text = " ".join(_FORBIDDEN_IN_SUMMARY.sub(" ", text).split())
    if len(text) > max_length:
        cut = text[:max_length + 1].rsplit(" ", 1)[0]
        text = (cut if 0 < len(cut) <= max_length else text[:max_length]).rstrip(" ,;:-")
    return text or "Ticket"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:] if text[:1].islower() else text


def _strip_accents(text: str) -> str:
    out = unicodedata.normalize("NFKD", text)
    return unicodedata.normalize("NFC", "".join(c for c in out if not unicodedata.combining(c)))


def _typos(text: str, rng: random.Random, rate: float) -> str:
    def one(m: re.Match) -> str:
        word = m.group(0)
        if rng.random() >= rate:
            return word
        i = rng.randrange(1, len(word) - 1)
        op = rng.randrange(4)
        if op == 0:
            return word[:i] + word[i + 1] + word[i] + word[i + 2:]
        if op == 1:
            return word[:i] + word[i + 1:]
        if op == 2:
            return word[:i] + word[i] + word[i:]
        near = _NEIGHBOURS.get(word[i].lower())
        return word[:i] + rng.choice(near) + word[i + 1:] if near else word

    return re.sub(r"[A-Za-zÁÉÍÓÚáéíóúñÑ]{4,}", one, text)


def _noise(text: str, rng: random.Random, lang: str) -> str:
    """What people do to their tickets: missing accents, caps lock, no capitals, typos, no punctuation."""
    if lang != "en" and rng.random() < 0.4:
        text = _strip_accents(text)
    r = rng.random()
    if r < 0.04:
        text = text.upper()
    elif r < 0.14:
        text = text.lower()
    if rng.random() < 0.3:
        text = _typos(text, rng, rng.uniform(0.02, 0.1))
    if rng.random() < 0.05:
        text = re.sub(r"[.,;¿¡]", "", text)
    return text


def _when(rng: random.Random) -> datetime:
    return datetime(2024 + rng.randrange(2), rng.randrange(1, 13), rng.randrange(1, 29), rng.randrange(7, 20),
                    rng.randrange(60), rng.randrange(60))


def _date_line(when: datetime, lang: str, style: int) -> str:
    if lang == "en":
        day, month = _WEEKDAYS["en"][when.weekday()], _MONTHS["en"][when.month - 1]
        if style == 0:
            return f"{day[:3]}, {when.day} {month[:3]} {when.year} at {when:%H:%M}"
        hour = when.hour % 12 or 12
        return f"{day}, {month} {when.day}, {when.year} {hour}:{when:%M} {'AM' if when.hour < 12 else 'PM'}"
    day, month = _WEEKDAYS["es"][when.weekday()], _MONTHS["es"][when.month - 1]
    if style == 0:
        return f"{day[:3]}, {when.day} {month[:3]} {when.year} a las {when:%H:%M}"
    return f"{day}, {when.day} de {month} de {when.year} {when:%H:%M}"


# --- the plan: which fields the banks can label for this taxonomy -----------------------------------------------

class _Plan:
    """How to label tickets for one taxonomy: from the hand-written banks where they fit, generically elsewhere."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        self.taxonomy = taxonomy
        self.pairs = self._bank_pairs(taxonomy)
        rich: set[str] = set()
        if self.pairs is not None:
            rich |= {name for name in ("category", "subcategory") if name in taxonomy}
            groups = {ROUTING[(c, s, rt)] for c, s in self.pairs for rt in REQUEST_TYPES}
            for name, fits in (("priority", lambda v: set(v) == set(PRIORITIES)),
                               ("request_type", lambda v: set(v) == set(REQUEST_TYPES)),
                               ("assignment_group", lambda v: groups <= set(v))):
                if name in taxonomy and taxonomy[name].is_enum and taxonomy[name].parent is None \
                        and fits(taxonomy[name].values):
                    rich.add(name)
            if not rich and taxonomy.enum_fields:
                self.pairs = None  # the banks label none of the enums: generic texts make every value learnable
        self.rich = rich if self.pairs is not None else set()
        self.extra = [f for f in taxonomy.enum_fields if f.name not in self.rich]
        self.summary_limit = min((f.max_length for f in taxonomy.fields if f.kind == "text"), default=120)

    @staticmethod
    def _bank_pairs(taxonomy: Taxonomy) -> list[tuple[str, str]] | None:
        pairs = list(P.SCENARIOS)
        if "category" in taxonomy:
            cat = taxonomy["category"]
            if not cat.is_enum or cat.parent is not None or not set(cat.values) <= {c for c, _ in pairs}:
                return None
            pairs = [p for p in pairs if p[0] in cat.values]
        if "subcategory" in taxonomy:
            sub = taxonomy["subcategory"]
            if not sub.is_enum or sub.parent != "category":
                return None
            for cat_value, subs in sub.children.items():
                if not set(subs) <= {s for c, s in P.SCENARIOS if c == cat_value}:
                    return None
            pairs = [p for p in pairs if p[1] in sub.children[p[0]]]
        return pairs or None

    def ticket(self, rng: random.Random, lang: str) -> tuple[str, dict[str, str], str]:
        """(text, labels, group) for one ticket."""
        if self.pairs is None:
            return self._generic(rng, lang)
        return self._rich(rng, lang)

    def _labels(self, known: Mapping[str, str], summary: str) -> dict[str, str]:
        labels: dict[str, str] = {}
        for f in self.taxonomy.fields:
            labels[f.name] = clean_summary(summary, f.max_length) if f.kind == "text" else known[f.name]
        return labels

    def _extras(self, rng: random.Random, known: dict[str, str]) -> list[tuple[Field, str]]:
        """Uniform values for the fields the banks do not label (the parent's value first, by field order)."""
        chosen = []
        for f in self.extra:
            value = rng.choice(f.allowed(known))
            known[f.name] = value
            chosen.append((f, value))
        return chosen

    def _rich(self, rng: random.Random, lang: str) -> tuple[str, dict[str, str], str]:
        cat, sub = rng.choice(self.pairs)  # type: ignore[arg-type]
        scen = rng.choice(P.SCENARIOS[(cat, sub)])
        rt = scen["type"]
        writer = _Writer(rng, lang, self.summary_limit)
        alerts = scen.get("alerts")
        known = {"category": cat, "subcategory": sub, "request_type": rt, "assignment_group": route(cat, sub, rt)}
        if alerts and lang == "en" and rng.random() < _ALERT_SHARE:
            index = rng.randrange(len(alerts))
            alert = alerts[index]
            severity = known["priority"] = rng.choice(alert.get("sev", _DEFAULT_SEVERITIES))
            cues = writer.cues(self._extras(rng, known))  # a custom priority field is replaced here
            text, summary = writer.alert(alert, severity, cues)
            return text, self._labels(known, summary), f"{scen['id']}/alert{index}"
        impact = _weighted(rng, scen["impact"], _IMPACT_WEIGHTS)
        urgency = _weighted(rng, scen.get("urgency", ("low", "normal", "high")), _URGENCY_WEIGHTS[rt])
        known["priority"] = priority_for(impact, urgency, scen.get("floor"), scen.get("fixed"))
        cues_for = self._extras(rng, known)
        text, summary, group = writer.scenario_ticket(scen, impact, urgency, cues_for)
        return text, self._labels(known, summary), group

    def _generic(self, rng: random.Random, lang: str) -> tuple[str, dict[str, str], str]:
        known: dict[str, str] = {}
        chosen = self._extras(rng, known)
        writer = _Writer(rng, lang, self.summary_limit)
        text, summary, group = writer.generic_ticket(chosen)
        return text, self._labels(known, summary), group


def _weighted(rng: random.Random, options: Sequence[str], weights: Mapping[str, int]) -> str:
    return rng.choices(list(options), [weights[o] for o in options])[0]


# --- writing one ticket -----------------------------------------------------------------------------------------

class _Writer:
    """Writes one ticket: slot values picked once (text and summary agree), parts, style, noise."""

    def __init__(self, rng: random.Random, lang: str, summary_limit: int = 120) -> None:
        self.rng = rng
        self.lang = lang
        self.summary_limit = summary_limit
        self.base = lang if lang != "mix" else rng.choice(("en", "es"))  # the core's language for a mix ticket
        self._picks: dict[str, int] = {}
        self.first = rng.choice(P.FIRST_NAMES)
        self.name = f"{self.first} {rng.choice(P.LAST_NAMES)}"
        self.company = rng.choice(P.COMPANIES)

    # slots and banks
    def slot(self, name: str, lang: str) -> str:
        values = P.SLOTS[name]
        if name not in self._picks:
            self._picks[name] = self.rng.randrange(len(values))
        value = values[self._picks[name]]
        if isinstance(value, tuple):
            return value[0] if lang == "en" else value[1]
        return value

    def render(self, template: str, lang: str) -> str:
        text = _fill(template, lambda name: self.slot(name, lang))
        return _cap(text) if template.startswith("{") else text

    def part_lang(self) -> str:
        """The language of one part: the ticket's, or for a mix ticket mostly the other one."""
        if self.lang != "mix":
            return self.lang
        r = self.rng.random()
        other = "es" if self.base == "en" else "en"
        return other if r < 0.5 else "mix" if r < 0.75 else self.base

    def pick(self, bank: Mapping[str, Sequence[str]], lang: str) -> str:
        options = bank.get(lang) or bank[self.rng.choice(("en", "es"))]
        return self.render(self.rng.choice(options), lang)

    def email(self, name: str | None = None) -> str:
        local = _strip_accents(name or self.name).lower().replace(" ", ".")
        return f"{local}@{self.company}"

    # parts
    def greeting(self, lang: str) -> str:
        return self.pick(P.GREETINGS, lang) + self.rng.choice((",", ",", "", "!", " -"))

    def closing(self, lang: str) -> str:
        closing = self.pick(P.CLOSINGS, lang)
        sig_lang = lang if lang in P.SIGNATURES else self.rng.choice(("en", "es"))
        title = self.rng.choice(P.TITLES)
        values = {"name": self.name, "first": self.first, "company": self.company,
                  "title": title[0] if sig_lang == "en" else title[1],
                  "dept": self.slot("dept", sig_lang), "site": self.slot("site", sig_lang),
                  "ext": self.slot("ext", sig_lang)}
        signature = _fill(self.rng.choice(P.SIGNATURES[sig_lang]), values.__getitem__)
        r = self.rng.random()
        if r < 0.15:
            return closing
        if r < 0.35 and "\n" not in signature:
            return f"{closing}, {signature}"
        return f"{closing},\n{signature}"

    def cues(self, chosen: Sequence[tuple[Field, str]]) -> list[str]:
        """One sentence per extra field naming its value (what makes a uniformly chosen value learnable)."""
        out = []
        for f, value in chosen:
            lang = self.part_lang()
            bank = P.GENERIC_FIELD.get(f.name, P.GENERIC_FIELD["*"])
            out.append(self._generic_sentence(bank, lang, f, value))
        return out

    def _generic_sentence(self, bank: Mapping[str, Sequence[str]], lang: str, f: Field, value: str,
                          index: list[int] | None = None) -> str:
        desc = (f.value_descriptions.get(value) or "").strip().rstrip(".")
        options = bank.get(lang) or bank["en"]
        usable = [i for i, t in enumerate(options) if desc or "{desc}" not in t]
        i = self.rng.choice(usable)
        if index is not None:
            index.append(i)
        text = _fill(options[i], {"value": value, "desc": desc, "field": f.name.replace("_", " ")}.__getitem__)
        return _cap(text)

    # whole tickets
    def scenario_ticket(self, scen: Mapping[str, Any], impact: str, urgency: str,
                        extras: Sequence[tuple[Field, str]]) -> tuple[str, str, str]:
        rng = self.rng
        rt = scen["type"]
        style = rng.choices([s for s, _ in _STYLES], [w for _, w in _STYLES])[0]
        if self.lang == "mix" and scen.get("mix") and (style == "terse" or rng.random() < 0.5):
            core_lang = "mix"  # a terse line has no greeting to carry the second language
        else:
            core_lang = self.base
        index = rng.randrange(len(scen[core_lang]))
        template = scen[core_lang][index]
        core = self.render(template, core_lang)
        group = f"{scen['id']}/{core_lang}{index}"
        summary = self.summary(scen["summary"], template)

        say_impact = not scen.get("quiet")
        impact_text = self.pick(P.IMPACT[rt][impact], self.part_lang()) if say_impact else ""
        urgency_text = self.pick(P.URGENCY[rt][urgency], self.part_lang())
        if urgency == "high" and urgency_text and rng.random() < 0.25:
            urgency_text = urgency_text.upper()
        cues = self.cues(extras)

        if style == "terse":
            lang = self.part_lang() if self.lang == "mix" else self.lang
            tlang = lang if lang in ("en", "es") else self.base
            bits = [core]
            if say_impact:
                bits.append(self.pick(P.TERSE_IMPACT[impact], tlang))
            bits.append(self.pick(P.TERSE_URGENCY[rt][urgency], tlang))
            bits += cues
            sep = rng.choice((" - ", ". ", ", ", "\n"))
            text = sep.join(b.rstrip(". ") for b in bits if b)
            if rng.random() < 0.5:
                text = text.lower()
            return _noise(text, rng, self.lang), summary, group

        fillers: list[str] = []
        count = rng.randrange(3, 7) if style == "rambling" else int(rng.random() < 0.25)
        for _ in range(count):
            bank = P.FILLERS["any"] if rng.random() < 0.5 else P.FILLERS[rt]
            filler = self.pick(bank, self.part_lang())
            if filler not in fillers:
                fillers.append(filler)
        if style == "rambling":
            for _ in range(rng.randrange(1, 3)):
                ramble = self.pick(P.RAMBLES, self.part_lang())
                if ramble not in fillers:
                    fillers.append(ramble)
        middle = [s for s in [impact_text, *fillers, *cues] if s]
        rng.shuffle(middle)
        sentences = [core, *middle]
        if urgency_text:
            if rng.random() < 0.2:
                sentences.insert(0, urgency_text)
            else:
                sentences.append(urgency_text)
        if style == "rambling" and len(sentences) > 3:
            cut = rng.randrange(2, len(sentences))
            body = " ".join(sentences[:cut]) + "\n\n" + " ".join(sentences[cut:])
        else:
            body = rng.choice((" ", " ", "\n")).join(sentences)

        subject = self.subject(rt, summary, urgency)
        return self.wrap(body, style, subject), summary, group

    def summary(self, options: Sequence[str], template: str) -> str:
        """One of the scenario's summaries naming only slots the core names, within the length limit if any is."""
        fits = [_cap(re.sub(r"^the ", "", self.render(s, "en"))) for s in options
                if placeholders(s) <= placeholders(template)]
        short = [s for s in fits if len(s) <= self.summary_limit]
        return self.rng.choice(short) if short else min(fits, key=len)

    def subject(self, rt: str, summary: str, urgency: str | None) -> str:
        rng = self.rng
        if self.lang == "en" and rng.random() < 0.4:
            subject = summary if rng.random() < 0.7 else summary.lower()
        else:
            subject = self.pick(P.SUBJECTS[rt], self.part_lang())
        if urgency == "high" and rng.random() < 0.4:
            subject = ("URGENT: " if self.lang == "en" else "URGENTE: ") + subject
        return subject

    def letter(self, body: str, subject: str | None) -> str:
        """Greeting, body, closing and signature, in one of a few layouts; then noise."""
        rng = self.rng
        lang_g = self.part_lang()
        if self.lang == "mix" and lang_g == self.base:
            lang_g = "mix"  # a mix ticket always shows its second language somewhere
        greeting = self.greeting(lang_g) if self.lang == "mix" or rng.random() < 0.85 else ""
        closing = self.closing(self.part_lang()) if rng.random() < 0.85 else ""
        layout = rng.randrange(4)
        if layout == 0:
            parts = [greeting, body, closing]
            text = "\n\n".join(p for p in parts if p)
        elif layout == 1:
            text = "\n".join(p for p in (greeting, body, closing) if p)
        elif layout == 2:
            head = f"{greeting} {body}" if greeting else body
            text = head + (f"\n\n{closing}" if closing else "")
        else:
            text = " ".join(p.replace("\n", " ") for p in (greeting, body, closing) if p)
        text = _noise(text, rng, self.lang)
        if subject and rng.random() < 0.45:
            text = (rng.choice(("", "", "Subject: ", "RE: ")) + subject + "\n\n" + text)
        return text

    def wrap(self, body: str, style: str, subject: str | None) -> str:
        """The whole ticket for a style: a plain letter, a forward, or a reply quoting an earlier message."""
        rng = self.rng
        if style in ("enduser", "rambling"):
            return self.letter(body, subject)
        when = _when(rng)
        if style == "forwarded":
            original = self.letter(body, None)
            forwarder = f"{rng.choice(P.FIRST_NAMES)} {rng.choice(P.LAST_NAMES)}"
            note_lang = self.part_lang()
            note = _fill(rng.choice(P.FORWARD_NOTES.get(note_lang) or P.FORWARD_NOTES["en"]),
                         {"other": self.first}.__getitem__)
            note = _noise(note + rng.choice(("", f"\n\n{forwarder.split()[0]}", f"\n{forwarder}")), rng, self.lang)
            hlang = "en" if note_lang == "en" or rng.random() < 0.4 else "es"
            subj = subject or "(no subject)"
            if hlang == "en":
                header = rng.choice((
                    f"---------- Forwarded message ---------\nFrom: {self.name} <{self.email()}>\n"
                    f"Date: {_date_line(when, 'en', 0)}\nSubject: {subj}\nTo: <it-support@{self.company}>",
                    f"________________________________\nFrom: {self.name}\nSent: {_date_line(when, 'en', 1)}\n"
                    f"To: IT Helpdesk\nSubject: FW: {subj}",
                    f"-----Original Message-----\nFrom: {self.name} <{self.email()}>\n"
                    f"Sent: {_date_line(when, 'en', 1)}\nTo: {forwarder}\nSubject: {subj}"))
            else:
                header = rng.choice((
                    f"---------- Mensaje reenviado ---------\nDe: {self.name} <{self.email()}>\n"
                    f"Fecha: {_date_line(when, 'es', 0)}\nAsunto: {subj}\nPara: <soporte@{self.company}>",
                    f"________________________________\nDe: {self.name}\nEnviado: {_date_line(when, 'es', 1)}\n"
                    f"Para: Soporte IT\nAsunto: RV: {subj}",
                    f"-----Mensaje original-----\nDe: {self.name} <{self.email()}>\n"
                    f"Enviado el: {_date_line(when, 'es', 1)}\nPara: {forwarder}\nAsunto: {subj}"))
            return f"{note}\n\n{header}\n\n{original}"
        if style == "reply":
            qlang = self.part_lang()
            qlang = qlang if qlang in ("en", "es") else self.base
            if rng.random() < 0.5:  # a follow-up on top of the quoted original
                original = self.letter(body, None)
                top = _noise(self.pick(P.FOLLOWUPS, self.part_lang()) + rng.choice(("", f"\n\n{self.first}")),
                             rng, self.lang)
                who = f"{self.name} <{self.email()}>"
            else:  # the answer on top of the service desk's question
                top = self.letter(body, None)
                original = self.pick(P.DESK_QUESTIONS, qlang) + f"\n\nRef: {rng.choice(P.SLOTS['ticket'])}"
                who = f"IT Service Desk <servicedesk@{self.company}>"
            quoted = "\n".join("> " + line if line else ">" for line in original.split("\n"))
            if qlang == "en":
                head = f"On {_date_line(when, 'en', 0)}, {who} wrote:"
            else:
                head = f"El {_date_line(when, 'es', 0)}, {who} escribió:"
            prefix = f"RE: {subject}\n\n" if subject and rng.random() < 0.3 else ""
            return f"{prefix}{top}\n\n{head}\n{quoted}"
        raise ValueError(style)

    def alert(self, alert: Mapping[str, Any], priority: str, cues: Sequence[str]) -> tuple[str, str]:
        """A monitoring alert (English); its severity word is what sets the priority."""
        rng = self.rng
        word = rng.choice(P.ALERT_SEVERITIES[priority])
        when = _when(rng)
        values = {"msg": self.render(alert["msg"], "en"), "host": self.slot(alert["host"], "en"),
                  "SEV": word.upper(), "Sev": word.capitalize(), "sev": word,
                  "ts": rng.choice((f"{when:%Y-%m-%d %H:%M:%S}", f"{when:%Y-%m-%dT%H:%M:%SZ}",
                                    f"{when:%d/%m/%Y %H:%M}")),
                  "id": str(rng.randrange(10000, 999999))}
        text = _fill(rng.choice(P.ALERT_FORMATS), values.__getitem__)
        if cues:
            text += "\n" + "\n".join(cues)
        if rng.random() < 0.15:
            note = rng.choice(("FYI, this alert keeps firing.", "Can someone look at the alert below?",
                               "Forwarding the monitoring alert below."))
            text = f"{note}\n\n> " + text.replace("\n", "\n> ")
        return text, _cap(self.render(alert["summary"], "en"))

    def generic_ticket(self, chosen: Sequence[tuple[Field, str]]) -> tuple[str, str, str]:
        """A ticket from value names and descriptions alone (taxonomies without hand-written banks)."""
        rng = self.rng
        if not chosen:
            body = self.pick(P.FILLERS["any"], self.part_lang())
            return self.letter(body, None), clean_summary(body), "gen/none"
        order = {f.name: i for i, (f, _) in enumerate(chosen)}
        topic_name = next((name for name in ("subcategory", "category") if name in order), chosen[0][0].name)
        topic_field, topic_value = chosen[order[topic_name]]
        lang = self.part_lang()
        index: list[int] = []
        topic = self._generic_sentence(P.GENERIC_TOPIC, lang, topic_field, topic_value, index)
        group = f"gen/{topic_name}={topic_value}/{lang}{index[0]}"
        cues = self.cues([c for c in chosen if c[0].name != topic_name])
        rng.shuffle(cues)
        fillers = [self.pick(P.FILLERS["any"], self.part_lang())] if rng.random() < 0.3 else []
        body = rng.choice((" ", "\n")).join([topic, *cues, *fillers])
        summary = clean_summary(_fill(rng.choice(P.GENERIC_SUMMARY), {"value": topic_value}.__getitem__))
        style = rng.choices(("enduser", "forwarded", "reply", "terse"), (60, 13, 15, 12))[0]
        if style == "terse":
            return _noise(body, rng, self.lang), summary, group
        return self.wrap(body, style, None), summary, group
