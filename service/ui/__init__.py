"""The web console under /ui: Try it, Live, Review and Quality pages (docs/console.md).

Static files only (static/, shipped as package data): plain JavaScript modules that call the same
public HTTP and WebSocket API a client would, with the key or admin token the person types in.
"""
