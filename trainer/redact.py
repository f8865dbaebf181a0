"""Redaction of personal data from ticket text before it is stored as training data.

Closed tickets carry e-mail addresses, phone numbers and IP addresses that the model must neither learn nor leak
into a summary. They are replaced by placeholders that keep the sentence readable (and teach the model that "an
address was here" without the address). Version strings, dates, ticket numbers and short numbers are left alone:
over-redaction would erase the signal the model learns from (error codes, build numbers).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

EMAIL = "[email]"
PHONE = "[phone]"
IP = "[ip]"

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# IPv4 with each octet 0-255, not part of a longer dotted number (a version like 10.2.3.4.5 stays).
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?:/\d{{1,2}})?(?![\d.]*\d)")
# IPv6 candidates (hex groups with colons, '::' compression); each is checked with the ipaddress module.
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:/\d{1,3})?(?![\w:])")
# Phone numbers: an optional +country code, then 7-15 digits grouped by spaces, dots, dashes or parentheses.
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){2,4}(?![\w])")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4}")


@dataclass
class RedactionCounts:
    email: int = 0
    phone: int = 0
    ip: int = 0

    @property
    def total(self) -> int:
        return self.email + self.phone + self.ip


def redact(text: str, counts: RedactionCounts | None = None) -> str:
    """`text` with e-mail addresses, IP addresses and phone numbers replaced by placeholders."""
    counts = counts if counts is not None else RedactionCounts()

    def sub_email(m: re.Match) -> str:
        counts.email += 1
        return EMAIL

    def sub_ipv4(m: re.Match) -> str:
        counts.ip += 1
        return IP

    def sub_ipv6(m: re.Match) -> str:
        candidate = m.group(0).split("/")[0]
        if candidate.count(":") < 2 or not any(c.isdigit() or c in "abcdefABCDEF" for c in candidate):
            return m.group(0)
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            return m.group(0)  # a time (10:30:00) or a MAC-like string that is not an address
        counts.ip += 1
        return IP

    def sub_phone(m: re.Match) -> str:
        raw = m.group(0)
        digits = sum(c.isdigit() for c in raw)
        if digits < 7 or digits > 15 or _DATE.search(raw):
            return raw
        if not raw.startswith("+") and not re.search(r"[\s.()-]", raw) and digits < 9:
            return raw  # a bare 7-8 digit number is more likely a ticket or asset number
        counts.phone += 1
        return PHONE

    text = _EMAIL.sub(sub_email, text)
    text = _IPV4.sub(sub_ipv4, text)
    text = _IPV6.sub(sub_ipv6, text)
    return _PHONE.sub(sub_phone, text)
