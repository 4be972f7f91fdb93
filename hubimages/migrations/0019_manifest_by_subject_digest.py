"""An index of the manifests that have a subject, by repository and subject digest: a
change finds the referrers of the manifests it touches without reading the repository
(`sync.rollups.changing`)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('hubimages', '0018_fenced_leases_settled_runs'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='manifest',
            index=models.Index(condition=models.Q(('subject_digest', ''), _negated=True), fields=['repository', 'subject_digest'], name='manifest_by_subject_digest'),
        ),
    ]
