"""The AWS adapter against moto over real HTTP, through the fault-injecting proxy: calls, retries, errors, roles."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from cli.local_servers import free_port
from models.aws import AwsAccount
from tasks.aws_adapter import (
    TAG_ID,
    TAG_KIND,
    Aws,
    AwsConflict,
    AwsNotFound,
    AwsPermanentError,
    AwsUnavailable,
    RetryPolicy,
    tag_dict,
    tag_filters,
    tag_list,
    tags_for,
)
from tasks.errors import PermanentError, TemporaryError

from .aws import ACCESS_KEYS, ACCOUNT_ID
from .aws_faults import rest

#: Quick retries, so a test that exhausts them takes milliseconds.
QUICK = RetryPolicy(attempts=3, initial=0.01, ceiling=0.05)
TRUST = '{"Version": "2012-10-17", "Statement": []}'


def account_at(endpoint_url: str, **fields) -> AwsAccount:
    """An AwsAccount (not saved: the adapter only reads its fields) on moto or the proxy."""
    values = {"account_id": ACCOUNT_ID, "default_region": "eu-west-1", "endpoint_url": endpoint_url, **ACCESS_KEYS}
    return AwsAccount(id=uuid.uuid4(), name="main", **{**values, **fields})


def test_calls_pages_and_tags_reach_moto_through_the_endpoint_override(aws_proxy):
    # Given an adapter for an account whose endpoint is the proxy in front of moto
    aws = Aws.for_account(account_at(aws_proxy.url), retry=QUICK)
    owner = account_at(aws_proxy.url)

    # When roles and a VPC are created with the owner's tags
    for n in range(3):
        aws.call("iam", "create_role", RoleName=f"r{n}", AssumeRolePolicyDocument=TRUST, Tags=tag_list(tags_for(owner)))
    vpc = aws.call(
        "ec2",
        "create_vpc",
        CidrBlock="10.0.0.0/16",
        TagSpecifications=[{"ResourceType": "vpc", "Tags": tag_list(tags_for(owner, Name="main"))}],
    )["Vpc"]

    # Then a paginated listing gathers every page (one role a page), and the answers carry no metadata
    roles = aws.pages("iam", "list_roles", "Roles", PaginationConfig={"PageSize": 1})
    assert sorted(role["RoleName"] for role in roles) == ["r0", "r1", "r2"]
    assert aws_proxy.count("ListRoles") == 3
    assert "ResponseMetadata" not in aws.call("iam", "get_role", RoleName="r0")
    # And the tags say which threeport object made each resource
    tags = tag_dict(aws.call("iam", "list_role_tags", RoleName="r1")["Tags"])
    assert tags == {TAG_KIND: "AwsAccount", TAG_ID: str(owner.id)}
    found = aws.pages("ec2", "describe_vpcs", "Vpcs", Filters=tag_filters(owner))
    assert [v["VpcId"] for v in found] == [vpc["VpcId"]]
    assert tag_dict(found[0]["Tags"])["Name"] == "main"
    # And every call went through the override
    assert aws_proxy.requests[:4] == ["CreateRole", "CreateRole", "CreateRole", "CreateVpc"]


@pytest.mark.parametrize(
    "service, operation, action, code, status",
    [
        ("ec2", "describe_vpcs", "DescribeVpcs", "RequestLimitExceeded", 503),
        ("iam", "list_roles", "ListRoles", "Throttling", 400),
        ("s3", "list_buckets", "ListBuckets", "SlowDown", 503),
        ("sts", "get_caller_identity", "GetCallerIdentity", "InternalFailure", 500),
    ],
)
def test_throttling_and_transient_errors_are_retried_until_they_pass(
    aws_proxy, service, operation, action, code, status
):
    # Given AWS answers the first two attempts with a throttling or transient error
    aws_proxy.fail(action, code, status, times=2)
    aws = Aws.for_account(account_at(aws_proxy.url), retry=QUICK)

    # When the call is made, then it succeeds on the third attempt: one request per attempt
    aws.call(service, operation)
    assert aws_proxy.count(action) == 3


def test_still_throttled_after_every_attempt_is_unavailable(aws_proxy):
    # Given EC2 throttles every request
    aws_proxy.fail("DescribeVpcs", "RequestLimitExceeded", 503, times=None)
    aws = Aws.for_account(account_at(aws_proxy.url), retry=QUICK)

    # When a call is made, then it gives up after the policy's attempts: a temporary error naming the code
    with pytest.raises(AwsUnavailable) as raised:
        aws.call("ec2", "describe_vpcs")
    assert isinstance(raised.value, TemporaryError) and raised.value.code == "RequestLimitExceeded"
    assert "RequestLimitExceeded" in str(raised.value) and raised.value.operation == "ec2:describe_vpcs"
    assert aws_proxy.count("DescribeVpcs") == QUICK.attempts


def test_access_denied_is_a_permanent_error_naming_the_code_and_is_not_retried(aws_proxy):
    # Given IAM denies CreateRole
    aws_proxy.fail("CreateRole", "AccessDenied", 403, times=None, message="not allowed to iam:CreateRole")
    aws = Aws.for_account(account_at(aws_proxy.url), retry=QUICK)

    # When a role is created, then a permanent error names the code and AWS's message, after one request
    with pytest.raises(AwsPermanentError) as raised:
        aws.call("iam", "create_role", RoleName="r", AssumeRolePolicyDocument=TRUST)
    assert isinstance(raised.value, PermanentError) and raised.value.code == "AccessDenied"
    assert str(raised.value) == "iam:create_role: AccessDenied: not allowed to iam:CreateRole"
    assert aws_proxy.count("CreateRole") == 1


def test_missing_and_existing_things_are_told_apart(aws_proxy):
    aws = Aws.for_account(account_at(aws_proxy.url), retry=QUICK)

    # When something that does not exist is asked for, then it is AwsNotFound with AWS's code
    with pytest.raises(AwsNotFound) as role:
        aws.call("iam", "get_role", RoleName="nobody")
    with pytest.raises(AwsNotFound) as bucket:
        aws.call("s3", "get_bucket_tagging", Bucket="no-such-bucket")
    assert (role.value.code, bucket.value.code) == ("NoSuchEntity", "NoSuchBucket")

    # When something is created twice, then the second time is AwsConflict
    aws.call("iam", "create_role", RoleName="r", AssumeRolePolicyDocument=TRUST)
    with pytest.raises(AwsConflict) as twice:
        aws.call("iam", "create_role", RoleName="r", AssumeRolePolicyDocument=TRUST)
    assert twice.value.code == "EntityAlreadyExists"


def test_an_account_with_a_role_acts_as_the_assumed_role(aws_proxy):
    # Given an account with keys and a role to assume
    role_arn = f"arn:aws:iam::{ACCOUNT_ID}:role/threeport-admin"
    aws = Aws.for_account(account_at(aws_proxy.url, role_arn=role_arn, external_id="x-1"), retry=QUICK)

    # When it asks who it is, then the answer is the assumed role
    identity = aws.caller_identity()
    assert identity["Arn"] == f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/threeport-admin/threeport"
    assert identity["Account"] == ACCOUNT_ID

    # And the role was assumed with the account's keys, the call signed with the role's credentials
    assume, call = aws_proxy.log
    assert (assume.action, call.action) == ("AssumeRole", "GetCallerIdentity")
    assert f"Credential={ACCESS_KEYS['access_key_id']}/" in assume.headers["authorization"]
    assert f"Credential={ACCESS_KEYS['access_key_id']}/" not in call.headers["authorization"]
    assert b"ExternalId=x-1" in assume.body


def test_a_role_that_cannot_be_assumed_is_a_permanent_error(aws_proxy):
    # Given STS refuses to let the keys assume the role
    aws_proxy.fail("AssumeRole", "AccessDenied", 403, times=None)
    account = account_at(aws_proxy.url, role_arn=f"arn:aws:iam::{ACCOUNT_ID}:role/nope")

    # When the account acts, then the failure names the code, and the call itself never went out
    with pytest.raises(AwsPermanentError, match="sts:assume_role: AccessDenied"):
        Aws.for_account(account, retry=QUICK).call("s3", "list_buckets")
    assert aws_proxy.requests == ["AssumeRole"]


def test_an_unreachable_endpoint_is_unavailable():
    # Given an endpoint nothing listens on
    aws = Aws.for_account(account_at(f"http://127.0.0.1:{free_port()}"), retry=QUICK)

    # When a call is made, then it is retried, then a temporary error
    with pytest.raises(AwsUnavailable, match="cannot reach AWS"):
        aws.call("sts", "get_caller_identity")


@pytest.mark.parametrize(
    "service, operation, match, code",
    [
        ("sts", "get_caller_identity", "GetCallerIdentity", "AccessDenied"),  # query protocol
        ("rds", "describe_db_instances", "DescribeDBInstances", "AccessDenied"),  # query protocol
        ("ec2", "describe_vpcs", "DescribeVpcs", "UnauthorizedOperation"),  # EC2's own
        ("kms", "list_keys", "ListKeys", "AccessDeniedException"),  # JSON (X-Amz-Target)
        ("eks", "list_clusters", rest("GET", r"^/clusters$", service="eks"), "AccessDeniedException"),  # REST-JSON
        ("eks", "list_clusters", "ListClusters", "AccessDeniedException"),  # REST-JSON, named by botocore's model
        ("s3", "list_buckets", "ListBuckets", "AccessDenied"),  # REST-XML
    ],
)
def test_injected_errors_are_worded_as_each_protocol_words_them(aws_proxy, service, operation, match, code):
    # Given the proxy fails one call of a service with an error code
    aws_proxy.fail(match, code, 403, message="denied by the test")
    aws = Aws.for_account(account_at(aws_proxy.url), retry=QUICK)

    # When the call is made, then botocore parsed the code and message, and the adapter made it permanent
    with pytest.raises(AwsPermanentError) as raised:
        aws.call(service, operation)
    assert raised.value.code == code and str(raised.value).endswith(f"{code}: denied by the test")

    # And the next call goes through to moto
    aws.call(service, operation)


def test_a_held_call_waits_until_released(aws_proxy):
    # Given IAM's CreateRole is held
    aws_proxy.hold("CreateRole")
    aws = Aws.for_account(account_at(aws_proxy.url), retry=QUICK)
    answers = []
    call = threading.Thread(
        target=lambda: answers.append(aws.call("iam", "create_role", RoleName="r", AssumeRolePolicyDocument=TRUST))
    )
    call.start()

    # When the call is made, then it waits at the proxy, and moto has not seen it
    assert aws_proxy.wait_held(timeout=10).action == "CreateRole"
    with pytest.raises(AwsNotFound):
        aws.call("iam", "get_role", RoleName="r")
    assert answers == []

    # When the hold is released, then the call goes on and succeeds
    aws_proxy.release()
    call.join(10)
    assert answers[0]["Role"]["RoleName"] == "r" and aws_proxy.held == []


def test_a_dropped_call_is_retried_on_a_new_connection(aws_proxy):
    # Given a held call whose connection the proxy then drops unanswered
    aws_proxy.hold("ListRoles")
    aws = Aws.for_account(account_at(aws_proxy.url), retry=QUICK)
    answers = []
    call = threading.Thread(target=lambda: answers.append(aws.call("iam", "list_roles")))
    call.start()
    aws_proxy.wait_held(timeout=10)
    aws_proxy.release(drop=True)

    # Then the adapter retries the dropped connection, and the second attempt succeeds
    call.join(10)
    assert len(answers) == 1 and answers[0]["Roles"] == []
    assert aws_proxy.count("ListRoles") == 2


def test_a_client_killed_while_held_leaves_the_proxy_working(aws_proxy):
    # Given a process whose CreateRole is held at the proxy
    aws_proxy.hold("CreateRole")
    script = (
        "import boto3, sys; boto3.client('iam', region_name='us-east-1', endpoint_url=sys.argv[1], "
        "aws_access_key_id='k', aws_secret_access_key='s').create_role(RoleName='held', AssumeRolePolicyDocument='{}')"
    )
    client = subprocess.Popen([sys.executable, "-c", script, aws_proxy.url])
    try:
        aws_proxy.wait_held(timeout=30)
    finally:
        # When the process is killed mid-call, and the hold released
        client.send_signal(signal.SIGKILL)
        client.wait(10)
    aws_proxy.release()

    # Then the call it made still reached moto (as AWS would have received it), and the proxy serves on
    aws = Aws.for_account(account_at(aws_proxy.url), retry=QUICK)
    assert eventually(lambda: aws.call("iam", "get_role", RoleName="held"))["Role"]["RoleName"] == "held"
    assert aws_proxy.held == [] and aws_proxy.count("CreateRole") == 1


def eventually(call, timeout=10.0):
    """``call()``'s answer once it stops raising AwsNotFound (a released request is relayed in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except AwsNotFound:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
