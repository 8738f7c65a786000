"""What one webhook says, and the callback URL that tells the provider where to send it.

The URL is ours, so it carries what we need: ``<base>/<token>?run=<run>&item=<label>&attempt=<n>``.
``run`` names the process's inbox (two runs may submit the same item), ``item`` (its label, unique
in its run: two items of one run may share a key) and ``attempt`` the submission. The token is an
HMAC of those three under the secret: the receiver recomputes it, so an address not made by us is
refused without a lookup, and the secret itself never leaves the process (a token leaked from a log
opens one submission's door, not the key's).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlencode

from pydantic import SecretStr

TOKEN_CHARS = 32  # 128 bits of the HMAC-SHA256


def token_for(secret: SecretStr, run: str, item: str, attempt: int) -> str:
    message = f"{run}\n{item}\n{attempt}".encode()
    return hmac.new(secret.get_secret_value().encode(), message, hashlib.sha256).hexdigest()[:TOKEN_CHARS]


def token_matches(secret: SecretStr, token: str, run: str, item: str, attempt: int) -> bool:
    return hmac.compare_digest(token_for(secret, run, item, attempt), token)


def callback_url(base: str, secret: SecretStr, run: str, item: str, attempt: int) -> str:
    query = urlencode({"run": run, "item": item, "attempt": attempt})
    return f"{base.rstrip('/')}/{token_for(secret, run, item, attempt)}?{query}"


@dataclass(frozen=True)
class Delivery:
    """A webhook whose address we made: which submission it is about and what the body claims."""

    run: str
    item: str  # the item's label (unique in its run)
    attempt: int
    prediction_id: str
    status: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Delivery:
        """ValueError unless ``data`` has every field with its type."""
        if not isinstance(data, dict):
            raise ValueError("a delivery is a JSON object")
        try:
            fields = {name: data[name] for name in ("run", "item", "attempt", "prediction_id", "status")}
        except KeyError as exc:
            raise ValueError(f"a delivery needs {exc.args[0]!r}") from None
        if not all(isinstance(fields[n], str) and fields[n] for n in ("run", "item", "prediction_id", "status")):
            raise ValueError("run, item, prediction_id and status are non-empty strings")
        if not isinstance(fields["attempt"], int) or isinstance(fields["attempt"], bool) or fields["attempt"] < 1:
            raise ValueError("attempt is a positive integer")
        return cls(**fields)
