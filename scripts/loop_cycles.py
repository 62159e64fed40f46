#!/usr/bin/env python3
"""Finds call chains among the event loop's methods that re-enter themselves.

Usage: scripts/loop_cycles.py [--self-test]

The loop's methods are the functions of every `impl Worker { ... }` block in worker/src
(test modules and comments stripped). Method A calls B when A's body says `self.B(`. A cycle
in that graph is a chain that can re-enter itself (pump -> release -> ... -> pump), which the
worker core's shape rules out: what one handler leaves for another connection is queued
(`again`, `activate`, the follow-ups) and applied by the loop. Calls through closures or other
receivers are not seen. Exit status 1 when there is a cycle; --self-test checks that a planted
cycle is found and a chain is not taken for one.
"""

import re
import sys
from pathlib import Path

from module_cycles import components

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "worker/src"
IMPL = re.compile(r"\nimpl Worker \{")
FN = re.compile(r"\n    (?:pub(?:\([a-z]+\))? )?fn ([a-z_][a-z0-9_]*)")
CALL = re.compile(r"\bself\s*\.\s*([a-z_][a-z0-9_]*)\s*(?:::<[^>]*>)?\(")
RAW_STRING = re.compile(r'b?r(#*)"')
CHAR = re.compile(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)|[^'\\\n])'")


def clean(text):
    """The source with comments removed and string and char literals blanked, so that
    braces and `self.x(` inside them do not count. Lifetimes (`'a`) are kept."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif (m := RAW_STRING.match(text, i)) and not (
            i and (text[i - 1].isalnum() or text[i - 1] == "_")
        ):
            end = text.find('"' + m.group(1), m.end())
            out.append('""')
            i = n if end < 0 else end + 1 + len(m.group(1))
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            out.append('""')
            i += 1
        elif (m := CHAR.match(text, i)):
            out.append("' '")
            i = m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def block(text, open_at):
    """The text from the `{` at open_at to its matching `}`."""
    depth, i = 0, open_at
    while True:
        c = text[i]
        depth += c == "{"
        depth -= c == "}"
        i += 1
        if depth == 0:
            return text[open_at:i]


def methods(texts):
    """Method name -> body, over every `impl Worker` block in the given sources."""
    out = {}
    for text in texts:
        text = clean(text)
        text = re.split(r"\n#\[cfg\(test\)\]", text)[0]
        for m in IMPL.finditer(text):
            body = block(text, m.end() - 1)
            for f in FN.finditer(body):
                out[f.group(1)] = block(body, body.index("{", f.end()))
    return out


def graph(found):
    return {name: {c for c in CALL.findall(body) if c in found} for name, body in found.items()}


def cycles(texts):
    edges = graph(methods(texts))
    loops = components(edges)
    # A method calling itself is a cycle of one.
    loops += [[m] for m, calls in edges.items() if m in calls]
    return edges, loops


def self_test():
    planted = """
impl Worker {
    fn a(&mut self) { self.b(1); let s = "}"; let r = r#"{"#; let q = '{'; }
    // fn z(&mut self) { self.a() }
    fn l<'a>(&mut self, x: &'a str) -> &'a str { /* self.l( */ x }
    fn b(&mut self, x: u8) { if x > 0 { self.c(); } }
    pub(crate) fn c(&mut self) { self.a() }
    fn d(&mut self) { self.d() }
    fn e(&mut self) { self.again.push(1); self.b(0); }
}
"""
    _, loops = cycles([planted])
    assert sorted(map(tuple, loops)) == [("a", "b", "c"), ("d",)], loops
    _, loops = cycles([planted.replace("self.a()", "()").replace("self.d()", "()")])
    assert loops == [], loops
    print("loop_cycles self-test: a planted cycle is found, a plain chain is not")


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    texts = [p.read_text() for p in sorted(SRC.rglob("*.rs"))]
    edges, loops = cycles(texts)
    if not edges:
        print("no `impl Worker` methods found under worker/src: the check has nothing to see")
        sys.exit(1)
    for loop in loops:
        print("a call chain re-enters itself through: " + " ".join(loop))
    if loops:
        sys.exit(1)
    print(f"no call cycle among the loop's {len(edges)} methods")


if __name__ == "__main__":
    main()
