"""The measured track records the benchmarks write beside the package: ``track_record.json``
(benchmarks/advice_check.py), ``views_track_record.json`` (benchmarks/views_check.py) and
``history_track_record.json`` (benchmarks/history_check.py). Each is one JSON object whose
``"rules"`` maps a rule's name to its counts, beside how they were measured.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_rules(path: Path) -> dict:
    """The file's rule -> record mapping; empty when the file is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    rules = data.get("rules") if isinstance(data, dict) else None
    return rules if isinstance(rules, dict) else {}


def rule_counts(rules: dict, rule: str) -> dict:
    """{"rule", "fired", "target", "target_improved", "task_not_worse"} of an advice rule, zero
    counts (and no target) where it has no record yet."""
    found = rules.get(rule) or {}
    record = {"rule": rule}
    for key in ("fired", "target", "target_improved", "task_not_worse"):
        record[key] = found.get(key, "" if key == "target" else 0)
    return record
