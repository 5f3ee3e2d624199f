"""Does one JSON schema accept every value another describes? The advisor's structure check.

Workers publish their pydantic models as JSON schemas. A merger (or validator) accepts an agent's
output when every value valid under the agent's output schema is also valid under the merger's
input schema. That question has no general answer; this one covers the shapes pydantic produces
(objects, arrays, scalars, unions, enums, ``$ref``) and gives the benefit of the doubt to
constraints it does not model (lengths, patterns, ranges).
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_ANNOTATIONS = {"title", "description", "default", "examples", "$defs", "definitions"}
_MAX_DEPTH = 24  # recursive models: stop instead of looping
_JSON_TYPES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    type(None): "null",
    list: "array",
    dict: "object",
}


def incompatibilities(target: Schema, source: Schema) -> list[str]:
    """Why some value valid under ``source`` may be rejected by ``target`` (empty: accepted)."""
    return _Check(target, source).run()


class _Check:
    def __init__(self, target_root: Schema, source_root: Schema) -> None:
        self.troot = target_root
        self.sroot = source_root

    def run(self) -> list[str]:
        return self.compare(self.troot, self.sroot, "", 0)

    def compare(self, t: Schema, s: Schema, path: str, depth: int) -> list[str]:
        if depth > _MAX_DEPTH:
            return []
        t = _resolve(self.troot, t)
        s = _resolve(self.sroot, s)
        where = path or "<root>"
        if not _constrains(t):
            return []
        for key in ("anyOf", "oneOf"):
            if key in s:  # every shape the output may take must be accepted
                out: list[str] = []
                for branch in s[key]:
                    out += self.compare(t, {**_rest(s, key), **branch}, path, depth + 1)
                return out
        for key in ("anyOf", "oneOf"):
            if key in t:
                tries = [self.compare({**_rest(t, key), **b}, s, path, depth + 1) for b in t[key]]
                if any(not p for p in tries):
                    return []
                return min(tries, key=len)
        if not _constrains(s):
            return [f"{where}: the output is untyped (any value) but the input needs {_show(t)}"]
        problem = _type_problem(t, s, where)
        if problem:
            return [problem]
        out = _enum_problem(t, s, where)
        if _types(t) & {"object"} or "properties" in t:
            out += self.objects(t, s, path, depth)
        if "items" in t and "items" in s:
            out += self.compare(t["items"], s["items"], f"{path}[]", depth + 1)
        return out

    def objects(self, t: Schema, s: Schema, path: str, depth: int) -> list[str]:
        out: list[str] = []
        tprops: dict[str, Schema] = t.get("properties", {})
        sprops: dict[str, Schema] = s.get("properties", {})
        sextra = s.get("additionalProperties", True)
        for name in t.get("required", []):
            # pydantic dumps every field of a model, so each output property is always present.
            if name not in sprops:
                out.append(f"{_join(path, name)}: required by the input, not in the output model")
        for name, tschema in tprops.items():
            if name in sprops:
                out += self.compare(tschema, sprops[name], _join(path, name), depth + 1)
        textra = t.get("additionalProperties", True)
        extra = sorted(set(sprops) - set(tprops))
        if textra is False and extra:
            out.append(f"{path or '<root>'}: output fields {extra} are forbidden by the input")
        elif isinstance(textra, dict) and isinstance(sextra, dict):
            out += self.compare(textra, sextra, f"{_join(path, '*')}", depth + 1)
        return out


def _resolve(root: Schema, schema: Schema) -> Schema:
    seen = 0
    while "$ref" in schema and seen < _MAX_DEPTH:
        seen += 1
        ref = schema["$ref"]
        target: Any = root
        if not ref.startswith("#/"):
            return {}  # remote refs: not ours to judge
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        schema = {**target, **_rest(schema, "$ref")}
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return _resolve(root, {**schema["allOf"][0], **_rest(schema, "allOf")})
    return schema


def _rest(schema: Schema, key: str) -> Schema:
    return {k: v for k, v in schema.items() if k != key}


def _constrains(schema: Schema) -> bool:
    """False for ``{}`` and annotation-only schemas (pydantic's ``Any``)."""
    return any(k not in _ANNOTATIONS for k in schema)


def _types(schema: Schema) -> set[str]:
    if "const" in schema:
        return {_JSON_TYPES.get(type(schema["const"]), "string")}
    if "enum" in schema:
        return {_JSON_TYPES.get(type(v), "string") for v in schema["enum"]}
    declared = schema.get("type")
    if declared is None:
        return set()
    return {declared} if isinstance(declared, str) else set(declared)


def _type_problem(t: Schema, s: Schema, where: str) -> str | None:
    ttypes, stypes = _types(t), _types(s)
    if not ttypes or not stypes:
        return None
    accepted = set(ttypes)
    if "number" in accepted:
        accepted.add("integer")  # every integer is a number
    missing = sorted(stypes - accepted)
    if missing:
        return f"{where}: the output may be {'/'.join(missing)}, the input needs {_show(t)}"
    return None


def _enum_problem(t: Schema, s: Schema, where: str) -> list[str]:
    allowed = [t["const"]] if "const" in t else t.get("enum")
    if allowed is None:
        return []
    given = [s["const"]] if "const" in s else s.get("enum")
    if given is None:
        return [f"{where}: the input allows only {allowed}, the output is not restricted to them"]
    outside = [v for v in given if v not in allowed]
    return (
        [f"{where}: output values {outside} are not among the input's {allowed}"] if outside else []
    )


def _show(schema: Schema) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    types = sorted(_types(schema))
    return "/".join(types) if types else str(schema.get("title", "a typed value"))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
