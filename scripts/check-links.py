#!/usr/bin/env python3
"""Every relative link in the repository's Markdown (README.md, docs/, bench/, proto/, engine/)
points at a file or directory that exists in the tree, and every #anchor into a Markdown file
names one of its headings. Links to http(s)/mailto are not followed (CI is offline); code blocks
and block quotes (drafts quoted for another file, e.g. a README paragraph in docs/) are skipped.

Usage: scripts/check-links.py   (exit 1 and one line per broken link)
"""
import os
import re
import subprocess
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
files = subprocess.run(["git", "ls-files", "*.md"], cwd=root, capture_output=True, text=True,
                       check=True).stdout.split()
link = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
fence = re.compile(r"^\s*(```|~~~)")


def anchors(path):
    """GitHub-style heading anchors of a Markdown file."""
    out, in_code = set(), False
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if fence.match(line):
                in_code = not in_code
            elif not in_code and line.startswith("#"):
                text = line.lstrip("#").strip().lower()
                text = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
                out.add(text)
    return out


broken, checked = [], 0
for f in files:
    if f.startswith("bench/results/") or "/fuzz/" in f:
        continue
    in_code = False
    with open(os.path.join(root, f), encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if fence.match(line):
                in_code = not in_code
                continue
            if in_code or line.lstrip().startswith(">"):
                continue
            for target in link.findall(re.sub(r"`[^`]*`", "", line)):
                if re.match(r"^[a-z]+:", target):
                    continue
                checked += 1
                path, _, anchor = target.partition("#")
                full = os.path.normpath(os.path.join(root, os.path.dirname(f), path)) if path \
                    else os.path.join(root, f)
                if not os.path.exists(full):
                    broken.append(f"{f}:{n}: {target}: no such file")
                elif anchor and full.endswith(".md") and anchor not in anchors(full):
                    broken.append(f"{f}:{n}: {target}: no such heading")
for b in broken:
    print(b)
print(f"links: {checked} relative links in {len(files)} Markdown files, {len(broken)} broken",
      file=sys.stderr)
sys.exit(1 if broken else 0)
