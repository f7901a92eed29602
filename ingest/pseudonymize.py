"""Keyed-hash pseudonymization of personal data, applied once, at ingestion.

A keyed hash (HMAC-SHA256) keeps joins possible (the same IP maps to the same token) while the
raw value never leaves the ingest process. Tokens carry a prefix so they are never hashed twice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re

from .schema import _Event

TOKEN_PREFIX = "pii_"
EMAIL = re.compile(rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
IPV4 = re.compile(rb"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?!\d|\.\d)")
_H = rb"[0-9A-Fa-f]{1,4}"
# Full eight-group form, or any form with "::"; plain "10:00:00" (a clock time) is not an address.
_G = _H + rb"(?::" + _H + rb"){0,6}"
IPV6 = re.compile(
    rb"(?<![0-9A-Za-z:])(?:(?:" + _H + rb":){7}" + _H + rb"|" + _G + rb"::(?:" + _G + rb")?|::" + _G + rb")(?![0-9A-Za-z]|:[0-9A-Fa-f])"
)
PERSONAL_FIELDS = frozenset({"ip", "device_id", "email"})
_FREE_TEXT = {"item_published": ("title", "description"), "user_signed_up": ("country",)}


class Pseudonymizer:
    def __init__(self, key: bytes | str):
        self._key = key.encode() if isinstance(key, str) else key

    def token(self, value: str) -> str:
        """The stable pseudonym of one personal value."""
        if value.startswith(TOKEN_PREFIX):
            return value
        digest = hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()
        return TOKEN_PREFIX + digest[:32]

    def scrub(self, data: bytes) -> bytes:
        """Replace every e-mail address and IP address in free bytes by its token."""
        sub = lambda m: self.token(m.group().decode(errors="replace")).encode()  # noqa: E731
        for pattern in (EMAIL, IPV4, IPV6):
            data = pattern.sub(sub, data)
        return data

    def scrub_payload(self, data: bytes) -> bytes:
        """Bytes that failed validation, made safe to keep: a JSON payload has its personal
        fields (by name, at any depth) tokenized and its strings scrubbed; other bytes are scrubbed."""
        try:
            doc = json.loads(data)
        except ValueError:
            return self.scrub(data)
        return json.dumps(self._walk(doc, 0)).encode()

    def _walk(self, node, depth: int):
        if depth > 32:
            return "<too deep>"
        if isinstance(node, dict):
            return {k: self.token(v) if k in PERSONAL_FIELDS and isinstance(v, str) else self._walk(v, depth + 1)
                    for k, v in node.items()}
        if isinstance(node, list):
            return [self._walk(v, depth + 1) for v in node]
        return self.scrub_text(node) if isinstance(node, str) else node

    def scrub_text(self, text: str) -> str:
        return self.scrub(text.encode()).decode(errors="replace")

    def apply(self, event: _Event) -> _Event:
        """The event with personal fields replaced by tokens and free text scrubbed."""
        changes: dict = {}
        if event.client is not None and (event.client.ip or event.client.device_id):
            changes["client"] = event.client.model_copy(update={
                "ip": event.client.ip and self.token(event.client.ip),
                "device_id": event.client.device_id and self.token(event.client.device_id),
            })
        if event.event_type == "user_signed_up" and event.email:  # type: ignore[attr-defined]
            changes["email"] = self.token(event.email)  # type: ignore[attr-defined]
        for name in _FREE_TEXT.get(event.event_type, ()):  # type: ignore[attr-defined]
            value = getattr(event, name)
            if value:
                changes[name] = self.scrub_text(value)
        return event.model_copy(update=changes) if changes else event
