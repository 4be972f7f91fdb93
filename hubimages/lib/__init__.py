"""Small pieces every feature uses: formatting for people, leases, the JSON log format.
Imports only `hubimages.models`, Django and the standard library."""
