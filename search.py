"""Site search: procedures, doctors, packages and categories matching a query."""

from dataclasses import dataclass, field

from sqlalchemy import and_, or_, select

from models import Category, Doctor, Package, Procedure, db

MAX_QUERY_LENGTH = 200
MAX_SEARCH_TERMS = 8
RESULTS_PER_TYPE = 20

# Which text columns each kind of item is searched by.
SEARCHABLE = {
    "categories": (Category, [Category.name, Category.description]),
    "procedures": (Procedure, [Procedure.name, Procedure.short_description]),
    "doctors": (Doctor, [Doctor.name, Doctor.title, Doctor.city, Doctor.bio]),
    "packages": (Package, [Package.name, Package.description]),
}


@dataclass
class SearchResults:
    query: str
    truncated: bool = False
    categories: list = field(default_factory=list)
    procedures: list = field(default_factory=list)
    doctors: list = field(default_factory=list)
    packages: list = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(len(getattr(self, kind)) for kind in SEARCHABLE)


def normalize_query(raw: str | None) -> tuple[str, bool]:
    """Collapse whitespace and cap the length; say whether it was cut."""
    query = " ".join((raw or "").split())
    if len(query) > MAX_QUERY_LENGTH:
        return query[:MAX_QUERY_LENGTH].rstrip(), True
    return query, False


def like_pattern(term: str) -> str:
    """Make a LIKE pattern that matches the term literally, wildcards included."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_catalog(raw_query: str | None) -> SearchResults:
    """Find items whose name or description contains every word of the query."""
    query, truncated = normalize_query(raw_query)
    results = SearchResults(query=query, truncated=truncated)
    terms = query.split()[:MAX_SEARCH_TERMS]
    if not terms:
        return results
    for kind, (model, columns) in SEARCHABLE.items():
        matches_every_term = and_(
            *(
                or_(
                    *(
                        column.ilike(like_pattern(term), escape="\\")
                        for column in columns
                    )
                )
                for term in terms
            )
        )
        name_matches = model.name.ilike(like_pattern(query), escape="\\")
        statement = (
            select(model)
            .where(matches_every_term)
            .order_by(name_matches.desc(), model.name)
            .limit(RESULTS_PER_TYPE)
        )
        setattr(results, kind, list(db.session.scalars(statement)))
    return results


def result_categories(raw_query: str) -> list[int]:
    """The categories of a search's results, best first: category matches, then
    each matching procedure's category (one entry per result)."""
    results = search_catalog(raw_query)
    return [c.id for c in results.categories] + [
        p.category_id for p in results.procedures
    ]
