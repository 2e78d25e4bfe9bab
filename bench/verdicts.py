"""Every committed study's verdicts, worded from the 95 % t-interval of same-seed differences
(study/analyse.py), as one markdown table: docs/RESULTS.md's reading of the runs before the evidence
study. python bench/verdicts.py [docs/results] > verdicts.md"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from dakter_scale.study.analyse import Results
from dakter_scale.study.runner import payload_plan


def rows(folder: Path) -> list[str]:
    out = []
    for path in sorted(folder.glob("*/results.json")):
        payload = json.loads(path.read_text())
        if "config" not in payload:  # a summary file of another shape (e.g. a bench's), not a study
            continue
        plan = payload_plan(payload, str(path))
        for v in Results(payload["runs"], plan).verdicts():
            if v["n"] >= 2:
                interval = f"{100 * v['low']:+.2f} … {100 * v['high']:+.2f}"
                out.append(
                    f"| {path.parent.name} | {v['a']} − {v['b']} | {v['arch']} | {100 * v['mean']:+.2f} | {interval} | {v['ahead']}/{v['n']} | {v['verdict']} |"
                )
    return out


def main() -> None:
    logging.disable(logging.WARNING)  # old configs' dropped keys
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results")
    print("| run | comparison | student | mean (points) | 95 % interval | ahead | verdict |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows(folder)))


if __name__ == "__main__":
    main()
