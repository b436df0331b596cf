# One image for every process of the mesh; the command picks the process.
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
ENV PYTHONPATH=/opt/leadmesh/gen \
    LEADMESH_VAR_DIR=/var/lib/leadmesh \
    PYTHONUNBUFFERED=1
USER leadmesh
WORKDIR /var/lib/leadmesh
ENTRYPOINT ["python", "-m"]
CMD ["cli", "--help"]
