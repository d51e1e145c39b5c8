"""Regional match rates: for each city visitors chose, which procedures reach the
top of their lists, and for what share of them. A high rate means the city's
visitors are served alike (a regional taste, or a ranking that ignores them)."""

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

# Share of a city's sampled visitors: labels for the match rate.
HIGH, MEDIUM = 0.8, 0.4


@dataclass(frozen=True)
class ProcedureRate:
    procedure_id: int
    visitors: int  # sampled visitors whose top k holds it
    rate: float  # visitors / sample size

    @property
    def label(self) -> str:
        return match_label(self.rate)


@dataclass(frozen=True)
class CityRates:
    city: str
    visitors: int  # every visitor who chose the city
    sample: int  # how many were ranked
    procedures: list[ProcedureRate]


def match_label(rate: float) -> str:
    """high (>= 80%), medium (40-79%) or low (< 40%)."""
    if rate >= HIGH:
        return "high"
    return "medium" if rate >= MEDIUM else "low"


def match_rates(
    visitors_by_city: dict[str, list[str]],
    top_procedures: Callable[[str], list[int]],
    sample_size: int,
    seed: int = 0,
) -> list[CityRates]:
    """Rank a random sample of each city's visitors (the same sample for the same
    seed) and count how often each procedure is in their top list."""
    rng = random.Random(seed)
    found = []
    for city in sorted(visitors_by_city):
        visitors = sorted(visitors_by_city[city])
        sample = (
            rng.sample(visitors, sample_size)
            if len(visitors) > sample_size
            else visitors
        )
        counts: Counter[int] = Counter()
        for visitor_id in sample:
            counts.update(set(top_procedures(visitor_id)))
        rates = [
            ProcedureRate(pid, n, n / len(sample))
            for pid, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
        found.append(CityRates(city, len(visitors), len(sample), rates))
    return found
