"""HTTP/1.1 as the service speaks it: uvicorn's h11 protocol, with its own errors in the service's format.

Requests that are not valid HTTP (a malformed Content-Length, a broken request line,
an invalid header) never reach the application: the server answers them itself. uvicorn
answers with plain text; here the answer is the same 400 with the JSON error body every
other failure has, {"error": {"code": "invalid_http", "message": ...}}.
"""
from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import error_body


class JsonErrorsH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        body = json.dumps(error_body("invalid_http", f"the request is not valid HTTP/1.1: {msg}")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()
