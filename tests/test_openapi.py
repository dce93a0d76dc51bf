"""The OpenAPI document and the docs page say what the API does: no route more or less, the same fields."""

from __future__ import annotations

import uuid

import jsonschema
import pytest
from falcon import inspect, testing
from openapi_schema_validator import OAS31Validator, oas31_format_checker
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from api.app import OPEN_PATHS, create_app
from api.discovery import server_version
from api.docs import render_docs
from api.openapi import openapi_document
from api.settings import Settings, hash_token
from models import InvalidObject, registry
from models.base import ReconciledModel, RecordModel
from models.schema import fields_of
from models.validation import filter_value

TOKEN = "openapi-test-token"
YAML = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
DOCUMENT_URI = "urn:threeport:openapi"

RECONCILED = [model.kind for model in registry.reconciled_kinds()]
READ_ONLY_RECORDS = [
    model.kind for model in registry.kinds() if issubclass(model, RecordModel) and not model.client_writable
]


@pytest.fixture(scope="module")
def app():
    return create_app(Settings(token_hashes=frozenset({hash_token(TOKEN)})))


@pytest.fixture(scope="module")
def document(app):
    return openapi_document(app)


@pytest.fixture
def client(app):
    return testing.TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def anonymous(app):
    return testing.TestClient(app)


def schema_validator(document, name):
    """A Draft 2020-12 (OAS 3.1) validator for the component schema ``name``, its $refs resolved in ``document``."""
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    return OAS31Validator(
        {"$ref": f"{DOCUMENT_URI}#/components/schemas/{name}"},
        registry=Registry().with_resource(DOCUMENT_URI, resource),
        format_checker=oas31_format_checker,
    )


def routed(app) -> set[tuple[str, str]]:
    """Every (path template, method) the app answers, without Falcon's own 405 and OPTIONS responders."""
    return {
        (route.path, method.method.lower())
        for route in inspect.inspect_routes(app)
        for method in route.methods
        if not method.internal
    }


def documented(document) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items() for method in METHODS if method in item}


def resolve(document, ref_or_object):
    """A Parameter or Response object, following its $ref within ``document``."""
    ref = ref_or_object.get("$ref")
    if ref is None:
        return ref_or_object
    target = document
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


def test_the_document_is_valid_openapi_3_1_with_bearer_auth(document):
    # When the document is built, then it is a valid OpenAPI 3.1 document
    validate(document)
    assert document["openapi"] == "3.1.0"
    # And it names the server's version and asks for a bearer token everywhere by default
    assert document["info"]["version"] == server_version()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearer"]["description"],
    }
    assert document["security"] == [{"bearer": []}]


def test_every_routed_method_is_documented_and_every_documented_operation_is_routed(app, document):
    # Given what the Falcon app routes, and what the document lists
    served, listed = routed(app), documented(document)

    # Then they are the same operations, and Falcon's default responders are not among them
    assert served == listed
    assert ("/v0/workload-definitions/{object_id}", "put") in listed
    assert not {method for _, method in listed} & {"options", "head"}
    # And each has a unique operationId, a summary and a 401 exactly where a token is needed
    operations = [(path, document["paths"][path][method]) for path, method in listed]
    assert len({op["operationId"] for _, op in operations}) == len(operations)
    for path, op in operations:
        assert op["summary"]
        assert ("401" in op["responses"]) == (path not in OPEN_PATHS), path
        assert (op.get("security") == []) == (path in OPEN_PATHS), path


def test_a_route_added_to_the_app_is_documented_and_the_document_is_cached():
    # Given an app with a route no kind and no known resource explains
    class Echo:
        def on_post(self, req, resp):
            resp.media = req.get_media()

    app = create_app(Settings())
    app.add_route("/echo/{word}", Echo())

    # When its document is built twice
    first, second = openapi_document(app), openapi_document(app)

    # Then the route is listed all the same, with its path parameter, and the document is built once
    assert ("/echo/{word}", "post") in documented(first)
    assert first["paths"]["/echo/{word}"]["parameters"][0]["name"] == "word"
    assert second is first
    validate(first)


@pytest.mark.parametrize("model", registry.kinds(), ids=lambda model: model.kind)
def test_every_kind_has_its_schemas_with_its_fields(document, model):
    schemas = document["components"]["schemas"]
    infos = fields_of(model).values()
    writable = [info.name for info in infos if info.writable]

    # The object as answered: every field but the secrets, and its kind
    shown = schemas[model.kind]
    assert set(shown["properties"]) == {"kind"} | {info.name for info in infos if not info.secret}
    assert set(shown["required"]) == set(shown["properties"])
    assert schemas[f"{model.kind}List"]["properties"]["items"]["items"] == {
        "$ref": f"#/components/schemas/{model.kind}"
    }

    # What a client writes: the writable fields only, the required ones required
    if issubclass(model, RecordModel) and not model.client_writable:
        assert f"{model.kind}Create" not in schemas
        return
    create = schemas[f"{model.kind}Create"]
    assert list(create["properties"]) == writable
    assert sorted(create.get("required", [])) == sorted(info.name for info in infos if info.required)
    assert create["additionalProperties"] is False
    for info in infos:
        if info.secret and info.writable:
            assert create["properties"][info.name]["writeOnly"] is True
    if issubclass(model, ReconciledModel):
        update, replace = schemas[f"{model.kind}Update"], schemas[f"{model.kind}Replace"]
        assert list(update["properties"]) == writable and "required" not in update
        assert sorted(replace["required"]) == sorted(writable)
        assert update["additionalProperties"] is replace["additionalProperties"] is False
    else:
        assert f"{model.kind}Update" not in schemas


def test_bounded_integers_document_their_range(document):
    properties = document["components"]["schemas"]["AwsRelationalDatabaseDefinitionCreate"]["properties"]
    assert (properties["database_port"]["minimum"], properties["database_port"]["maximum"]) == (1, 65535)
    assert (properties["backup_days"]["minimum"], properties["backup_days"]["maximum"]) == (0, 35)
    route = document["components"]["schemas"]["ExtensionApiRouteCreate"]["properties"]["timeout_seconds"]
    assert (route["minimum"], route["maximum"]) == (1, 3600)


@pytest.mark.parametrize("model", registry.kinds(), ids=lambda model: model.kind)
def test_the_documented_filters_are_the_fields_the_api_filters_on(document, model):
    # Given the query parameters of the kind's list operation
    operation = document["paths"][f"/v0/{model.plural}"]["get"]
    parameters = [resolve(document, p) for p in operation["parameters"]]
    filters = {p["name"] for p in parameters if p["in"] == "query"} - {"limit", "after", "order"}

    # Then they are exactly the fields the store accepts a filter on
    def accepted(info):
        sample = {"boolean": "true", "integer": "1"}.get(info.schema.get("type"), "x")
        if info.schema.get("format") == "uuid":
            sample = str(uuid.uuid4())
        try:
            filter_value(model, info.name, sample)
        except InvalidObject:
            return False
        return True

    assert filters == {info.name for info in fields_of(model).values() if accepted(info)}
    assert filters, "every kind filters on its id at least"


@pytest.mark.parametrize("kind", RECONCILED)
def test_an_unknown_field_is_refused_by_the_api_and_by_the_create_schema(database, client, document, kind):
    model = registry.by_kind(kind)
    body = {"name": "x", "not_a_field": 1}

    # When a client posts a field the kind does not have
    result = client.simulate_post(f"/v0/{model.plural}", json=body)

    # Then the API answers 422 with a problem naming it
    assert result.status_code == 422
    assert result.headers["content-type"] == "application/problem+json"
    assert result.json["status"] == 422 and "not_a_field" in result.json["detail"]
    # And the document says as much: its Create schema admits no other field
    create = schema_validator(document, f"{kind}Create")
    assert document["components"]["schemas"][f"{kind}Create"]["additionalProperties"] is False
    assert any(error.validator == "additionalProperties" for error in create.iter_errors(body))


@pytest.mark.parametrize("kind", READ_ONLY_RECORDS)
def test_a_read_only_record_kind_refuses_post_and_documents_no_write(client, document, kind):
    model = registry.by_kind(kind)
    path = f"/v0/{model.plural}"

    # When a client posts to a kind only the control plane writes
    result = client.simulate_post(path, json={"name": "x"})

    # Then the API answers 405 with a problem, allowing what the document lists and nothing else
    assert result.status_code == 405
    assert result.headers["content-type"] == "application/problem+json"
    assert result.json["status"] == 405
    allowed = {method.strip().lower() for method in result.headers["allow"].split(",")} - {"options"}
    assert allowed == {method for method in METHODS if method in document["paths"][path]} == {"get"}
    assert set(document["paths"][f"{path}/{{object_id}}"]) & set(METHODS) == {"get"}


def test_the_document_the_docs_and_the_version_answer_without_a_token(anonymous, document):
    # Given no Authorization header, when the open routes are asked for, then they answer
    served = anonymous.simulate_get("/openapi.json")
    assert served.status_code == 200 and served.json == document
    docs = anonymous.simulate_get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert anonymous.simulate_get("/version").json["server"] == server_version()
    # But the objects themselves still need a token
    assert anonymous.simulate_get("/v0/workload-definitions").status_code == 401
    assert anonymous.simulate_get("/v0/kinds").status_code == 401


def test_the_docs_page_names_every_kind_its_paths_and_fields(anonymous):
    page = anonymous.simulate_get("/docs").text

    # Then each kind has a section, linked from the contents, with its routes
    for model in registry.kinds():
        assert f'<li><a href="#kind-{model.kind}">{model.kind}</a>' in page
        section = page.split(f'<section id="kind-{model.kind}">', 1)[1].split("</section>", 1)[0]
        assert f"<code>/v0/{model.plural}</code>" in section
        assert f"<code>/v0/{model.plural}/{{object_id}}</code>" in section
        for info in fields_of(model).values():
            internal = info.secret and not info.writable  # neither shown nor written: the control plane's own
            assert (f"<code>{info.name}</code>" in section) != internal, info.name
    # And a reference links to its kind, a secret is marked write-only
    instance = page.split('<section id="kind-WorkloadInstance">', 1)[1].split("</section>", 1)[0]
    assert '→ <a href="#kind-WorkloadDefinition">WorkloadDefinition</a>' in instance
    runtime = page.split('<section id="kind-KubernetesRuntimeInstance">', 1)[1].split("</section>", 1)[0]
    secret_row = runtime.split("<code>certificate_key</code>", 1)[1].split("</tr>", 1)[0]
    assert "Write-only" in secret_row
    # And a bounded integer shows its range
    database = page.split('<section id="kind-AwsRelationalDatabaseDefinition">', 1)[1].split("</section>", 1)[0]
    assert "integer 1–65535" in database.split("<code>database_port</code>", 1)[1].split("</tr>", 1)[0]
    # And the page is self-contained
    assert "<script" not in page and "src=" not in page and "http://" not in page and "https://" not in page


def test_the_docs_page_escapes_what_the_document_says():
    # Given a document whose texts hold markup
    hostile = "<script>alert(1)</script>"
    document = {
        "info": {"title": "t", "version": "1", "description": hostile},
        "tags": [{"name": "Thing", "description": hostile}],
        "paths": {"/v0/things": {"get": {"summary": hostile, "tags": ["Thing"]}}},
        "components": {
            "schemas": {
                "Thing": {"properties": {"kind": {"const": "Thing"}, "x": {"type": "string", "description": hostile}}}
            }
        },
    }

    # When it is rendered, then the markup is shown as text, never run
    page = render_docs(document)
    assert hostile not in page
    # (the description, the kind's summary in the contents and its section, the route's summary, the field's)
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 5


def test_real_answers_validate_against_the_documented_schemas(database, client, document):
    # When a WorkloadDefinition is created
    created = client.simulate_post("/v0/workload-definitions", json={"name": "web", "yaml_document": YAML})

    # Then its body is a valid WorkloadDefinition, with the headers the document promises
    assert created.status_code == 201
    schema_validator(document, "WorkloadDefinition").validate(created.json)
    promised = document["paths"]["/v0/workload-definitions"]["post"]["responses"]["201"]["headers"]
    assert {name.lower() for name in promised} <= set(created.headers)
    # And the list is a valid WorkloadDefinitionList
    listed = client.simulate_get("/v0/workload-definitions")
    schema_validator(document, "WorkloadDefinitionList").validate(listed.json)
    # And the schema is no empty promise: a wrong type fails it
    with pytest.raises(jsonschema.ValidationError):
        schema_validator(document, "WorkloadDefinition").validate({**created.json, "generation": "one"})

    # When an object that does not exist is asked for, then the 404 is a valid Problem
    missing = client.simulate_get(f"/v0/workload-definitions/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    schema_validator(document, "Problem").validate(missing.json)
