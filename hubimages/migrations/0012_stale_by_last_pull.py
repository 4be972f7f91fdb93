"""PostgreSQL: stale items, newest pull first, read as one index range.

"Pulled before the cutoff or never" is two conditions over `last_pulled_at`, and walking
the Last pulled index from the newest pull passes every recent pull before the first
stale row: on a million manifests that is most of a page's cost. Over
COALESCE(last_pulled_at, '-infinity') the same rows are one range, in the same order
(never pulled last). `inventory.top_level` uses this expression for that one case.
"""

from django.db import migrations

INDEXES = [
    (
        f"CREATE INDEX manifest_by{name}_pulled_or_never ON hubimages_manifest "
        f"(repository_id, is_top_level, {column}"
        "COALESCE(last_pulled_at, '-infinity'::timestamptz) DESC, id DESC)",
        f"DROP INDEX IF EXISTS manifest_by{name}_pulled_or_never",
    )
    for name, column in (("", ""), ("_kind", "kind, "), ("_tagged", "is_tagged, "))
]


def create_indexes(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        for create, _ in INDEXES:
            schema_editor.execute(create)


def drop_indexes(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        for _, drop in INDEXES:
            schema_editor.execute(drop)


class Migration(migrations.Migration):
    dependencies = [
        ("hubimages", "0011_list_scale"),
    ]

    operations = [migrations.RunPython(create_indexes, drop_indexes)]
