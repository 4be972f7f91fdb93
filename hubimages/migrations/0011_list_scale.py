"""Lists at Docker Hub size: stored per-filter counts, and indexed search on each database.

PostgreSQL: tag names match by substring through a trigram index (`pg_trgm`, a trusted
extension since PostgreSQL 13: the database owner may create it), digests by prefix
through a pattern-ops index. SQLite: tags and digests match by prefix through NOCASE
indexes (its LIKE optimization); SQLite has no substring index.
"""

from django.db import migrations, models

POSTGRESQL = [
    (
        "CREATE EXTENSION IF NOT EXISTS pg_trgm",
        None,
    ),
    (
        "CREATE INDEX tag_name_trgm ON hubimages_tag USING gin (UPPER(name) gin_trgm_ops)",
        "DROP INDEX IF EXISTS tag_name_trgm",
    ),
    (
        "CREATE INDEX manifest_digest_prefix ON hubimages_manifest "
        "(repository_id, digest varchar_pattern_ops)",
        "DROP INDEX IF EXISTS manifest_digest_prefix",
    ),
    # "Last pulled, newest first" puts never-pulled items last (DESC NULLS LAST): a
    # PostgreSQL index read backwards gives NULLS FIRST, so these are built in that order.
    # (SQLite sorts NULLs lowest: its ascending indexes read backwards already do.)
    *(
        (
            f"CREATE INDEX manifest_by{name}_pulled_desc ON hubimages_manifest "
            f"(repository_id, is_top_level, {column}last_pulled_at DESC NULLS LAST, id DESC)",
            f"DROP INDEX IF EXISTS manifest_by{name}_pulled_desc",
        )
        for name, column in (("", ""), ("_kind", "kind, "), ("_tagged", "is_tagged, "))
    ),
]
SQLITE = [
    (
        "CREATE INDEX tag_name_prefix ON hubimages_tag (repository_id, name COLLATE NOCASE)",
        "DROP INDEX IF EXISTS tag_name_prefix",
    ),
    (
        "CREATE INDEX manifest_digest_prefix ON hubimages_manifest "
        "(repository_id, digest COLLATE NOCASE)",
        "DROP INDEX IF EXISTS manifest_digest_prefix",
    ),
]


def _run(schema_editor, forwards: bool) -> None:
    statements = {"postgresql": POSTGRESQL, "sqlite": SQLITE}.get(
        schema_editor.connection.vendor, []
    )
    for create, drop in statements if forwards else reversed(statements):
        sql = create if forwards else drop
        if sql:
            schema_editor.execute(sql)


def search_indexes(apps, schema_editor) -> None:
    _run(schema_editor, forwards=True)


def drop_search_indexes(apps, schema_editor) -> None:
    _run(schema_editor, forwards=False)


class Migration(migrations.Migration):
    dependencies = [
        ("hubimages", "0010_referrer_label"),
    ]

    operations = [
        migrations.AddField(
            model_name="repository",
            name="list_counts",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.RunPython(search_indexes, drop_search_indexes),
    ]
