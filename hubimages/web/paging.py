"""Numbered pages: page sizes, the paginator of the Image Management list (whose count
may be estimated), and the links to the neighbouring pages."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core.paginator import Page, Paginator
from django.utils.functional import cached_property

from hubimages.inventory import lists
from hubimages.models import Repository


def page_size_from(raw: str | None) -> int:
    default = settings.PAGE_SIZE
    try:
        size = int(raw or default)
    except ValueError:
        return default
    return size if size in settings.PAGE_SIZES else default


def paginate(rows, per_page: int, raw_page: str | None) -> Page:
    """Junk means the first page, beyond the end the last (`Paginator.get_page`)."""
    return Paginator(rows, per_page).get_page(raw_page)


@dataclass(frozen=True)
class PageLink:
    """One entry of the numbered pages: a number (its link's `page`, None for page 1, which
    is the bare URL) or the ellipsis between distant numbers (number 0)."""

    number: int
    param: int | None
    current: bool


class ListPaginator(Paginator):
    """Pages of the Image Management list, counted by `inventory.count_top_level`: a
    list of a million rows costs no more to page than one of a hundred. `estimated` says
    the count is an estimate (the page then says "about")."""

    estimated = False

    def __init__(
        self, rows, per_page: int, repository: Repository, query, found: lists.Search | None
    ) -> None:
        super().__init__(rows, per_page)
        self._repository = repository
        self._query = query
        self._found = found

    @cached_property
    def count(self) -> int:
        counted = lists.count_top_level(self._repository, self._query, found=self._found)
        self.estimated = counted.estimated
        return counted.value

    def validate_number(self, number) -> int:
        """An estimated count is no end: a page past it is there if it has rows (`page`),
        up to twice the estimate."""
        if self.count and self.estimated:
            return self._validate_number(number, 2 * self.num_pages)
        return super().validate_number(number)

    def page(self, number) -> Page:
        """With an estimated count, a page reads one row more than it shows, so that Next
        follows the rows themselves rather than an estimate that may fall short."""
        if not (self.count and self.estimated):
            return super().page(number)
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        rows = list(self.object_list[bottom : bottom + self.per_page + 1])
        return EstimatedPage(rows[: self.per_page], number, self, more=len(rows) > self.per_page)


class EstimatedPage(Page):
    """A page of a list whose count is estimated: whether there is a next page, and where
    this one ends, come from its rows."""

    def __init__(self, object_list, number: int, paginator: Paginator, *, more: bool) -> None:
        super().__init__(object_list, number, paginator)
        self.more = more

    def has_next(self) -> bool:
        return self.more

    def end_index(self) -> int:
        return self.start_index() + len(self.object_list) - 1


def neighbours(page: Page) -> dict:
    """Previous, next and numbered page links; page 1 is the bare URL (None drops it)."""
    previous = page.number - 1 if page.has_previous() else 0
    numbers = [
        PageLink(0, None, False)
        if number == page.paginator.ELLIPSIS
        else PageLink(number, number if number != 1 else None, number == page.number)
        for number in page.paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1)
    ]
    return {
        "previous_page": previous if previous > 1 else None,
        "next_page": page.number + 1 if page.has_next() else None,
        "page_links": numbers,
    }
