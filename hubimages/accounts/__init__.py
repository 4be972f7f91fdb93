"""People's own credentials: personal access tokens, the limit on failed attempts, and the
client address those limits count on. Imports `hubimages.lib` and `hubimages.models`."""
