"""How digests and sizes read, on pages, in messages and on the command line: one way each."""


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
