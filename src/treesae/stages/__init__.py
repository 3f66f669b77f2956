"""Every stage's code, one module per stage, each the functions its notebook calls (one per cell).

``validate`` (DVC's first stage), ``harvest`` (01), ``train`` (02), ``position`` (03), ``matching`` (04),
``hierarchy`` (05), ``figures`` (06), ``browser`` (07), ``synthetic`` (08), ``paper``; ``common`` is their
shared glue (the runs table, tables and metrics files). The library never imports a stage. Nothing is
imported here, so each stage imports only the modules it needs (its DVC dependencies, tests/test_dvc_deps.py).
"""
