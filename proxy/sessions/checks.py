"""The Galtea rules a new session's fields must keep, and the session they make."""

from __future__ import annotations

import os

from proxy.connections.spec import ConnectionType
from proxy.connections.versions import Version, VersionRegistry
from proxy.errors import InvalidField, NotFound
from proxy.sessions.entities import PENDING, Session, context_object
from proxy.sessions.requests import SessionCreate, SessionStatus
from proxy.storage.entity_tables import now_iso


def new_session(fields: SessionCreate, versions: VersionRegistry) -> Session:
    """A production session has no test case; a non-production one usually runs one, which provides its
    context, but need not: the galtea SDK's `get_or_create` sends `isProduction: false` with a custom id alone,
    and Galtea takes it. Without an explicit `isProduction` (absent or null, as the SDK's `create` sends it by
    default) the test case decides, as Galtea does: none means production. A session created COMPLETED or
    FAILED logs a conversation that ran elsewhere: it takes logged inference results, never turns, and has no
    lifecycle to run."""
    version = version_for(fields, versions)
    test_case_id = fields.test_case_id
    is_production = fields.is_production if fields.is_production is not None else not test_case_id
    if is_production and test_case_id:
        raise InvalidField("testCaseId", "is refused on a production session (isProduction: true)")
    if test_case_id and fields.context is not None:
        raise InvalidField("context", "is refused when testCaseId is set (the test case provides it)")
    if is_production and fields.run_id:
        raise InvalidField("runId", "is refused on a production session (isProduction: true)")
    status = (fields.status or SessionStatus.PENDING).value
    conversation = versions.connection(version, ConnectionType.CONVERSATION)
    return Session(
        id=f"ses_{os.urandom(10).hex()}",  # as `registry.new_id("ses")`, without the UUID object
        version_id=version.id,
        product_id=version.product_id,
        created_at=now_iso(),
        cassette_key=test_case_id or fields.custom_id or (conversation.name if conversation else version.name),
        custom_id=fields.custom_id,
        test_case_id=test_case_id,
        test_id=fields.test_id or fields.dataset_id,
        run_id=fields.run_id,
        context=context_object(fields.context),
        metadata=dict(fields.metadata or {}),
        status=status,
        is_production=is_production,
        finalized=status != PENDING,
    )


def version_for(fields: SessionCreate, versions: VersionRegistry) -> Version:
    if fields.version_id:
        return versions.get(fields.version_id)
    product_id = fields.product_id
    if not product_id:
        raise InvalidField("versionId", "is required (or productId, to use that product's latest version)")
    version = versions.latest_for_product(product_id)
    if version is None:
        raise NotFound(f"Product {product_id} has no version")
    return version
