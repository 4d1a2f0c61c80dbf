"""The tenants' own provider keys (bring your own key), and the credentials a teacher call uses.

``KeyStore.set`` checks a key with a cheap call to the provider, then stores it sealed
(``envelope``: AES-GCM under a fresh data key, wrapped by DISTILLERY_MASTER_KEY) with
its last four characters, the only part that ever leaves the service.

``KeyStore.credentials`` picks the key a teacher call uses, in this order:

1. the tenant's own key for the provider (usage not billed: BYOK);
2. the deployment's key, DISTILLERY_<PROVIDER>_API_KEY (billed);
3. for "platform", the deployment's OpenAI-compatible endpoint (DISTILLERY_PLATFORM_BASE_URL);
4. otherwise FailedPrecondition saying how to bring one.

Keys never enter a message, a log line or a repr: errors from the provider are scrubbed
of the key, and unexpected errors are reported by their type only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from services.common.errors import DistilleryError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.teacher import providers
from services.teacher.envelope import MasterKey, seal, unseal
from services.teacher.providers.base import Credentials, ProviderError, scrub
from services.teacher.settings import ProviderSettings, Settings

log = logging.getLogger("distillery.teacher.keys")

# Providers a tenant can bring a key for; "platform" is the deployment's own endpoint.
TENANT_PROVIDERS = ("openai", "anthropic", "google")
MIN_KEY_CHARS, MAX_KEY_CHARS = 8, 1024
# Prefixes that say for sure which provider a key belongs to.
_PREFIXES = {"sk-ant-": "anthropic", "AIza": "google"}
# Check failures that say nothing about the key: the provider or the network did not answer.
_NO_ANSWER = {"rate_limited", "overloaded", "server_error", "timeout", "connection", "malformed"}


@dataclass(frozen=True)
class StoredKey:
    provider: str
    last4: str
    created_at: datetime
    checked_at: datetime | None


class KeyStore:
    """Provider keys of every tenant, in the teacher's ``provider_keys`` table."""

    def __init__(self, pool: AsyncConnectionPool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self._master: MasterKey | None = None

    def master(self) -> MasterKey:
        """The master key, read on first use: without one the service runs, but stores no keys."""
        if self._master is None:
            self._master = MasterKey.from_setting(self.settings.master_key)
        return self._master

    def provider_settings(self, provider: str) -> ProviderSettings:
        return self.settings.providers.get(provider) or ProviderSettings()

    async def set(self, tenant_id: str, provider: str, api_key: str, skip_check: bool = False) -> StoredKey:
        """Store (or replace) the tenant's key for ``provider``, checked first unless ``skip_check``."""
        _tenant_provider(provider)
        key = clean_key(provider, api_key)
        master = self.master()  # before the check: a key that cannot be stored is not sent anywhere
        checked_at = None
        if not skip_check:
            await self.check(provider, key)
            checked_at = datetime.now(UTC)
        blob = seal(master, tenant_id, provider, key)
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(StoredKey))
            await cur.execute(
                "INSERT INTO provider_keys (tenant_id, provider, ciphertext, last4, checked_at, master_key_id)"
                " VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (tenant_id, provider) DO UPDATE SET ciphertext = excluded.ciphertext,"
                " last4 = excluded.last4, checked_at = excluded.checked_at, master_key_id = excluded.master_key_id,"
                " created_at = now()"
                " RETURNING provider, last4, created_at, checked_at",
                (tenant_id, provider, blob, key[-4:], checked_at, master.id_hex),
            )
            stored = await cur.fetchone()
        assert stored is not None
        log.info("stored a %s key", provider, extra={"fields": {"tenant": tenant_id, "checked": not skip_check}})
        return stored

    async def check(self, provider: str, api_key: str) -> None:
        """One cheap call to the provider with ``api_key``; a typed error naming what went wrong."""
        adapter = providers.PROVIDERS[provider]
        settings = self.provider_settings(provider)
        credentials = Credentials(api_key, settings.base_url, billed=False, timeout_s=self.settings.request_timeout_s)
        try:
            client = adapter.connect(credentials)
            try:
                await adapter.check(client)
            finally:
                await close_client(adapter, client)
        except ProviderError as err:
            raise check_error(provider, err, api_key) from None
        except DistilleryError:
            raise
        except Exception as err:  # its text may hold the key: report the type only
            log.warning("checking a %s key failed: %s", provider, type(err).__name__)
            raise Unavailable(
                f"could not check the {provider} key ({type(err).__name__}); try again, or store it unchecked "
                "with --skip-check"
            ) from None

    async def list(self, tenant_id: str) -> list[StoredKey]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(StoredKey))
            await cur.execute(
                "SELECT provider, last4, created_at, checked_at FROM provider_keys WHERE tenant_id = %s"
                " ORDER BY provider",
                (tenant_id,),
            )
            return await cur.fetchall()

    async def delete(self, tenant_id: str, provider: str) -> None:
        _tenant_provider(provider)
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM provider_keys WHERE tenant_id = %s AND provider = %s", (tenant_id, provider)
            )
            if cur.rowcount == 0:
                raise NotFound(f"no {provider} key is stored", field="provider")

    async def credentials(self, tenant_id: str, provider: str) -> Credentials:
        """The key, endpoint and billing of a teacher call for this tenant (the module docstring's order)."""
        settings = self.provider_settings(provider)
        timeout_s = self.settings.request_timeout_s
        if provider == "platform":
            if not settings.base_url:
                raise FailedPrecondition(
                    "the platform teacher is not set up: the operator sets DISTILLERY_PLATFORM_BASE_URL to an "
                    "OpenAI-compatible endpoint (vLLM, llama.cpp's server)",
                    field="teacher",
                )
            return Credentials(settings.api_key, settings.base_url, billed=True, timeout_s=timeout_s)
        if provider not in TENANT_PROVIDERS:
            raise InvalidArgument(
                f"unknown provider {provider[:40]!r}: use openai, anthropic, google or platform", field="teacher"
            )
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT ciphertext FROM provider_keys WHERE tenant_id = %s AND provider = %s", (tenant_id, provider)
            )
            row = await cur.fetchone()
        if row is not None:
            key = unseal(self.master(), tenant_id, provider, bytes(row[0]))
            return Credentials(key, settings.base_url, billed=False, timeout_s=timeout_s)
        if settings.api_key:
            return Credentials(settings.api_key, settings.base_url, billed=True, timeout_s=timeout_s)
        raise FailedPrecondition(
            f"no {provider} key: bring your own with `distillery keys set {provider}` (or the operator sets "
            f"DISTILLERY_{provider.upper()}_API_KEY)",
            field="teacher",
        )


def _tenant_provider(provider: str) -> None:
    if provider == "platform":
        raise InvalidArgument(
            "the platform teacher is the deployment's own endpoint and takes no tenant key: keys can be stored "
            "for openai, anthropic and google",
            field="provider",
        )
    if provider not in TENANT_PROVIDERS:
        raise InvalidArgument("provider is required: openai, anthropic or google", field="provider")


def clean_key(provider: str, api_key: str) -> str:
    """The key without surrounding whitespace; InvalidArgument (never quoting it) when it cannot be a key."""
    key = api_key.strip()
    if not key:
        raise InvalidArgument(
            f"the {provider} key is empty: paste the key from the provider's console", field="api_key"
        )
    if len(key) > MAX_KEY_CHARS:
        raise InvalidArgument(
            f"the {provider} key is {len(key)} characters long, over {MAX_KEY_CHARS}: paste only the key",
            field="api_key",
        )
    if len(key) < MIN_KEY_CHARS:
        raise InvalidArgument(
            f"the {provider} key is {len(key)} characters long, too short for a provider key: paste the whole key",
            field="api_key",
        )
    if not all("!" <= ch <= "~" for ch in key):
        raise InvalidArgument(
            f"the {provider} key holds spaces, line breaks or characters no provider key has: copy it again, "
            "only the key",
            field="api_key",
        )
    for prefix, owner in _PREFIXES.items():
        if key.startswith(prefix) and owner != provider:
            raise InvalidArgument(
                f"this looks like a key for {owner} (it starts with {prefix!r}), not for {provider}: store it with "
                f"`distillery keys set {owner}`",
                field="api_key",
            )
    return key


def refused_key(provider: str, credentials: Credentials) -> str:
    """Whose key a provider refused when a call (not a key check) failed with "auth", and what to do."""
    if provider == "platform":
        return "the deployment's key (DISTILLERY_PLATFORM_API_KEY) was refused by the platform endpoint"
    if credentials.billed:
        return f"the deployment's {provider} key (DISTILLERY_{provider.upper()}_API_KEY) was refused"
    return f"your {provider} key was refused: set a new one with `distillery keys set {provider}`"


def check_error(provider: str, err: ProviderError, api_key: str) -> DistilleryError:
    """What a failed check call means for the person storing the key."""
    said = scrub(err.message, api_key)
    if err.kind == "auth":
        return InvalidArgument(f"the {provider} key was refused by the provider: {said}", field="api_key")
    if err.kind == "spend_limit":
        return FailedPrecondition(
            f"the {provider} key was accepted, but its account cannot pay for requests: {said}", field="api_key"
        )
    if err.kind in _NO_ANSWER:
        return Unavailable(
            f"could not check the {provider} key: the provider did not answer ({err.kind}: {said}); try again, "
            "or store it unchecked with --skip-check"
        )
    return FailedPrecondition(f"could not check the {provider} key ({err.kind}): {said}", field="api_key")


async def close_client(adapter: Any, client: Any) -> None:
    """Close a vendor SDK client: through the adapter's ``close`` when it has one, else the SDK's own."""
    if hasattr(adapter, "close"):
        await adapter.close(client)
        return
    for holder, name in ((getattr(client, "aio", None), "aclose"), (client, "aclose"), (client, "close")):
        close = getattr(holder, name, None)
        if close is not None:
            result = close()
            if hasattr(result, "__await__"):
                await result
            return
