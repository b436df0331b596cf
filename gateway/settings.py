"""Gateway settings (prefix `GATEWAY_`), holding the mesh's shared settings."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.kit.config import CommaList, MeshSettings

# The services the gateway calls today; /readyz checks each one's gRPC health.
UPSTREAMS = ("identity", "vault", "runner")


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    mesh: MeshSettings = Field(default_factory=MeshSettings)
    # Address the gateway binds (both ports); 0.0.0.0 to serve beyond this machine.
    host: str = "127.0.0.1"
    https_port: int = 8443
    # Answers every request with a redirect to HTTPS; 0 turns it off.
    http_port: int = 8080
    # A real certificate and key (PEM); without them a self-signed one is made under var/gateway/.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_body_bytes: int = 1024 * 1024
    hsts_max_age: int = 31_536_000
    remember_email_days: int = 365
    # Proxies whose X-Forwarded-For is believed (CIDRs); none by default.
    trusted_proxies: CommaList = Field(default_factory=list)
    # Seconds /readyz waits for each upstream's health answer.
    readiness_timeout: float = 2.0
    # The built web app (`make run` builds web/ into web/dist); served at / when it is there.
    web_dir: Path = Path(__file__).resolve().parent.parent / "web" / "dist"

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)
        return value

    def certificate_paths(self) -> tuple[Path, Path]:
        if self.tls_cert and self.tls_key:
            return self.tls_cert, self.tls_key
        base = self.mesh.var_dir / "gateway"
        return base / "tls.pem", base / "tls.key"
