"""The web page (``dig2dig serve``): see :mod:`dig2dig.web.server`."""
