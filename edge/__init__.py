"""The edge: the WebSocket and HTTP front door between browsers and the bus."""
