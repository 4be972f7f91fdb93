"""How digests, sizes, counts and times read, on pages, in messages, in JSON and on the
command line: one way each."""

from datetime import UTC, datetime

from dateutil.relativedelta import relativedelta
from django.utils import timezone


def short_digest(digest: str) -> str:
    """`sha256:ab12cd34ef56`: the algorithm and 12 hex digits, enough to tell manifests
    apart, and a prefix that search and `delete_images` accept as it is."""
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}:{hexpart[:12]}" if hexpart else digest[:12]


_UNITS = ("kB", "MB", "GB", "TB", "PB")


def human_size(size: int) -> str:
    """Decimal units with one decimal, as registries and Docker Hub show them: `53.2 MB`."""
    value = float(size)
    if value < 1000:
        return f"{int(size)} B"
    for unit in _UNITS:
        value /= 1000
        if value < 1000 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def plural(number: int, singular: str, plural_form: str = "") -> str:
    """`1 repository`, `2 repositories`, `0 manifests`: the count and the word that fits."""
    if number == 1:
        return f"1 {singular}"
    if not plural_form:
        ends_in_y = singular.endswith("y") and singular[-2:-1] not in "aeiou"
        plural_form = singular[:-1] + "ies" if ends_in_y else singular + "s"
    return f"{number:,} {plural_form}"


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a "Z", as every JSON output prints times; None stays None."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


# Short units, largest first: "1 y 2 mo ago" reads at a glance and fits a narrow column.
_AGE_UNITS = (("years", "y"), ("months", "mo"), ("days", "d"), ("hours", "h"), ("minutes", "min"))


def ago(value: datetime, now: datetime | None = None) -> str:
    """Two units, like "1 y 2 mo ago": one unit hides a year in "1 year ago" (13 months or
    23 are not the same age for an image). Number and unit are held together by a no-break
    space, so a narrow column never splits them."""
    now = now or timezone.now()
    if value > now or (now - value).total_seconds() < 60:
        return "just now"
    delta = relativedelta(now, value)
    amounts = [(getattr(delta, field), unit) for field, unit in _AGE_UNITS]
    first = next(i for i, (amount, _) in enumerate(amounts) if amount)
    shown = [amounts[first]]
    if first + 1 < len(amounts) and amounts[first + 1][0]:
        shown.append(amounts[first + 1])
    return " ".join(f"{amount}\xa0{unit}" for amount, unit in shown) + " ago"
