"""A WSGI app that answers every request with the id of the thread that served it (``/slow?s``: after s seconds)."""

import threading
import time


def app(environ, start_response):
    environ["wsgi.input"].read()
    if environ["PATH_INFO"] == "/slow":
        time.sleep(float(environ["QUERY_STRING"]))
    body = str(threading.get_ident()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
