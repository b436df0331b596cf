"""The REST gateway: authenticates people, validates input, calls the owning service, maps answers.

It holds no business rules. Layers: `settings` · `upstreams` (gRPC clients) · `auth` (cookies,
sessions, CSRF) · `problems` (errors as application/problem+json) · `middleware` (HSTS, body limit,
access log) · `routes/` (one module per resource) · `server` (HTTPS + the HTTP redirect).
"""
