"""Retention policies (SPEC §8): the policy and its validation (`policies`), the dry run
(`engine`), runs and their schedule (`runs`), and the editor's fields (`form`). Imports
`hubimages.deletion` and what it imports."""
