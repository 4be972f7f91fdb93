"""Tag names match by substring on SQLite too (issue 24): an FTS5 `trigram` index.

PostgreSQL has matched tags by substring since 0011 (`pg_trgm`, its `tag_name_trgm`
index). On SQLite, `hubimages_tag_search` is an external-content FTS5 table over
`hubimages_tag` (rowid = the tag's id) with the `trigram` tokenizer, which folds case: a
term of 3 characters or more is a phrase of trigrams, which the index answers. Triggers
keep it in step with every write to the tags table (the ORM, `bulk_create`, raw SQL,
cascades), so nothing outside the database has to remember it.

A later migration that rebuilds `hubimages_tag` on SQLite (Django does so for most
`AlterField`s) drops these triggers with the old table: run `TRIGGERS` again after it.
`tests/test_search.py` writes tags every way and checks the index (`integrity-check`)
after all migrations, so a lost trigger fails it.
"""

from django.db import migrations

TABLE = "hubimages_tag_search"

TRIGGERS = [
    f"""CREATE TRIGGER {TABLE}_insert AFTER INSERT ON hubimages_tag BEGIN
        INSERT INTO {TABLE}(rowid, name) VALUES (new.id, new.name);
    END""",
    f"""CREATE TRIGGER {TABLE}_delete AFTER DELETE ON hubimages_tag BEGIN
        INSERT INTO {TABLE}({TABLE}, rowid, name) VALUES ('delete', old.id, old.name);
    END""",
    # A tag moving to another manifest (the usual update) leaves the index alone.
    f"""CREATE TRIGGER {TABLE}_update AFTER UPDATE OF id, name ON hubimages_tag BEGIN
        INSERT INTO {TABLE}({TABLE}, rowid, name) VALUES ('delete', old.id, old.name);
        INSERT INTO {TABLE}(rowid, name) VALUES (new.id, new.name);
    END""",
]

SQLITE = [
    f"CREATE VIRTUAL TABLE {TABLE} USING fts5("
    "name, content='hubimages_tag', content_rowid='id', tokenize='trigram')",
    *TRIGGERS,
    f"INSERT INTO {TABLE}({TABLE}) VALUES ('rebuild')",
]
SQLITE_REVERSE = [
    *(f"DROP TRIGGER IF EXISTS {TABLE}_{kind}" for kind in ("insert", "delete", "update")),
    f"DROP TABLE IF EXISTS {TABLE}",
]


def create(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE:
            schema_editor.execute(statement)


def drop(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE_REVERSE:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [
        ("hubimages", "0025_status"),
    ]

    operations = [
        migrations.RunPython(create, drop),
    ]
