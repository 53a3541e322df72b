"""Presets as YAML data: field maps (``fields/``), stdout regexes (``stdout/``) and the
known warning and error lines of trainers (``signals/``)."""
