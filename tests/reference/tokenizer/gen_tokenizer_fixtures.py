#!/usr/bin/env python3
"""Generates the tokenizer conformance fixtures with Hugging Face `tokenizers`:

  qwen3_encode.json     corpus -> ids (and decode) with the genuine Qwen3-8B tokenizer.json
  qwen3_decode.json     random id lists -> decode, with and without skip_special_tokens
  embedded_encode.json  corpus -> ids with an HF tokenizer built like pie's embedded one
  nfc_cases.json        strings -> NFC by Python's unicodedata

Invalid UTF-8 corpus entries are stored as hex; their expected ids are HF's ids for the text
`bytes.decode("utf-8", "replace")` — pie's documented behaviour for invalid input.

Usage: python3 tests/reference/tokenizer/gen_tokenizer_fixtures.py
"""
import json
import os
import random
import sys
import unicodedata

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, decoders, AddedToken, Regex

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import corpus  # noqa: E402

QWEN = os.path.join(HERE, "..", "..", "..", "..", "shared", "models", "Qwen3-8B", "tokenizer.json")
SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def dump(name, obj):
    path = os.path.join(HERE, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {name}: {os.path.getsize(path)} bytes")


def encode_cases(tok):
    cases = []
    for name, t in corpus.corpus():
        case = {"name": name}
        if isinstance(t, bytes):
            case["hex"] = t.hex()
            text = t.decode("utf-8", "replace")
        else:
            case["text"] = t
            text = t
        ids = tok.encode(text, add_special_tokens=False).ids
        assert ids == tok.encode(text, add_special_tokens=True).ids
        case["ids"] = ids
        case["decoded"] = tok.decode(ids, skip_special_tokens=False)
        case["decoded_skip"] = tok.decode(ids, skip_special_tokens=True)
        cases.append(case)
    return cases


def embedded_tokenizer(qwen):
    """pie's embedded tokenizer, built with `tokenizers` from the Qwen3 file's first 500 ids."""
    q = json.load(open(QWEN, encoding="utf-8"))
    vocab = {s: i for s, i in q["model"]["vocab"].items() if i < 500}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in q["model"]["merges"][:244]]
    t = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    t.normalizer = normalizers.NFC()
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    t.decoder = decoders.ByteLevel()
    specials = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<think>", False),
                ("</think>", False), ("<tool_call>", False), ("</tool_call>", False),
                ("<tool_response>", False), ("</tool_response>", False), ("<|reserved_0|>", True),
                ("<|reserved_1|>", True), ("<|reserved_2|>", True)]
    for content, special in specials:
        t.add_tokens([AddedToken(content, special=special, normalized=False)])
    for i, (content, _) in enumerate(specials):
        assert t.token_to_id(content) == 500 + i
    return t


def decode_cases(tok, seed=99):
    rng = random.Random(seed)
    n = tok.get_vocab_size(with_added_tokens=True)
    cases = []
    for _ in range(300):
        k = rng.randint(0, 24)
        ids = []
        for _ in range(k):
            r = rng.random()
            if r < 0.1:
                ids.append(rng.randint(n - 30, n + 5))  # added tokens and unknown ids
            elif r < 0.4:
                ids.append(rng.randint(0, 300))          # bytes: often invalid UTF-8
            else:
                ids.append(rng.randint(0, n - 1))
        cases.append({"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                      "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    return cases


def nfc_cases(seed=7):
    rng = random.Random(seed)
    cases = []
    decomposable = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF
                    and unicodedata.decomposition(chr(c)) and not unicodedata.decomposition(chr(c)).startswith("<")]
    marks = [c for c in range(0x300, 0x370)] + [0x1AB0, 0x1DC0, 0x20D0, 0x093C, 0x05B7, 0x0F71, 0x0F72, 0x0F74]
    for c in decomposable:  # every canonical decomposition, decomposed and recomposed
        s = unicodedata.normalize("NFD", chr(c))
        cases.append([s, unicodedata.normalize("NFC", s)])
        cases.append([chr(c), unicodedata.normalize("NFC", chr(c))])
    for _ in range(2000):
        k = rng.randint(1, 8)
        s = "".join(chr(rng.choice(decomposable)) if rng.random() < 0.3 else
                    chr(rng.choice(marks)) if rng.random() < 0.5 else
                    chr(rng.choice([0x41, 0x65, 0x1100, 0x1161, 0x11A8, 0xAC00, 0x4E2D, 0x20]))
                    for _ in range(k))
        cases.append([s, unicodedata.normalize("NFC", s)])
    return {"unicode_version": unicodedata.unidata_version, "cases": cases}


def main():
    qwen = Tokenizer.from_file(QWEN)
    dump("qwen3_encode.json", encode_cases(qwen))
    dump("qwen3_decode.json", decode_cases(qwen))
    dump("embedded_encode.json", encode_cases(embedded_tokenizer(qwen)))
    dump("nfc_cases.json", nfc_cases())


if __name__ == "__main__":
    main()
