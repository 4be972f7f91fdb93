"""Static files: compressed, with cache-busting hashed names, once `collectstatic` ran (the
Procfile's release step); served as they are in the source until then.

Django's manifest storage answers 500 on every page until `collectstatic` has written its
manifest, and with `DEBUG=false` (the default) runserver serves no static files, or with
`--insecure` only unhashed ones: a Django user's first `runserver` showed nothing. So
without a manifest this storage names each file as it is, and WhiteNoise, which serves
static files in every process (runserver too, through `whitenoise.runserver_nostatic`),
finds them where the source keeps them (`WHITENOISE_USE_FINDERS`); the first page says
in the log what a deployment still needs.
"""

from __future__ import annotations

import logging

from whitenoise.storage import CompressedManifestStaticFilesStorage

log = logging.getLogger("hubimages.static")

NOT_COLLECTED = (
    "static files are served as they are in the source, uncompressed and without "
    "cache-busting names, because collectstatic has not run: run "
    "`python manage.py collectstatic` (the Procfile's release step does) and restart"
)


class StaticFilesStorage(CompressedManifestStaticFilesStorage):
    collected = False
    _warned = False

    def read_manifest(self) -> str | None:
        content = super().read_manifest()
        self.collected = content is not None
        return content

    def save_manifest(self) -> None:
        super().save_manifest()
        self.collected = True

    def stored_name(self, name: str) -> str:
        if self.collected:
            return super().stored_name(name)
        if not self._warned:
            self._warned = True
            log.warning(NOT_COLLECTED)
        return name
