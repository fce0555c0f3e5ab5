"""Initial-annotation specialists behind one small interface (``base.Specialist``)."""
