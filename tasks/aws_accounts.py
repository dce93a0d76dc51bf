"""The AwsAccount reconciler: check that the account's credentials work, and whose they are.

It asks STS who the credentials are (GetCallerIdentity, after assuming the
account's role when it names one) and records the answer in the status as
``caller_identity``, before checking that it is the declared account, so a
mismatch shows both. Refused credentials, a role that cannot be assumed, or
another account's credentials are permanent failures naming the cause:
retrying the same credentials cannot help. The account makes nothing in
AWS, so deleting it removes nothing there.
"""

from __future__ import annotations

from models import store
from models.aws import AwsAccount

from .aws_adapter import Aws, AwsPermanentError
from .errors import PermanentError
from .reconcilers import Reconciler, register

__all__ = ["reconcile_account"]


def reconcile_account(account: AwsAccount) -> None:
    """Verify the credentials of ``account`` and record its caller identity."""
    try:
        answer = Aws.for_account(account).caller_identity()
    except AwsPermanentError as exc:
        refused = f"the credentials of AwsAccount {account.name!r} were refused: {exc.message}"
        raise AwsPermanentError(refused, code=exc.code, operation=exc.operation) from exc
    identity = {key: answer.get(key) for key in ("Account", "Arn", "UserId")}
    store.merge_status(AwsAccount, account.id, {"caller_identity": identity})
    if identity["Account"] != account.account_id:
        raise PermanentError(
            f"the credentials of AwsAccount {account.name!r} are for AWS account {identity['Account']} "
            f"({identity['Arn']}), not for account {account.account_id}"
        )


register(AwsAccount.kind, Reconciler(reconcile=reconcile_account))
