#!/usr/bin/env python3
"""Finds import cycles between the modules of each crate, from `crate::` paths in its source.

Usage: scripts/module_cycles.py [--allow FILE]

A module is a file of a crate's src/ (`worker/src/client.rs` is `client`,
`worker/src/admin/show.rs` is `admin::show`, a folder's mod.rs is the folder). A module
depends on another when it names it through a `crate::` or `super::` path anywhere in code
(comments are stripped); a module and its own ancestors or descendants are nesting, not
dependencies. Calls through a shared `self` (methods of one type spread over files) are not
imports and are not seen. The strongly connected components with more than one module are the
cycles. Exit status 1 when a crate has a cycle that FILE (one line per allowed component:
`crate: a b c`, sorted names) does not list exactly, or lists one that is gone, so the list
can only shrink.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES = {
    "pgbouncers": ROOT / "src",
    "pgbouncers-supervisor": ROOT / "supervisor/src",
    "pgbouncers-worker": ROOT / "worker/src",
    "pgbouncers-proto": ROOT / "worker/proto/src",
}
PATH = re.compile(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super)((?:::[a-z_][a-z0-9_]*)*)::\{([^}]*)\}", re.S)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def module_of(src, path):
    """`admin/show.rs` is `admin::show`, `admin/mod.rs` is `admin`; lib.rs and main.rs are the root."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod" or (len(parts) == 1 and parts[0] in ("lib", "main")):
        parts = parts[:-1]
    return "::".join(parts)


def resolve(path, modules):
    """The longest module that `path` (a `::`-joined path from the crate root) starts with."""
    parts = path.split("::")
    for n in range(len(parts), 0, -1):
        candidate = "::".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def graph(src):
    files = {path: module_of(src, path) for path in sorted(src.rglob("*.rs"))}
    modules = set(files.values()) - {""}
    edges = {m: set() for m in modules}
    for path, module in files.items():
        if not module:
            continue
        text = strip_comments(path.read_text())
        parent = module.rsplit("::", 1)[0] if "::" in module else ""
        # A file that is a folder's mod.rs: `super` is its folder's parent.
        refs = []
        for root, rest in PATH.findall(text):
            refs.append((root, rest.lstrip(":")))
        for root, prefix, group in USE_GROUP.findall(text):
            for item in group.split(","):
                name = item.strip().split("::")[0].strip()
                if re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                    refs.append((root, (prefix.lstrip(":") + "::" + name).lstrip(":")))
        for root, rest in refs:
            full = rest if root == "crate" else (parent + "::" + rest if parent else rest)
            target = resolve(full, modules)
            # A module naming its own ancestor or descendant is Rust's nesting, not a cycle.
            if target and target != module and not target.startswith(module + "::") \
                    and not module.startswith(target + "::"):
                edges[module].add(target)
    return edges


def components(edges):
    """Tarjan's strongly connected components, iteratively."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(root):
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(edges[nxt]))))
                    break
                if nxt in on:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        top = stack.pop()
                        on.discard(top)
                        comp.append(top)
                        if top == node:
                            break
                    out.append(sorted(comp))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [c for c in out if len(c) > 1]


def main():
    allowed = set()
    if len(sys.argv) == 3 and sys.argv[1] == "--allow":
        for line in Path(sys.argv[2]).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                crate, names = line.split(":", 1)
                allowed.add((crate.strip(), " ".join(sorted(names.split()))))
    found = set()
    for crate, src in CRATES.items():
        for comp in components(graph(src)):
            found.add((crate, " ".join(comp)))
    ok = True
    for crate, comp in sorted(found):
        mark = "allowed" if (crate, comp) in allowed else "NEW"
        print(f"{crate}: cycle of {len(comp.split())} modules ({mark}): {comp}")
        ok &= mark == "allowed"
    for crate, comp in sorted(allowed - found):
        print(f"{crate}: the allowed cycle {comp} is gone: remove it from the list")
        ok = False
    if not found:
        print("no module cycle in any crate")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
