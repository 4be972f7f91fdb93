"""Leases fenced by their generation (the row's id: a row exists while someone holds the
name, so each taking is a new id); the random token is gone, and rows of released leases in
the old shape (no expiry) count as free. Running records (deletions, retention runs) are
linked to what they belong to, so the workers can settle those a stopped process left
running; small partial indexes let them find those every few seconds."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('hubimages', '0017_teams_audit'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveField(
            model_name='lease',
            name='token',
        ),
        migrations.AddField(
            model_name='deletion',
            name='job',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='deletions', to='hubimages.job'),
        ),
        migrations.AddField(
            model_name='deletion',
            name='retention_run',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='deletions', to='hubimages.retentionrun'),
        ),
        migrations.AddField(
            model_name='retentionrun',
            name='job',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='retention_runs', to='hubimages.job'),
        ),
        migrations.AlterField(
            model_name='retentionrun',
            name='outcome',
            field=models.CharField(choices=[('running', 'Running'), ('done', 'Done'), ('incomplete', 'Incomplete'), ('changed', 'Plan changed: nothing deleted'), ('busy', 'Busy: nothing deleted'), ('failed', 'Failed: nothing deleted')], max_length=16),
        ),
        migrations.AddIndex(
            model_name='deletion',
            index=models.Index(condition=models.Q(('state', 'running')), fields=['repository'], name='operation_running'),
        ),
        migrations.AddIndex(
            model_name='retentionrun',
            index=models.Index(condition=models.Q(('outcome', 'running')), fields=['id'], name='run_running'),
        ),
        migrations.AddIndex(
            model_name='syncrun',
            index=models.Index(condition=models.Q(('finished_at', None)), fields=['id'], name='syncrun_running'),
        ),
    ]
