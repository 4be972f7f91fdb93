"""The pages: thin views split by feature, paging and rendering helpers, the SVG charts'
geometry, template tags, and the two endpoints without a login (`health`, `webhooks`).
May import every feature package; the API and the commands never import it."""
