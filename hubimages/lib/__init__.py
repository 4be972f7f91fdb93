"""Small pieces every feature uses: formatting for people, leases, the JSON log format and
its redaction, repository globs, a request's client address, the audit log, ordering items
after what they depend on. Imports only `hubimages.models`, Django, the standard library,
dateutil and django-ipware."""
