#!/usr/bin/env python3
"""Prints the README's two commands, one per line: the main job, then the tests.

They are the command lines (not comments, not blank) of the first fenced block under
`## Two commands`, so CI runs what a newcomer copies, never a copy of it. Exits 1,
naming what is missing, when the section or its two commands cannot be found.
"""
import re
import sys

readme = open(sys.argv[1] if len(sys.argv) > 1 else "README.md", encoding="utf-8").read()
section = re.search(r"^## Two commands\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
block = re.search(r"^```[a-z]*\n(.*?)^```", section.group(1), re.S | re.M) if section else None
commands = [
    line.strip()
    for line in (block.group(1).splitlines() if block else [])
    if line.strip() and not line.strip().startswith("#")
]
if len(commands) != 2:
    sys.exit(f"README.md: the first block under '## Two commands' must hold exactly two commands, found {len(commands)}")
print("\n".join(commands))
