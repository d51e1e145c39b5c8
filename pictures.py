"""The drawn pictures of categories, procedures and doctors, for templates:
each is drawn once (templates/_illustrations.html) and kept, since it depends
only on the item's kind, slug, id and category, and drawing it in Jinja cost
more than the rest of a card."""

from flask import Flask

# Pictures kept per process: every item of a large catalog, in both sizes.
PICTURES_KEPT = 20_000


class Pictures:
    """Jinja globals `illustration(item, variant, label)` and
    `avatar(doctor, size)`, drawn by the macros of the same names."""

    def __init__(self, app: Flask):
        self.app = app
        self.drawn: dict[tuple, str] = {}

    def macros(self):
        return self.app.jinja_env.get_template("_illustrations.html").module

    def illustration(self, item, variant: str = "card", label: str | None = None):
        key = ("art", item.kind, item.slug, getattr(item, "category_id", None))
        return self.keep(
            (*key, variant, label),
            lambda: self.macros().illustration(item, variant, label),
        )

    def avatar(self, doctor, size: str = "small"):
        return self.keep(
            ("avatar", doctor.id, doctor.initials, size),
            lambda: self.macros().avatar(doctor, size),
        )

    def keep(self, key: tuple, draw):
        found = self.drawn.get(key)
        if found is None:
            if len(self.drawn) >= PICTURES_KEPT:
                self.drawn.clear()  # a catalog this large changed: start again
            found = self.drawn[key] = draw()
        return found


def init_app(app: Flask) -> None:
    pictures = Pictures(app)
    app.jinja_env.globals.update(
        illustration=pictures.illustration, avatar=pictures.avatar
    )
