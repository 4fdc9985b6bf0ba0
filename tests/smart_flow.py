"""Drive the SMART sandbox's consent page the way a patient's browser would (no browser)."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

_REQUEST_ID = re.compile(r'name="request_id" value="([^"]+)"')
_PATIENT = re.compile(r'<option value="([^"]+)"')
_SCOPE = re.compile(r'name="scope" value="([^"]+)"')
_ACTION = re.compile(r'<form method="post" action="([^"]+)"')


def consent(
    authorize_url: str, patient_id: str | None = None, decision: str = "allow"
) -> dict[str, str]:
    """Open the authorize URL, choose ``patient_id`` (default: the first offered), tick every
    scope, press the button; the redirect's query parameters (``code``, ``state`` or ``error``)."""
    with httpx.Client(timeout=15) as http:
        page = http.get(authorize_url)
        page.raise_for_status()
        html = page.text
        request_id = _REQUEST_ID.search(html)
        action = _ACTION.search(html)
        assert request_id and action, html[:500]
        patients = _PATIENT.findall(html)
        chosen = patient_id or patients[0]
        assert chosen in patients
        form = [("request_id", request_id.group(1)), ("patient", chosen), ("decision", decision)]
        form += [("scope", s) for s in _SCOPE.findall(html)]
        parts = urlsplit(authorize_url)
        answer = http.post(
            f"{parts.scheme}://{parts.netloc}{action.group(1)}",
            content=urlencode(form),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert answer.status_code == 303, answer.text[:300]
        location = urlsplit(answer.headers["location"])
        query = parse_qs(location.query or location.fragment)
        return {k: v[0] for k, v in query.items()}
