"""Scoring the turn-taking benchmark's outcomes (see ``benchmarks/turn_taking_bench.py``): where
each policy took the turn relative to the item's speech, and the per-policy summary.

An item is anything with ``kind`` ("pause" | "complete"), ``speech_end`` (s), ``pause`` ((start,
end) s or None) and ``source`` ("espeak" or a recording's name).
"""

from __future__ import annotations

import statistics


def judge(item, outcome: dict, late_ms: float) -> dict:
    """Where the turn fell: before the end of speech (a cut-off), how long after it, or never."""
    turn = outcome["turn_s"]
    verdict = {"turn_s": turn, "by": outcome["by"], "eot_prob": outcome["eot_prob"], "scores": outcome["scores"],
               **({"words": outcome["words"]} if "words" in outcome else {})}
    if turn is None:
        return {**verdict, "result": "missed", "delay_ms": None}
    delay_ms = (turn - item.speech_end) * 1e3
    if delay_ms < 0:
        in_pause = item.pause is not None and item.pause[0] <= turn <= item.pause[1] + 0.3
        return {**verdict, "result": "cut_off_in_pause" if in_pause else "cut_off", "delay_ms": round(delay_ms, 1)}
    return {**verdict, "result": "late" if delay_ms > late_ms else "taken", "delay_ms": round(delay_ms, 1)}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def summarize(items: list, verdicts: list[dict]) -> dict:
    pause = [v for it, v in zip(items, verdicts) if it.kind == "pause"]
    complete = [v for it, v in zip(items, verdicts) if it.kind == "complete"]
    cut = [v for v in pause if v["result"].startswith("cut_off")]
    delays = [v["delay_ms"] for v in complete if v["delay_ms"] is not None and v["delay_ms"] >= 0]
    pause_delays = [v["delay_ms"] for v in pause if v["delay_ms"] is not None and v["delay_ms"] >= 0]
    median = statistics.median(delays) if delays else None
    rate = len(cut) / len(pause) if pause else None
    return {
        "pause_items": len(pause),
        "false_cutoffs": len(cut),
        "false_cutoffs_in_pause": sum(v["result"] == "cut_off_in_pause" for v in pause),
        "false_cutoff_rate": rate,
        "complete_items": len(complete),
        "complete_cut_early": sum(v["result"].startswith("cut_off") for v in complete),
        "endpoint_delay_ms": {"median": rounded(median), "p90": percentile(delays, 0.9), "n": len(delays)},
        "complete_taken_within_ms": {str(limit): sum(d <= limit for d in delays) for limit in (300, 500, 1000)},
        "pause_items_endpoint_delay_ms": {"median": rounded(statistics.median(pause_delays) if pause_delays else None),
                                          "p90": percentile(pause_delays, 0.9), "n": len(pause_delays)},
        "late": {"pause": sum(v["result"] == "late" for v in pause),
                 "complete": sum(v["result"] == "late" for v in complete)},
        "missed": {"pause": sum(v["result"] == "missed" for v in pause),
                   "complete": sum(v["result"] == "missed" for v in complete)},
        "turn_taken_by": {str(by): sum(v["by"] == by for v in verdicts) for by in {v["by"] for v in verdicts}},
        "meets_aims": {"false_cutoffs_le_5pct": rate is not None and rate <= 0.05,
                       "median_delay_le_300ms": median is not None and median <= 300.0},
    }


def results_by_source(items: list, verdicts: dict[str, list[dict]]) -> dict:
    """``summarize`` per policy on the espeak items and on the real ones apart (``results`` has both)."""
    groups = {"espeak": [k for k, i in enumerate(items) if i.source == "espeak"],
              "real": [k for k, i in enumerate(items) if i.source != "espeak"]}
    return {group: {name: summarize([items[k] for k in picked], [v[k] for k in picked]) for name, v in verdicts.items()}
            for group, picked in groups.items() if picked}
