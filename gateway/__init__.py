"""The REST gateway: authenticates people, validates input, calls the owning service, maps answers.

It holds no business rules. Layers: `settings` · `upstreams` (gRPC clients) · `auth` (cookies,
sessions, CSRF) · `deps` (what a route declares: `CurrentUser`, `Services`) · `resources` (pages,
update masks, the `/v1` prefix) · `problems` (errors as application/problem+json) · `middleware`
(HSTS, body limit, access log) · `routes/` (one module per resource, mounted under `/v1` by `app`)
· `server` (HTTPS + the HTTP redirect).
"""
