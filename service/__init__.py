"""A speech-recognition service that measures itself."""
