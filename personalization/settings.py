"""Every tunable of the engine: one table of names, defaults and ranges, read once
from the app's configuration and validated, so a bad value stops start-up with a
message that names it."""

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from personalization.events import DEFAULT_INTERACTION_WEIGHTS

# Weights are on the affinity scale: a single event moves a score by at most this.
WEIGHT_LIMIT = 1.0


class SettingsError(ValueError):
    """A setting has a value the engine cannot use; the message names it."""


def tunable(default, minimum=None, maximum=None):
    """Declare one tunable: its default and its allowed range (None: unbounded)."""
    return field(default=default, metadata={"minimum": minimum, "maximum": maximum})


@dataclass(frozen=True)
class Settings:
    """The engine's tunables. Each is the config key of the same name, upper-cased
    (`affinity_decay_rate` is AFFINITY_DECAY_RATE), documented in README."""

    # Daily decay factor of a visitor's category affinity.
    affinity_decay_rate: float = tunable(0.95, 0.0, 1.0)
    # Affinities decayed below this are noise: unused, then deleted.
    affinity_floor: float = tunable(0.01, 0.0, 1.0)
    # Days of interactions that count toward popularity and history.
    popularity_window_days: int = tunable(30, 1, None)
    # Daily decay factor of item popularity.
    popularity_decay_rate: float = tunable(0.9, 0.0, 1.0)
    # How long each process keeps popular lists.
    popularity_cache_seconds: float = tunable(60.0, 0.0, None)
    # Popular items kept per kind (the longest fill a list gets).
    popular_list_size: int = tunable(200, 1, 10_000)
    # Distinct visitors an item, a category or a pair of procedures needs before it
    # counts for everyone ("popular", "also viewed"): one person's clicks never
    # show in what others see.
    min_visitors: int = tunable(5, 1, 10_000)
    # Share of co-visitation in the blended procedure score.
    covisitation_weight: float = tunable(0.4, 0.0, 1.0)
    # Weight of the visitor's own recent items in the blend.
    history_weight: float = tunable(0.6, 0.0, 10.0)
    # Days of a visitor's own interactions their profile reads (their recent
    # items and the seeds of their neighbours).
    history_window_days: int = tunable(90, 1, None)
    # Distinct recent items of a visitor that rankings read.
    history_size: int = tunable(200, 1, 1000)
    # Interactions read per visitor to find those items.
    history_rows: int = tunable(500, 1, 100_000)
    # Recent procedures whose co-visitation neighbours are candidates.
    covisitation_seeds: int = tunable(10, 1, 200)
    # Neighbours read per seed procedure.
    covisitation_neighbours: int = tunable(36, 1, 1000)
    # Each older seed counts this much less than the next.
    seed_recency_decay: float = tunable(0.85, 0.0, 1.0)
    # Categories a visitor's procedures are drawn from.
    top_categories: int = tunable(3, 1, 100)
    # Top procedures whose doctors are ranked for a visitor.
    doctor_procedures: int = tunable(12, 1, 200)
    # Candidates handed to AWS Personalize for re-ranking.
    rerank_candidates: int = tunable(36, 1, 500)
    # Top search results whose categories a search raises.
    search_results_counted: int = tunable(3, 1, 50)
    # How long interactions are kept (cleanup, webhook events).
    interaction_retention_days: int = tunable(90, 1, None)
    # How long consultation requests are kept: long enough for the clinic to
    # follow up, then erased (personal data).
    consultation_retention_days: int = tunable(180, 1, None)
    # Item neighbours (personalization/neighbours.py), rebuilt by refresh: days of
    # the log they are counted from, each visitor's recent procedures that pair
    # up, and neighbours kept per procedure.
    neighbour_window_days: int = tunable(3650, 1, None)
    neighbour_history: int = tunable(200, 1, 10_000)
    neighbours_per_item: int = tunable(50, 1, 1000)
    # Procedures the most visitors had that get neighbours (EASE inverts a dense
    # matrix of this side: 3,000 take about 8 s and 200 MB), and EASE's
    # regularisation (larger: weights lean less on rare pairs).
    neighbour_items: int = tunable(3000, 1, 20_000)
    neighbour_regularization: float = tunable(1000.0, 0.0, None)
    # Weight of popular procedures of the visitor's favourite categories in the
    # neighbour ranking (0: none).
    neighbour_category_weight: float = tunable(0.3, 0.0, 10.0)
    # 1 where visitors come back to what they had (the neighbour ranking keeps
    # their own items, scored by HISTORY_WEIGHT); 0 leaves them out.
    repeat_consumption: int = tunable(0, 0, 1)
    # There, each earlier visit to a procedure counts this much less than the
    # next (per interaction, as the evaluation's own-history reference counts).
    repeat_decay: float = tunable(0.97, 0.0, 1.0)
    # At most this many procedures of one category in the top 10 of a list (0: no
    # limit): variety at a cost in accuracy (BENCHMARKS.md measures it).
    max_per_category: int = tunable(0, 0, 10)
    # Share of tracked visitors held out in the experiment's control arm, who see
    # popular lists only (0 turns the holdout off; see experiment.py).
    experiment_control_share: float = tunable(0.1, 0.0, 0.5)
    # How often each server process folds logged interactions into affinities,
    # popularity and co-visitation (0: right after each request that logs them,
    # in that request: slower, but nothing ever waits).
    aggregation_interval_seconds: float = tunable(2.0, 0.0, 60.0)
    # Log rows folded in per transaction.
    aggregation_batch: int = tunable(5000, 1, 100_000)
    # Page views without an item, and the lists pages showed, that each server
    # process holds between its aggregator's runs and then stores in one insert
    # per table; it stores them at once when this many wait (0: each page
    # stores its own before answering, as when no background aggregator runs).
    page_buffer_rows: int = tunable(2000, 0, 100_000)
    # Visitor profiles (and the rankings worked out from them) each process
    # keeps between pages, until the visitor does something new or
    # POPULARITY_CACHE_SECONDS pass (0: none).
    profile_cache_size: int = tunable(2000, 0, 1_000_000)
    # The weight table: DEFAULT_INTERACTION_WEIGHTS with INTERACTION_WEIGHTS on top.
    interaction_weights: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_INTERACTION_WEIGHTS)
    )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Settings":
        """Read every tunable from a config mapping; raise SettingsError on a bad one.

        Keys that are absent take their defaults.
        """
        values: dict[str, Any] = {}
        for spec in tunables():
            key = spec.name.upper()
            if config.get(key) is not None:
                values[spec.name] = checked(
                    key,
                    config[key],
                    type(spec.default),
                    spec.metadata["minimum"],
                    spec.metadata["maximum"],
                )
        values["interaction_weights"] = {
            **DEFAULT_INTERACTION_WEIGHTS,
            **checked_weights(config.get("INTERACTION_WEIGHTS") or {}),
        }
        return cls(**values)

    def weight(self, interaction_type: str) -> float:
        """What one interaction of this type adds to interest (0 when unknown)."""
        return self.interaction_weights.get(interaction_type, 0.0)


def tunables() -> list:
    """The numeric tunables, with their defaults and ranges (dataclass fields)."""
    return [spec for spec in fields(Settings) if "minimum" in spec.metadata]


def checked(key: str, value: Any, kind: type, minimum=None, maximum=None):
    """Coerce a setting's value (a number, or text from the environment) to its
    kind and check its range; raise SettingsError naming the setting."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SettingsError(f"{key} must be a {kind.__name__}, not {value!r}")
    try:
        number = kind(value)
        exact = kind is not int or number == float(value)
    except ValueError:
        raise SettingsError(f"{key} must be a {kind.__name__}, not {value!r}") from None
    if not exact:
        raise SettingsError(f"{key} must be a whole number, not {value!r}")
    too_low = minimum is not None and number < minimum
    too_high = maximum is not None and number > maximum
    if too_low or too_high:
        if maximum is None:
            raise SettingsError(f"{key} must be at least {minimum}, not {value}")
        raise SettingsError(
            f"{key} must be between {minimum} and {maximum}, not {value}"
        )
    return number


def checked_weights(overrides: Any) -> dict[str, float]:
    """Check overrides of the weight table: event names to numbers within ±1."""
    if not isinstance(overrides, Mapping):
        raise SettingsError(
            f"INTERACTION_WEIGHTS must map event names to numbers, not {overrides!r}"
        )
    weights = {}
    for name, weight in overrides.items():
        if (
            not isinstance(name, str)
            or isinstance(weight, bool)
            or not isinstance(weight, int | float)
        ):
            raise SettingsError(
                f"INTERACTION_WEIGHTS must map event names to numbers, not {name!r}"
            )
        if not -WEIGHT_LIMIT <= weight <= WEIGHT_LIMIT:
            raise SettingsError(
                f"INTERACTION_WEIGHTS[{name!r}] must be between "
                f"-{WEIGHT_LIMIT} and {WEIGHT_LIMIT}, not {weight}"
            )
        weights[name] = float(weight)
    return weights
