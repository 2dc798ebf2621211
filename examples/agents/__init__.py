"""Two small agents (flights, hotels) behind outerloop's agent listener, calling back through its model listener."""
