"""The API, fuzzed from its own OpenAPI document: the document is valid (openapi-spec-validator), and
Schemathesis, logged in with a cookie and the CSRF token, gets no 5xx and only answers the document describes."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from steno_exportd import __version__, demo
from steno_exportd.web.api import openapi_document
from tests.parts.daemon import DaemonProc, write_config
from tests.web.helpers import PASSWORD, PASSWORD_HASH, free_port

EXAMPLES = 60           # per operation and mode (valid, invalid data): 16 operations x 2 x 60 took ~20 s here


def test_the_openapi_document_is_valid():
    from openapi_spec_validator import validate
    validate(openapi_document(__version__))


class Api:
    """The real daemon (password mode) and a logged-in requests session with the page's CSRF token."""

    def __init__(self, tmp: Path) -> None:
        lib = tmp / "lib"
        demo.generate(lib, sessions=4, seed=4, small=True)
        (tmp / "exports").mkdir()
        self.port = free_port()
        cfg = write_config(tmp / "c.toml", tmp, "session", **{
            "recorder.db_path": f'"{lib / demo.DB_NAME}"', "dbus.enabled": "false", "http.enabled": "true",
            "http.bind": '["127.0.0.1"]', "http.port": str(self.port), "http.auth.mode": '"password"',
            "http.auth.password_hash": f'"{PASSWORD_HASH}"'})
        (tmp / "d").mkdir()
        self.proc = DaemonProc(tmp / "d", cfg)
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = requests.Session()
        self.tmp = tmp

    def start(self) -> None:
        self.proc.wait_ready(30)
        page = self.http.get(self.url + "/login").text
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        r = self.http.post(self.url + "/login", data={"password": PASSWORD, "csrf": token}, allow_redirects=False)
        assert r.status_code == 303, r.text
        page = self.http.get(self.url + "/").text
        self.token = re.search(r'<meta name="csrf" content="([^"]+)">', page).group(1)
        # things that exist, so generated requests reach the logic past "not found"
        h = {"X-CSRF-Token": self.token}
        self.keys = [str(x["id"]) for x in self.http.get(self.url + "/api/v1/sessions").json()["items"]]
        job = self.http.post(self.url + "/api/v1/exports", headers=h, json={
            "sessions": self.keys[:1], "formats": ["txt"], "target": str(self.tmp / "exports")})
        assert job.status_code == 202, job.text
        self.jobs = [str(job.json()["id"])]
        link = self.http.post(f"{self.url}/api/v1/sessions/{self.keys[0]}/share-links", headers=h, json={})
        assert link.status_code == 201, link.text
        self.tokens = [link.json()["token"]]

    def real(self, name: str) -> list[str]:
        """Values of a path parameter that exist on this daemon."""
        return {"key": self.keys, "id": self.jobs, "token": self.tokens}.get(name, [])


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    a = Api(tmp_path_factory.mktemp("openapi"))
    try:
        a.start()
        yield a
    finally:
        a.proc.stop()
        sys.stderr.write(f"\n---- daemon log ----\n{a.proc.log()}\n")
    assert "Traceback" not in a.proc.log()


def operations(api: Api) -> list:
    """The document's operations as Schemathesis sees them, less the endless event stream (tested elsewhere)."""
    doc = api.http.get(api.url + "/api/v1/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc).exclude(path="/api/v1/events")
    return [result.ok() for result in schema.get_all_operations()]


def test_the_api_answers_what_its_document_says(api):
    # Hypothesis driven here, operation by operation (schemathesis.pytest.from_fixture needs pytest < 9)
    ops = operations(api)
    assert len(ops) >= 15, ops
    failures = []
    checks_run = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
                  checks.response_schema_conformance, checks.response_headers_conformance]
    for op, mode in ((op, mode) for op in ops for mode in GenerationMode):
        params = [p for p in ("key", "id", "token") if "{" + p + "}" in op.path]
        existing = [v for p in params for v in api.real(p)]

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(op.as_strategy(mode), st.sampled_from([None, *existing]))
        def fuzz(case, real):
            if real is not None:            # half the time, something that exists: the logic behind the 404
                case.path_parameters[params[0]] = real
            case.call_and_validate(base_url=api.url, session=api.http, headers={"X-CSRF-Token": api.token},
                                   checks=checks_run)
        try:
            fuzz()
        except Unsatisfiable:               # no parameter and no body: nothing invalid to send
            assert mode is GenerationMode.NEGATIVE and not op.path_parameters and not op.query, op.label
        except Exception as e:  # noqa: BLE001 - every operation is fuzzed; all failures are reported together
            failures.append(f"{op.label} ({mode.value} data): {str(e)[:1500]}")
    assert not failures, "\n\n".join(failures)
