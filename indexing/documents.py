"""The Document every loader produces and every backend indexes, and the one text of it
that every backend embeds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Document:
    """One catalog item. Text fields are title, body and the ``extra`` text fields."""

    id: str
    title: str = ""
    body: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)  # more text fields, e.g. attributes
    category: str | None = None
    attrs: Mapping[str, float] = field(default_factory=dict)  # numeric: price, rating, ...

    def text_fields(self) -> dict[str, str]:
        """Field name -> text, in index order (title, body, extras sorted by name)."""
        out = {"title": self.title, "body": self.body}
        for name in sorted(self.extra):
            out[name] = self.extra[name]
        return out

    def to_json(self) -> dict[str, object]:
        """The document as JSON-ready fields. ``extra`` and ``attrs`` are the document's own
        dicts when they are plain dicts (no copy: a reindex encodes a million of these;
        callers only add top-level keys), a dict copy of any other mapping."""
        extra, attrs = self.extra, self.attrs
        return {
            "id": self.id,
            "title": self.title,
            "body": self.body,
            "extra": extra if type(extra) is dict else dict(extra),
            "category": self.category,
            "attrs": attrs if type(attrs) is dict else dict(attrs),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> Document:
        return cls(
            id=str(obj["id"]),
            title=str(obj.get("title") or ""),
            body=str(obj.get("body") or ""),
            extra={str(k): str(v) for k, v in dict(obj.get("extra") or {}).items()},  # type: ignore[call-overload]
            category=None if obj.get("category") is None else str(obj["category"]),
            attrs={str(k): float(v) for k, v in dict(obj.get("attrs") or {}).items()},  # type: ignore[call-overload]
        )


def embedding_text(doc: Document) -> str:
    """The one text embedded per document: title, body and extra fields, blank ones skipped."""
    return "\n".join(t for t in doc.text_fields().values() if t)


def check_unique_ids(docs: Sequence[Document]) -> None:
    """Refuse an empty catalog or a repeated id before any backend starts building.

    Both backends call it, so the same bad input fails the same way on either.
    """
    from indexing.errors import ValidationError

    if not docs:
        raise ValidationError("no documents to index")
    ids = [d.id for d in docs]
    if len(set(ids)) == len(ids):  # one set built in C: the common case at 1M documents
        return
    seen: set[str] = set()
    for i in ids:  # name the first repeated id
        if i in seen:
            raise ValidationError(f"duplicate document id {i!r}")
        seen.add(i)
