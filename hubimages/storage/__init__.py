"""Storage insights (SPEC §10): the figures and their history (`figures`) and noticing
the garbage collector (`collection`). Imports `hubimages.deletion` and what it imports."""
