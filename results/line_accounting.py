"""Where the Python lines of ``src/`` went since a829204 (issue 14's baseline), by first-parent commit.

Usage: ``python results/line_accounting.py [END]`` (END defaults to HEAD) in the repository.

Each first-parent commit of ``a829204..END`` that changes ``src/**.py`` gets one tag:

- ``14-restructure``: issue 14's own rework (merged backends, the contract, cycles, long
  functions split, the reduction pass) — what the issue's "smaller by >= 1,000 lines with the
  same features" is about;
- ``14-feature``: the features issue 14 itself asks for (nn.LSTM unpacking, ``backend_for``,
  bidirectional, torch.compile / torch.export custom ops);
- ``other``: features and fixes of the other issues (paper mode, training controls and recipes,
  max_skip, batched and C skipping inference, C training kernels, new-user fixes, ...).

A commit not in ``TAGS`` is tagged ``other`` (listed, so a reader can check the choice). The
per-commit figure is added minus removed lines of ``src/**.py`` against the first parent (a
merge counts its whole branch once).
"""

import subprocess
import sys

BASE = "a829204"
RESTRUCTURE, FEATURE = "14-restructure", "14-feature"
TAGS = {
    # issue 14's branch (merged in fe09f81): training/args.py, no import cycles, fit / reproduce /
    # plot / write_table split into functions of one job each
    "fe09f81": RESTRUCTURE,
    "97e80dc": FEATURE, "daab083": FEATURE, "33d7f38": FEATURE, "decb278": FEATURE,
    "bf685d8": FEATURE, "b82e69b": FEATURE, "85f5314": FEATURE, "f8e5677": FEATURE,
    "4b83910": FEATURE, "48db1a3": FEATURE,
    "935a0c9": RESTRUCTURE, "23b0ec0": RESTRUCTURE, "624b97f": RESTRUCTURE,
    "a267206": RESTRUCTURE, "9ba178c": RESTRUCTURE, "02a3f50": RESTRUCTURE,
    "cad8a9a": RESTRUCTURE, "6448f06": RESTRUCTURE, "65aec02": RESTRUCTURE,
    "585aa74": RESTRUCTURE, "7f1274f": RESTRUCTURE, "beb9361": RESTRUCTURE,
    "2b06797": RESTRUCTURE, "0362805": RESTRUCTURE, "b204bfa": RESTRUCTURE,
    "4946335": RESTRUCTURE,
    "0fbff7e": RESTRUCTURE,  # review of the reduction pass (a clear error for a cell's state added)
    "c8d28f2": RESTRUCTURE,  # the state count from the cell description
}
# commits of the reduction pass (tagged by subject prefix, so new ones need no entry here)
SLIM_PREFIX = "slim:"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def py_lines(rev: str) -> int:
    files = [f for f in git("ls-tree", "-r", "--name-only", rev, "src").split() if f.endswith(".py")]
    return sum(git("show", f"{rev}:{f}").count("\n") for f in files)


def net(rev: str) -> int:
    total = 0
    for row in git("diff", "--numstat", f"{rev}^", rev, "--", "src/*.py").splitlines():
        added, removed, _ = row.split("\t", 2)
        total += int(added) - int(removed)
    return total


def main(end: str = "HEAD") -> None:
    sums = {RESTRUCTURE: 0, FEATURE: 0, "other": 0}
    rows = []
    log = git("log", "--first-parent", "--reverse", "--format=%h %s", f"{BASE}..{end}")
    for line in log.splitlines():
        sha, subject = line.split(" ", 1)
        n = net(sha)
        if n == 0 and not subject.startswith(SLIM_PREFIX):
            continue
        tag = RESTRUCTURE if subject.startswith(SLIM_PREFIX) else TAGS.get(sha[:7], "other")
        sums[tag] += n
        rows.append(f"| {sha[:7]} | {tag} | {n:+d} | {subject[:90].replace('|', '/')} |")
    start, finish = py_lines(BASE), py_lines(end)
    assert start + sum(sums.values()) == finish, (start, sums, finish)
    print(f"src/**.py lines: {BASE} {start:,}, {end} {finish:,} ({finish - start:+,})\n")
    for tag, n in sums.items():
        print(f"- {tag}: {n:+,}")
    same = start + sums["other"] + sums[FEATURE]
    print(f"\n{BASE} plus every feature added since (other + 14-feature): {same:,} lines; "
          f"{end}: {finish:,} ({finish - same:+,}).\n")
    print("| commit | tag | net lines | subject |\n|---|---|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main(*sys.argv[1:])
