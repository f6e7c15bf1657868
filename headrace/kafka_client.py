"""How headrace's Kafka clients talk to the brokers: TLS and SASL settings.

A URL (``kafka://HOST:PORT/TOPIC``) names the brokers; these settings say
how to talk to them. Every Kafka client headrace opens takes the same
:class:`KafkaClientSettings`, read by :func:`load_kafka_settings` from the
``[kafka]`` table of a config file and ``HEADRACE_KAFKA__*`` variables::

    [kafka]
    security_protocol = "SASL_SSL"
    sasl_mechanism = "SCRAM-SHA-512"
    sasl_plain_username = "headrace"
    sasl_plain_password_file = "/run/secrets/kafka-password"
    ssl_cafile = "/etc/headrace/kafka-ca.pem"

Secrets (passwords, tokens) come only from the environment
(``HEADRACE_KAFKA__SASL_PLAIN_PASSWORD``, read verbatim) or from a file
named by a ``*_file`` key, never from the config file itself; they are held
as :class:`pydantic.SecretStr` and never printed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from kafka.net.sasl.oauth import AbstractTokenProvider
from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

from headrace.config import load_config, read_secret

__all__ = [
    "ENV_PREFIX",
    "SECRET_KEYS",
    "FileTokenProvider",
    "KafkaClientSettings",
    "load_kafka_settings",
]

ENV_PREFIX = "HEADRACE_KAFKA__"
#: Keys that hold secrets: environment only, never the config file.
SECRET_KEYS = frozenset({"sasl_plain_password", "sasl_oauth_token", "ssl_password"})
#: librdkafka refreshes an OAUTHBEARER token at 80% of its stated lifetime;
#: the token file is read again then (a sidecar may have rotated it).
_TOKEN_LIFETIME_S = 300.0

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]


class FileTokenProvider(AbstractTokenProvider):
    """An OAUTHBEARER token: from its file, read again at every authentication, or as given.

    Re-reading lets a sidecar rotate the token without a restart. A plain
    class rather than a closure, so that settings holding it pickle into the
    Kafka reader's child process.
    """

    def __init__(self, path: Path | None, token: SecretStr | None) -> None:
        super().__init__()
        self.path = path
        self._token = token

    def token(self) -> str:
        # The settings' validation ensures a file or a token.
        return _secret(self._token, self.path) or ""

    def extensions(self) -> dict[str, str]:
        return {}

    def __repr__(self) -> str:
        return f"FileTokenProvider(path={self.path})"


class KafkaClientSettings(BaseModel):
    """Security settings shared by every Kafka client (kafka-python names).

    Attributes
    ----------
    security_protocol
        ``PLAINTEXT`` (default), ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``.
    sasl_mechanism
        ``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512`` or ``OAUTHBEARER``.
    sasl_plain_username
        User of PLAIN and SCRAM.
    sasl_plain_password, sasl_plain_password_file
        Its password: from ``HEADRACE_KAFKA__SASL_PLAIN_PASSWORD`` or a file.
    sasl_oauth_token, sasl_oauth_token_file
        OAUTHBEARER token: from ``HEADRACE_KAFKA__SASL_OAUTH_TOKEN`` or a file,
        which is read again at every authentication.
    ssl_cafile
        CA bundle (PEM) that signed the brokers' certificates; the system's
        trust store when not set.
    ssl_certfile, ssl_keyfile
        Client certificate and key (PEM) for brokers that require them.
    ssl_password, ssl_password_file
        Passphrase of an encrypted ``ssl_keyfile``.
    ssl_check_hostname
        Check that a broker's certificate names the host connected to.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    security_protocol: Protocol = "PLAINTEXT"
    sasl_mechanism: Mechanism | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    sasl_plain_password_file: Path | None = None
    sasl_oauth_token: SecretStr | None = None
    sasl_oauth_token_file: Path | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    ssl_password_file: Path | None = None
    ssl_check_hostname: bool = True

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @model_validator(mode="after")
    def _consistent(self) -> KafkaClientSettings:
        # Messages name keys, never values: the values may be secrets.
        self._check_files()
        self._check_protocol()
        for secret in ("sasl_plain_password", "sasl_oauth_token", "ssl_password"):
            if getattr(self, secret) is not None and getattr(self, f"{secret}_file") is not None:
                raise ValueError(f"set {secret} or {secret}_file, not both")
        if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and not (
            self.sasl_plain_username and (self.sasl_plain_password or self.sasl_plain_password_file)
        ):
            raise ValueError(
                f"sasl_mechanism {self.sasl_mechanism} needs sasl_plain_username and "
                f"{ENV_PREFIX}SASL_PLAIN_PASSWORD or sasl_plain_password_file"
            )
        if self.sasl_mechanism == "OAUTHBEARER" and not (
            self.sasl_oauth_token or self.sasl_oauth_token_file
        ):
            raise ValueError(
                f"sasl_mechanism OAUTHBEARER needs {ENV_PREFIX}SASL_OAUTH_TOKEN "
                "or sasl_oauth_token_file"
            )
        return self

    def _check_protocol(self) -> None:
        if self.uses_sasl and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
        sasl_keys = [k for k in self.model_fields_set if k.startswith("sasl_")]
        if sasl_keys and not self.uses_sasl:
            raise ValueError(
                f"{', '.join(sorted(sasl_keys))} set, but security_protocol is "
                f"{self.security_protocol}; use SASL_SSL (or SASL_PLAINTEXT)"
            )
        ssl_keys = [k for k in self.model_fields_set if k.startswith("ssl_")]
        if ssl_keys and not self.uses_tls:
            raise ValueError(
                f"{', '.join(sorted(ssl_keys))} set, but security_protocol is "
                f"{self.security_protocol}; use SSL or SASL_SSL"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together: set both or neither")

    def _check_files(self) -> None:
        for name in (
            "sasl_plain_password_file",
            "sasl_oauth_token_file",
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
            "ssl_password_file",
        ):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no readable file at {path}")

    def client_options(self) -> dict[str, Any]:
        """The keyword arguments of kafka-python's clients for these settings.

        Secret files are read here, when a client is built, so a rotated
        password is picked up by the next client.
        """
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.uses_tls:
            options |= {
                "ssl_check_hostname": self.ssl_check_hostname,
                "ssl_cafile": _str(self.ssl_cafile),
                "ssl_certfile": _str(self.ssl_certfile),
                "ssl_keyfile": _str(self.ssl_keyfile),
                "ssl_password": _secret(self.ssl_password, self.ssl_password_file),
            }
        if self.uses_sasl:
            options["sasl_mechanism"] = self.sasl_mechanism
            if self.sasl_mechanism == "OAUTHBEARER":
                options["sasl_oauth_token_provider"] = FileTokenProvider(
                    self.sasl_oauth_token_file, self.sasl_oauth_token
                )
            else:
                options["sasl_plain_username"] = self.sasl_plain_username
                options["sasl_plain_password"] = _secret(
                    self.sasl_plain_password, self.sasl_plain_password_file
                )
        return options

    def librdkafka_options(self) -> dict[str, Any]:
        """The configuration properties of librdkafka (confluent-kafka) for these settings.

        Secret files are read here, as for :meth:`client_options`; an
        OAUTHBEARER token file is read again whenever librdkafka refreshes
        the token.

        >>> KafkaClientSettings().librdkafka_options()
        {'security.protocol': 'PLAINTEXT'}
        """
        options: dict[str, Any] = {"security.protocol": self.security_protocol}
        if self.uses_tls:
            files = {
                "ssl.ca.location": _str(self.ssl_cafile),
                "ssl.certificate.location": _str(self.ssl_certfile),
                "ssl.key.location": _str(self.ssl_keyfile),
                "ssl.key.password": _secret(self.ssl_password, self.ssl_password_file),
            }
            options |= {name: value for name, value in files.items() if value is not None}
            options["ssl.endpoint.identification.algorithm"] = (
                "https" if self.ssl_check_hostname else "none"
            )
        if self.uses_sasl:
            options["sasl.mechanism"] = self.sasl_mechanism
            if self.sasl_mechanism == "OAUTHBEARER":
                provider = FileTokenProvider(self.sasl_oauth_token_file, self.sasl_oauth_token)
                options["oauth_cb"] = lambda _config: (
                    provider.token(),
                    time.time() + _TOKEN_LIFETIME_S,
                )
            else:
                options["sasl.username"] = self.sasl_plain_username
                options["sasl.password"] = _secret(
                    self.sasl_plain_password, self.sasl_plain_password_file
                )
        return options

    def describe(self) -> str:
        """One line for logs: the protocol and mechanism, never a secret."""
        how = self.security_protocol
        if self.uses_sasl:
            how += f" {self.sasl_mechanism}"
            if self.sasl_plain_username:
                how += f" as {self.sasl_plain_username}"
        return how


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _secret(value: SecretStr | None, path: Path | None) -> str | None:
    if path is not None:
        return read_secret(path, "")
    return None if value is None else value.get_secret_value()


def load_kafka_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> KafkaClientSettings:
    """The ``[kafka]`` table of the config file at ``path``, then ``HEADRACE_KAFKA__*``.

    Raises
    ------
    headrace.config.ConfigError
        Naming the bad key; also when the file holds a secret.
    """
    return load_config(
        KafkaClientSettings,
        path,
        env_prefix=ENV_PREFIX,
        environ=environ,
        table="kafka",
        secrets=SECRET_KEYS,
    )
