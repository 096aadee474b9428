"""Run ndif's API under gunicorn (as the `gunicorn` script would), with anyio's asyncio backend imported
before anything imports nnsight.

Why: nnsight mounts a `.save` method on every object. anyio imports its asyncio backend lazily, the first
time work is handed to a thread, and the classes it then defines (`anyio.abc.SocketAttribute`, a
`TypedAttributeSet`) check that every public attribute in `dir(cls)` is annotated: `save` is not, so the
import raises TypeError. Starlette hands an upload to a thread when it outgrows its 1 MiB in-memory spool,
so with nnsight imported (ndif's schema imports it) every request body over 1 MiB failed with FastAPI's
"There was an error parsing the body". Importing the backend first defines those classes before the mount.
"""

import sys

import anyio._backends._asyncio  # noqa: F401  (before nnsight: see above)
from gunicorn.app.wsgiapp import run

if __name__ == "__main__":
    sys.argv[0] = "gunicorn"
    sys.exit(run())
