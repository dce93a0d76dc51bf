"""The AwsAccount reconciler end to end: real PostgreSQL, NATS and a Dramatiq worker; moto behind the fault proxy."""

from __future__ import annotations

import time

import pytest

from models import store
from models.aws import AwsAccount
from models.events import Event
from workers.outbox_relay import publish_rows

from .aws import ACCESS_KEYS, ACCOUNT_ID
from .reconciling import observed, wait_for


def create_account(broker, endpoint_url: str, **fields) -> AwsAccount:
    values = {"name": "main", "account_id": ACCOUNT_ID, "default_region": "us-east-1", "endpoint_url": endpoint_url}
    written = store.create(AwsAccount, {**values, **ACCESS_KEYS, **fields})
    publish_rows(broker, written.outbox)
    return written.obj


def test_an_account_is_reconciled_with_its_caller_identity(broker, reconciling, aws_proxy):
    # Given an account whose keys work (moto's) and whose endpoint is the proxy
    account = create_account(broker, aws_proxy.url)

    # Then it is reconciled, with whom the keys are in its status
    done = wait_for(lambda: observed(AwsAccount, account.id))
    assert (done.status["phase"], done.reconciled, done.creation_failed) == ("Reconciled", True, False)
    identity = done.status["caller_identity"]
    assert identity["Account"] == ACCOUNT_ID and identity["Arn"] == f"arn:aws:sts::{ACCOUNT_ID}:user/moto"
    assert identity["UserId"]
    # And the reconciler asked STS once, through the account's endpoint
    assert aws_proxy.requests == ["GetCallerIdentity"]


def test_an_account_with_a_role_is_verified_as_the_assumed_role(broker, reconciling, aws_proxy):
    # Given an account that acts through a role
    account = create_account(broker, aws_proxy.url, role_arn=f"arn:aws:iam::{ACCOUNT_ID}:role/threeport")

    # Then its caller identity is the assumed role
    done = wait_for(lambda: observed(AwsAccount, account.id))
    assert done.status["phase"] == "Reconciled"
    assert done.status["caller_identity"]["Arn"] == f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/threeport/threeport"
    assert aws_proxy.requests == ["AssumeRole", "GetCallerIdentity"]


@pytest.mark.parametrize(
    "role, action, code",
    [
        (False, "GetCallerIdentity", "InvalidClientTokenId"),
        (False, "GetCallerIdentity", "AccessDenied"),
        (True, "AssumeRole", "AccessDenied"),
    ],
)
def test_refused_credentials_fail_permanently_naming_the_code(broker, reconciling, aws_proxy, role, action, code):
    # Given STS refuses the account's keys (or their assuming the role)
    aws_proxy.fail(action, code, 403, times=None, message="refused by the test")
    fields = {"role_arn": f"arn:aws:iam::{ACCOUNT_ID}:role/threeport"} if role else {}
    account = create_account(broker, aws_proxy.url, **fields)

    # Then the account fails, saying which account and what AWS answered
    done = wait_for(lambda: observed(AwsAccount, account.id))
    assert (done.status["phase"], done.creation_failed, done.reconciled) == ("Failed", True, False)
    assert done.status["message"].startswith("the credentials of AwsAccount 'main' were refused")
    assert f"{code}: refused by the test" in done.status["message"]
    assert "caller_identity" not in done.status
    assert [(e.reason, e.type) for e in Event.select().where(Event.object_id == account.id)] == [("Failed", "Warning")]

    # And it is not retried: one request to STS, nothing left in the queue
    time.sleep(1.0)
    assert aws_proxy.count(action) == 1
    stats = broker.queue_stats("aws")
    assert (stats.ready, stats.delayed, stats.dead) == (0, 0, 0)


def test_credentials_of_another_account_fail_naming_both_accounts(broker, reconciling, aws_proxy):
    # Given an account declared as 210987654321 whose keys are moto's 123456789012
    account = create_account(broker, aws_proxy.url, account_id="210987654321")

    # Then it fails permanently naming both, with the identity the keys have recorded
    done = wait_for(lambda: observed(AwsAccount, account.id))
    assert done.status["phase"] == "Failed" and done.creation_failed
    assert f"are for AWS account {ACCOUNT_ID}" in done.status["message"]
    assert "not for account 210987654321" in done.status["message"]
    assert done.status["caller_identity"]["Account"] == ACCOUNT_ID


def test_a_throttled_identity_check_is_retried(broker, reconciling, aws_proxy):
    # Given STS throttles the first two requests
    aws_proxy.fail("GetCallerIdentity", "Throttling", 400, times=2)

    # When an account is created, then it is reconciled on the third request
    account = create_account(broker, aws_proxy.url)
    assert wait_for(lambda: observed(AwsAccount, account.id)).status["phase"] == "Reconciled"
    assert aws_proxy.count("GetCallerIdentity") == 3


def test_deleting_an_account_removes_the_row_and_nothing_in_aws(broker, reconciling, aws_proxy):
    # Given a reconciled account
    account = create_account(broker, aws_proxy.url)
    wait_for(lambda: observed(AwsAccount, account.id))

    # When it is deleted, then the row goes without another AWS call
    publish_rows(broker, store.schedule_deletion(AwsAccount, account.id).outbox)
    wait_for(lambda: AwsAccount.get_or_none(AwsAccount.id == account.id) is None)
    assert aws_proxy.requests == ["GetCallerIdentity"]
