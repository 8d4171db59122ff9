"""Wyoming speech to text for Home Assistant: a TCP server beside HTTP on the same pipeline.

server.py (listen, connection cap, drain, mDNS), handler.py (one connection: events, limits,
answers), utterance.py (audio, partials, the early final), audio.py (formats and conversion),
framing.py (every event's header checked before it is read), info.py (`describe`), zeroconf.py
(the optional announcement). docs/wyoming.md tells how Home Assistant is set up.
"""
