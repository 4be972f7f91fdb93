"""People's own credentials: personal access tokens and the limit on failed attempts.
Imports `hubimages.lib` and `hubimages.models`."""
