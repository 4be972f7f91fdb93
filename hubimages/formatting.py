"""How digests, sizes and counts read, on pages, in messages and on the command line."""


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
