"""The pytest-free library: content hashing, serialization, codecs, atomic files, errors."""
