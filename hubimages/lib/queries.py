"""Many ids or digests in one query parameter."""

from __future__ import annotations

import json
from collections.abc import Collection

from django.db import connection
from django.db.models.expressions import RawSQL

MANY = 64  # more ids than this go to the database as one parameter (`as_parameter`)


def as_parameter(values: Collection) -> Collection | RawSQL:
    """Many ids or digests for an `__in` lookup, as one query parameter.

    Django prepares an IN list value by value, a few microseconds each: for a retention
    run's thousands of manifests that was most of the plan's time. A JSON array (SQLite)
    or an array (PostgreSQL) is one parameter, unpacked by the database."""
    values = list(values)
    if len(values) <= MANY:
        return values
    if connection.vendor == "postgresql":
        kind = "bigint" if isinstance(values[0], int) else "text"
        return RawSQL(f"SELECT unnest(%s::{kind}[])", (values,))
    return RawSQL("SELECT value FROM json_each(%s)", (json.dumps(values),))
