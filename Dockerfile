# One image for every process of the mesh; the command picks the process.
# The web app, built from its lock file; the gateway serves it (GATEWAY_WEB_DIR).
FROM node:20-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/build.mjs ./
COPY web/src ./src
COPY web/public ./public
RUN node build.mjs

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml requirements.lock ./
COPY services ./services
COPY gateway ./gateway
COPY cli ./cli
COPY protos ./protos
RUN pip install --no-cache-dir -c requirements.lock . \
 && python -m services.kit.protogen --protos protos --out /gen --no-path-file

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/leadmesh leadmesh
COPY --from=build /usr/local /usr/local
COPY --from=build /gen /opt/leadmesh/gen
COPY --from=web /web/dist /opt/leadmesh/web
ENV PYTHONPATH=/opt/leadmesh/gen \
    GATEWAY_WEB_DIR=/opt/leadmesh/web \
    LEADMESH_VAR_DIR=/var/lib/leadmesh \
    PYTHONUNBUFFERED=1
USER leadmesh
WORKDIR /var/lib/leadmesh
ENTRYPOINT ["python", "-m"]
CMD ["cli", "--help"]
