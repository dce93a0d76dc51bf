"""The SecretDefinition reconciler: the definition's values as one secret in AWS Secrets Manager.

The secret is named ``threeport/<definition name>`` and tagged with the
definition; the name, region and account are recorded in the status
(``inventory``) before anything is made, and kept, so a rename or a new
default account does not move the secret (naming another ``aws_account``
does: the secret is made there and removed from the old account). The
value is the data as one JSON object, the form External Secrets'
``dataFrom.extract`` reads.

Every step looks before it acts: a secret an interrupted attempt made is
adopted, one scheduled for deletion is restored, and one of that name that
is not tagged as the definition's is never touched (a permanent failure).
The value is written only when it differs from the secret's; the version
written goes in the status (``version_id``) and, when it changed, the
definition's SecretInstances are reconciled again to fetch it. Deletion
removes the secret without a recovery window, so its name is free at once.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from models import store
from models.aws import AwsAccount
from models.secrets_storage import SecretDefinition, SecretInstance

from .aws_adapter import TAG_ID, Aws, AwsConflict, AwsNotFound, tag_dict, tag_list, tags_for
from .errors import DependencyNotReady, PermanentError, TemporaryError
from .reconcilers import Reconciler, register

__all__ = ["secret_name", "account_of", "reconcile_secret_definition", "delete_secret_definition", "NAME_PREFIX"]

#: Where threeport's secrets live in Secrets Manager's name space.
NAME_PREFIX = "threeport/"
#: Characters Secrets Manager allows in a name (others become '-').
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9/_+=.@-]+")


def secret_name(definition: SecretDefinition) -> str:
    """``threeport/<name>``, with what Secrets Manager does not allow in a name replaced by '-'."""
    slug = _NOT_ALLOWED.sub("-", definition.name).strip("-/")[:400] or definition.id.hex
    return f"{NAME_PREFIX}{slug}"


def account_of(definition: SecretDefinition) -> AwsAccount:
    """The account the definition names, else the default account (DependencyNotReady until it is reconciled)."""
    if definition.aws_account_id is not None:
        return store.get(AwsAccount, definition.aws_account_id)
    table = AwsAccount
    account = table.select().where(table.default_account & table.deletion_scheduled.is_null()).first()
    if account is None:
        raise TemporaryError(
            "no AWS account to keep the values in: name an aws_account or make one the default_account", delay=None
        )
    if not account.reconciled:
        raise DependencyNotReady(f"waiting for the default AwsAccount {account.name!r} to be reconciled")
    return account


def reconcile_secret_definition(definition: SecretDefinition) -> None:
    """Make the secret exist in Secrets Manager, tagged, with the definition's data as its value."""
    account, inventory = _planned(definition)
    aws = Aws.for_account(account, region=inventory["region"])
    value = json.dumps(definition.data, sort_keys=True)
    arn, version = _ensure_secret(aws, definition, inventory["name"], value)
    if version is None:  # it was there already: write the value only if it differs
        current = aws.call("secretsmanager", "get_secret_value", SecretId=arn)
        version = current["VersionId"]
        if _parsed(current.get("SecretString")) != definition.data:
            version = aws.call("secretsmanager", "put_secret_value", SecretId=arn, SecretString=value)["VersionId"]
    previous = (definition.status or {}).get("version_id")
    store.merge_status(SecretDefinition, definition.id, {"inventory": {**inventory, "arn": arn}, "version_id": version})
    if version != previous:  # the instances deliver the new value
        instances = SecretInstance.select(SecretInstance.id).where(
            (SecretInstance.secret_definition == definition.id) & SecretInstance.deletion_scheduled.is_null()
        )
        store.request_reconcile(SecretInstance, [row.id for row in instances])


def delete_secret_definition(definition: SecretDefinition) -> None:
    """Delete the secret (no recovery window) if it is the definition's; what is gone already is fine."""
    inventory = (definition.status or {}).get("inventory") or {}
    if inventory.get("name"):
        _delete_recorded(definition, inventory)


# The inventory ----------------------------------------------------------------------------------


def _planned(definition: SecretDefinition) -> tuple[AwsAccount, dict[str, Any]]:
    """The account and the names to build under: those recorded (unless the account changed), else new ones."""
    recorded = dict((definition.status or {}).get("inventory") or {})
    account = _recorded_account(definition, recorded) or account_of(definition)
    if recorded.get("name") and recorded.get("account_id") != str(account.id):  # moved to another account
        _delete_recorded(definition, recorded)
        recorded = {}
    planned = {
        "name": recorded.get("name") or secret_name(definition),
        "region": recorded.get("region") or account.default_region,
        "account_id": str(account.id),
    }
    if any(recorded.get(key) != value for key, value in planned.items()):
        store.merge_status(SecretDefinition, definition.id, {"inventory": planned})
    return account, planned


def _recorded_account(definition: SecretDefinition, recorded: dict[str, Any]) -> Optional[AwsAccount]:
    """The account recorded, while the definition names none other and it still exists."""
    account_id, named = recorded.get("account_id"), definition.aws_account_id
    if not account_id or (named is not None and str(named) != account_id):
        return None
    return AwsAccount.get_or_none((AwsAccount.id == account_id) & AwsAccount.deletion_scheduled.is_null())


def _delete_recorded(definition: SecretDefinition, inventory: dict[str, Any]) -> None:
    account = AwsAccount.get_or_none(AwsAccount.id == inventory.get("account_id"))
    if account is None:
        return  # the account is gone from the control plane: nothing left to reach
    _delete_secret(Aws.for_account(account, region=inventory.get("region")), definition, inventory["name"])


# The secret -------------------------------------------------------------------------------------


def _ensure_secret(aws: Aws, definition: SecretDefinition, name: str, value: str) -> tuple[str, Optional[str]]:
    """The secret's ARN, and the version written when it had to be made (None when it was there)."""
    tags = tag_list(tags_for(definition, Name=name))
    found = _describe(aws, name)
    if found is None:
        try:
            answer = aws.call(
                "secretsmanager",
                "create_secret",
                Name=name,
                SecretString=value,
                Description=f"The values of threeport SecretDefinition {definition.name!r}.",
                Tags=tags,
            )
            return answer["ARN"], answer["VersionId"]
        except AwsConflict:  # made meanwhile (by a duplicate reconcile, or by someone else)
            found = _describe(aws, name)
            if found is None:
                raise TemporaryError(f"secret {name!r} is being made or removed: trying again", delay=2.0) from None
    if not _is_ours(found, definition):
        raise PermanentError(
            f"Secrets Manager already has a secret named {name!r} that is not this SecretDefinition's "
            f"(no tag {TAG_ID}={definition.id}): remove that secret, or declare the values under another name"
        )
    if found.get("DeletedDate"):  # scheduled for deletion: take it back
        aws.call("secretsmanager", "restore_secret", SecretId=found["ARN"])
    aws.call("secretsmanager", "tag_resource", SecretId=found["ARN"], Tags=tags)
    return found["ARN"], None


def _delete_secret(aws: Aws, definition: SecretDefinition, name: str) -> None:
    found = _describe(aws, name)
    if found is None or not _is_ours(found, definition):
        return
    try:
        aws.call("secretsmanager", "delete_secret", SecretId=found["ARN"], ForceDeleteWithoutRecovery=True)
    except AwsNotFound:
        pass


def _describe(aws: Aws, name: str) -> Optional[dict[str, Any]]:
    try:
        return aws.call("secretsmanager", "describe_secret", SecretId=name)
    except AwsNotFound:
        return None


def _is_ours(found: dict[str, Any], definition: SecretDefinition) -> bool:
    return tag_dict(found.get("Tags") or []).get(TAG_ID) == str(definition.id)


def _parsed(text: Optional[str]) -> Any:
    try:
        return json.loads(text or "null")
    except ValueError:
        return None


register(SecretDefinition.kind, Reconciler(reconcile=reconcile_secret_definition, delete=delete_secret_definition))
