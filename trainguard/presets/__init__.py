"""Presets as YAML data: field maps (``fields/``) and stdout regexes (``stdout/``)."""
