"""Leases fenced by their generation (the row's id: a row exists while someone holds the
name, so each taking is a new id); the random token is gone. Rows of released leases in
the old shape (no expiry) count as free."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('hubimages', '0012_stale_by_last_pull'),
    ]

    operations = [
        migrations.RemoveField(
            model_name='lease',
            name='token',
        ),
    ]
