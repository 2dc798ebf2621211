"""outerloop's host: config, plugin manager, filter chain, ASGI app, upstream dispatch and server."""
