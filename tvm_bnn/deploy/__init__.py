"""Deployment helpers: bare-metal startup code and linker script templates (``startup/``) for the C bundle path."""
