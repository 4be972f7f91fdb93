"""People's own credentials and signing in: personal access tokens and the limit on
failed attempts (`tokens`), password sign-in and its switch (`backends`), the identity
provider (`oidc`), and the audit of sign-ins (`signin`). Imports `hubimages.lib`,
`hubimages.teams` (the groups a sign-in brings) and `hubimages.models`."""
