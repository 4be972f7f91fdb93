"""Failed tokens are counted per client address and per token prefix: one `key` column,
`address:<address>` or `prefix:<first characters>`. The counts in flight were per address."""

from django.db import migrations, models
from django.db.models import Value
from django.db.models.functions import Concat


def forgotten(apps, schema_editor):
    """Back to per-address rows: counts last minutes, so they start again."""
    apps.get_model("hubimages", "ApiTokenFailure").objects.all().delete()


def keyed_by_address(apps, schema_editor):
    apps.get_model("hubimages", "ApiTokenFailure").objects.update(
        key=Concat(Value("address:"), "key")
    )


class Migration(migrations.Migration):
    dependencies = [("hubimages", "0019_manifest_by_subject_digest")]

    operations = [
        migrations.RenameField("apitokenfailure", "address", "key"),
        migrations.AlterField(
            "apitokenfailure", "key", models.CharField(max_length=80, unique=True)
        ),
        migrations.RunPython(keyed_by_address, forgotten),
    ]
