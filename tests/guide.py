"""Follows docs/model-authors.md literally: steps 0 to 3, from a directory outside this
repository, as a new model author would type them.

    python3 tests/guide.py path/to/sluice

Every ```sh block of those steps runs, in order, in one bash (so `cd` and `&` carry over, as
in one terminal), stopping at the first command that fails. A block right after a line that
starts with a file name in backticks and ends with a colon (`` `Cargo.toml`: ``) is
written to that file instead. A block after `<!-- guide-check: skip (why) -->` is not run: an alternative to the
step before it. The `sluice` given is put first on the PATH (the guide's `cargo install` is
one such skipped block), and a checkout of sluice sits beside the project as `../sluice`, as
the guide's Cargo.toml expects. The server the guide starts uses its default ports, 8000 and
8001, which must be free.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "model-authors.md"
STEPS = re.compile(r"^## ([0-3])\. ")
FILE_LABEL = re.compile(r"^`([^`\s]+)`[,:]")
SKIP = re.compile(r"^<!-- guide-check: skip \((.+)\) -->$")


def script(guide: str) -> str:
    """The steps' blocks as one bash script."""
    lines, out = guide.splitlines(), []
    in_steps, block, label, skip = False, None, None, None
    # The last paragraph of text before the line, and whether a blank line ended it.
    paragraph, ended = [], False
    for line in lines:
        if block is not None:
            if line.startswith("```"):
                body = "\n".join(block)
                if skip:
                    out.append(f"# skipped: {skip}")
                elif label:
                    out.append(f"mkdir -p \"$(dirname '{label}')\"")
                    out.append(f"cat > '{label}' <<'GUIDE_FILE_END'\n{body}\nGUIDE_FILE_END")
                    out.append(f"echo '+ wrote {label}' >&2")
                elif kind == "sh":
                    out.append(body)
                block, label, skip = None, None, None
            else:
                block.append(line)
            continue
        if line.startswith("## "):
            in_steps = bool(STEPS.match(line))
        if not in_steps:
            continue
        if line.startswith("```"):
            kind = line[3:].strip()
            block = []
            match = paragraph and FILE_LABEL.match(paragraph[0])
            label = match.group(1) if match and paragraph[-1].endswith(":") else None
            paragraph = []
            continue
        if not line.strip():
            ended = True
            continue
        skip = SKIP.match(line).group(1) if SKIP.match(line) else None
        paragraph = [line] if ended else paragraph + [line]
        ended = False
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sluice = Path(sys.argv[1]).resolve()
    work = Path(tempfile.mkdtemp(prefix="sluice-guide-"))
    try:
        (work / "sluice").symlink_to(REPO)
        bin_dir = work / "bin"
        bin_dir.mkdir()
        (bin_dir / "sluice").symlink_to(sluice)
        env = dict(os.environ)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
        # As on a new author's machine: cargo's own target/ in the project, a fresh sluice
        # cache and no server chosen.
        for variable in ("CARGO_TARGET_DIR", "SLUICE_SERVER"):
            env.pop(variable, None)
        env["XDG_CACHE_HOME"] = str(work / "cache")
        text = script(GUIDE.read_text())
        # The server of step 0 is stopped however the steps end.
        body = "set -euo pipefail -x\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + text
        result = subprocess.run(["bash", "-c", body], cwd=work, env=env)
        if result.returncode != 0:
            raise SystemExit(f"the guide's steps failed (exit {result.returncode}); the failing command is above")
        print("docs/model-authors.md steps 0-3: every command ran")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
