# The event's state becomes a field with choices and its text a separate message:
# nothing matches on message text any more.

from django.db import migrations, models

WAITING_TEXT = "pull counted: manifest not stored yet"


def outcome_to_state(apps, schema_editor):
    RegistryEvent = apps.get_model("hubimages", "RegistryEvent")
    for event in RegistryEvent.objects.only("pk", "outcome", "processed_at").iterator():
        outcome = event.outcome or ""
        if event.processed_at is None:
            state, message = "received", outcome.removeprefix("will retry: ")
        elif outcome == WAITING_TEXT:
            state, message = "waiting", outcome
        elif outcome.startswith("ignored: "):
            state, message = "ignored", outcome.removeprefix("ignored: ")
        elif outcome.startswith("failed: "):
            state, message = "failed", outcome.removeprefix("failed: ")
        else:
            state, message = "applied", outcome
        RegistryEvent.objects.filter(pk=event.pk).update(state=state, message=message)


class Migration(migrations.Migration):
    dependencies = [
        ("hubimages", "0004_deletion_history_indexes"),
    ]

    operations = [
        migrations.AddField(
            model_name="registryevent",
            name="attempts",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="registryevent",
            name="message",
            field=models.CharField(
                blank=True, help_text="What happened, for people.", max_length=512
            ),
        ),
        migrations.AddField(
            model_name="registryevent",
            name="state",
            field=models.CharField(
                choices=[
                    ("received", "Received"),
                    ("applied", "Applied"),
                    ("ignored", "Ignored"),
                    ("waiting", "Waiting for manifest"),
                    ("failed", "Failed"),
                ],
                default="received",
                max_length=16,
            ),
        ),
        migrations.RunPython(outcome_to_state, migrations.RunPython.noop),
        migrations.RemoveField(
            model_name="registryevent",
            name="outcome",
        ),
    ]
