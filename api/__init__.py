"""Corral's OpenAI-compatible HTTP server and the `corral` command line.

    from corral.api import create_app, ServerSettings
    app = create_app(AsyncLLMEngine(EngineConfig()), ServerSettings(api_key="..."))

`corral serve --help` lists the flags (each also a `CORRAL_*` environment variable).
"""

from .app import create_app
from .errors import APIError
from .state import ServerSettings

__all__ = ["APIError", "ServerSettings", "create_app"]
