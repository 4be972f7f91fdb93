"""Teams and their grants (SPEC §14): who belongs to which team (members, and the identity
provider's groups bound to it), what each team may do where, and the one selector that
answers "what may this user do where" (`rights`); writes go through `services`, which
record each change in the audit log. Imports `hubimages.lib` and `hubimages.models`."""
