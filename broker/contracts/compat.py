"""Would a new version of a service break the callers of the one it replaces?

A minor version (same major) must keep every caller working:

- a request the old version accepted must still be accepted: no property
  newly required, no type narrowed, no enum value removed;
- a response field callers read must still come, with the same type: no
  property removed or no longer required, no type changed, no enum value added.

Anything else needs a new major version, served beside the old one.
The check walks ``properties`` and ``items`` of both schemas and names
the path that breaks (``request /owner/cccd: newly required``).
"""

from __future__ import annotations

from typing import Any


def _types(schema: Any) -> set[str] | None:
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind is None:
        return None
    return {kind} if isinstance(kind, str) else set(kind)


def _walk(old: Any, new: Any, path: str, side: str, found: list[str]) -> None:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return
    where = f"{side} {path or '/'}"
    old_t, new_t = _types(old), _types(new)
    if side == "request":
        if old_t is not None and (new_t is not None and not old_t <= new_t):
            found.append(f"{where}: type narrowed from {sorted(old_t)} to {sorted(new_t)}")
        if "enum" in new and {repr(v) for v in old.get("enum") or new["enum"]} - {
            repr(v) for v in new["enum"]
        }:
            found.append(f"{where}: enum narrowed")
        if "enum" in new and "enum" not in old:
            found.append(f"{where}: now limited to an enum")
        added = sorted(set(new.get("required", [])) - set(old.get("required", [])))
        found.extend(f"{side} {path}/{name}: newly required" for name in added)
    else:
        if old_t != new_t and old_t is not None:
            found.append(f"{where}: type changed from {sorted(old_t)} to {sorted(new_t or [])}")
        if "enum" in new and {repr(v) for v in new["enum"]} - {
            repr(v) for v in old.get("enum") or new["enum"]
        }:
            found.append(f"{where}: enum widened (callers may get values they do not know)")
        dropped = sorted(set(old.get("required", [])) - set(new.get("required", [])))
        found.extend(f"{side} {path}/{name}: no longer required (callers may not get it)" for name in dropped)
        removed = sorted(set(old.get("properties", {})) - set(new.get("properties", {})))
        found.extend(f"{side} {path}/{name}: removed" for name in removed)
    for name, sub in old.get("properties", {}).items():
        if name in new.get("properties", {}):
            _walk(sub, new["properties"][name], f"{path}/{name}", side, found)
    if "items" in old and "items" in new:
        _walk(old["items"], new["items"], f"{path}/items", side, found)


def breaking_changes(old_request: Any, old_response: Any, new_request: Any, new_response: Any) -> list[str]:
    """What in the new request and response schemas would break the old version's callers."""
    found: list[str] = []
    _walk(old_request, new_request, "", "request", found)
    _walk(old_response, new_response, "", "response", found)
    return found
