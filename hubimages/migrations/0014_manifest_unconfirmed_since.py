from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("hubimages", "0013_registries"),
    ]

    operations = [
        migrations.AddField(
            model_name="manifest",
            name="unconfirmed_since",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
