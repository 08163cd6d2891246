"""Start the API server with uvicorn; refuse to listen off loopback without an API key."""

import ipaddress
import logging
import socket

from tuneforge import TuneforgeError

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


def serve(cfg, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, name: str | None = None,
          max_tokens: int = 2048, max_request_bytes: int = 1_000_000) -> int:
    """Load the engine and serve it until interrupted."""
    try:
        import uvicorn
    except ImportError:
        raise TuneforgeError("the API server needs fastapi and uvicorn: pip install fastapi uvicorn") from None
    if not is_loopback(host) and not api_key:
        raise TuneforgeError(f"--host {host} is reachable from other machines; set --api-key (or TUNEFORGE_API_KEY) to serve there")
    from tuneforge.infer import ChatEngine
    from tuneforge.serve.api import ServerLimits, create_app

    engine = ChatEngine.from_config(cfg, name=name)
    app = create_app(engine, api_key=api_key, limits=ServerLimits(max_request_bytes=max_request_bytes, max_tokens=max_tokens))
    log.info("serving `%s` at http://%s:%d/v1 (key %s)", engine.name, host, port, "required" if api_key else "not required")
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0
