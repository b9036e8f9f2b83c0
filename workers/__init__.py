"""Switchboard's workers: one package each, plus the shared runtime. Workers never import each other."""
