"""Secrets out of logs, run records and error messages (issue #17).

A config value is secret when its key (at any depth, e.g. ``spark.conf`` entries like
``spark.hadoop.fs.s3a.secret.key``) matches Spark's own ``spark.redaction.regex`` default
``(?i)secret|password|token|access[.]key``, the usual credential names (``passwd``,
``credential``, ``api_key``, ``private_key``, ``*.key`` such as
``fs.azure.account.key.<account>...``, ``sas``, ``auth``), or a ``spark.redaction.regex``
the user set in ``spark.conf``. Its value becomes :data:`REDACTED`; ``user:password@`` in
URLs is redacted too. :func:`redact_text` removes the secret values themselves from any
text, e.g. an exception message quoting an option.

Example:
    >>> redact_config({"spark": {"conf": {"spark.hadoop.fs.s3a.secret.key": "abc"}}})
    {'spark': {'conf': {'spark.hadoop.fs.s3a.secret.key': '*********(redacted)'}}}
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

__all__ = ["REDACTED", "is_secret_key", "redact_config", "redact_text", "secret_values"]

REDACTED = "*********(redacted)"  # what Spark's own redaction writes
SPARK_REDACTION_REGEX = r"(?i)secret|password|token|access[.]key"  # spark.redaction.regex default
# The same, except that "...tokens" (chunking.max_tokens, generator.max_new_tokens) is a count.
_SPARK_LIKE = r"(?i)secret|password|token(?!s(?:$|[^a-z]))|access[.]key"
_USUAL = (r"(?i)passwd|credential|api[._-]?key|private[._-]?key|(^|[._-])key([._-]|$)|(^|[._-])sas([._-]|$)"
          r"|(^|[._-])auth([._-]|$)|authorization|cookie")
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][\w+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@")


def _patterns(extra: str | None) -> list[re.Pattern[str]]:
    found = [re.compile(_SPARK_LIKE), re.compile(_USUAL)]
    if extra:
        try:
            found.append(re.compile(extra))
        except re.error:  # a Java-only regex: the built-in patterns still apply
            pass
    return found


def is_secret_key(key: str, extra_regex: str | None = None) -> bool:
    """Whether a config key names a secret."""
    return any(p.search(key) for p in _patterns(extra_regex))


def _user_regex(config: Mapping[str, Any]) -> str | None:
    conf = (config.get("spark") or {}).get("conf") if isinstance(config.get("spark"), Mapping) else None
    return conf.get("spark.redaction.regex") if isinstance(conf, Mapping) else None


def redact_config(config: Mapping[str, Any], extra_regex: str | None = None) -> dict[str, Any]:
    """A copy of a config mapping (``to_dict(cfg)``) with secret values replaced by :data:`REDACTED`."""
    patterns = _patterns(extra_regex or _user_regex(config))

    def walk(value: Any, key: str) -> Any:
        if key and any(p.search(key) for p in patterns) and value not in (None, ""):
            return REDACTED
        if isinstance(value, Mapping):
            return {k: walk(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, "") for v in value]
        if isinstance(value, str):
            return _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", value)
        return value

    return walk(config, "")


def secret_values(config: Mapping[str, Any], extra_regex: str | None = None) -> list[str]:
    """Every secret string in a config mapping (values of secret keys, URL passwords)."""
    patterns = _patterns(extra_regex or _user_regex(config))
    found: list[str] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v, "")
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            text = str(value)
            if key and any(p.search(key) for p in patterns) and text:
                found.append(text)
            elif isinstance(value, str):
                found.extend(m["pw"] for m in _URL_USERINFO.finditer(value))

    walk(config, "")
    return found


def redact_text(text: str | None, secrets: Iterable[str]) -> str | None:
    """``text`` with every occurrence of each secret (and URL passwords) replaced by :data:`REDACTED`."""
    if text is None:
        return None
    # Longest first, so a secret that contains another is removed whole; very short values
    # (a 1-2 character "key") would shred ordinary words and are not worth hiding.
    for secret in sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
