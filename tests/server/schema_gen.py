"""Deterministic generator of JSON schemas for the structured-output suite (test_structured.py).

schema(i) is the i-th schema: an object of 2-5 properties mixing nested objects, arrays with
minItems/maxItems, enums, bounded integers and numbers, strings with a pattern or a maxLength,
required and optional properties, $ref into $defs, and anyOf. Every string is bounded (a
pattern, an enum or maxLength): a model with random weights would otherwise write strings until
max_tokens, which tests nothing more. Standard library only.
"""
import random

PATTERNS = ["^[a-z]{1,6}$", "^[A-Z][a-z]{0,4}$", "^[0-9]{2,4}$", "^(ab|cd)+$", "^x[0-9a-f]{1,3}$"]
WORDS = ["red", "green", "blue", "north", "south", "alpha", "beta", "on", "off", "µ-unit", "a b"]


def _leaf(rng):
    k = rng.randrange(7)
    if k == 0:
        lo = rng.randint(-50, 50)
        return {"type": "integer", "minimum": lo, "maximum": lo + rng.randint(0, 200)}
    if k == 1:
        lo = rng.choice([-10, 0, 0.5, 3])
        return {"type": "number", "minimum": lo, "maximum": lo + rng.choice([1, 10, 100])}
    if k == 2:
        return {"type": "boolean"}
    if k == 3:
        vals = rng.sample(WORDS, rng.randint(1, 4))
        if rng.random() < 0.3:
            vals.append(rng.randint(0, 9))
        return {"enum": vals}
    if k == 4:
        return {"type": "string", "pattern": rng.choice(PATTERNS)}
    if k == 5:
        lo = rng.randint(0, 2)
        return {"type": "string", "minLength": lo, "maxLength": lo + rng.randint(1, 6)}
    return {"type": "null"} if rng.random() < 0.3 else {"const": rng.choice(WORDS)}


def _node(rng, depth, defs):
    r = rng.random()
    if depth >= 3 or r < 0.45:
        return _leaf(rng)
    if r < 0.62:
        lo = rng.randint(0, 2)
        return {"type": "array", "items": _node(rng, depth + 1, defs), "minItems": lo, "maxItems": lo + rng.randint(0, 3)}
    if r < 0.78:
        return _object(rng, depth + 1, defs, rng.randint(1, 3))
    if r < 0.9:
        return {"anyOf": [_node(rng, depth + 1, defs), _leaf(rng)]}
    name = f"D{len(defs)}"
    defs[name] = None  # reserve the name: a $ref inside must not point back at it (no finite instance)
    defs[name] = _object(rng, depth + 1, defs, rng.randint(1, 2)) if rng.random() < 0.5 else _leaf(rng)
    return {"$ref": f"#/$defs/{name}"}


def _object(rng, depth, defs, nprops):
    props = {f"f{depth}_{j}": _node(rng, depth, defs) for j in range(nprops)}
    required = [k for k in props if rng.random() < 0.7]
    out = {"type": "object", "properties": props, "required": required}
    if rng.random() < 0.6:
        out["additionalProperties"] = False
    return out


def schema(i):
    rng = random.Random(1000 + i)
    defs = {}
    s = _object(rng, 0, defs, rng.randint(2, 5))
    if defs:
        s["$defs"] = defs
    return s


def wide_schema(i, fields):
    """A flat object of `fields` bounded fields, all required (the benchmark's 10-30-field schemas)."""
    rng = random.Random(5000 + i)
    props = {f"field_{i}_{j}": _leaf(rng) for j in range(fields)}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(schema(int(sys.argv[1]) if len(sys.argv) > 1 else 0), indent=1))
