from svigraph.ops import provenance  # noqa: F401
