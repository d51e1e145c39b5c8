"""AWS Personalize's user-personalization campaign as a recommender: a visitor's
home sections come from GetRecommendations (dismissed items filtered out in AWS),
and whatever it cannot give, the local engine gives. It keeps the one contract
of personalization.recommenders, as every recommender does."""

from collections.abc import Collection
from dataclasses import replace
from typing import Protocol

from personalization import telemetry
from personalization.events import ItemKey
from personalization.items import Items
from personalization.profiles import VisitorProfile
from personalization.recommenders import (
    PERSONALIZE,
    Recommender,
    Recommenders,
    Scored,
    measured_recommend,
    measured_similar,
    non_increasing,
    unique,
)


class UserCampaign(Protocol):
    """What UserPersonalizationRecommender needs of
    personalize_client.PersonalizeClient: None means "no answer"."""

    user_campaign_arn: str

    def user_recommendations(
        self, user_id: str, kind: str, limit: int
    ) -> list[tuple[str, float]] | None: ...

    def last_failure(self) -> str | None: ...


class UserPersonalizationRecommender:
    """A visitor's items from the user-personalization campaign, in its order;
    the local engine (`fallback`) fills the rest, with no second call,
    and answers for a visitor with no history and on any failure. Similar items
    come from `similar_source` (the SIMS campaign's recommender, or the local
    engine)."""

    name = "personalize (user)"
    # Asks AWS on every page (its answer follows events streamed to it, and
    # each page has a call budget): pages never keep its lists (is_remote).
    remote = True

    def __init__(
        self,
        campaign: UserCampaign,
        fallback: Recommender,
        items: Items,
        similar_source: Recommender | None = None,
    ):
        self.campaign = campaign
        self.fallback = fallback
        self.items = items
        self.similar_source = similar_source or fallback

    @measured_recommend
    def recommend(
        self,
        visitor: VisitorProfile,
        kind: str,
        k: int,
        exclude: Collection[ItemKey] = (),
    ) -> list[Scored]:
        if not visitor.visitor_id or not (visitor.recent or visitor.affinities):
            return self.fallback.recommend(visitor, kind, k, exclude)
        excluded = set(exclude)
        # Ask for enough that k remain once the excluded ones are dropped.
        wanted = k + sum(item.kind == kind for item in excluded)
        answer = self.campaign.user_recommendations(visitor.visitor_id, kind, wanted)
        if answer is None:
            reason = self.campaign.last_failure()
            if reason:
                telemetry.fell_back(f"personalize_{reason}")
            return self.fallback.recommend(visitor, kind, k, exclude)
        keys = [(ItemKey.parse(ref), score) for ref, score in answer]
        offered = [key for key, _ in keys if key and key.kind == kind]
        existing = self.items.existing(offered)
        chosen = unique(
            [
                Scored(key, score, "personalize", PERSONALIZE)
                for key, score in keys
                if key in existing and key not in excluded
            ]
        )[:k]
        if len(chosen) < k:
            shown = excluded | {entry.item for entry in chosen}
            chosen += self.fallback.recommend(visitor, kind, k - len(chosen), shown)
        return non_increasing(chosen)

    @measured_similar
    def similar(self, item: ItemKey, k: int) -> list[Scored]:
        """The campaign ranks for visitors, not items: `similar_source` answers."""
        return self.similar_source.similar(item, k)


def with_user_campaign(
    recommenders: Recommenders, campaign: UserCampaign | None, items: Items
) -> Recommenders:
    """The recommenders with the user-personalization campaign served, when one
    is configured: the local engine fills its lists, and similar items stay
    with the SIMS campaign's recommender when there is one."""
    if campaign is None or not campaign.user_campaign_arn:
        return recommenders
    served = UserPersonalizationRecommender(
        campaign, recommenders.local, items, recommenders.personalize
    )
    return replace(recommenders, user_campaign=served)
